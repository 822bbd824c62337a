//! The Chimera policy (system.md) and the length-aware baselines, as policy-core parts:
//! - `ChimeraRouter`: among engines whose estimated latency L_m = (V_m + y_m) / theta_m is within
//!   a slack of the fastest, and whose confidence beats the fastest's by at least delta, pick the
//!   most confident; else the fastest.
//! - `Stjf` (shortest total job first: the workflow's predicted remaining output) and `Sjf`
//!   (the current call's predicted output, the LTR view) prioritizers.
//! - Length models: the quantile regression forest, and the simulation-only oracle.
//! - Confidence models: the semantic router, the oracle, a noisy oracle of a chosen AUC, and
//!   each model's prior accuracy.
//! Aging lives in the engine (`EnginePolicy::PriorityAging`) or the core's middleware queue.

use super::{ClusterView, ConfidenceModel, EngineId, LengthModel, Prediction, Prioritizer, RequestInfo, Router};
use crate::predictor::{CallFeatures, LengthPredictor};
use crate::rng::StreamRng;
use crate::time::Nanos;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How far from the fastest engine's latency a more confident engine may be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Slack {
    /// L_m <= (1 + value) * L_fastest.
    Multiplicative { value: f64 },
    /// L_m <= L_fastest + seconds.
    Additive { seconds: f64 },
}

pub struct ChimeraRouter {
    pub slack: Slack,
    /// Minimum confidence gain over the fastest engine.
    pub delta: f64,
}

impl ChimeraRouter {
    /// Estimated latency (seconds) of sending work of predicted size y to engine e.
    pub fn latency(view: &ClusterView, e: usize) -> f64 {
        let y = view.predicted_remaining[e];
        let y = if y.is_finite() { y } else { 0.0 };
        (view.load[e].predicted_volume + y) / view.engines[e].decode_tokens_per_s.max(1e-9)
    }
}

impl Router for ChimeraRouter {
    fn name(&self) -> &'static str {
        "chimera"
    }
    fn route(&mut self, _now: Nanos, _req: &RequestInfo, view: &ClusterView) -> EngineId {
        let n = view.engines.len();
        let lat: Vec<f64> = (0..n).map(|e| Self::latency(view, e)).collect();
        let f = (0..n)
            .min_by(|&a, &b| lat[a].partial_cmp(&lat[b]).expect("finite").then(a.cmp(&b)))
            .expect("engines");
        let conf = |e: usize| {
            if view.confidence[e].is_finite() {
                view.confidence[e]
            } else {
                0.0
            }
        };
        let within = |e: usize| match self.slack {
            Slack::Multiplicative { value } => lat[e] <= (1.0 + value) * lat[f] + 1e-12,
            Slack::Additive { seconds } => lat[e] <= lat[f] + seconds + 1e-12,
        };
        let best = (0..n)
            .filter(|&e| e != f && within(e) && conf(e) >= conf(f) + self.delta)
            .max_by(|&a, &b| conf(a).partial_cmp(&conf(b)).expect("finite").then(b.cmp(&a)));
        best.unwrap_or(f) as EngineId
    }
}

/// Shortest total job first: priority is the workflow's predicted remaining output.
pub struct Stjf;

impl Prioritizer for Stjf {
    fn name(&self) -> &'static str {
        "stjf"
    }
    fn priority(&mut self, _now: Nanos, _req: &RequestInfo, _engine: EngineId, pred: &Prediction) -> i64 {
        pred.remaining_tokens.max(0.0).round() as i64
    }
}

/// Shortest job first on the current call only (the learning-to-rank scheduler's view).
pub struct Sjf;

impl Prioritizer for Sjf {
    fn name(&self) -> &'static str {
        "sjf"
    }
    fn priority(&mut self, _now: Nanos, _req: &RequestInfo, _engine: EngineId, pred: &Prediction) -> i64 {
        pred.call_tokens.max(0.0).round() as i64
    }
}

/// The length predictor as a length model. The request-level forest runs only when asked
/// (`with_call_tokens`, for SJF): STJF and the balancer need the workflow forest alone.
pub struct QrfLength {
    pub predictor: Arc<LengthPredictor>,
    pub with_call_tokens: bool,
}

impl LengthModel for QrfLength {
    fn name(&self) -> &'static str {
        "qrf"
    }
    fn predict(&mut self, req: &RequestInfo, model: &str) -> Prediction {
        let size = crate::hw::Catalog::builtin()
            .model(model)
            .map(|m| m.total_params() as f64 / 1e9)
            .unwrap_or(7.0);
        let f = CallFeatures {
            prompt_tokens: req.prompt_tokens,
            context_tokens: req.context_tokens,
            output_so_far: req.workflow_output_so_far,
            stage: req.stage,
            model_params_b: size,
            task: req.task.as_deref(),
            text: req.text.as_deref(),
        };
        let row = f.row();
        let q = self.predictor.quantile;
        Prediction {
            remaining_tokens: self.predictor.workflow.quantile(&row, q),
            call_tokens: if self.with_call_tokens {
                self.predictor.request.quantile(&row, q)
            } else {
                f64::NAN
            },
        }
    }
}

/// True lengths (simulation only).
pub struct OracleLength;

