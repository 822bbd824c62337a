//! Operator profile files: our `chimera-profile/v1` (JSON) and the public Vidur CSV layout.
//!
//! `chimera-profile/v1`:
//!
//! ```json
//! {"format": "chimera-profile/v1",
//!  "meta": {"device": "NVIDIA H100 80GB HBM3", "gpu": "H100-SXM", "backend": "cudarc ...",
//!           "dtype": "bf16", "date": "...", "details": {"driver": "...", ...},
//!           "peak_tflops": 989.0, "bandwidth_gb_s": 3350.0, "peak_source": "..."},
//!  "shape": {"name": "Llama-2-7B", "hidden": 4096, ...},
//!  "points": [{"op": "attn_pre_proj", "tokens": 512, "batch": 1, "context": 0, "tp": 1,
//!              "median_ms": 0.1, "mean_ms": 0.1, "min_ms": 0.1, "max_ms": 0.1,
//!              "std_ms": 0.0, "reps": 20}, ...]}
//! ```
//!
//! For `attn_decode`, `batch` requests each attend over `context` tokens (`tokens == batch`);
//! for `attn_prefill`, `batch` requests each compute a chunk of `tokens / batch` tokens after
//! `context` tokens already in their cache. `tp` divides the heads and the intermediate size
//! the way tensor parallelism shards them.
//!
//! Vidur CSV (`*.mlp.csv`, microsoft/vidur): one row per (token count, tensor-parallel degree)
//! with `time_stats.<op>.{min,max,mean,median,std}` in milliseconds and the layer shape in
//! `n_head, n_kv_head, n_embd, n_expanded_embd, vocab_size, use_gated_mlp`.

use crate::error::{Error, Result};
use crate::hw::ModelSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const PROFILE_FORMAT: &str = "chimera-profile/v1";

/// The shape of one decoder layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerShape {
    pub name: String,
    pub hidden: u64,
    pub intermediate: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub vocab: u64,
    pub gated: bool,
    /// Bytes per element of the profiled data type (2 for bf16/fp16, 4 for f32).
    pub dtype_bytes: u64,
}

impl LayerShape {
    pub fn of_model(m: &ModelSpec) -> LayerShape {
        LayerShape {
            name: m.name.clone(),
            hidden: m.hidden,
            intermediate: m.intermediate,
            heads: m.heads,
            kv_heads: m.kv_heads,
            head_dim: m.head_dim,
            vocab: m.vocab,
            gated: true,
            dtype_bytes: m.dtype_bytes,
        }
    }
}

/// One timed operator configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpPoint {
    pub op: String,
    pub tokens: u64,
    pub batch: u64,
    pub context: u64,
    pub tp: u32,
    pub median_ms: f64,
    #[serde(default)]
    pub mean_ms: f64,
    #[serde(default)]
    pub min_ms: f64,
    #[serde(default)]
    pub max_ms: f64,
    #[serde(default)]
    pub std_ms: f64,
    #[serde(default)]
    pub reps: u32,
}

impl OpPoint {
    /// A point with no timing yet.
    pub fn new(op: &str, tokens: u64, batch: u64, context: u64, tp: u32) -> OpPoint {
        OpPoint {
            op: op.to_string(),
            tokens,
            batch,
            context,
            tp,
            median_ms: 0.0,
            mean_ms: 0.0,
            min_ms: 0.0,
            max_ms: 0.0,
            std_ms: 0.0,
            reps: 0,
        }
    }

    /// Fill the timing fields from raw samples in milliseconds.
    pub fn with_samples(mut self, samples: &[f64]) -> OpPoint {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        self.reps = v.len() as u32;
        self.median_ms = median_sorted(&v);
        self.mean_ms = v.iter().sum::<f64>() / n;
        self.min_ms = v.first().copied().unwrap_or(0.0);
        self.max_ms = v.last().copied().unwrap_or(0.0);
        self.std_ms = (v.iter().map(|x| (x - self.mean_ms).powi(2)).sum::<f64>() / n).sqrt();
        self
    }
}

pub(crate) fn median_sorted(v: &[f64]) -> f64 {
    crate::stats::quantile_sorted(v, 0.5)
}

/// Where and how a profile was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileMeta {
    /// The device as its driver names it ("NVIDIA H100 80GB HBM3", "cpu: AMD EPYC ...").
    pub device: String,
    /// Catalogue GPU name, or "cpu".
    pub gpu: String,
    /// What ran the operators (library and version).
    pub backend: String,
    pub dtype: String,
    /// When (UTC, RFC 3339) or the data set's commit for imported profiles.
    pub date: String,
    /// Peak figures the efficiencies are fitted against.
    pub peak_tflops: f64,
    pub bandwidth_gb_s: f64,
    pub peak_source: String,
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

