//! The one CSV reader (the `csv` crate, RFC 4180 quoting): a header row naming the columns, then
//! records, read as a stream or whole. Every error names the file and line (and the column when
//! one is at fault), so a corrupt row in a trace, a profile or a data set is found at once.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A CSV file being read record by record.
pub struct CsvFile {
    path: PathBuf,
    reader: csv::Reader<std::io::BufReader<std::fs::File>>,
    header: Vec<String>,
    record: csv::StringRecord,
    line: u64,
}

impl CsvFile {
    /// Open `path` and read its header (a UTF-8 byte-order mark is dropped, names are trimmed).
    pub fn open(path: &Path) -> Result<CsvFile> {
        let f = crate::input::open(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(std::io::BufReader::new(f));
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| bad_csv(path, e))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        if header.is_empty() || header.iter().all(String::is_empty) {
            return Err(Error::bad(format!(
                "{}: empty file, expected a header line",
                path.display()
            )));
        }
        Ok(CsvFile {
            path: path.to_path_buf(),
            reader,
            header,
            record: csv::StringRecord::new(),
            line: 1,
        })
    }

    pub fn header(&self) -> &[String] {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line the last record started on (1 is the header).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The index of column `name` (ASCII case-insensitive), or an error naming the file, the
    /// column and the columns it has.
    pub fn col(&self, name: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::bad(format!(
                    "{}: line 1: missing column `{name}` (columns: {})",
                    self.path.display(),
                    self.header.join(", ")
                ))
            })
    }

    /// Move to the next record (blank lines skipped), checked to have as many fields as the
    /// header; false at the end of the file.
    pub fn next_record(&mut self) -> Result<bool> {
        loop {
            if !self
                .reader
                .read_record(&mut self.record)
                .map_err(|e| bad_csv(&self.path, e))?
            {
                return Ok(false);
            }
            self.line = self.record.position().map_or(self.line + 1, |p| p.line());
            if self.record.iter().all(str::is_empty) {
                continue;
            }
            if self.record.len() != self.header.len() {
                return Err(Error::bad(format!(
                    "{}: line {}: expected {} fields, found {}",
                    self.path.display(),
                    self.line,
                    self.header.len(),
                    self.record.len()
                )));
            }
            return Ok(true);
        }
    }

    /// Field `col` of the current record.
    pub fn get(&self, col: usize) -> &str {
        self.record.get(col).unwrap_or("")
    }

    /// The current record.
    pub fn record(&self) -> &csv::StringRecord {
        &self.record
    }

    /// An error about column `col` of the current record.
    pub fn bad_field(&self, col: usize, msg: impl std::fmt::Display) -> Error {
        Error::bad(format!(
            "{}: line {}: column `{}`: {msg}",
            self.path.display(),
            self.line,
            self.header.get(col).map_or("?", String::as_str)
        ))
    }

    /// Column `col` of the current record parsed as `T`, or an error naming the line, the
    /// column and the value, saying `what` was expected.
    pub fn parse<T: std::str::FromStr>(&self, col: usize, what: &str) -> Result<T> {
        let v = self.record.get(col).unwrap_or("");
        v.parse::<T>()
            .map_err(|_| self.bad_field(col, format!("expected {what}, got `{v}`")))
    }
}

fn bad_csv(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| format!("line {}: ", p.line())).unwrap_or_default();
    match e.kind() {
        csv::ErrorKind::Io(_) => Error::other(format!("{}: {line}{e}", path.display())),
        csv::ErrorKind::Utf8 { .. } => Error::bad(format!("{}: {line}not UTF-8 text", path.display())),
        _ => Error::bad(format!("{}: {line}{e}", path.display())),
    }
}

/// Read a whole CSV file: its header and every record as strings.
pub fn read_all(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut f = CsvFile::open(path)?;
    let mut rows = Vec::new();
    while f.next_record()? {
        rows.push(f.record().iter().map(str::to_string).collect());
    }
    Ok((f.header, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_blank_lines_and_bad_rows() {
        let dir = std::env::temp_dir().join(format!("chimera-csvfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.csv");
        std::fs::write(&p, "\u{feff}a, b\n1,\"x, \"\"y\"\"\"\n\n2,z\n").unwrap();
        let (h, rows) = read_all(&p).unwrap();
        assert_eq!(h, ["a", "b"]);
        assert_eq!(rows, [vec!["1", "x, \"y\""], vec!["2", "z"]]);
        std::fs::write(&p, "a,b\n1,2\n3\n").unwrap();
        let e = read_all(&p).unwrap_err().to_string();
        assert!(e.contains("a.csv: line 3: expected 2 fields, found 1"), "{e}");
        std::fs::write(&p, "a,b\n1,x\n").unwrap();
        let mut f = CsvFile::open(&p).unwrap();
        f.next_record().unwrap();
        let e = f.parse::<u32>(1, "a whole number").unwrap_err().to_string();
        assert!(
            e.contains("line 2: column `b`: expected a whole number, got `x`"),
            "{e}"
        );
        assert!(f
            .col("nope")
            .unwrap_err()
            .to_string()
            .contains("missing column `nope` (columns: a, b)"));
        std::fs::write(&p, "").unwrap();
        assert!(CsvFile::open(&p)
            .map(|_| ())
            .unwrap_err()
            .to_string()
            .contains("empty file"));
        std::fs::write(&p, b"a,b\n1,\xff\n").unwrap();
        assert!(read_all(&p).unwrap_err().to_string().contains("not UTF-8"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
