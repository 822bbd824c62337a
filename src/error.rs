//! Typed errors for the library and the exit codes they map to.
//!
//! Library code returns [`Error`]; only `main` turns it into a message and an exit code
//! (0 ok, 2 bad input, 130 interrupted, 1 anything else). This module never prints.

use std::fmt;
use std::path::{Path, PathBuf};

/// Everything that can go wrong, split by who has to act on it.
#[derive(Debug)]
pub enum Error {
    /// The user's input is wrong (scenario, trace, calibration, command line). Exit code 2.
    BadInput(String),
    /// A file could not be read or written. Exit code 1.
    Io { path: PathBuf, source: std::io::Error },
    /// Anything else (an internal invariant, a writer failure). Exit code 1.
    Other(String),
    /// Stopped by Ctrl-C or SIGTERM; what was finished is kept. Exit code 130.
    Interrupted(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad(msg: impl Into<String>) -> Self {
        Error::BadInput(msg.into())
    }
    pub fn other(msg: impl Into<String>) -> Self {
        Error::Other(msg.into())
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    /// Process exit code for this error: 2 for bad input (a missing or unreadable input file
    /// included), 130 when interrupted, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) => 2,
            Error::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::IsADirectory
                        | std::io::ErrorKind::NotADirectory
                ) =>
            {
                2
            }
            Error::Interrupted(_) => 130,
            _ => 1,
        }
    }
    /// Prefix the message with where it happened (a file, a field path).
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        match self {
            Error::BadInput(m) => Error::BadInput(format!("{ctx}: {m}")),
            Error::Other(m) => Error::Other(format!("{ctx}: {m}")),
            // A file named by a field: the message gains the field, the exit code stays.
            io @ Error::Io { .. } => {
                let msg = format!("{ctx}: {io}");
                if io.exit_code() == 2 {
                    Error::BadInput(msg)
                } else {
                    Error::Other(msg)
                }
            }
            stop @ Error::Interrupted(_) => stop,
        }
    }
}

/// A number for a message: as written for everyday magnitudes, in exponent form for huge or
/// tiny ones (so `1e300` is not printed as 301 digits).
pub fn num(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e9).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadInput(m) => write!(f, "{m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Other(m) => write!(f, "{m}"),
            Error::Interrupted(m) => write!(f, "interrupted: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::Other(format!("parquet: {e}"))
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Other(format!("arrow: {e}"))
    }
}
