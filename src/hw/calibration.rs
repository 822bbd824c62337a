//! Step-time coefficients and the calibration files that override them.
//!
//! Without a calibration the roofline defaults apply: efficiencies in the middle of the
//! ranges hardware.md reports and per-step/per-layer/per-request overheads from published
//! simulator fits. Those defaults are *not measured*, and results say so. A calibration file
//! (YAML, `format: chimera-calibration/v1`) overrides any subset of the coefficients and must
//! say where its numbers came from.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Coefficients of the step-time model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Coefficients {
    /// Model FLOP utilisation of the linear layers (fraction of peak tensor FLOPS).
    pub mfu: f64,
    /// Memory-bandwidth utilisation when streaming weights.
    pub mbu: f64,
    /// FLOP utilisation of attention.
    pub mfu_attention: f64,
    /// Bandwidth utilisation when reading and writing the KV cache.
    pub mbu_attention: f64,
    /// Fixed cost of a step (scheduling, sampling, launch), microseconds.
    pub step_overhead_us: f64,
    /// Fixed cost per decoder layer (kernel launches, norms), microseconds.
    pub per_layer_us: f64,
    /// Cost per request in the batch (input preparation, detokenisation), microseconds.
    pub per_request_us: f64,
    /// Latency of one tensor-parallel all-reduce, microseconds.
    pub allreduce_us: f64,
    /// Bandwidth utilisation of the element-wise kernels (norms, activation, residual adds,
    /// rotary embedding), which read and write activations once each.
    pub mbu_elementwise: f64,
    /// Fixed cost of one matrix-product kernel, microseconds (operator level; fitted).
    pub matmul_fixed_us: f64,
    /// Fixed cost of one element-wise kernel, microseconds (operator level; fitted).
    pub elementwise_fixed_us: f64,
    /// Fixed cost of one attention call, microseconds (operator level; fitted).
    pub attention_fixed_us: f64,
    /// Time from a request's arrival at the server to its arrival at the engine core (HTTP,
    /// tokenisation, the API server to engine hand-off) plus the stream's way back, which a
    /// client sees in TTFT and E2E but no GPU step contains, microseconds. Serving fits only.
    pub frontend_us: f64,
}

impl Default for Coefficients {
    fn default() -> Self {
        Coefficients {
            mfu: 0.5,
            mbu: 0.75,
            mfu_attention: 0.4,
            mbu_attention: 0.75,
            step_overhead_us: 300.0,
            per_layer_us: 20.0,
            per_request_us: 3.0,
            allreduce_us: 10.0,
            mbu_elementwise: 0.75,
            matmul_fixed_us: 4.0,
            elementwise_fixed_us: 2.0,
            attention_fixed_us: 4.0,
            frontend_us: 0.0,
        }
    }
}

impl Coefficients {
    pub fn validate(&self) -> Result<()> {
        let fracs = [
            ("mfu", self.mfu),
            ("mbu", self.mbu),
            ("mfu_attention", self.mfu_attention),
            ("mbu_attention", self.mbu_attention),
            ("mbu_elementwise", self.mbu_elementwise),
        ];
        for (name, v) in fracs {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::bad(format!(
                    "coefficients.{name}: expected a fraction in (0, 1], got {v}"
                )));
            }
        }
        let times = [
            ("step_overhead_us", self.step_overhead_us),
            ("per_layer_us", self.per_layer_us),
            ("per_request_us", self.per_request_us),
            ("allreduce_us", self.allreduce_us),
            ("matmul_fixed_us", self.matmul_fixed_us),
            ("elementwise_fixed_us", self.elementwise_fixed_us),
            ("attention_fixed_us", self.attention_fixed_us),
            ("frontend_us", self.frontend_us),
        ];
        for (name, v) in times {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::bad(format!(
                    "coefficients.{name}: expected a non-negative number, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// Where a calibration's numbers came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ProvenanceKind {
    /// Fitted to measurements (says where, when, with what).
    Measured,
    /// Derived from another calibration and datasheets.
    Derived,
    /// Datasheet figures and published defaults only.
    Datasheet,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub kind: ProvenanceKind,
    /// Free text: the data set, machine or calibration it comes from.
    pub source: String,
    /// Further facts: gpu, driver, cuda, engine, date, commit ...
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitQuality {
    pub median_rel_err: f64,
    pub p90_rel_err: f64,
    pub points: u64,
}

/// The peak figures a calibration's efficiencies are fractions of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Datasheet {
    pub peak_tflops: f64,
    pub bandwidth_gb_s: f64,
    /// Where the two figures come from (a vendor datasheet, or a measurement for a CPU).
    #[serde(default)]
    pub source: String,
}

/// A calibration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub format: String,
    pub gpu: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub tensor_parallel: Option<u32>,
    #[serde(default)]
    pub engine: Option<String>,
    pub coefficients: Coefficients,
    /// Which coefficients were fitted to data (the rest keep their defaults, not measured).
    #[serde(default)]
    pub fitted: Vec<String>,
    /// Peak figures the efficiencies are relative to (absent: the catalogue's datasheet).
    #[serde(default)]
    pub datasheet: Option<Datasheet>,
    pub provenance: Provenance,
    #[serde(default)]
    pub fit: Option<FitQuality>,
}

pub const CALIBRATION_FORMAT: &str = "chimera-calibration/v1";

/// Calibrations shipped inside the binary, usable as `calibration: builtin:<name>` (so that the
/// embedded default scenario can use one wherever it runs).
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "h100-vllm-serving",
        include_str!("../../calibration/h100-vllm-serving.yaml"),
    ),
    (
        "rtx-a6000-vllm-serving",
        include_str!("../../calibration/rtx-a6000-vllm-serving.yaml"),
    ),
    (
        "rtx-a6000-from-a40",
        include_str!("../../calibration/rtx-a6000-from-a40.yaml"),
    ),
    ("a40-vidur", include_str!("../../calibration/a40-vidur.yaml")),
    ("h100-measured", include_str!("../../calibration/h100-measured.yaml")),
    (
        "h100-cudarc-kernels",
        include_str!("../../calibration/h100-cudarc-kernels.yaml"),
    ),
];

