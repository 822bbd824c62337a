//! Step-time coefficients and the calibration files that override them.
//!
//! Without a calibration the roofline defaults apply: efficiencies in the middle of the
//! ranges hardware.md reports and per-step/per-layer/per-request overheads from published
//! simulator fits. Those defaults are *not measured*, and results say so. A calibration file
//! (YAML, `format: chimera-calibration/v1`) gives every coefficient (only `frontend_us`, which
//! only serving fits have, may be left out: it is then 0), lists in `fitted` which were fitted,
//! and says where its numbers came from. A coefficient left out is refused, never silently
//! replaced by a default: writing the default value down is how a file keeps it.

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
    /// Fixed GPU time of one decoder layer's kernels in every step, CUDA graph or not (each
    /// kernel's ramp and tail, which a graph does not remove), microseconds. Serving fits only.
    pub layer_us: f64,
    /// How well a kernel group's compute and memory times overlap: they combine as
    /// `(c^p + m^p)^(1/p)` with `p = 1 / (1 - overlap)`, so 1 is the ideal roofline (`max`)
    /// and 0 runs them one after the other (sum). Real kernels lose most near the ridge point
    /// and little far from it. Serving fits only.
    pub overlap: f64,
    /// Fixed GPU time per routed expert a MoE layer runs in a step (each expert's matrix
    /// products fill and drain their pipelines however few tokens it gets), microseconds.
    /// Serving fits only.
    pub expert_us: f64,
    /// FLOP utilisation of a MoE model's routed-expert matrix products (grouped kernels over
    /// few tokens per expert reach less of the peak than dense ones). Serving fits only.
    pub mfu_moe: f64,
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
            layer_us: 0.0,
            overlap: 1.0,
            expert_us: 0.0,
            mfu_moe: 0.5,
        }
    }
}

