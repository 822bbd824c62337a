//! Result files: `requests.parquet`, `workflows.parquet`, `engines.parquet`, `summary.json`
//! and `manifest.json`.
//!
//! Rows are written as the run goes, in bounded batches, so memory does not grow with the
//! number of finished requests; summaries use fixed-size quantile sketches. This module
//! never decides anything about the simulation; it records what it is given.

pub mod schema;
pub mod sketch;
pub mod summary;
pub mod table;

pub use sketch::Sketch;
pub use table::{ColType, Table, Val};

/// Write a whole file through a temporary sibling and a rename, so that a reader never sees
/// half of it and an interrupted write leaves the old file in place.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| crate::Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| crate::Error::io(path, e))
}
