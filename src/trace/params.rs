//! Fitted generator parameters (`traces/fitted-params.yaml`, embedded in the binary): what the
//! trace generator draws from, each part with the data it came from and how it was fitted.
//! `chimera trace fit` writes this file from ../shared/data; nothing here reads data itself.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

pub const PARAMS_FORMAT: &str = "chimera-trace-params/v1";
const EMBEDDED: &str = include_str!("../../traces/fitted-params.yaml");

/// One fact of provenance: what was fitted, from which file and columns, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Note {
    pub what: String,
    pub source: String,
    pub how: String,
}

/// Ability on the latent scale: fitted anchors, and a line in ln(parameters) for the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ability {
    /// (model name in the data, billions of parameters, fitted ability)
    pub anchors: Vec<(String, f64, f64)>,
    pub intercept: f64,
    pub slope_per_ln_billion: f64,
}

/// Output tokens of a whole workflow at anchor sizes, by outcome; lognormal with `cv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthAnchor {
    pub params_b: f64,
    pub solved_mean_tokens: f64,
    pub failed_mean_tokens: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lengths {
    pub anchors: Vec<LengthAnchor>,
    pub cv: f64,
    /// Multiplier per difficulty level.
    pub level_factor: Vec<(String, f64)>,
}

/// Stage counts (1..=4) by size bucket and outcome, and what each stage writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    /// Upper bound (billions) of the small bucket; bigger models use the large bucket.
    pub small_bucket_max_b: f64,
    /// Probabilities of 1, 2, 3, 4 stages: [small solved, small failed, large solved, large failed].
    pub small_solved: [f64; 4],
    pub small_failed: [f64; 4],
    pub large_solved: [f64; 4],
    pub large_failed: [f64; 4],
    /// Output of each stage over the output of a single-call answer, for 1-, 2-, 3- and
    /// 4-stage workflows (MINT: mean assistant characters at turn k of n-turn episodes over
    /// the mean of 1-turn episodes).
    pub turn_ratio: [Vec<f64>; 4],
    /// Lognormal cv of each stage's output (MINT's per-turn spread), same layout.
    pub turn_cv: [Vec<f64>; 4],
    /// Episodes behind each histogram, same order as above.
    pub episodes: [u64; 4],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogNormalParams {
    pub mean: f64,
    pub cv: f64,
}

/// Real problems the generator draws when given the data folder (their text is read from it
/// at run time; only ids and fitted numbers live here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Items {
    /// Lognormal cv of a workflow's output around its item's mean (what the item leaves open).
    pub residual_cv: f64,
    /// (item id in the data, difficulty level, latent difficulty b, output length factor)
    pub list: Vec<(String, String, f64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskParams {
    pub chars_per_token: f64,
    /// (difficulty label, weight)
    pub difficulty_mix: Vec<(String, f64)>,
    /// Latent item difficulty per level: n equal-mass quantiles (at probabilities (j + 1/2) / n).
    pub latent_quantiles: Vec<(String, Vec<f64>)>,
    pub ability: Ability,
    /// Per level, (billions of parameters, ability) anchors that reproduce each ladder model's
    /// observed rate on that level; when given, they take precedence over `ability` for
    /// models matched by size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub level_ability: Vec<(String, Vec<(f64, f64)>)>,
    pub output: Lengths,
    pub stages: Stages,
    /// Agent template (instructions, tool description, example) in front of the task, tokens.
    pub template_tokens: f64,
    pub problem_tokens: LogNormalParams,
    pub observation_tokens: LogNormalParams,
    /// Tool time between stages, milliseconds (an assumption, not data: see `notes`).
    pub tool_delay_ms: LogNormalParams,
    /// Per-item difficulty and length of the real problems (`trace gen --data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedParams {
    pub format: String,
    pub math: TaskParams,
    pub apps: TaskParams,
    pub notes: Vec<Note>,
}

impl FittedParams {
    /// The parameters shipped in the binary.
    pub fn embedded() -> &'static FittedParams {
        static P: OnceLock<FittedParams> = OnceLock::new();
        P.get_or_init(|| FittedParams::parse(EMBEDDED).expect("embedded traces/fitted-params.yaml parses"))
    }

    pub fn parse(text: &str) -> Result<FittedParams> {
        let p: FittedParams = crate::scenario::yaml::from_yaml_str(text)?;
        if p.format != PARAMS_FORMAT {
            return Err(Error::bad(format!(
                "format: expected `{PARAMS_FORMAT}`, got `{}`",
                p.format
            )));
        }
        Ok(p)
    }

    pub fn task(&self, task: Task) -> &TaskParams {
        match task {
            Task::Math => &self.math,
            Task::Apps => &self.apps,
        }
    }
}