/// A profile: one layer shape, its points and where they were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub format: String,
    pub meta: ProfileMeta,
    pub shape: LayerShape,
    pub points: Vec<OpPoint>,
}

impl Profile {
    /// Read a profile in either format (by extension: `.csv` is Vidur's layout).
    pub fn load(path: &Path) -> Result<Profile> {
        if path.extension().is_some_and(|e| e == "csv") {
            return load_vidur_csv(path);
        }
        let text = crate::input::read_text(&path)?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let p: Profile = serde_path_to_error::deserialize(de)
            .map_err(|e| Error::bad(format!("profile {}: at `{}`: {}", path.display(), e.path(), e.inner())))?;
        if p.format != PROFILE_FORMAT {
            return Err(Error::bad(format!(
                "profile {}: format: expected `{PROFILE_FORMAT}`, got `{}`",
                path.display(),
                p.format
            )));
        }
        p.check()
            .map_err(|e| Error::bad(format!("profile {}: {e}", path.display())))?;
        Ok(p)
    }

    /// Check a profile whole before a fit reads it: a layer shape with sizes a model can have,
    /// points with known operators, counts of at least one and times that are positive and
    /// finite (a fit on `inf` or `1e308` medians or on zero sizes would write nonsense).
    pub fn check(&self) -> std::result::Result<(), String> {
        let s = &self.shape;
        let sizes = [
            ("hidden", s.hidden),
            ("intermediate", s.intermediate),
            ("heads", s.heads),
            ("kv_heads", s.kv_heads),
            ("head_dim", s.head_dim),
            ("vocab", s.vocab),
        ];
        for (name, v) in sizes {
            if !(1..=10_000_000).contains(&v) {
                return Err(format!("shape.{name}: expected 1 to 1e7, got {v}"));
            }
        }
        if s.kv_heads > s.heads {
            return Err(format!(
                "shape.kv_heads: {} is more than the {} attention heads",
                s.kv_heads, s.heads
            ));
        }
        if !(1..=8).contains(&s.dtype_bytes) {
            return Err(format!("shape.dtype_bytes: expected 1 to 8, got {}", s.dtype_bytes));
        }
        for (name, v) in [
            ("peak_tflops", self.meta.peak_tflops),
            ("bandwidth_gb_s", self.meta.bandwidth_gb_s),
        ] {
            if !(v.is_finite() && (0.0..1e9).contains(&v)) {
                return Err(format!(
                    "meta.{name}: expected 0 (unknown) to 1e9, got {}",
                    crate::error::num(v)
                ));
            }
        }
        for (i, pt) in self.points.iter().enumerate() {
            if super::op_class(&pt.op).is_none() {
                let names: Vec<&str> = super::OPS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "points[{i}].op: unknown operator `{}` (expected one of {})",
                    pt.op,
                    names.join(", ")
                ));
            }
            for (name, v) in [("tokens", pt.tokens), ("batch", pt.batch)] {
                if !(1..=100_000_000).contains(&v) {
                    return Err(format!("points[{i}].{name}: expected 1 to 1e8, got {v}"));
                }
            }
            if pt.context > 100_000_000 {
                return Err(format!("points[{i}].context: expected at most 1e8, got {}", pt.context));
            }
            if !(1..=64).contains(&pt.tp) {
                return Err(format!("points[{i}].tp: expected 1 to 64, got {}", pt.tp));
            }
            if !(pt.median_ms > 0.0 && pt.median_ms < 1e7) {
                return Err(format!(
                    "points[{i}].median_ms: expected a positive time below 1e7 ms, got {}",
                    pt.median_ms
                ));
            }
            for (name, v) in [
                ("mean_ms", pt.mean_ms),
                ("min_ms", pt.min_ms),
                ("max_ms", pt.max_ms),
                ("std_ms", pt.std_ms),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!(
                        "points[{i}].{name}: expected a non-negative number, got {}",
                        crate::error::num(v)
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::other(e.to_string()))?;
        crate::output::write_atomic(path, text.as_bytes())
    }
}

/// The per-layer operators (Vidur's names, in its order); this reader takes them from an
/// `*.mlp.csv` file and the profiler times them at every token count.
pub const LAYER_OPS: &[&str] = &[
    "emb",
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
];

