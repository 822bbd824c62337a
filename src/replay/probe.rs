//! `chimera calibrate server` (feature `live`): fit the step-time model to a live server from
//! client-side timings of probe requests, for servers whose operators cannot be profiled (a
//! llama.cpp CPU server, a vLLM deployment one cannot instrument).
//!
//! Probes, each with token-id prompts and exact output lengths: prefill (one request, prompt
//! of n tokens, 2 output tokens; TTFT), decode (b concurrent requests; TPOT), and decode over a
//! long context. The model predicts each: TTFT as the chunked prefill's steps under the
//! engine's token budget, TPOT as one decode step of b requests at the mid-run context. The
//! fit is Nelder-Mead on the squared log error over the coefficients that such probes can
//! see (linear FLOP and weight-bandwidth efficiencies, attention efficiencies, step and
//! per-request overheads); the rest keep their defaults (per-layer cost: folded into the step
//! overhead, set to 0).

use super::client::{self, Streamed};
use super::endpoints::{Endpoint, Timeouts};
use super::request_body;
use crate::calib::fit::{nelder_mead, ErrStats};
use crate::error::{Error, Result};
use crate::hw::calibration::Coefficients;
use crate::hw::catalog::{GpuSpec, ModelSpec};
use crate::hw::{StepShape, StepTimeModel};
use serde::{Deserialize, Serialize};

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbePlan {
    pub prefill_tokens: Vec<u32>,
    pub decode_batches: Vec<u32>,
    pub decode_prompt_tokens: u32,
    pub decode_output_tokens: u32,
    /// Prompt of the long-context decode probe (0: none).
    pub long_prompt_tokens: u32,
    pub reps: u32,
}

/// One probed point with its measurement (median over repetitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbePoint {
    /// `prefill` (measured: client TTFT) or `decode` (measured: client TPOT).
    pub kind: String,
    pub prompt_tokens: u32,
    pub batch: u32,
    pub output_tokens: u32,
    pub measured_ms: f64,
    pub samples_ms: Vec<f64>,
    /// The model's prediction after the fit.
    #[serde(default)]
    pub predicted_ms: Option<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    crate::stats::median(v)
}

async fn one(ep: &Endpoint, t: &Timeouts, prompt: u32, out: u32, salt: u64) -> Result<Streamed> {
    let ids = super::prompt_ids(0xca11_b4a7e, salt, prompt, prompt, ep.vocab);
    let body = serde_json::to_vec(&request_body(ep, &ids, out, None)).expect("JSON");
    let s = client::stream_completion(&ep.base, ep.api_key.as_deref(), body, t, tokio::time::Instant::now())
        .await
        .map_err(|e| Error::other(format!("calibrate server: probe request failed: {e}")))?;
    if s.output_tokens != out {
        return Err(Error::other(format!(
            "calibrate server: {} returned {} tokens for max_tokens = {out} with ignore_eos; the server does not honour exact lengths",
            ep.base.url, s.output_tokens
        )));
    }
    Ok(s)
}

/// Send the probes (sequentially, apart from the concurrent decode batches).
pub async fn probe(
    ep: &Endpoint,
    t: &Timeouts,
    plan: &ProbePlan,
    log: &mut dyn FnMut(&ProbePoint),
) -> Result<Vec<ProbePoint>> {
    // Prompts no earlier probe of any run sent: a server with a prefix cache (vLLM's is on by
    // default) would otherwise answer repeated probes from its cache. The salt starts from the
    // wall clock, which this probe of a live server may read (it is a driver, not the core).
    let mut salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        << 16;
    let mut points = Vec::new();
    // Warm-up: the first request of a fresh server pays one-time costs.
    one(ep, t, 16, 2, salt.wrapping_sub(1)).await?;
    for &n in &plan.prefill_tokens {
        let mut samples = Vec::new();
        for _ in 0..plan.reps {
            salt += 1;
            let s = one(ep, t, n, 2, salt).await?;
            samples.push(s.chunk_ns.first().copied().unwrap_or(s.end_ns) as f64 / 1e6);
        }
        let p = ProbePoint {
            kind: "prefill".into(),
            prompt_tokens: n,
            batch: 1,
            output_tokens: 2,
            measured_ms: median(&mut samples.clone()),
            samples_ms: samples,
            predicted_ms: None,
        };
        log(&p);
        points.push(p);
    }
    let mut decode_cases: Vec<(u32, u32)> = plan
        .decode_batches
        .iter()
        .map(|&b| (b, plan.decode_prompt_tokens))
        .collect();
    if plan.long_prompt_tokens > 0 {
        decode_cases.push((1, plan.long_prompt_tokens));
    }
    for (b, prompt) in decode_cases {
        let mut samples = Vec::new();
        for _ in 0..plan.reps {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..b {
                salt += 1;
                let (ep, t, out) = (ep.clone(), t.clone(), plan.decode_output_tokens);
                let s = salt;
                set.spawn(async move { one(&ep, &t, prompt, out, s).await });
            }
            while let Some(r) = set.join_next().await {
                let s = r.map_err(|e| Error::other(format!("calibrate server: {e}")))??;
                // TPOT over the second half of the stream, when all b requests decode together.
                // A chunk may carry several tokens (a server's output loop that fell behind
                // sends what it has): divide by the tokens between the two chunks.
                let c = &s.chunk_ns;
                if c.len() >= 4 {
                    let (a, z) = (c.len() / 2, c.len() - 1);
                    let tokens: u32 = s.chunk_tokens[a + 1..=z].iter().sum();
                    samples.push((c[z] - c[a]) as f64 / tokens.max(1) as f64 / 1e6);
                }
            }
        }
        let p = ProbePoint {
            kind: "decode".into(),
            prompt_tokens: prompt,
            batch: b,
            output_tokens: plan.decode_output_tokens,
            measured_ms: median(&mut samples.clone()),
            samples_ms: samples,
            predicted_ms: None,
        };
        log(&p);
        points.push(p);
    }
    Ok(points)
}

