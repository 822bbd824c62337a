//! A simple workflow generator driven by distributions in the scenario.
//!
//! Stage 1's prompt is drawn from `first_prompt_tokens`. Stage k > 1 carries the whole
//! history as context (stage k-1's prompt, its output and the tool observation) plus its own
//! `stage_prompt_tokens`. Optional per-model success probabilities share one uniform draw per
//! workflow, so a task the stronger model fails is one the weaker model fails too.
//! Realistic APPS/MATH traces are another module's job; this one is for what-if studies.

use super::arrivals::{ArrivalSpec, InterArrival};
use super::dist::{Dist, Sampler};
use super::{Plan, Stage, WorkflowSpec, WorkloadSource};
use crate::error::{Error, Result};
use crate::rng::{stream, StreamRng};
use crate::time::{secs_to_ns, Nanos};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// Number of workflows.
    pub workflows: u64,
    /// Stages per workflow (1..=8), e.g. `{dist: empirical, values: [1,2,3,4], weights: [...]}`.
    pub stages: Dist,
    pub first_prompt_tokens: Dist,
    /// Own tokens added by each later stage (instructions), on top of the carried context.
    pub stage_prompt_tokens: Dist,
    pub output_tokens: Dist,
    /// Tool observation tokens appended to the context after each non-final stage.
    pub observation_tokens: Dist,
    /// Tool time after each non-final stage, in milliseconds.
    pub tool_delay_ms: Dist,
    /// Output length multiplier per model (models not listed: 1.0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_scale: BTreeMap<String, f64>,
    /// Probability that a workflow succeeds on each model; absent: success unknown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub success_probability: BTreeMap<String, f64>,
    /// Cap on any stage's prompt (context is truncated from the left beyond it).
    #[serde(default = "default_max_prompt")]
    pub max_prompt_tokens: u32,
    pub arrivals: ArrivalSpec,
}

fn default_max_prompt() -> u32 {
    16_384
}

struct Samplers {
    stages: Sampler,
    first: Sampler,
    stage_prompt: Sampler,
    output: Sampler,
    observation: Sampler,
    delay: Sampler,
}

impl SyntheticSpec {
    fn samplers(&self, path: &str) -> Result<Samplers> {
        Ok(Samplers {
            stages: self.stages.sampler(&format!("{path}.stages"))?,
            first: self
                .first_prompt_tokens
                .sampler(&format!("{path}.first_prompt_tokens"))?,
            stage_prompt: self
                .stage_prompt_tokens
                .sampler(&format!("{path}.stage_prompt_tokens"))?,
            output: self.output_tokens.sampler(&format!("{path}.output_tokens"))?,
            observation: self.observation_tokens.sampler(&format!("{path}.observation_tokens"))?,
            delay: self.tool_delay_ms.sampler(&format!("{path}.tool_delay_ms"))?,
        })
    }

    pub fn validate(&self, path: &str, models: &[String]) -> Result<()> {
        let s = self.samplers(path)?;
        let (lo, hi) = s.stages.support();
        if !(lo >= 0.5 && hi < super::MAX_STAGES as f64 + 0.5) {
            return Err(Error::bad(format!(
                "{path}.stages: every value must round to 1..{} stages, but this distribution reaches {lo}..{hi} (give `min` and `max`, or other values)",
                super::MAX_STAGES
            )));
        }
        if self.workflows == 0 {
            return Err(Error::bad(format!("{path}.workflows: expected at least 1")));
        }
        if self.max_prompt_tokens < 2 {
            return Err(Error::bad(format!("{path}.max_prompt_tokens: expected at least 2")));
        }
        self.arrivals.validate(&format!("{path}.arrivals"))?;
        for (field, map) in [
            ("output_scale", &self.output_scale),
            ("success_probability", &self.success_probability),
        ] {
            for (m, v) in map {
                if !models.iter().any(|x| x == m) {
                    return Err(Error::bad(format!(
                        "{path}.{field}.{m}: no engine serves model `{m}`; models in this cluster: {}",
                        models.join(", ")
                    )));
                }
                let ok = if field == "output_scale" {
                    *v > 0.0 && *v <= 1000.0
                } else {
                    (0.0..=1.0).contains(v)
                };
                if !ok {
                    let want = if field == "output_scale" {
                        "a number in (0, 1000]"
                    } else {
                        "a probability in [0, 1]"
                    };
                    return Err(Error::bad(format!(
                        "{path}.{field}.{m}: expected {want}, got {}",
                        crate::error::num(*v)
                    )));
                }
            }
        }
        if !self.success_probability.is_empty() && self.success_probability.len() != models.len() {
            let missing: Vec<&str> = models
                .iter()
                .filter(|m| !self.success_probability.contains_key(*m))
                .map(|s| s.as_str())
                .collect();
            return Err(Error::bad(format!(
                "{path}.success_probability: give every model or none; missing {}",
                missing.join(", ")
            )));
        }
        Ok(())
    }
}

struct Draw {
    own: u32,
    out: u32,
    obs: u32,
    delay: Nanos,
}