/// Read a Vidur `*.mlp.csv` profile. The GPU is taken from the parent folder's name
/// (`a40/`, `a100/`) when it is in the catalogue.
pub fn load_vidur_csv(path: &Path) -> Result<Profile> {
    let mut csv = crate::csvfile::CsvFile::open(path).map_err(|e| e.context("profile"))?;
    let col = |csv: &crate::csvfile::CsvFile, name: &str| -> Result<usize> {
        csv.col(name).map_err(|_| {
            Error::bad(format!(
                "profile {}: line 1: missing column `{name}` (not a Vidur *.mlp.csv operator profile?)",
                path.display()
            ))
        })
    };
    let shape_cols = [
        col(&csv, "n_head")?,
        col(&csv, "n_kv_head")?,
        col(&csv, "n_embd")?,
        col(&csv, "n_expanded_embd")?,
        col(&csv, "vocab_size")?,
        col(&csv, "use_gated_mlp")?,
        col(&csv, "num_tokens")?,
        col(&csv, "num_tensor_parallel_workers")?,
    ];
    let mut op_cols = Vec::new();
    for op in LAYER_OPS {
        let stats = ["median", "mean", "min", "max", "std"].map(|s| col(&csv, &format!("time_stats.{op}.{s}")));
        if stats.iter().all(|s| s.is_ok()) {
            op_cols.push((*op, stats.map(|s| s.unwrap())));
        }
    }
    let mut shape: Option<LayerShape> = None;
    let mut points = Vec::new();
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().trim_end_matches(".mlp.csv").to_string())
        .unwrap_or_default();
    while csv.next_record().map_err(|e| e.context("profile"))? {
        let int = |c: usize| -> Result<u64> { csv.parse::<u64>(c, "a whole number").map_err(|e| e.context("profile")) };
        let num = |c: usize| -> Result<f64> { csv.parse::<f64>(c, "a number").map_err(|e| e.context("profile")) };
        let (heads, kv_heads, hidden) = (int(shape_cols[0])?, int(shape_cols[1])?, int(shape_cols[2])?);
        let s = LayerShape {
            name: name.clone(),
            hidden,
            intermediate: int(shape_cols[3])?,
            heads,
            kv_heads,
            head_dim: hidden / heads.max(1),
            vocab: int(shape_cols[4])?,
            gated: csv.get(shape_cols[5]).eq_ignore_ascii_case("true"),
            dtype_bytes: 2,
        };
        match &shape {
            None => shape = Some(s),
            Some(old) if *old != s => {
                return Err(Error::bad(format!(
                    "profile {}: line {}: layer shape changes within the file",
                    path.display(),
                    csv.line()
                )))
            }
            _ => {}
        }
        let tokens = int(shape_cols[6])?;
        let tp = u32::try_from(int(shape_cols[7])?).unwrap_or(u32::MAX);
        for (op, [med, mean, min, max, std]) in &op_cols {
            let median_ms = num(*med)?;
            if median_ms.is_nan() || median_ms <= 0.0 {
                continue; // an operator Vidur did not time at this size
            }
            if !(median_ms < 1e7) || tokens == 0 {
                return Err(Error::bad(format!(
                    "profile {}: line {}: time_stats.{op}.median = {median_ms} ms at num_tokens = {tokens}: expected a time below 1e7 ms at a token count of at least 1",
                    path.display(),
                    csv.line()
                )));
            }
            points.push(OpPoint {
                op: op.to_string(),
                tokens,
                batch: 1,
                context: 0,
                tp,
                median_ms,
                mean_ms: num(*mean)?,
                min_ms: num(*min)?,
                max_ms: num(*max)?,
                std_ms: num(*std)?,
                reps: 0,
            });
        }
    }
    let shape = shape.ok_or_else(|| Error::bad(format!("profile {}: no rows", path.display())))?;
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let cat = crate::hw::Catalog::builtin();
    let gpu = cat.gpu(&folder).ok();
    let meta = ProfileMeta {
        device: gpu.map(|g| g.name.clone()).unwrap_or_else(|| folder.clone()),
        gpu: gpu.map(|g| g.name.clone()).unwrap_or_default(),
        backend: "Vidur operator profiler (PyTorch), fp16".into(),
        dtype: "fp16".into(),
        date: "microsoft/vidur @ 7d47513 (as shipped in ../shared/data/gpu-profiles)".into(),
        peak_tflops: gpu.map(|g| g.fp16_tflops).unwrap_or(0.0),
        bandwidth_gb_s: gpu.map(|g| g.bandwidth_gb_s).unwrap_or(0.0),
        peak_source: gpu.map(|g| g.provenance.clone()).unwrap_or_default(),
        details: BTreeMap::from([("file".to_string(), path.display().to_string())]),
    };
    let p = Profile {
        format: PROFILE_FORMAT.into(),
        meta,
        shape,
        points,
    };
    // Rows are checked after reading so that the message names the row.
    if let Err(e) = p.check() {
        let row = e
            .strip_prefix("points[")
            .and_then(|r| r.split(']').next())
            .and_then(|k| k.parse::<usize>().ok());
        let where_ = match row {
            Some(k) => format!(
                " (operator point {k}: {} at {} tokens)",
                p.points[k].op, p.points[k].tokens
            ),
            None => String::new(),
        };
        return Err(Error::bad(format!("profile {}: {e}{where_}", path.display())));
    }
    Ok(p)
}
