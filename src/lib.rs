//! chimera: simulate, explore, calibrate and replay multi-agent LLM serving on heterogeneous
//! GPU clusters. See ARCHITECTURE.md for the code map and the invariants.

pub mod analysis;
pub mod calib;
pub mod cli;
pub mod csvfile;
#[cfg(feature = "live")]
pub mod emulate;
#[cfg(feature = "encoder")]
pub mod encoder;
pub mod engine;
pub mod error;
pub mod factory;
pub mod fidelity;
pub mod hw;
pub mod input;
pub mod interrupt;
pub mod output;
pub mod policy;
pub mod predictor;
#[cfg(feature = "live")]
pub mod replay;
pub mod rng;
pub mod router;
pub mod run;
pub mod runtime;
pub mod scenario;
pub mod sim;
pub mod stats;
pub mod sweep;
pub mod time;
pub mod trace;
pub mod workload;

pub use error::{Error, Result};
