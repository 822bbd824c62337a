//! Fit step-time coefficients to operator profiles, check a calibration against measured
//! points, and derive a calibration for a GPU without measurements.
//!
//! Each operator class is fitted on its own (the classes share no coefficient): the
//! efficiencies pass through a logistic map so that they stay in (0, 1), fixed costs through
//! an exponential so that they stay positive, and a Nelder-Mead search from several starts
//! minimises the mean squared log ratio of predicted to measured time (relative error, so that
//! a 4-token point weighs as much as a 4,096-token one). No randomness: the same profiles give
//! the same calibration.

use super::format::{median_sorted, Profile};
use super::{predict, work, OpClass, Peaks, Work};
use crate::error::{Error, Result};
use crate::hw::calibration::{
    Calibration, Coefficients, Datasheet, FitQuality, Provenance, ProvenanceKind, CALIBRATION_FORMAT,
};
use crate::hw::Catalog;
use serde::Serialize;
use std::collections::BTreeMap;

/// Options for [`fit`].
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Catalogue GPU the profiles were measured on (default: from the profiles).
    pub gpu: Option<String>,
    /// Restrict the calibration to one catalogue model.
    pub model: Option<String>,
    /// The engine the calibration is meant for (free text, e.g. "vLLM 0.11.0").
    pub engine: Option<String>,
    /// Only these operator classes (default: every class with points).
    pub classes: Option<Vec<OpClass>>,
    /// Start from this calibration (same GPU) and refit only the classes with points: e.g.
    /// attention from a fused-kernel profile on top of matrix products from another.
    pub base: Option<(Calibration, String)>,
}

/// The peaks a profile's efficiencies refer to.
fn profile_peaks(p: &Profile, gpu_override: Option<&str>) -> Result<(String, Datasheet)> {
    let cat = Catalog::builtin();
    let name = gpu_override.unwrap_or(&p.meta.gpu);
    if let Ok(g) = cat.gpu(name) {
        return Ok((
            g.name.clone(),
            Datasheet {
                peak_tflops: g.fp16_tflops,
                bandwidth_gb_s: g.bandwidth_gb_s,
                source: g.provenance.clone(),
            },
        ));
    }
    if p.meta.peak_tflops > 0.0 && p.meta.bandwidth_gb_s > 0.0 {
        let label = if name.is_empty() {
            p.meta.device.clone()
        } else {
            name.to_string()
        };
        return Ok((
            label,
            Datasheet {
                peak_tflops: p.meta.peak_tflops,
                bandwidth_gb_s: p.meta.bandwidth_gb_s,
                source: p.meta.peak_source.clone(),
            },
        ));
    }
    Err(Error::bad(format!(
        "profile of {} on `{}`: the GPU is not in the catalogue ({}) and the profile gives no peak figures; pass --gpu",
        p.shape.name,
        p.meta.device,
        cat.gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
    )))
}

fn peaks_of(d: &Datasheet) -> Peaks {
    Peaks {
        flops: d.peak_tflops * 1e12,
        bytes_per_s: d.bandwidth_gb_s * 1e9,
    }
}