/// Lay out stages: stage k's prompt is the previous prompt, output and observation (the
/// context) plus its own tokens, capped at `cap` by dropping the oldest context.
fn build_stages(draws: &[Draw], output_scale: f64, cap: u32) -> Vec<Stage> {
    let mut context = 0u32;
    draws
        .iter()
        .map(|d| {
            let own = d.own.min(cap);
            let ctx = context.min(cap - own);
            let out = ((d.out as f64 * output_scale).round().min(u32::MAX as f64) as u32).max(1);
            // Saturating: only `cap` of it is ever carried into a prompt.
            context = (ctx + own).saturating_add(out).saturating_add(d.obs);
            Stage {
                prompt_tokens: ctx + own,
                context_tokens: ctx,
                output_tokens: out,
                tool_delay_ns: d.delay,
                prefix: None,
                prompt_id: None,
            }
        })
        .collect()
}

/// The generator.
pub struct SyntheticWorkload {
    spec: SyntheticSpec,
    s: Samplers,
    models: Vec<Arc<str>>,
    rng_stages: StreamRng,
    rng_lengths: StreamRng,
    rng_outcome: StreamRng,
    arrivals: Arrivals,
    produced: u64,
}

enum Arrivals {
    Renewal(InterArrival, StreamRng, Nanos),
    Trace(std::vec::IntoIter<Nanos>, f64),
}

impl SyntheticWorkload {
    /// `models`: the distinct models of the cluster, in a stable order.
    pub fn new(spec: &SyntheticSpec, models: &[String], seed: u64, base_dir: &std::path::Path) -> Result<Self> {
        let s = spec.samplers("workload")?;
        let arrivals = match InterArrival::from_spec(&spec.arrivals) {
            Some(ia) => Arrivals::Renewal(ia, stream(seed, "arrivals"), 0),
            None => {
                let ArrivalSpec::Trace {
                    path: Some(p),
                    rate_scale,
                } = &spec.arrivals
                else {
                    return Err(Error::bad("workload.arrivals.path: a synthetic workload with trace arrivals needs the path of an Azure-format CSV"));
                };
                let ts = super::azure::read_timestamps(&base_dir.join(p))?;
                Arrivals::Trace(ts.into_iter(), *rate_scale)
            }
        };
        Ok(SyntheticWorkload {
            spec: spec.clone(),
            s,
            models: models.iter().map(|m| Arc::from(m.as_str())).collect(),
            rng_stages: stream(seed, "workload.stages"),
            rng_lengths: stream(seed, "workload.lengths"),
            rng_outcome: stream(seed, "workload.outcome"),
            arrivals,
            produced: 0,
        })
    }

    fn next_arrival(&mut self) -> Option<Nanos> {
        match &mut self.arrivals {
            Arrivals::Renewal(ia, rng, clock) => {
                if self.produced > 0 {
                    *clock = clock.saturating_add(ia.gap_ns(rng));
                }
                Some(*clock)
            }
            Arrivals::Trace(it, scale) => it.next().map(|t| (t as f64 / *scale).round() as Nanos),
        }
    }
}

impl WorkloadSource for SyntheticWorkload {
    fn next_workflow(&mut self) -> Result<Option<WorkflowSpec>> {
        if self.produced >= self.spec.workflows {
            return Ok(None);
        }
        let Some(arrival_ns) = self.next_arrival() else {
            return Ok(None);
        };
        // Validation keeps the distribution inside 1..=MAX_STAGES; the clamp only guards rounding.
        let n = (self.s.stages.sample(&mut self.rng_stages).round() as usize).clamp(1, super::MAX_STAGES as usize);
        let cap = self.spec.max_prompt_tokens;
        let r = &mut self.rng_lengths;
        // Draw every length once; each model's plan is then built from the same draws.
        let mut draws = Vec::with_capacity(n);
        for k in 0..n {
            let own = if k == 0 {
                self.s.first.sample_tokens(r, 1)
            } else {
                self.s.stage_prompt.sample_tokens(r, 1)
            };
            let out = self.s.output.sample_tokens(r, 1);
            let (obs, delay) = if k + 1 < n {
                (
                    self.s.observation.sample_tokens(r, 0),
                    secs_to_ns(self.s.delay.sample(r) / 1e3),
                )
            } else {
                (0, 0)
            };
            draws.push(Draw { own, out, obs, delay });
        }
        let u: f64 = self.rng_outcome.random();
        let plans = if self.spec.output_scale.is_empty() && self.spec.success_probability.is_empty() {
            vec![Plan {
                model: None,
                stages: build_stages(&draws, 1.0, cap),
                success: None,
            }]
        } else {
            self.models
                .iter()
                .map(|m| {
                    let scale = self.spec.output_scale.get(&**m).copied().unwrap_or(1.0);
                    let success = self.spec.success_probability.get(&**m).map(|p| u < *p);
                    Plan {
                        model: Some(m.clone()),
                        stages: build_stages(&draws, scale, cap),
                        success,
                    }
                })
                .collect()
        };
        let id = self.produced;
        self.produced += 1;
        Ok(Some(WorkflowSpec {
            id,
            arrival_ns,
            text: None,
            task: None,
            plans,
        }))
    }

    fn expected_len(&self) -> Option<u64> {
        Some(self.spec.workflows)
    }
}