impl LengthModel for OracleLength {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn predict(&mut self, req: &RequestInfo, model: &str) -> Prediction {
        let o = req
            .oracle
            .as_ref()
            .expect("the simulator fills oracle info for oracle policies");
        let rem = o
            .remaining_workflow_tokens
            .iter()
            .find(|x| &*x.0 == model)
            .map(|x| x.1 as f64)
            .unwrap_or(0.0);
        let cur = o
            .output_tokens
            .iter()
            .find(|x| &*x.0 == model)
            .map(|x| x.1 as f64)
            .unwrap_or(0.0);
        Prediction {
            remaining_tokens: rem,
            call_tokens: cur,
        }
    }
    fn needs_oracle(&self) -> bool {
        true
    }
}

/// The semantic router's confidences (the model's prior accuracy when a request has no text).
/// The last request's predictions are kept, so asking for several models featurises once.
pub struct SemanticConfidence {
    pub router: Arc<crate::router::Router>,
    last: Option<(u64, Vec<f64>)>,
}

impl SemanticConfidence {
    pub fn new(router: Arc<crate::router::Router>) -> Self {
        SemanticConfidence { router, last: None }
    }
}

impl ConfidenceModel for SemanticConfidence {
    fn name(&self) -> &'static str {
        "semantic_router"
    }
    fn confidence(&mut self, req: &RequestInfo, model: &str) -> f64 {
        let m = &self.router.model;
        let Some(k) = m.models.iter().position(|x| x == model) else {
            return 0.0;
        };
        match req.text.as_deref() {
            Some(t) => {
                if self.last.as_ref().is_none_or(|l| l.0 != req.request) {
                    self.last = Some((req.request, self.router.score(t)));
                }
                self.last.as_ref().expect("just set").1[k]
            }
            None => 1.0 / (1.0 + (-m.bias[k]).exp()),
        }
    }
}

/// Per-model fixed confidences (each model's accuracy): knows nothing of the request.
pub struct PriorConfidence {
    pub accuracy: Vec<(String, f64)>,
}

impl ConfidenceModel for PriorConfidence {
    fn name(&self) -> &'static str {
        "prior"
    }
    fn confidence(&mut self, _req: &RequestInfo, model: &str) -> f64 {
        self.accuracy.iter().find(|x| x.0 == model).map(|x| x.1).unwrap_or(0.0)
    }
}

/// The true outcome as confidence (simulation only).
pub struct OracleConfidence;

impl ConfidenceModel for OracleConfidence {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn confidence(&mut self, req: &RequestInfo, model: &str) -> f64 {
        let o = req
            .oracle
            .as_ref()
            .expect("the simulator fills oracle info for oracle policies");
        match o.success.iter().find(|x| &*x.0 == model).and_then(|x| x.1) {
            Some(true) => 1.0,
            _ => 0.0,
        }
    }
    fn needs_oracle(&self) -> bool {
        true
    }
}

/// A calibrated stand-in for a trained router at a given AUC (simulation only): a score
/// `s = y + N(0, sd^2)` with `sd` set so that AUC = Phi(1 / (sd sqrt 2)), turned into the
/// posterior P(solved | s) under the model's base rate for the task, the way a trained router's
/// per-model logistic calibration would. The base rate is learned as workflows arrive (a
/// Beta(1, 1) prior plus the outcomes of first-stage requests seen so far), standing in for the offline
/// evaluation a deployment has of each model. Within one model the confidence is monotone in
/// the score, so the AUC is the target; across models it carries the difference in base rates.
pub struct NoisyOracle {
    noise: Normal<f64>,
    sd: f64,
    rng: StreamRng,
    /// (task, model) -> (solved, seen) over first-stage requests.
    base: Vec<((Option<Arc<str>>, Arc<str>), (u64, u64))>,
}

impl NoisyOracle {
    pub fn new(auc: f64, rng: StreamRng) -> NoisyOracle {
        let z = inverse_normal_cdf(auc.clamp(0.5001, 0.9999));
        let sd = 1.0 / (z * std::f64::consts::SQRT_2);
        NoisyOracle {
            noise: Normal::new(0.0, sd).expect("positive sd"),
            sd,
            rng,
            base: Vec::new(),
        }
    }

    /// The base rate of `model` on `task` so far; then, for a first stage, learn `solved` (after
    /// reading the rate, so a request's own label never enters its prior).
    fn prior_then_learn(&mut self, task: &Option<Arc<str>>, model: &str, first_stage: bool, solved: bool) -> f64 {
        let i = match self.base.iter().position(|((t, m), _)| t == task && &**m == model) {
            Some(i) => i,
            None => {
                self.base.push(((task.clone(), Arc::from(model)), (0, 0)));
                self.base.len() - 1
            }
        };
        let c = &mut self.base[i].1;
        let prior = (c.0 as f64 + 1.0) / (c.1 as f64 + 2.0);
        if first_stage {
            c.0 += solved as u64;
            c.1 += 1;
        }
        prior
    }
}

impl ConfidenceModel for NoisyOracle {
    fn name(&self) -> &'static str {
        "noisy_oracle"
    }
    fn confidence(&mut self, req: &RequestInfo, model: &str) -> f64 {
        let y = OracleConfidence.confidence(req, model);
        let s = y + self.noise.sample(&mut self.rng);
        let p = self.prior_then_learn(&req.task, model, req.stage == 0, y > 0.5);
        let l1 = (-(s - 1.0).powi(2) / (2.0 * self.sd * self.sd)).exp();
        let l0 = (-(s * s) / (2.0 * self.sd * self.sd)).exp();
        p * l1 / (p * l1 + (1.0 - p) * l0).max(f64::MIN_POSITIVE)
    }
    fn needs_oracle(&self) -> bool {
        true
    }
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let pl = 0.02425;
    if p < pl {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - pl {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -inverse_normal_cdf(1.0 - p)
    }
}