/// The datasheet a calibration's efficiencies refer to.
pub fn calibration_datasheet(cal: &Calibration) -> Result<Datasheet> {
    if let Some(d) = &cal.datasheet {
        return Ok(d.clone());
    }
    let g = Catalog::builtin().gpu(&cal.gpu)?;
    Ok(Datasheet {
        peak_tflops: g.fp16_tflops,
        bandwidth_gb_s: g.bandwidth_gb_s,
        source: g.provenance.clone(),
    })
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Minimise `f` from `x0` with the Nelder-Mead simplex method.
pub fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, x0: &[f64], step: f64, iters: usize) -> (Vec<f64>, f64) {
    let n = x0.len();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((x0.to_vec(), f(x0)));
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += step;
        let v = f(&x);
        simplex.push((x, v));
    }
    for _ in 0..iters {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if (simplex[n].1 - simplex[0].1).abs() < 1e-12 {
            break;
        }
        let centroid: Vec<f64> = (0..n)
            .map(|j| simplex[..n].iter().map(|s| s.0[j]).sum::<f64>() / n as f64)
            .collect();
        let along = |t: f64| -> Vec<f64> {
            (0..n)
                .map(|j| centroid[j] + t * (simplex[n].0[j] - centroid[j]))
                .collect()
        };
        let xr = along(-1.0);
        let fr = f(&xr);
        if fr < simplex[0].1 {
            let xe = along(-2.0);
            let fe = f(&xe);
            simplex[n] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[n - 1].1 {
            simplex[n] = (xr, fr);
        } else {
            let xc = if fr < simplex[n].1 { along(-0.5) } else { along(0.5) };
            let fc = f(&xc);
            if fc < simplex[n].1.min(fr) {
                simplex[n] = (xc, fc);
            } else {
                let best = simplex[0].0.clone();
                for s in simplex.iter_mut().skip(1) {
                    for (x, b) in s.0.iter_mut().zip(&best) {
                        *x = b + 0.5 * (*x - b);
                    }
                    s.1 = f(&s.0);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex.swap_remove(0)
}

/// Coefficients with one class's parameters set from an unconstrained vector.
fn apply(class: OpClass, base: &Coefficients, x: &[f64]) -> Coefficients {
    let mut c = *base;
    match class {
        OpClass::Matmul => {
            c.mfu = sigmoid(x[0]);
            c.mbu = sigmoid(x[1]);
            c.matmul_fixed_us = x[2].exp();
        }
        OpClass::Elementwise => {
            c.mbu_elementwise = sigmoid(x[0]);
            c.elementwise_fixed_us = x[1].exp();
        }
        OpClass::Attention => {
            c.mfu_attention = sigmoid(x[0]);
            c.mbu_attention = sigmoid(x[1]);
            c.attention_fixed_us = x[2].exp();
        }
    }
    c
}

fn fitted_names(class: OpClass) -> &'static [&'static str] {
    match class {
        OpClass::Matmul => &["mfu", "mbu", "matmul_fixed_us"],
        OpClass::Elementwise => &["mbu_elementwise", "elementwise_fixed_us"],
        OpClass::Attention => &["mfu_attention", "mbu_attention", "attention_fixed_us"],
    }
}

fn log_loss(c: &Coefficients, peaks: Peaks, pts: &[(Work, f64)]) -> f64 {
    pts.iter()
        .map(|(w, t)| (predict(c, peaks, w) / t).ln().powi(2))
        .sum::<f64>()
        / pts.len().max(1) as f64
}

fn fit_class(class: OpClass, base: &Coefficients, peaks: Peaks, pts: &[(Work, f64)]) -> Coefficients {
    let f = |x: &[f64]| log_loss(&apply(class, base, x), peaks, pts);
    let fr = [0.2, 0.5, 0.8];
    let us = [1.0, 5.0, 20.0];
    let mut starts: Vec<Vec<f64>> = Vec::new();
    match class {
        OpClass::Elementwise => {
            for a in fr {
                for t in us {
                    starts.push(vec![logit(a), f64::ln(t)]);
                }
            }
        }
        _ => {
            for a in fr {
                for b in fr {
                    for t in us {
                        starts.push(vec![logit(a), logit(b), f64::ln(t)]);
                    }
                }
            }
        }
    }
    let mut best: Option<(Vec<f64>, f64)> = None;
    for s in starts {
        let (x, _) = nelder_mead(&f, &s, 0.5, 600);
        let (x, v) = nelder_mead(&f, &x, 0.1, 600);
        if best.as_ref().is_none_or(|b| v < b.1) {
            best = Some((x, v));
        }
    }
    apply(class, base, &best.expect("at least one start").0)
}

/// Relative-error statistics of a set of predictions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrStats {
    pub points: u64,
    pub median_rel_err: f64,
    pub p90_rel_err: f64,
    /// Median of predicted / measured - 1 (positive: the calibration predicts too slow).
    pub median_bias: f64,
}

impl ErrStats {
    pub fn of(ratios: &[f64]) -> ErrStats {
        let mut abs: Vec<f64> = ratios.iter().map(|r| (r - 1.0).abs()).collect();
        abs.sort_by(f64::total_cmp);
        let mut signed: Vec<f64> = ratios.iter().map(|r| r - 1.0).collect();
        signed.sort_by(f64::total_cmp);
        let p90 = if abs.is_empty() {
            0.0
        } else {
            abs[((abs.len() as f64 * 0.9).ceil() as usize).clamp(1, abs.len()) - 1]
        };
        ErrStats {
            points: abs.len() as u64,
            median_rel_err: median_sorted(&abs),
            p90_rel_err: p90,
            median_bias: median_sorted(&signed),
        }
    }
}

/// Points of the profiles as (work, measured seconds), with the operator name.
fn points_of(profiles: &[Profile]) -> Vec<(String, Work, f64)> {
    let mut out = Vec::new();
    for p in profiles {
        for pt in &p.points {
            if let Some(w) = work(&p.shape, pt) {
                out.push((pt.op.clone(), w, pt.median_ms * 1e-3));
            }
        }
    }
    out
}

/// Fit a calibration to operator profiles (all measured on one device).
pub fn fit(profiles: &[Profile], opts: &FitOptions) -> Result<Calibration> {
    let first = profiles
        .first()
        .ok_or_else(|| Error::bad("calibrate fit: no --profile given"))?;
    for (i, p) in profiles.iter().enumerate() {
        p.check()
            .map_err(|e| Error::bad(format!("calibrate fit: profile {} ({}): {e}", i + 1, p.shape.name)))?;
    }
    let (gpu, sheet) = profile_peaks(first, opts.gpu.as_deref())?;
    for p in &profiles[1..] {
        let (g, _) = profile_peaks(p, opts.gpu.as_deref())?;
        if g != gpu {
            return Err(Error::bad(format!(
                "calibrate fit: profiles come from different devices ({gpu} and {g}); fit one device at a time"
            )));
        }
    }
    let peaks = peaks_of(&sheet);
    let pts = points_of(profiles);
    let mut c = Coefficients::default();
    let mut fitted: Vec<String> = Vec::new();
    if let Some((b, path)) = &opts.base {
        if Catalog::builtin()
            .gpu(&b.gpu)
            .map(|g| g.name.clone())
            .unwrap_or_else(|_| b.gpu.clone())
            != gpu
        {
            return Err(Error::bad(format!(
                "--base {path} is for {}, the profiles are from {gpu}",
                b.gpu
            )));
        }
        c = b.coefficients;
    }
    for class in [OpClass::Matmul, OpClass::Elementwise, OpClass::Attention] {
        if opts.classes.as_ref().is_some_and(|cs| !cs.contains(&class)) {
            continue;
        }
        let cp: Vec<(Work, f64)> = pts
            .iter()
            .filter(|(_, w, _)| w.class == class)
            .map(|(_, w, t)| (*w, *t))
            .collect();
        if cp.len() < 4 {
            continue;
        }
        c = fit_class(class, &c, peaks, &cp);
        fitted.extend(fitted_names(class).iter().map(|s| s.to_string()));
    }
    if fitted.is_empty() {
        return Err(Error::bad(
            "calibrate fit: the profiles hold no operator points this model prices",
        ));
    }
    let refit = fitted.clone();
    if let Some((b, _)) = &opts.base {
        let mut kept: Vec<String> = b
            .fitted
            .iter()
            .filter(|f| *f != "per_layer_us" && !refit.contains(f))
            .cloned()
            .collect();
        kept.append(&mut fitted);
        fitted = kept;
    }
    if fitted.iter().any(|f| f.ends_with("_fixed_us")) {
        c.per_layer_us = super::per_layer_us(&c);
        fitted.push("per_layer_us".into());
    }
    let ratios: Vec<f64> = pts
        .iter()
        .filter(|(_, w, _)| refit.iter().any(|f| fitted_names(w.class).contains(&f.as_str())))
        .map(|(_, w, t)| predict(&c, peaks, w) / t)
        .collect();
    let q = ErrStats::of(&ratios);
    let mut details = BTreeMap::new();
    details.insert("device".into(), first.meta.device.clone());
    details.insert("backend".into(), first.meta.backend.clone());
    details.insert("dtype".into(), first.meta.dtype.clone());
    details.insert("measured".into(), first.meta.date.clone());
    for (k, v) in first.meta.details.iter().filter(|(k, _)| *k != "file" && *k != "grid") {
        details.insert(k.clone(), v.clone());
    }
    details.insert(
        "profiles".into(),
        profiles
            .iter()
            .map(|p| p.shape.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
    );
    details.insert(
        "fitted_by".into(),
        format!(
            "chimera {} ({}) calibrate fit",
            env!("CARGO_PKG_VERSION"),
            option_env!("CHIMERA_GIT_COMMIT").unwrap_or("unknown commit")
        ),
    );
    details.insert(
        "not_fitted".into(),
        "step_overhead_us, per_request_us, allreduce_us keep their defaults: operator profiles do not measure them"
            .into(),
    );
    let source = format!(
        "operator times of {} measured on {} with {} ({}), fitted by least squares on log time",
        profiles
            .iter()
            .map(|p| p.shape.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
        first.meta.device,
        first.meta.backend,
        first.meta.date
    );
    let (source, details) = match &opts.base {
        None => (source, details),
        Some((b, path)) => {
            let mut d = b.provenance.details.clone();
            for (k, v) in details {
                d.insert(format!("refit.{k}"), v);
            }
            d.insert("base_calibration".into(), path.clone());
            if let Some(f) = &b.fit {
                d.insert(
                    "base_fit".into(),
                    format!(
                        "median {:.1} %, p90 {:.1} % over {} points",
                        100.0 * f.median_rel_err,
                        100.0 * f.p90_rel_err,
                        f.points
                    ),
                );
            }
            let note = format!(
                "{}; then {} refitted to {source}",
                b.provenance.source,
                refit.join(", ")
            );
            (note, d)
        }
    };
    c.validate()?;
    Ok(Calibration {
        format: CALIBRATION_FORMAT.into(),
        gpu,
        model: opts.model.clone(),
        tensor_parallel: None,
        engine: opts.engine.clone(),
        coefficients: c,
        fitted,
        datasheet: Some(sheet),
        provenance: Provenance {
            kind: ProvenanceKind::Measured,
            source,
            details,
        },
        // With a base: the quality of the refit on its own points (the base's is in details).
        fit: Some(FitQuality {
            median_rel_err: q.median_rel_err,
            p90_rel_err: q.p90_rel_err,
            points: q.points,
            leave_one_model_out: None,
            leave_one_gpu_out: None,
        }),
    })
}

/// A calibration's predictions against measured points.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub calibration_gpu: String,
    pub profile_devices: Vec<String>,
    pub ops: BTreeMap<String, ErrStats>,
    pub classes: BTreeMap<String, ErrStats>,
    pub overall: ErrStats,
}

/// Check `cal` against the points of `profiles`.
pub fn check(cal: &Calibration, profiles: &[Profile]) -> Result<CheckReport> {
    let peaks = peaks_of(&calibration_datasheet(cal)?);
    let mut by_op: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut by_class: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut all = Vec::new();
    for (op, w, t) in points_of(profiles) {
        let r = predict(&cal.coefficients, peaks, &w) / t;
        by_op.entry(op).or_default().push(r);
        by_class.entry(w.class.name().to_string()).or_default().push(r);
        all.push(r);
    }
    if all.is_empty() {
        return Err(Error::bad(
            "calibrate check: the profiles hold no operator points this model prices",
        ));
    }
    let mut devices: Vec<String> = profiles
        .iter()
        .map(|p| {
            if p.meta.gpu.is_empty() {
                p.meta.device.clone()
            } else {
                p.meta.gpu.clone()
            }
        })
        .collect();
    devices.dedup();
    Ok(CheckReport {
        calibration_gpu: cal.gpu.clone(),
        profile_devices: devices,
        ops: by_op.into_iter().map(|(k, v)| (k, ErrStats::of(&v))).collect(),
        classes: by_class.into_iter().map(|(k, v)| (k, ErrStats::of(&v))).collect(),
        overall: ErrStats::of(&all),
    })
}

/// A calibration for `gpu` derived from `cal`: efficiencies and fixed costs carry over, the
/// peaks come from `gpu`'s datasheet. Marked as derived.
pub fn derive(cal: &Calibration, from_path: &str, gpu: &str) -> Result<Calibration> {
    let cat = Catalog::builtin();
    let g = cat.gpu(gpu)?;
    let mut details = BTreeMap::new();
    details.insert("from_calibration".into(), from_path.to_string());
    details.insert("from_gpu".into(), cal.gpu.clone());
    details.insert("from_kind".into(), format!("{:?}", cal.provenance.kind).to_lowercase());
    details.insert("from_source".into(), cal.provenance.source.clone());
    if let Some(f) = &cal.fit {
        details.insert(
            "from_fit".into(),
            format!(
                "median {:.1} %, p90 {:.1} % over {} points on {}",
                100.0 * f.median_rel_err,
                100.0 * f.p90_rel_err,
                f.points,
                cal.gpu
            ),
        );
    }
    details.insert(
        "method".into(),
        "efficiencies (fractions of peak) and fixed costs carried over unchanged; peak FLOPS and bandwidth from the target's datasheet".into(),
    );
    Ok(Calibration {
        format: CALIBRATION_FORMAT.into(),
        gpu: g.name.clone(),
        model: cal.model.clone(),
        tensor_parallel: cal.tensor_parallel,
        engine: cal.engine.clone(),
        coefficients: cal.coefficients,
        fitted: cal.fitted.clone(),
        datasheet: Some(Datasheet {
            peak_tflops: g.fp16_tflops,
            bandwidth_gb_s: g.bandwidth_gb_s,
            source: g.provenance.clone(),
        }),
        provenance: Provenance {
            kind: ProvenanceKind::Derived,
            source: format!(
                "derived from the {} calibration {from_path} and the {} datasheet; no measurement on {}",
                cal.gpu, g.name, g.name
            ),
            details,
        },
        fit: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::format::{LayerShape, OpPoint, ProfileMeta, PROFILE_FORMAT};

    fn synthetic_profile(truth: &Coefficients, gpu: &str) -> Profile {
        let cat = Catalog::builtin();
        let g = cat.gpu(gpu).unwrap();
        let peaks = Peaks {
            flops: g.peak_flops(),
            bytes_per_s: g.bandwidth_bytes_per_s(),
        };
        let shape = LayerShape::of_model(cat.model("Llama-2-7B").unwrap());
        let mut points = Vec::new();
        for &(op, _) in crate::calib::OPS {
            for tokens in [1u64, 4, 16, 64, 256, 1024, 4096] {
                let (batch, context) = match op {
                    "attn_decode" => (tokens, 1024),
                    "attn_prefill" => (1, 512),
                    _ => (1, 0),
                };
                let pt = OpPoint::new(op, tokens, batch, context, 1);
                let t = predict(truth, peaks, &work(&shape, &pt).unwrap());
                points.push(OpPoint {
                    median_ms: t * 1e3,
                    ..pt
                });
            }
        }
        Profile {
            format: PROFILE_FORMAT.into(),
            meta: ProfileMeta {
                device: g.name.clone(),
                gpu: g.name.clone(),
                backend: "synthetic".into(),
                dtype: "bf16".into(),
                ..Default::default()
            },
            shape,
            points,
        }
    }

    #[test]
    fn fit_recovers_the_coefficients_that_generated_the_points() {
        let truth = Coefficients {
            mfu: 0.62,
            mbu: 0.81,
            mfu_attention: 0.35,
            mbu_attention: 0.66,
            mbu_elementwise: 0.55,
            matmul_fixed_us: 7.0,
            elementwise_fixed_us: 3.0,
            attention_fixed_us: 9.0,
            ..Coefficients::default()
        };
        let p = synthetic_profile(&truth, "A40");
        let cal = fit(std::slice::from_ref(&p), &FitOptions::default()).unwrap();
        let c = cal.coefficients;
        for (name, got, want) in [
            ("mfu", c.mfu, truth.mfu),
            ("mbu", c.mbu, truth.mbu),
            ("mfu_attention", c.mfu_attention, truth.mfu_attention),
            ("mbu_attention", c.mbu_attention, truth.mbu_attention),
            ("mbu_elementwise", c.mbu_elementwise, truth.mbu_elementwise),
            ("matmul_fixed_us", c.matmul_fixed_us, truth.matmul_fixed_us),
            (
                "elementwise_fixed_us",
                c.elementwise_fixed_us,
                truth.elementwise_fixed_us,
            ),
            ("attention_fixed_us", c.attention_fixed_us, truth.attention_fixed_us),
        ] {
            assert!((got - want).abs() / want < 0.02, "{name}: fitted {got}, true {want}");
        }
        assert!(cal.fit.as_ref().unwrap().p90_rel_err < 0.01);
        assert_eq!(cal.gpu, "A40");
        let rep = check(&cal, &[p]).unwrap();
        assert!(rep.overall.p90_rel_err < 0.01, "{:?}", rep.overall);
        assert_eq!(rep.ops.len(), crate::calib::OPS.len());
    }

    #[test]
    fn a_fit_refuses_profiles_with_impossible_numbers() {
        type Edit = fn(&mut Profile);
        let cases: Vec<(Edit, &str)> = vec![
            (|p| p.points[3].median_ms = f64::INFINITY, "points[3].median_ms"),
            (|p| p.points[3].median_ms = 1e308, "points[3].median_ms"),
            (|p| p.points[3].median_ms = 0.0, "points[3].median_ms"),
            (|p| p.points[0].tokens = 0, "points[0].tokens"),
            (|p| p.points[0].tp = 0, "points[0].tp"),
            (|p| p.points[0].op = "warp_drive".into(), "points[0].op"),
            (|p| p.shape.hidden = 0, "shape.hidden"),
            (|p| p.shape.kv_heads = 1000, "shape.kv_heads"),
            (|p| p.meta.peak_tflops = f64::NAN, "meta.peak_tflops"),
        ];
        for (edit, want) in cases {
            let mut p = synthetic_profile(&Coefficients::default(), "A40");
            edit(&mut p);
            let e = fit(&[p], &FitOptions::default()).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn derived_calibration_keeps_efficiencies_and_takes_the_target_datasheet() {
        let p = synthetic_profile(&Coefficients::default(), "A40");
        let cal = fit(&[p], &FitOptions::default()).unwrap();
        let d = derive(&cal, "a40.yaml", "RTX A6000").unwrap();
        assert_eq!(d.gpu, "RTX-A6000");
        assert_eq!(d.provenance.kind, ProvenanceKind::Derived);
        assert_eq!(d.coefficients, cal.coefficients);
        assert_eq!(d.datasheet.as_ref().unwrap().bandwidth_gb_s, 768.0);
        assert!(d.fit.is_none());
        // Same efficiencies, faster memory: a memory-bound point gets faster by the bandwidth ratio.
        let shape = LayerShape::of_model(Catalog::builtin().model("Qwen2.5-7B").unwrap());
        let w = work(&shape, &OpPoint::new("mlp_down_proj", 1, 1, 0, 1)).unwrap();
        let (a, b) = (
            predict(&cal.coefficients, peaks_of(&calibration_datasheet(&cal).unwrap()), &w),
            predict(&d.coefficients, peaks_of(&calibration_datasheet(&d).unwrap()), &w),
        );
        assert!(b < a, "{a} {b}");
    }

    #[test]
    fn a_base_keeps_its_coefficients_and_only_the_refit_class_changes() {
        let base_truth = Coefficients {
            mfu: 0.7,
            mbu: 0.8,
            ..Coefficients::default()
        };
        let mut p = synthetic_profile(&base_truth, "A40");
        p.points
            .retain(|x| !x.op.starts_with("attn_d") && x.op != "attn_prefill");
        let base = fit(std::slice::from_ref(&p), &FitOptions::default()).unwrap();
        let attn_truth = Coefficients {
            mfu_attention: 0.6,
            mbu_attention: 0.9,
            attention_fixed_us: 12.0,
            ..base.coefficients
        };
        let mut a = synthetic_profile(&attn_truth, "A40");
        a.points.retain(|x| x.op == "attn_decode" || x.op == "attn_prefill");
        let merged = fit(
            &[a],
            &FitOptions {
                base: Some((base.clone(), "base.yaml".into())),
                ..FitOptions::default()
            },
        )
        .unwrap();
        let c = merged.coefficients;
        assert_eq!(
            (c.mfu, c.mbu, c.mbu_elementwise),
            (
                base.coefficients.mfu,
                base.coefficients.mbu,
                base.coefficients.mbu_elementwise
            )
        );
        assert!(
            (c.mfu_attention - 0.6).abs() < 0.02 && (c.attention_fixed_us - 12.0).abs() < 0.5,
            "{c:?}"
        );
        assert!(merged.fitted.contains(&"mfu".to_string()) && merged.fitted.contains(&"mfu_attention".to_string()));
        assert_eq!(merged.provenance.details["base_calibration"], "base.yaml");
        assert!((c.per_layer_us - crate::calib::per_layer_us(&c)).abs() < 1e-9);
    }

    #[test]
    fn fit_refuses_profiles_from_two_devices() {
        let a = synthetic_profile(&Coefficients::default(), "A40");
        let b = synthetic_profile(&Coefficients::default(), "A100-80GB");
        let e = fit(&[a, b], &FitOptions::default()).unwrap_err().to_string();
        assert!(e.contains("A40") && e.contains("A100-80GB"), "{e}");
    }

    #[test]
    fn nelder_mead_finds_a_quadratic_minimum() {
        let f = |x: &[f64]| (x[0] - 3.0).powi(2) + 10.0 * (x[1] + 1.0).powi(2);
        let (x, v) = nelder_mead(&f, &[0.0, 0.0], 1.0, 500);
        assert!(
            v < 1e-8 && (x[0] - 3.0).abs() < 1e-3 && (x[1] + 1.0).abs() < 1e-3,
            "{x:?}"
        );
    }
}
