//! Result files: `requests.parquet`, `workflows.parquet`, `engines.parquet`, `summary.json`
//! and `manifest.json`.
//!
//! Rows are written as the run goes, in bounded batches, so memory does not grow with the
//! number of finished requests; summaries use fixed-size quantile sketches. This module
//! never decides anything about the simulation; it records what it is given.

pub mod sketch;
pub mod summary;
pub mod table;

pub use sketch::Sketch;
pub use table::{ColType, Table, Val};
