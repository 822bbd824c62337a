//! Simulated time: integer nanoseconds, never floats.
//!
//! Every timestamp in the simulator and in the result files is a [`Nanos`] counted from the
//! start of the run. Conversions to seconds or milliseconds happen only when printing.

/// Nanoseconds since the start of the run.
pub type Nanos = i64;

pub const NS_PER_US: Nanos = 1_000;
pub const NS_PER_MS: Nanos = 1_000_000;
pub const NS_PER_S: Nanos = 1_000_000_000;

/// Seconds (float) to nanoseconds, rounded to the nearest nanosecond.
/// The longest a run may last in simulated time: 10^17 ns, about 3.2 years. Time is `i64`
/// nanoseconds (up to 292 years); a run past this bound is refused rather than risk
/// arithmetic near the end of the range.
pub const MAX_RUN_NS: Nanos = 100_000_000_000_000_000;

/// The largest value a distribution may be given (tokens, milliseconds).
pub const MAX_DIST_VALUE: f64 = 1e9;

pub fn secs_to_ns(s: f64) -> Nanos {
    (s * NS_PER_S as f64).round() as Nanos
}

/// Nanoseconds to seconds, for display and rates only.
pub fn ns_to_secs(ns: Nanos) -> f64 {
    ns as f64 / NS_PER_S as f64
}

/// Nanoseconds to milliseconds, for display only.
pub fn ns_to_ms(ns: f64) -> f64 {
    ns / NS_PER_MS as f64
}
