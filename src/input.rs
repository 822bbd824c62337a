//! Opening the files a user hands us (scenarios, calibrations, profiles, predictor and router
//! files, traces, plans, endpoint lists, run folders' tables).
//!
//! Every input goes through [`open`] or [`read_text`]: a FIFO, a device (`/dev/zero`), a socket
//! or a folder is refused before a byte is read (reading one would hang or never end), and a
//! file larger than the reader's limit is refused before it is loaded. Errors name the file; a
//! missing, unreadable or wrong kind of file is bad input (exit 2).

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Largest text input read whole (scenarios, calibrations, model files, JSON data): 1 GiB.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Open `path` for reading after checking that it is a regular file.
pub fn open(path: &Path) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a FIFO, device or socket)"
        };
        return Err(Error::bad(format!("{}: is {kind}; expected a file", path.display())));
    }
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// Open a Parquet file for reading; a damaged one is bad input naming the file (with the
/// readable head of the parser's complaint).
pub fn open_parquet(
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder<std::fs::File>> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| {
        Error::bad(format!(
            "{}: not a readable Parquet file: {}",
            path.display(),
            crate::error::short_cause(&e)
        ))
    })
}

/// Read a whole text file (UTF-8) of at most [`MAX_TEXT_BYTES`].
pub fn read_text(path: &Path) -> Result<String> {
    read_text_limited(path, MAX_TEXT_BYTES)
}

/// Read a whole text file of at most `limit` bytes.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    let bytes = read_bytes_limited(path, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::bad(format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Read a whole file of at most `limit` bytes.
pub fn read_bytes_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = open(path)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > limit {
        return Err(Error::bad(format!(
            "{}: {len} bytes, more than the {limit} bytes this input may have",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows while being read.
    f.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, e))?;
    if out.len() as u64 > limit {
        return Err(Error::bad(format!(
            "{}: grew past {limit} bytes while being read",
            path.display()
        )));
    }
    Ok(out)
}

/// Read `path` if it exists; `None` when it does not.
pub fn read_text_if_exists(path: &Path) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => read_text(path).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("chimera-input-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    #[test]
    fn devices_folders_and_fifos_are_refused_before_reading() {
        let dir = scratch("kinds");
        let cases: Vec<(std::path::PathBuf, &str)> = vec![
            ("/dev/zero".into(), "not a regular file"),
            ("/dev/null".into(), "not a regular file"),
            (dir.path().to_path_buf(), "a folder"),
        ];
        for (p, want) in cases {
            let e = read_text(&p).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{p:?}: {e}");
            assert!(e.to_string().contains(want), "{p:?}: {e}");
        }
        let fifo = dir.path().join("fifo");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
        if ok.map(|s| s.success()).unwrap_or(false) {
            // Opening a FIFO for reading would block until a writer comes: the check must
            // come first.
            let e = read_text(&fifo).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn size_limits_and_encodings_are_checked() {
        let dir = scratch("limits");
        let p = dir.path().join("a.yaml");
        std::fs::write(&p, "x".repeat(100)).unwrap();
        assert!(read_text_limited(&p, 100).is_ok());
        let e = read_text_limited(&p, 99).unwrap_err();
        assert!(e.to_string().contains("100 bytes"), "{e}");
        std::fs::write(&p, [b'a', 0xff, 0xfe]).unwrap();
        let e = read_text(&p).unwrap_err();
        assert!(
            e.to_string().contains("not UTF-8") && e.to_string().contains("offset 1"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
        let missing = dir.path().join("nope");
        assert_eq!(read_text(&missing).unwrap_err().exit_code(), 2);
        assert!(read_text_if_exists(&missing).unwrap().is_none());
    }
}
