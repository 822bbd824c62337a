//! `calibrate fit-serving`: fit one set of step-model coefficients so that simulated request
//! latencies match real vLLM measurements, over every model, GPU and parallel layout measured,
//! with leave-one-model-out and leave-one-GPU-out checks.
//!
//! The simulator itself is the model being fitted: each candidate set of coefficients is
//! priced by simulating every recreated experiment (load stages shortened to a few minutes,
//! long enough for steady state) and comparing TTFT and E2E percentiles with the measured
//! ones (and, for the per-request traces, time per output token). The step model is physical (`hw::steptime`): every engine's step time comes from its
//! model's architecture, its GPU's datasheet and these coefficients, and no model, GPU or
//! tensor-parallel size gets coefficients of its own. Fitted, in a transformed space that
//! keeps them physical: the memory-streaming efficiency (`mbu`, one for weights and KV reads:
//! `mbu_attention` is set equal), the matrix-product FLOP efficiency (`mfu`), how much compute and memory
//! time overlap (`overlap`), the routed experts' FLOP efficiency (`mfu_moe`) and fixed cost
//! per expert run (`expert_us`), the fixed cost of a step (`step_overhead_us`), per request in a
//! batch (`per_request_us`), per layer on the GPU (`layer_us`) and per layer launched outside a
//! CUDA graph (`per_layer_us`), the latency of one tensor- or expert-parallel collective
//! (`allreduce_us`) and the API server's front-end latency (`frontend_us`). The rest keep
//! their defaults.

use super::{simulate, summarize, write_scenario, Experiment, StageReport, Summary};
use crate::calib::fit::nelder_mead;
use crate::error::{Error, Result};
use crate::hw::calibration::{Calibration, FitQuality, HeldOutError, Provenance, ProvenanceKind, CALIBRATION_FORMAT};
use crate::hw::Coefficients;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const FITTED: [&str; 12] = [
    "mbu",
    "mbu_attention",
    "mfu",
    "step_overhead_us",
    "per_request_us",
    "per_layer_us",
    "frontend_us",
    "layer_us",
    "allreduce_us",
    "overlap",
    "expert_us",
    "mfu_moe",
];

/// What `calibration.gpu` says for a fit over several GPUs: it applies to any GPU, on that
/// GPU's datasheet figures.
pub const ANY_GPU: &str = "any";

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn to_x(c: &Coefficients) -> Vec<f64> {
    vec![
        logit(((c.mbu - 0.05) / 0.95).clamp(0.01, 0.99)),
        logit(((c.mfu - 0.05) / 0.75).clamp(0.01, 0.99)),
        c.step_overhead_us.max(1.0).ln(),
        c.per_request_us.max(0.1).ln(),
        c.per_layer_us.max(0.1).ln(),
        c.frontend_us.max(1.0).ln(),
        c.layer_us.max(0.1).ln(),
        c.allreduce_us.max(0.1).ln(),
        logit(c.overlap.clamp(0.01, 0.99)),
        c.expert_us.max(0.1).ln(),
        logit(((c.mfu_moe - 0.05) / 0.75).clamp(0.01, 0.99)),
    ]
}

fn from_x(base: &Coefficients, x: &[f64]) -> Coefficients {
    // Efficiencies stay in (0.05, 1); fixed costs positive and below a second.
    let frac = |v: f64| 0.05 + 0.95 * sigmoid(v);
    let us = |v: f64| v.clamp(-5.0, 13.8).exp();
    Coefficients {
        // One streaming efficiency for weights and KV: both are long reads from the same
        // memory, and a model without much KV traffic cannot tell the two apart.
        mbu: frac(x[0]),
        mbu_attention: frac(x[0]),
        // Dense BF16 matrix products reach about 0.7-0.8 of the datasheet peak at best.
        mfu: 0.05 + 0.75 * sigmoid(x[1]),
        step_overhead_us: us(x[2]),
        per_request_us: us(x[3]),
        per_layer_us: us(x[4]),
        frontend_us: us(x[5]),
        layer_us: us(x[6]),
        allreduce_us: us(x[7]),
        overlap: sigmoid(x[8]).max(1e-3),
        expert_us: us(x[9]),
        mfu_moe: 0.05 + 0.75 * sigmoid(x[10]),
        ..*base
    }
}

