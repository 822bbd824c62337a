//! Hardware: the GPU and model catalogue, KV sizing and the step-time model.
//!
//! The catalogue is data (`catalog/*.yaml`, embedded at build time) with provenance per entry.
//! This module computes from it; it never reads the clock and never holds engine state.

pub mod calibration;
pub mod catalog;
pub mod steptime;

pub use calibration::{Calibration, Coefficients};
pub use catalog::{Catalog, GpuSpec, ModelSpec};
pub use steptime::{StepModel, StepShape, StepTimeModel};