/// The task families the generator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Apps,
    Math,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Apps => "apps",
            Task::Math => "math",
        }
    }
    pub fn parse(s: &str) -> Result<Task> {
        match s {
            "apps" => Ok(Task::Apps),
            "math" => Ok(Task::Math),
            other => Err(Error::bad(format!("unknown task `{other}`; expected apps or math"))),
        }
    }
}

/// Linear interpolation of `y` over `x` (sorted), extrapolating with the end segments.
pub fn interp(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    assert!(xs.len() == ys.len() && !xs.is_empty());
    if xs.len() == 1 {
        return ys[0];
    }
    let k = xs.partition_point(|&v| v < x).clamp(1, xs.len() - 1);
    let (x0, x1, y0, y1) = (xs[k - 1], xs[k], ys[k - 1], ys[k]);
    y0 + (y1 - y0) * (x - x0) / (x1 - x0)
}

impl TaskParams {
    /// Ability of a model with `params_b` billion parameters: a fitted anchor of that name if
    /// there is one; else, inside the ladder's size range, linear in ln(parameters) between the
    /// neighbouring anchors; outside it, from the end anchor along the least-squares slope.
    pub fn ability_of(&self, model_name: &str, params_b: f64, level: &str) -> f64 {
        let norm = |s: &str| s.to_ascii_lowercase().replace("-instruct", "").replace("-chat", "");
        if let Some(a) = self.ability.anchors.iter().find(|a| norm(&a.0) == norm(model_name)) {
            return a.2;
        }
        let mut anchors: Vec<(f64, f64)> = match self.level_ability.iter().find(|(l, _)| l == level) {
            Some((_, a)) => a.iter().map(|(p, t)| (p.ln(), *t)).collect(),
            None => self.ability.anchors.iter().map(|a| (a.1.ln(), a.2)).collect(),
        };
        anchors.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("finite"));
        let x = params_b.ln();
        let slope = self.ability.slope_per_ln_billion;
        match (anchors.first(), anchors.last()) {
            // Inside the ladder: piecewise linear between the neighbouring anchors.
            (Some(lo), Some(hi)) if x >= lo.0 && x <= hi.0 => {
                let xs: Vec<f64> = anchors.iter().map(|a| a.0).collect();
                let ys: Vec<f64> = anchors.iter().map(|a| a.1).collect();
                interp(&xs, &ys, x)
            }
            // Outside: from the nearest end anchor along the fitted line's slope.
            (Some(lo), Some(_)) if x < lo.0 => lo.1 + slope * (x - lo.0),
            (Some(_), Some(hi)) => hi.1 + slope * (x - hi.0),
            _ => self.ability.intercept + slope * x,
        }
    }

    /// Mean output tokens of a workflow (all stages) at a size, outcome and level.
    pub fn mean_output_tokens(&self, params_b: f64, solved: bool, level: &str) -> f64 {
        let xs: Vec<f64> = self.output.anchors.iter().map(|a| a.params_b.ln()).collect();
        let ys: Vec<f64> = self
            .output
            .anchors
            .iter()
            .map(|a| {
                if solved {
                    a.solved_mean_tokens
                } else {
                    a.failed_mean_tokens
                }
                .ln()
            })
            .collect();
        let base = interp(&xs, &ys, params_b.ln()).exp();
        let f = self
            .output
            .level_factor
            .iter()
            .find(|(l, _)| l == level)
            .map(|(_, f)| *f)
            .unwrap_or(1.0);
        base * f
    }

    /// Stage-count probabilities for a size and outcome.
    pub fn stage_probs(&self, params_b: f64, solved: bool) -> &[f64; 4] {
        let s = &self.stages;
        match (params_b <= s.small_bucket_max_b, solved) {
            (true, true) => &s.small_solved,
            (true, false) => &s.small_failed,
            (false, true) => &s.large_solved,
            (false, false) => &s.large_failed,
        }
    }

    pub fn quantiles(&self, level: &str) -> &[f64] {
        self.latent_quantiles
            .iter()
            .find(|(l, _)| l == level)
            .or(self.latent_quantiles.first())
            .map(|(_, q)| q.as_slice())
            .expect("at least one level")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_and_extrapolation() {
        let xs = [1.0, 2.0, 4.0];
        let ys = [10.0, 20.0, 30.0];
        assert_eq!(interp(&xs, &ys, 2.0), 20.0);
        assert_eq!(interp(&xs, &ys, 3.0), 25.0);
        assert_eq!(interp(&xs, &ys, 0.0), 0.0);
        assert_eq!(interp(&xs, &ys, 6.0), 40.0);
    }
}