/// The model's prediction of a probe, ms.
pub fn predict_ms(m: &StepTimeModel, p: &ProbePoint, budget: u32) -> f64 {
    match p.kind.as_str() {
        "prefill" => {
            // The server's front end (HTTP, hand-off to the engine), then chunked prefill
            // under the token budget; the last chunk samples the first token.
            let (mut done, mut ns) = (0u64, (m.coeffs.frontend_us * 1e3).round() as i64);
            let n = p.prompt_tokens as u64;
            while done < n {
                let c = (n - done).min(budget.max(1) as u64);
                let mut s = StepShape::default();
                s.add(done, c, done + c == n);
                ns += m.step_ns(&s);
                done += c;
            }
            ns as f64 / 1e6
        }
        _ => {
            // Three quarters into the output: the middle of the measured second half.
            let ctx = (p.prompt_tokens + p.output_tokens * 3 / 4) as u64;
            let mut s = StepShape::default();
            for _ in 0..p.batch {
                s.add(ctx, 1, true);
            }
            m.step_ns(&s) as f64 / 1e6
        }
    }
}

/// Names of the coefficients the fit sets.
pub const FITTED: [&str; 7] = [
    "mfu",
    "mbu",
    "mfu_attention",
    "mbu_attention",
    "step_overhead_us",
    "per_request_us",
    "frontend_us",
];

/// Efficiencies through a logistic (fractions in (0, 1)), times through exp (positive).
fn with_params(x: &[f64]) -> Coefficients {
    let e = |v: f64| v.exp();
    let f = |v: f64| 1.0 / (1.0 + (-v).exp());
    Coefficients {
        mfu: f(x[0]),
        mbu: f(x[1]),
        mbu_elementwise: f(x[1]),
        mfu_attention: f(x[2]),
        mbu_attention: f(x[3]),
        step_overhead_us: e(x[4]),
        per_request_us: e(x[5]),
        frontend_us: e(x[6]),
        per_layer_us: 0.0,
        ..Coefficients::default()
    }
}

/// Fit the coefficients to the points; returns them with the per-point error statistics and
/// fills each point's prediction.
pub fn fit(
    points: &mut [ProbePoint],
    model: &ModelSpec,
    gpu: &GpuSpec,
    budget: u32,
) -> Result<(Coefficients, ErrStats)> {
    let usable: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].measured_ms.is_finite() && points[i].measured_ms > 0.0)
        .collect();
    if usable.len() < FITTED.len() {
        return Err(Error::bad(format!(
            "calibrate server: {} usable probe points, need at least {}",
            usable.len(),
            FITTED.len()
        )));
    }
    let loss = |x: &[f64]| -> f64 {
        let m = StepTimeModel::new(model, gpu, 1, with_params(x));
        usable
            .iter()
            .map(|&i| {
                (predict_ms(&m, &points[i], budget) / points[i].measured_ms)
                    .ln()
                    .powi(2)
            })
            .sum()
    };
    let d = Coefficients::default();
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let x0 = [
        logit(d.mfu),
        logit(d.mbu),
        logit(d.mfu_attention),
        logit(d.mbu_attention),
        d.step_overhead_us.ln(),
        d.per_request_us.ln(),
        500f64.ln(),
    ];
    // A few restarts from the best point so far: the simplex shrinks on the max() kinks.
    let (mut best, mut val) = nelder_mead(&loss, &x0, 1.0, 4000);
    for _ in 0..4 {
        let (x, v) = nelder_mead(&loss, &best, 0.5, 4000);
        if v < val - 1e-12 {
            (best, val) = (x, v);
        } else {
            break;
        }
    }
    let c = with_params(&best);
    c.validate()
        .map_err(|e| e.context("calibrate server: the fitted coefficients are out of range"))?;
    let m = StepTimeModel::new(model, gpu, 1, c);
    let mut ratios = Vec::new();
    for &i in &usable {
        let p = predict_ms(&m, &points[i], budget);
        points[i].predicted_ms = Some(p);
        ratios.push(p / points[i].measured_ms);
    }
    Ok((c, ErrStats::of(&ratios)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Catalog;

    #[test]
    fn the_fit_recovers_coefficients_that_generated_the_points() {
        let cat = Catalog::builtin();
        let (model, gpu) = (cat.model("Qwen2.5-1.5B").unwrap(), cat.gpu("A40").unwrap());
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let truth = with_params(&[
            logit(0.35),
            logit(0.6),
            logit(0.2),
            logit(0.5),
            900f64.ln(),
            40f64.ln(),
            2000f64.ln(),
        ]);
        let m = StepTimeModel::new(model, gpu, 1, truth);
        let mut pts: Vec<ProbePoint> = [64u32, 256, 1024, 2048, 4096]
            .iter()
            .map(|&n| ("prefill", n, 1))
            .chain([1u32, 2, 4, 8, 32].iter().map(|&b| ("decode", 64, b)))
            .chain([("decode", 8000, 1)])
            .map(|(k, n, b)| {
                let mut p = ProbePoint {
                    kind: k.into(),
                    prompt_tokens: n,
                    batch: b,
                    output_tokens: 64,
                    measured_ms: 0.0,
                    samples_ms: vec![],
                    predicted_ms: None,
                };
                p.measured_ms = predict_ms(&m, &p, 2048);
                p
            })
            .collect();
        let (_, err) = fit(&mut pts, model, gpu, 2048).unwrap();
        assert!(err.median_rel_err < 0.01 && err.p90_rel_err < 0.03, "{err:?}");
    }
}
