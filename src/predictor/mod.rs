//! The length predictor: a quantile regression forest of a workflow's total remaining output
//! tokens (all its remaining calls), from what is known when a call is sent: token counts
//! (prompt, carried context, output so far), workflow state (stage index), the model (its size),
//! the task family and a compact text sketch. A second forest predicts the current call alone
//! (the request-level view of LTR/SJF schedulers), for comparison. Pure computation.

pub mod qrf;

use crate::router::metrics::spearman;
use crate::trace::Trace;
use qrf::{Forest, ForestConfig};
use serde::{Deserialize, Serialize};

pub const PREDICTOR_FORMAT: &str = "chimera-predictor/v1";
const SKETCH_DIMS: usize = 8;

/// What the predictor sees of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFeatures<'a> {
    pub prompt_tokens: u32,
    pub context_tokens: u32,
    pub output_so_far: u64,
    pub stage: u32,
    pub model_params_b: f64,
    pub task: Option<&'a str>,
    pub text: Option<&'a str>,
}

/// A signed random projection of hashed character trigrams to a few dimensions.
fn sketch(text: Option<&str>) -> [f64; SKETCH_DIMS] {
    let mut s = [0.0; SKETCH_DIMS];
    let Some(t) = text else { return s };
    let chars: Vec<char> = t.to_lowercase().chars().collect();
    let mut n = 0.0;
    for w in chars.windows(3) {
        let mut f = crate::router::Fnv::new();
        for c in w {
            f.char(*c);
        }
        let h = f.0;
        for (j, v) in s.iter_mut().enumerate() {
            *v += if (h >> (j * 2)) & 1 == 1 { 1.0 } else { -1.0 };
        }
        n += 1.0;
    }
    if n > 0.0 {
        for v in &mut s {
            *v /= f64::sqrt(n);
        }
    }
    s
}

impl CallFeatures<'_> {
    pub fn row(&self) -> Vec<f64> {
        let mut r = vec![
            self.prompt_tokens as f64,
            self.context_tokens as f64,
            (self.prompt_tokens - self.context_tokens.min(self.prompt_tokens)) as f64,
            self.output_so_far as f64,
            self.stage as f64,
            self.model_params_b.ln(),
            match self.task {
                Some("apps") => 1.0,
                Some("math") => 2.0,
                _ => 0.0,
            },
        ];
        r.extend(sketch(self.text));
        r
    }
}

/// Training rows from a trace: one per (workflow, model plan, stage), with the remaining
/// workflow output and the current call's output as targets.
pub fn rows(t: &Trace) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>) {
    let cat = crate::hw::Catalog::builtin();
    let (mut x, mut remaining, mut current) = (Vec::new(), Vec::new(), Vec::new());
    for w in &t.workflows {
        for p in &w.plans {
            let size = p
                .model
                .as_deref()
                .and_then(|m| cat.model(m).ok())
                .map(|s| s.total_params() as f64 / 1e9)
                .unwrap_or(7.0);
            let total: u64 = p.stages.iter().map(|s| s.output_tokens as u64).sum();
            let mut so_far = 0u64;
            for (k, s) in p.stages.iter().enumerate() {
                let f = CallFeatures {
                    prompt_tokens: s.prompt_tokens,
                    context_tokens: s.context_tokens,
                    output_so_far: so_far,
                    stage: k as u32,
                    model_params_b: size,
                    task: Some(w.task.as_str()),
                    text: w.text.as_deref(),
                };
                x.push(f.row());
                remaining.push((total - so_far) as f64);
                current.push(s.output_tokens as f64);
                so_far += s.output_tokens as u64;
            }
        }
    }
    (x, remaining, current)
}

/// A trained predictor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LengthPredictor {
    pub format: String,
    /// Quantile read by default (system.md: 0.5, configurable).
    pub quantile: f64,
    pub workflow: Forest,
    pub request: Forest,
    pub provenance: serde_json::Value,
}

