//! Workflow traces: the versioned Parquet format, the generator fitted to public data, the
//! MATH level-5 importer, statistics against the data, and the trace workload source.
//!
//! Fitting reads ../shared/data; nothing else here does: generation runs from the parameters
//! embedded in the binary, so a fresh clone works without the data.

pub mod fit;
pub mod format;
pub mod gen;
pub mod import;
pub mod params;
pub mod source;
pub mod stats;

pub use format::{read_trace, read_traces, write_trace, Trace, TraceWorkflow};
pub use params::{FittedParams, Task};
