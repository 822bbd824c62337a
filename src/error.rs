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

/// The readable head of a library's error about a damaged file: parsers of binary formats
/// append their internal state (`RangeOutOfBounds { range: .., error_trace: .. }`), which
/// tells a user nothing; that part is cut, and the rest kept to 200 characters.
pub fn short_cause(e: &dyn fmt::Display) -> String {
    let text = e.to_string();
    let cut = [" {", " [", "ErrorTrace", "\n"]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(text.len());
    let mut head: String = text[..cut].chars().take(200).collect();
    if head.len() < text.len() {
        head.push_str(" ...");
    }
    head
}

/// Say a parser's message in the user's words, not the program's: serde names Rust types
/// (`expected struct EngineSpec`, `expected u64`) and YAML options (`DuplicateKeyPolicy`)
/// that mean nothing to someone writing a scenario.
pub fn plain_words(msg: &str) -> String {
    // A word naming a Rust type, and what to say instead.
    const NAMED: &[(&str, &str)] = &[
        (
            "expected internally tagged enum ",
            "expected a map with its kind field (see `chimera scenario reference`)",
        ),
        ("expected struct variant ", "expected a map of fields"),
        ("expected tuple struct ", "expected a list"),
        ("expected newtype struct ", "expected a value"),
        ("expected struct ", "expected a map of fields"),
        ("expected enum ", "expected one of the allowed names"),
    ];
    const PRIMITIVE: &[(&str, &str)] = &[
        ("expected u64", "expected a whole number from 0 to 18446744073709551615"),
        (
            "expected usize",
            "expected a whole number from 0 to 18446744073709551615",
        ),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number from -2147483648 to 2147483647"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected unit", "expected nothing (null)"),
        ("expected a sequence", "expected a list"),
        ("invalid type: sequence", "invalid type: list"),
        ("invalid type: floating point", "invalid type: number"),
        ("invalid value: floating point", "invalid value: number"),
        ("invalid type: integer", "invalid type: number"),
        ("invalid value: integer", "invalid value: number"),
        ("invalid type: unit value", "invalid type: null"),
        (
            ", set DuplicateKeyPolicy in Options if acceptable",
            " (each key may appear once)",
        ),
    ];
    let mut out = msg.to_string();
    for (from, to) in NAMED {
        while let Some(i) = out.find(from) {
            let rest = &out[i + from.len()..];
            let name_len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.replace_range(i..i + from.len() + name_len, to);
        }
    }
    for (from, to) in PRIMITIVE {
        // Whole words only: `expected u32` but not `expected u320`.
        let mut start = 0;
        while let Some(k) = out[start..].find(from) {
            let i = start + k;
            let end = i + from.len();
            if out[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_') {
                start = end;
                continue;
            }
            out.replace_range(i..end, to);
            start = i + to.len();
        }
    }
    out
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadInput(m) => write!(f, "{}", plain_words(m)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_messages_are_said_in_plain_words() {
        let cases = [
            ("cluster.engines[0]: invalid type: integer `3`, expected struct EngineSpec", "cluster.engines[0]: invalid type: number `3`, expected a map of fields"),
            ("workload.workflows: invalid value: integer `-1`, expected u64", "workload.workflows: invalid value: number `-1`, expected a whole number from 0 to 18446744073709551615"),
            ("seed: invalid type: floating point `1.5`, expected u64", "seed: invalid type: number `1.5`, expected a whole number from 0 to 18446744073709551615"),
            ("tp: invalid value: integer `99999999999`, expected u32", "tp: invalid value: number `99999999999`, expected a whole number from 0 to 4294967295"),
            ("policy[0]: invalid type: integer `1`, expected internally tagged enum RoutingSpec", "policy[0]: invalid type: number `1`, expected a map with its kind field (see `chimera scenario reference`)"),
            ("gpu: invalid type: sequence, expected a string", "gpu: invalid type: list, expected a string"),
            ("duplicate mapping key: seed, set DuplicateKeyPolicy in Options if acceptable", "duplicate mapping key: seed (each key may appear once)"),
            ("x: expected u320 things", "x: expected u320 things"),
        ];
        for (from, to) in cases {
            assert_eq!(plain_words(from), to);
        }
    }
}