impl Calibration {
    pub fn load(path: &Path) -> Result<Calibration> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Calibration::parse(&text, &path.display().to_string())
    }

    /// Parse a calibration's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Calibration> {
        let cal: Calibration =
            crate::scenario::yaml::from_yaml_str(text).map_err(|e| e.context(format!("calibration {origin}")))?;
        if cal.format != CALIBRATION_FORMAT {
            return Err(Error::bad(format!(
                "calibration {origin}: format: expected `{CALIBRATION_FORMAT}`, got `{}`",
                cal.format
            )));
        }
        cal.coefficients
            .validate()
            .map_err(|e| e.context(format!("calibration {origin}")))?;
        Ok(cal)
    }

    /// The built-in calibration `calibration: auto` picks for `gpu` (catalogue name), if any:
    /// the vLLM serving fits where there is serving data, else the operator-profile fit (A40).
    /// Other GPUs get [`Calibration::AUTO_FALLBACK`] carried over by datasheet.
    /// (`h100-cudarc-kernels` is not a candidate: its attention is not fitted.)
    pub fn auto_for(gpu: &str) -> Option<&'static str> {
        match gpu {
            "RTX-A6000" => Some("rtx-a6000-vllm-serving"),
            "A40" => Some("a40-vidur"),
            "H100-SXM" => Some("h100-vllm-serving"),
            _ => None,
        }
    }

    /// The serving fit whose efficiencies and fixed costs `auto` carries to a GPU that has no
    /// calibration of its own (marked derived).
    pub const AUTO_FALLBACK: &'static str = "h100-vllm-serving";

    /// A scenario's `calibration:` value: `builtin:<name>` or a path relative to `base_dir`.
    /// Returns the calibration and where it came from.
    pub fn resolve(spec: &str, base_dir: &Path) -> Result<(Calibration, String)> {
        if let Some(name) = spec.strip_prefix("builtin:") {
            let (n, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                Error::bad(format!(
                    "unknown built-in calibration `{name}` (expected one of {})",
                    BUILTIN
                        .iter()
                        .map(|(n, _)| format!("builtin:{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let origin = format!("builtin:{n} (calibration/{n}.yaml)");
            return Ok((Calibration::parse(text, &origin)?, origin));
        }
        let p = base_dir.join(spec);
        Ok((Calibration::load(&p)?, p.display().to_string()))
    }

    /// Check that this calibration applies to an engine of `model` on `gpu` at degree `tp`.
    pub fn check_applies(&self, origin: &str, gpu: &str, model: &str, tp: u32) -> Result<()> {
        let cat = crate::hw::Catalog::builtin();
        let my_gpu = cat
            .gpu(&self.gpu)
            .map_err(|e| e.context(format!("calibration {origin}: gpu")))?;
        if my_gpu.name != gpu {
            return Err(Error::bad(format!(
                "calibration {} is for GPU {}, but the engine runs on {gpu}",
                origin, my_gpu.name
            )));
        }
        if let Some(m) = &self.model {
            let mine = cat
                .model(m)
                .map_err(|e| e.context(format!("calibration {origin}: model")))?;
            if mine.name != model {
                return Err(Error::bad(format!(
                    "calibration {} is for model {}, but the engine serves {model}",
                    origin, mine.name
                )));
            }
        }
        if let Some(t) = self.tensor_parallel {
            if t != tp {
                return Err(Error::bad(format!(
                    "calibration {} is for tensor_parallel {t}, but the engine uses {tp}",
                    origin
                )));
            }
        }
        Ok(())
    }
}