/// An experiment ready to simulate again and again.
struct Case {
    exp: Experiment,
    scenario: PathBuf,
}

/// The coefficients for engines on `gpu`: the global set with that GPU's efficiency factors
/// (`mfu` and `mfu_moe`, `mbu` and with it `mbu_attention`) scaled by its refinement, if it
/// has one.
fn on_gpu(global: &Coefficients, refine: Option<&(f64, f64)>) -> Coefficients {
    let Some((f, b)) = refine else {
        return *global;
    };
    let mbu = (global.mbu * b).clamp(0.05, 0.99);
    Coefficients {
        mfu: (global.mfu * f).clamp(0.05, 0.9),
        mfu_moe: (global.mfu_moe * f).clamp(0.05, 0.9),
        mbu,
        mbu_attention: mbu,
        ..*global
    }
}

/// How strongly a GPU's efficiency factors are held to the global ones (a penalty on their
/// squared log ratio): a GPU moves away only as far as its own measurements ask.
const REFINE_PRIOR: f64 = 0.1;

fn loss(cases: &[&Case], global: Coefficients, refine: &BTreeMap<String, (f64, f64)>, stage_s: f64) -> f64 {
    // The experiments simulate independently: one thread each (deterministic either way).
    let per_case: Vec<Option<(f64, f64)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = cases
            .iter()
            .map(|case| {
                let c = on_gpu(&global, refine.get(&case.exp.gpu));
                sc.spawn(move || case_loss(case, c, stage_s))
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    let (mut sum, mut n) = (0.0, 0.0);
    for r in per_case {
        let Some((s, k)) = r else {
            return 1e6;
        };
        sum += s;
        n += k;
    }
    let prior: f64 = refine.values().map(|(f, b)| f.ln().powi(2) + b.ln().powi(2)).sum();
    if n == 0.0 {
        1e6
    } else {
        sum / n + REFINE_PRIOR * prior
    }
}

/// One experiment's summed loss and how many stages it counted (None: it did not run).
fn case_loss(case: &Case, c: Coefficients, stage_s: f64) -> Option<(f64, f64)> {
    let sim = simulate(&case.exp, &case.scenario, Some(c), Some(stage_s)).ok()?;
    let (mut sum, mut n) = (0.0, 0.0);
    for (m, s) in case.exp.stages.iter().zip(&sim) {
        if s.requests == 0 {
            continue;
        }
        let l = |a: f64, b: f64| (a.max(1e-6) / b.max(1e-6)).ln().powi(2);
        let tpot = m.tpot.as_ref().map_or(0.0, |t| l(s.tpot.p50, t.p50));
        if !m.overloaded {
            sum += l(s.e2e.p50, m.e2e.p50) + 0.5 * l(s.ttft.p50, m.ttft.p50) + 0.25 * l(s.e2e.p90, m.e2e.p90) + tpot;
            n += 1.0;
        } else if case.exp.trace.is_some() {
            // An exact trace replay that queues: its arrivals are replayed as they came, so
            // its time per output token and E2E still measure the engine (a steady-rate
            // stage past its capacity does not: it is never fitted).
            sum += tpot + 0.5 * l(s.e2e.p50, m.e2e.p50);
            n += 1.0;
        }
    }
    Some((sum, n))
}

/// A fit: the global coefficients, and each measured GPU's refined efficiency factors (as
/// ratios to the global `mfu` and `mbu`).
struct Fitted {
    global: Coefficients,
    refine: BTreeMap<String, (f64, f64)>,
    loss: f64,
}

fn fit_on(cases: &[&Case], base: &Coefficients, stage_s: f64, iters: usize) -> Fitted {
    let gpus: Vec<String> = cases
        .iter()
        .map(|c| c.exp.gpu.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let n = to_x(base).len();
    let split = |x: &[f64]| -> (Coefficients, BTreeMap<String, (f64, f64)>) {
        let refine = gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let r = |v: f64| v.clamp(-1.5, 1.5).exp();
                (g.clone(), (r(x[n + 2 * i]), r(x[n + 2 * i + 1])))
            })
            .collect();
        (from_x(base, &x[..n]), refine)
    };
    let f = |x: &[f64]| {
        let (g, r) = split(x);
        loss(cases, g, &r, stage_s)
    };
    // Two starts (the base, and a graph-era guess of high bandwidth efficiency and a
    // millisecond of step overhead); the better one wins. Deterministic.
    let starts = [
        to_x(base),
        to_x(&Coefficients {
            mbu: 0.85,
            mbu_attention: 0.8,
            mfu: 0.6,
            step_overhead_us: 1000.0,
            per_request_us: 10.0,
            per_layer_us: 10.0,
            frontend_us: 5000.0,
            layer_us: 10.0,
            allreduce_us: 10.0,
            overlap: 0.7,
            expert_us: 5.0,
            ..*base
        }),
    ];
    let mut best: Option<(Vec<f64>, f64)> = None;
    for mut x0 in starts {
        x0.extend(std::iter::repeat_n(0.0, 2 * gpus.len()));
        let (x, v) = nelder_mead(&f, &x0, 0.5, iters);
        // A restart from the first result escapes a collapsed simplex.
        let (x2, v2) = nelder_mead(&f, &x, 0.2, iters / 2 + 1);
        let (x, v) = if v2 < v { (x2, v2) } else { (x, v) };
        if best.as_ref().is_none_or(|b| v < b.1) {
            best = Some((x, v));
        }
    }
    let (x, v) = best.expect("two starts");
    let (global, refine) = split(&x);
    Fitted {
        global,
        refine,
        loss: v,
    }
}

/// The result of one fit, with its own checks.
#[derive(Debug, Serialize)]
pub struct FitReport {
    /// The GPU fitted, or `any` for a fit over every GPU measured.
    pub gpu: String,
    pub experiments: Vec<String>,
    pub models: Vec<String>,
    pub gpus: Vec<String>,
    /// The global coefficients: what a GPU without measurements of its own gets.
    pub coefficients: Coefficients,
    /// Each measured GPU's coefficients: the global ones with its efficiency factors refined.
    pub gpu_coefficients: BTreeMap<String, Coefficients>,
    pub loss: f64,
    /// Every stage with the fitted coefficients (full-length stages): in-sample.
    pub stages: Vec<StageReport>,
    pub in_sample: Summary,
    /// Each model's experiments predicted by coefficients fitted on the other models'.
    pub leave_one_model_out: Vec<HeldOut>,
    /// Each GPU's experiments predicted by coefficients fitted on the other GPUs'.
    pub leave_one_gpu_out: Vec<HeldOut>,
    /// The held-out stages of every leave-one-model-out fit together (absent with one model).
    pub leave_one_model_out_summary: Option<Summary>,
    /// The same for leave-one-GPU-out (absent with one GPU).
    pub leave_one_gpu_out_summary: Option<Summary>,
}

#[derive(Debug, Serialize)]
pub struct HeldOut {
    pub held_out: String,
    /// The held-out experiments' coefficients: their GPU's refined ones where the other
    /// experiments measured that GPU, else the global ones.
    pub coefficients: Coefficients,
    pub stages: Vec<StageReport>,
    pub summary: Summary,
}

fn full_stages(c: &Coefficients, case: &Case) -> Result<Vec<StageReport>> {
    let sim = simulate(&case.exp, &case.scenario, Some(*c), None)?;
    Ok(case
        .exp
        .stages
        .iter()
        .zip(&sim)
        .map(|(m, s)| StageReport::new(&case.exp, m, s))
        .collect())
}

/// Fit on every case but those `key` maps to `held`, then predict the held ones. Each held
/// group runs on its own thread (the fits are deterministic, so threads change nothing).
fn hold_out(
    cases: &[Case],
    key: &(dyn Fn(&Experiment) -> String + Sync),
    base: &Coefficients,
    stage_s: f64,
    iters: usize,
) -> Result<Vec<HeldOut>> {
    let groups: BTreeSet<String> = cases.iter().map(|c| key(&c.exp)).collect();
    if groups.len() < 2 {
        return Ok(Vec::new());
    }
    let groups: Vec<String> = groups.into_iter().collect();
    let results: Vec<Result<HeldOut>> = std::thread::scope(|sc| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                sc.spawn(move || -> Result<HeldOut> {
                    let rest: Vec<&Case> = cases.iter().filter(|c| key(&c.exp) != *g).collect();
                    let held: Vec<&Case> = cases.iter().filter(|c| key(&c.exp) == *g).collect();
                    let fit = fit_on(&rest, base, stage_s, iters);
                    let mut stages = Vec::new();
                    let mut used = fit.global;
                    for h in held {
                        used = on_gpu(&fit.global, fit.refine.get(&h.exp.gpu));
                        stages.extend(full_stages(&used, h)?);
                    }
                    Ok(HeldOut {
                        held_out: g.clone(),
                        coefficients: used,
                        summary: summarize(&stages),
                        stages,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::other("a held-out fit panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn held_error(s: &Summary) -> HeldOutError {
    HeldOutError {
        median_abs_err_e2e_p50: s.median_abs_err_e2e_p50,
        max_abs_err_e2e_p50: s.max_abs_err_e2e_p50,
        stages: s.stages_compared as u64,
    }
}

/// The calibration for one measured GPU: the global fit `global` with that GPU's refined
/// efficiency factors `c` (a model or a tensor-parallel size never gets its own).
pub fn gpu_calibration(global: &Calibration, global_path: &str, gpu: &str, c: Coefficients) -> Calibration {
    let mut cal = global.clone();
    cal.gpu = gpu.to_string();
    cal.coefficients = c;
    cal.provenance.details.insert(
        "refined".into(),
        format!(
            "the global fit {global_path} (gpu: any) with {gpu}'s efficiency factors (mfu {:.4} -> {:.4}, mfu_moe by the same ratio, mbu and mbu_attention {:.4} -> {:.4}) refined on its own measurements, jointly with the global fit",
            global.coefficients.mfu, c.mfu, global.coefficients.mbu, c.mbu
        ),
    );
    cal
}

/// Fit one coefficient set to every experiment under `roots` (those measured on `gpu` if
/// given, else all of them). Scenarios are written under `scenario_dir`; `stage_s` caps each
/// load stage while fitting.
pub fn fit_serving(
    roots: &[PathBuf],
    gpu: Option<&str>,
    base: Coefficients,
    stage_s: f64,
    iters: usize,
    scenario_dir: &Path,
) -> Result<(Calibration, FitReport)> {
    let cat = crate::hw::Catalog::builtin();
    let gpu = gpu.map(|g| cat.gpu(g).map(|x| x.name.clone())).transpose()?;
    let (exps, skipped) = super::discover(roots, None)?;
    let mut cases = Vec::new();
    for e in exps.into_iter().filter(|e| gpu.as_ref().is_none_or(|g| e.gpu == *g)) {
        if e.trace.is_none() && e.stages.iter().all(|s| s.overloaded) {
            continue;
        }
        let scenario = write_scenario(&e, "null", scenario_dir)?;
        cases.push(Case { exp: e, scenario });
    }
    let on = gpu.clone().unwrap_or_else(|| "any GPU".into());
    if cases.is_empty() {
        let why: Vec<String> = skipped
            .iter()
            .map(|s| format!("{}: {}", s.dir.display(), s.reason))
            .collect();
        return Err(Error::bad(format!(
            "no measured experiment on {on} served within its rate under the given folders{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" (skipped: {})", why.join("; "))
            }
        )));
    }
    let all: Vec<&Case> = cases.iter().collect();
    let fit = fit_on(&all, &base, stage_s, iters);
    let (coeffs, l) = (fit.global, fit.loss);
    let gpu_coefficients: BTreeMap<String, Coefficients> = fit
        .refine
        .iter()
        .map(|(g, r)| (g.clone(), on_gpu(&fit.global, Some(r))))
        .collect();
    let mut stages = Vec::new();
    for c in &cases {
        stages.extend(full_stages(&gpu_coefficients[&c.exp.gpu], c)?);
    }
    let lomo = hold_out(&cases, &|e: &Experiment| e.model.clone(), &base, stage_s, iters)?;
    let logo = hold_out(&cases, &|e: &Experiment| e.gpu.clone(), &base, stage_s, iters)?;
    let pooled = |h: &[HeldOut]| -> Option<Summary> {
        if h.is_empty() {
            return None;
        }
        let all: Vec<StageReport> = h.iter().flat_map(|x| x.stages.iter().cloned()).collect();
        Some(summarize(&all))
    };
    let errs: Vec<f64> = stages
        .iter()
        .filter(|s| !s.measured.overloaded)
        .map(|s| 1.0 + s.e2e_err.p50)
        .collect();
    let q = crate::calib::fit::ErrStats::of(&errs);
    let names: Vec<String> = cases.iter().map(|c| c.exp.name.clone()).collect();
    let distinct = |f: &dyn Fn(&Case) -> String| -> Vec<String> {
        let set: BTreeSet<String> = cases.iter().map(f).collect();
        set.into_iter().collect()
    };
    let models = distinct(&|c| c.exp.model.clone());
    let gpus = distinct(&|c| c.exp.gpu.clone());
    let mut details = BTreeMap::new();
    details.insert("experiments".into(), names.join(", "));
    details.insert("engines".into(), distinct(&|c| c.exp.engine.clone()).join(", "));
    details.insert("models".into(), models.join(", "));
    details.insert("gpus".into(), gpus.join(", "));
    details.insert(
        "layouts".into(),
        distinct(&|c| {
            let e = &c.exp;
            let mut s = format!("TP{}", e.tensor_parallel);
            if e.data_parallel > 1 {
                s += &format!(" DP{}", e.data_parallel);
            }
            if e.expert_parallel {
                s += " EP";
            }
            s
        })
        .join(", "),
    );
    details.insert(
        "method".into(),
        format!(
            "Nelder-Mead on the simulator: minimise mean squared log error of E2E p50 (weight 1), TTFT p50 (0.5) and E2E p90 (0.25) over the stages vLLM served within its rate, load stages capped at {stage_s} s; one coefficient set for every model, GPU and parallel layout (efficiencies are fractions of each GPU's datasheet figures), each measured GPU's mfu and mbu refined jointly as ratios to the global ones under a penalty of {REFINE_PRIOR} x their squared log; CUDA-graph decode and prefix caching on, as in vLLM's defaults"
        ),
    );
    let pct = |s: &Option<Summary>| {
        s.as_ref().map_or("n/a (one group)".to_string(), |s| {
            format!(
                "E2E p50 error median {:.1} %, max {:.1} % over {} stages",
                100.0 * s.median_abs_err_e2e_p50,
                100.0 * s.max_abs_err_e2e_p50,
                s.stages_compared
            )
        })
    };
    let lomo_s = pooled(&lomo);
    let logo_s = pooled(&logo);
    details.insert("leave_one_model_out".into(), pct(&lomo_s));
    details.insert("leave_one_gpu_out".into(), pct(&logo_s));
    details.insert(
        "fitted_by".into(),
        format!("chimera {} calibrate fit-serving", env!("CARGO_PKG_VERSION")),
    );
    let dirs: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let cal = Calibration {
        format: CALIBRATION_FORMAT.into(),
        gpu: gpu.clone().unwrap_or_else(|| ANY_GPU.into()),
        model: None,
        tensor_parallel: None,
        engine: Some(format!("vLLM serving (fitted to {})", details["engines"])),
        coefficients: coeffs,
        fitted: FITTED.iter().map(|s| s.to_string()).collect(),
        datasheet: None,
        provenance: Provenance {
            kind: ProvenanceKind::Measured,
            source: format!(
                "request latencies of real vLLM servers measured under load ({})",
                dirs.join(", ")
            ),
            details,
        },
        fit: Some(FitQuality {
            median_rel_err: q.median_rel_err,
            p90_rel_err: q.p90_rel_err,
            points: q.points,
            leave_one_model_out: lomo_s.as_ref().map(held_error),
            leave_one_gpu_out: logo_s.as_ref().map(held_error),
        }),
    };
    Ok((
        cal,
        FitReport {
            gpu: gpu.unwrap_or_else(|| ANY_GPU.into()),
            experiments: names,
            models,
            gpus,
            coefficients: coeffs,
            gpu_coefficients,
            loss: l,
            in_sample: summarize(&stages),
            stages,
            leave_one_model_out: lomo,
            leave_one_gpu_out: logo,
            leave_one_model_out_summary: lomo_s.clone(),
            leave_one_gpu_out_summary: logo_s.clone(),
        },
    ))
}