impl LengthPredictor {
    /// Read a predictor file's text and check it whole (format, quantile, both forests)
    /// before use; the error says what is wrong, for the caller to prefix with the file.
    pub fn from_json(text: &str) -> std::result::Result<LengthPredictor, String> {
        let p: LengthPredictor = serde_json::from_str(text).map_err(|e| format!("not a predictor file: {e}"))?;
        if p.format != PREDICTOR_FORMAT {
            return Err(format!("format `{}`, expected `{PREDICTOR_FORMAT}`", p.format));
        }
        if !(0.0..=1.0).contains(&p.quantile) {
            return Err(format!("quantile {} outside [0, 1]", p.quantile));
        }
        let features = CallFeatures {
            prompt_tokens: 0,
            context_tokens: 0,
            output_so_far: 0,
            stage: 0,
            model_params_b: 1.0,
            task: None,
            text: None,
        }
        .row()
        .len();
        p.workflow
            .check(features)
            .map_err(|e| format!("workflow forest: {e}"))?;
        p.request.check(features).map_err(|e| format!("request forest: {e}"))?;
        Ok(p)
    }

    pub fn train(t: &Trace, quantile: f64, cfg: &ForestConfig, provenance: serde_json::Value) -> LengthPredictor {
        let (x, rem, cur) = rows(t);
        LengthPredictor {
            format: PREDICTOR_FORMAT.into(),
            quantile,
            workflow: Forest::fit(&x, &rem, cfg),
            request: Forest::fit(
                &x,
                &cur,
                &ForestConfig {
                    seed: cfg.seed ^ 0x5eed,
                    ..cfg.clone()
                },
            ),
            provenance,
        }
    }

    /// Predicted remaining output tokens of the whole workflow.
    pub fn remaining(&self, f: &CallFeatures) -> f64 {
        self.workflow.quantile(&f.row(), self.quantile)
    }

    /// Predicted output tokens of this call alone.
    pub fn current_call(&self, f: &CallFeatures) -> f64 {
        self.request.quantile(&f.row(), self.quantile)
    }
}

fn pinball(pred: &[f64], truth: &[f64], q: f64) -> f64 {
    pred.iter()
        .zip(truth)
        .map(|(p, y)| if y >= p { q * (y - p) } else { (1.0 - q) * (p - y) })
        .sum::<f64>()
        / pred.len().max(1) as f64
}

fn mae(pred: &[f64], truth: &[f64]) -> f64 {
    pred.iter().zip(truth).map(|(p, y)| (p - y).abs()).sum::<f64>() / pred.len().max(1) as f64
}

#[derive(Debug, Clone, Serialize)]
pub struct PredictorScore {
    pub predictor: String,
    pub pinball_loss: f64,
    pub mae: f64,
    pub spearman: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PredictorReport {
    pub rows: u64,
    pub quantile: f64,
    /// Against the true remaining output of the workflow.
    pub scores: Vec<PredictorScore>,
}

/// Score the workflow forest, the request-level forest and the oracle on a trace.
pub fn evaluate(p: &LengthPredictor, t: &Trace) -> PredictorReport {
    let (x, rem, _) = rows(t);
    let q = p.quantile;
    let wf: Vec<f64> = x.iter().map(|r| p.workflow.quantile(r, q)).collect();
    let rq: Vec<f64> = x.iter().map(|r| p.request.quantile(r, q)).collect();
    let score = |name: &str, pred: &[f64]| PredictorScore {
        predictor: name.into(),
        pinball_loss: pinball(pred, &rem, q),
        mae: mae(pred, &rem),
        spearman: spearman(pred, &rem),
    };
    PredictorReport {
        rows: x.len() as u64,
        quantile: q,
        scores: vec![
            score("workflow QRF (STJF)", &wf),
            score("request-level QRF (SJF/LTR view)", &rq),
            score("oracle", &rem),
        ],
    }
}