impl Coefficients {
    /// Every coefficient's name, as written in a calibration file.
    pub const NAMES: &'static [&'static str] = &[
        "mfu",
        "mbu",
        "mfu_attention",
        "mbu_attention",
        "step_overhead_us",
        "per_layer_us",
        "per_request_us",
        "allreduce_us",
        "mbu_elementwise",
        "matmul_fixed_us",
        "elementwise_fixed_us",
        "attention_fixed_us",
        "frontend_us",
        "layer_us",
        "overlap",
        "expert_us",
        "mfu_moe",
    ];
    /// Coefficients a calibration may leave out (serving fits only; 0 otherwise).
    pub const OPTIONAL: &'static [&'static str] = &["frontend_us", "layer_us", "overlap", "expert_us", "mfu_moe"];

    /// A coefficient by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        serde_json::to_value(self).ok()?.get(name)?.as_f64()
    }

    pub fn validate(&self) -> Result<()> {
        let fracs = [
            ("mfu", self.mfu),
            ("mbu", self.mbu),
            ("mfu_attention", self.mfu_attention),
            ("mbu_attention", self.mbu_attention),
            ("mbu_elementwise", self.mbu_elementwise),
            ("overlap", self.overlap),
            ("mfu_moe", self.mfu_moe),
        ];
        for (name, v) in fracs {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::bad(format!(
                    "coefficients.{name}: expected a fraction in (0, 1], got {}",
                    crate::error::num(v)
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
            ("layer_us", self.layer_us),
            ("expert_us", self.expert_us),
        ];
        for (name, v) in times {
            if !(v >= 0.0 && v < 1e9) {
                return Err(Error::bad(format!(
                    "coefficients.{name}: expected 0 to 1e9 microseconds, got {}",
                    crate::error::num(v)
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
    /// Serving fits: the median and largest absolute E2E p50 error on stages of models the
    /// fit did not see (each model held out in turn): what to expect on an unmeasured model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_one_model_out: Option<HeldOutError>,
    /// The same with each GPU held out in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_one_gpu_out: Option<HeldOutError>,
}

/// Cross-validated error of a serving fit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOutError {
    pub median_abs_err_e2e_p50: f64,
    pub max_abs_err_e2e_p50: f64,
    pub stages: u64,
}

impl FitQuality {
    /// What to expect of this calibration's E2E p50 on a configuration it was not fitted to,
    /// in words (None: no cross-validation recorded).
    pub fn expected_error(&self) -> Option<String> {
        let part = |name: &str, h: &Option<HeldOutError>| {
            h.map(|h| {
                format!(
                    "{name} {:.0} % median, {:.0} % max",
                    100.0 * h.median_abs_err_e2e_p50,
                    100.0 * h.max_abs_err_e2e_p50
                )
            })
        };
        let parts: Vec<String> = [
            part("unseen model", &self.leave_one_model_out),
            part("unseen GPU", &self.leave_one_gpu_out),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| format!("E2E p50 error: {} (cross-validated)", parts.join("; ")))
    }
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
    ("vllm-serving", include_str!("../../calibration/vllm-serving.yaml")),
    (
        "h100-sxm-vllm-serving",
        include_str!("../../calibration/h100-sxm-vllm-serving.yaml"),
    ),
    (
        "rtx-pro-6000-vllm-serving",
        include_str!("../../calibration/rtx-pro-6000-vllm-serving.yaml"),
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
        let text = crate::input::read_text(&path)?;
        Calibration::parse(&text, &path.display().to_string())
    }

    /// Parse a calibration's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Calibration> {
        let tree = crate::scenario::yaml::parse_tree(text).map_err(|e| e.context(format!("calibration {origin}")))?;
        if let Some(c) = tree.get("coefficients").and_then(|c| c.as_object()) {
            let missing: Vec<&str> = Coefficients::NAMES
                .iter()
                .copied()
                .filter(|n| !Coefficients::OPTIONAL.contains(n) && !c.contains_key(*n))
                .collect();
            if !missing.is_empty() {
                return Err(Error::bad(format!(
                    "calibration {origin}: coefficients.{}: missing; a calibration gives every coefficient \
                     (write the default, e.g. `mfu: {}`, to keep one), missing: {}",
                    missing[0],
                    Coefficients::default().get(missing[0]).unwrap_or_default(),
                    missing.join(", ")
                )));
            }
        }
        let cal: Calibration =
            crate::scenario::yaml::from_tree(tree).map_err(|e| e.context(format!("calibration {origin}")))?;
        if cal.format != CALIBRATION_FORMAT {
            return Err(Error::bad(format!(
                "calibration {origin}: format: expected `{CALIBRATION_FORMAT}`, got `{}`",
                cal.format
            )));
        }
        cal.coefficients
            .validate()
            .map_err(|e| e.context(format!("calibration {origin}")))?;
        cal.check_fields()
            .map_err(|e| e.context(format!("calibration {origin}")))?;
        Ok(cal)
    }

    /// Everything but the coefficients: names, degrees and figures a file could get wrong.
    fn check_fields(&self) -> Result<()> {
        if self.gpu.trim().is_empty() {
            return Err(Error::bad("gpu: empty; expected a GPU name (see `chimera gpus`)"));
        }
        if let Some(tp) = self.tensor_parallel {
            if !(1..=64).contains(&tp) {
                return Err(Error::bad(format!("tensor_parallel: expected 1 to 64, got {tp}")));
            }
        }
        for (i, f) in self.fitted.iter().enumerate() {
            if !Coefficients::NAMES.contains(&f.as_str()) {
                return Err(Error::bad(format!(
                    "fitted[{i}]: unknown coefficient `{f}` (expected one of {})",
                    Coefficients::NAMES.join(", ")
                )));
            }
            if self.fitted[..i].contains(f) {
                return Err(Error::bad(format!("fitted[{i}]: `{f}` listed twice")));
            }
        }
        if let Some(d) = &self.datasheet {
            for (name, v) in [("peak_tflops", d.peak_tflops), ("bandwidth_gb_s", d.bandwidth_gb_s)] {
                if !(v.is_finite() && v > 0.0 && v < 1e9) {
                    return Err(Error::bad(format!(
                        "datasheet.{name}: expected a positive number below 1e9, got {}",
                        crate::error::num(v)
                    )));
                }
            }
        }
        if let Some(q) = &self.fit {
            for (name, v) in [("median_rel_err", q.median_rel_err), ("p90_rel_err", q.p90_rel_err)] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(Error::bad(format!(
                        "fit.{name}: expected a non-negative number, got {}",
                        crate::error::num(v)
                    )));
                }
            }
        }
        Ok(())
    }

    /// The built-in calibration `calibration: auto` picks for `gpu` (catalogue name) when the
    /// GPU has serving measurements of its own that refine the global fit's efficiencies.
    /// Every other GPU gets [`Calibration::AUTO_FALLBACK`], the one global serving fit, on its
    /// own datasheet figures (marked derived where that GPU was not among those measured).
    pub fn auto_for(gpu: &str) -> Option<&'static str> {
        match gpu {
            "RTX-A6000" => Some("rtx-a6000-vllm-serving"),
            "H100-SXM" => Some("h100-sxm-vllm-serving"),
            "RTX-PRO-6000" => Some("rtx-pro-6000-vllm-serving"),
            _ => None,
        }
    }

    /// The global serving fit (`gpu: any`): one coefficient set for every GPU.
    pub const AUTO_FALLBACK: &'static str = "vllm-serving";

    /// The GPUs a fit over several GPUs was measured on (its provenance's `gpus`).
    pub fn measured_gpus(&self) -> Vec<String> {
        self.provenance
            .details
            .get("gpus")
            .map(|g| {
                g.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

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
        if !p.exists() {
            return Err(Error::bad(format!(
                "{}: no such file (expected `auto`, `builtin:<name>` or the path of a calibration file)",
                p.display()
            )));
        }
        Ok((Calibration::load(&p)?, p.display().to_string()))
    }

    /// A fit over several GPUs (`gpu: any`): its efficiencies are fractions of whichever GPU's
    /// datasheet figures the engine runs on.
    pub fn for_any_gpu(&self) -> bool {
        self.gpu == crate::fidelity::fit::ANY_GPU
    }

    /// Check that this calibration applies to an engine of `model` on `gpu` at degree `tp`.
    pub fn check_applies(&self, origin: &str, gpu: &str, model: &str, tp: u32) -> Result<()> {
        let cat = crate::hw::Catalog::builtin();
        if !self.for_any_gpu() {
            let my_gpu = cat
                .gpu(&self.gpu)
                .map_err(|e| e.context(format!("calibration {origin}: gpu")))?;
            if my_gpu.name != gpu {
                return Err(Error::bad(format!(
                    "calibration {} is for GPU {}, but the engine runs on {gpu}",
                    origin, my_gpu.name
                )));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "format: chimera-calibration/v1
gpu: H100-SXM
coefficients: {mfu: 0.5, mbu: 0.75, mfu_attention: 0.4, mbu_attention: 0.75, step_overhead_us: 300,
  per_layer_us: 20, per_request_us: 3, allreduce_us: 10, mbu_elementwise: 0.75, matmul_fixed_us: 4,
  elementwise_fixed_us: 2, attention_fixed_us: 4}
fitted: [mfu]
provenance: {kind: measured, source: test}
";

    #[test]
    fn coefficient_names_are_the_file_keys() {
        let v = serde_json::to_value(Coefficients::default()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut names = Coefficients::NAMES.to_vec();
        keys.sort();
        names.sort();
        assert_eq!(keys, names);
        assert_eq!(Coefficients::default().get("mfu"), Some(0.5));
    }

    #[test]
    fn every_shipped_calibration_parses() {
        for (name, text) in BUILTIN {
            Calibration::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        Calibration::parse(FULL, "full").unwrap();
    }

    #[test]
    fn a_broken_calibration_is_refused_naming_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("mfu: 0.5, ", "", "coefficients.mfu: missing"),
            ("mfu: 0.5", "mfu: .nan", "non-finite float"),
            (
                "step_overhead_us: 300",
                "step_overhead_us: 1e308",
                "coefficients.step_overhead_us",
            ),
            ("step_overhead_us: 300", "step_overhead_us: .inf", "non-finite float"),
            ("per_layer_us: 20", "per_layer_us: -1", "coefficients.per_layer_us"),
            ("per_layer_us: 20", "per_layer_us: 20, turbo: 1", "turbo"),
            (
                "fitted: [mfu]",
                "fitted: [mfu, speed]",
                "fitted[1]: unknown coefficient `speed`",
            ),
            ("fitted: [mfu]", "fitted: [mfu, mfu]", "fitted[1]"),
            ("gpu: H100-SXM", "gpu: ''", "gpu: empty"),
            ("gpu: H100-SXM", "gpu: H100-SXM\ntensor_parallel: 0", "tensor_parallel"),
            (
                "fitted: [mfu]",
                "fitted: [mfu]\ndatasheet: {peak_tflops: 0, bandwidth_gb_s: 3350}",
                "datasheet.peak_tflops",
            ),
            (
                "fitted: [mfu]",
                "fitted: [mfu]\nfit: {median_rel_err: -1, p90_rel_err: 0.1, points: 3}",
                "fit.median_rel_err",
            ),
            (
                "format: chimera-calibration/v1",
                "format: chimera-calibration/v9",
                "format",
            ),
            ("provenance: {kind: measured, source: test}", "", "provenance"),
        ];
        for (from, to, want) in cases {
            let text = FULL.replacen(from, &to.replace("\\n", "\n"), 1);
            let e = Calibration::parse(&text, "c.yaml").expect_err(want);
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert!(msg.contains("c.yaml") && msg.contains(want), "{want}: {msg}");
        }
    }
}
