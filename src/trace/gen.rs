//! The trace generator: ReAct workflows for APPS or MATH on chosen models, drawn from the fitted
//! parameters. Deterministic under a seed; each model draws from its own named stream, so adding
//! a model to the list leaves the others' plans unchanged (common random numbers).

use super::format::{Trace, TraceWorkflow};
use super::params::{FittedParams, Task, TaskParams};
use crate::error::{Error, Result};
use crate::hw::Catalog;
use crate::rng::{stream, StreamRng};
use crate::workload::dist::{Dist, Sampler};
use crate::workload::{Plan, Stage};
use rand::RngExt;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Largest prompt a generated stage may have; older context is dropped beyond it.
pub const MAX_PROMPT_TOKENS: u32 = 30_000;

fn lognormal(mean: f64, cv: f64) -> Sampler {
    Dist::Lognormal {
        mean: mean.max(1e-3),
        cv: cv.max(1e-3),
        min: None,
        max: None,
    }
    .sampler("fitted parameters")
    .expect("valid lognormal")
}

/// Draws the parts of a workflow that do not depend on the outcome.
pub struct StageModel<'a> {
    pub p: &'a TaskParams,
    obs: Sampler,
    delay: Sampler,
    /// Multiplies every drawn tool delay (1: as fitted; 0: no tool time), for ablations.
    pub delay_scale: f64,
    /// A latent problem's length factor: lognormal with the spread of the real problems'
    /// fitted factors (mean 1), so a workflow's stages share its problem's verbosity.
    factor: Option<Sampler>,
}

impl<'a> StageModel<'a> {
    pub fn new(p: &'a TaskParams) -> Self {
        StageModel {
            p,
            obs: lognormal(p.observation_tokens.mean, p.observation_tokens.cv),
            delay: lognormal(p.tool_delay_ms.mean, p.tool_delay_ms.cv),
            delay_scale: 1.0,
            factor: p.items.as_ref().filter(|i| i.list.len() >= 2).map(|i| {
                let f: Vec<f64> = i.list.iter().map(|x| x.3).collect();
                let m = f.iter().sum::<f64>() / f.len() as f64;
                let sd = (f.iter().map(|x| (x - m).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
                lognormal(1.0, sd / m)
            }),
        }
    }

    /// Number of stages for a model of `params_b` billion parameters and an outcome.
    pub fn stage_count(&self, params_b: f64, solved: bool, rng: &mut StreamRng) -> usize {
        let probs = self.p.stage_probs(params_b, solved);
        let u: f64 = rng.random();
        let mut acc = 0.0;
        for (k, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return k + 1;
            }
        }
        4
    }

    /// Lay out `n` stages: the first prompt is template + problem; each later prompt carries the
    /// previous prompt and output as context plus the tool observation. Each stage writes its
    /// own output: `call` (the mean output of a single-call answer) times MINT's per-turn ratio
    /// for stage k of an n-turn episode, drawn lognormal with spread `cvs[k]` (None: exactly
    /// the mean, for an import whose single-call length is known).
    pub fn layout(
        &self,
        n: usize,
        call: f64,
        cvs: Option<&[f64]>,
        problem_tokens: u32,
        rng: &mut StreamRng,
    ) -> Vec<Stage> {
        let n = n.clamp(1, 4);
        let ratios = &self.p.stages.turn_ratio[n - 1];
        let mut stages = Vec::with_capacity(n);
        let mut prompt = (self.p.template_tokens.round() as u32 + problem_tokens).clamp(1, MAX_PROMPT_TOKENS);
        let mut context = 0u32;
        for k in 0..n {
            let mean = call * ratios.get(k).copied().unwrap_or(1.0);
            let drawn = match cvs {
                Some(c) => lognormal(mean, c.get(k).copied().unwrap_or(0.5)).sample(rng),
                None => mean,
            };
            let out = drawn.round().clamp(1.0, MAX_PROMPT_TOKENS as f64) as u32;
            let (obs, delay_ns) = if k + 1 < n {
                (
                    self.obs.sample_tokens(rng, 1),
                    (self.delay.sample(rng) * self.delay_scale * 1e6).round() as i64,
                )
            } else {
                (0, 0)
            };
            stages.push(Stage {
                prompt_tokens: prompt,
                context_tokens: context,
                output_tokens: out,
                tool_delay_ns: delay_ns,
                prefix: None,
                prompt_id: None,
            });
            context = (prompt + out).min(MAX_PROMPT_TOKENS - obs.min(MAX_PROMPT_TOKENS - 1));
            prompt = context + obs;
        }
        stages
    }

    /// Draw the stages of one workflow on a model: the mean single-call output (the ZeroEval /
    /// MapCoder fit by size, outcome and level) times the problem's length factor (a real
    /// problem's fitted one; for a latent problem one drawn from their spread), spread over
    /// MINT's per-turn ratios, each stage drawn with the spread a problem's length leaves
    /// (MINT's per-turn spread when the parameters have no problems).
    #[allow(clippy::too_many_arguments)]
    pub fn stages(
        &self,
        n: usize,
        params_b: f64,
        solved: bool,
        level: &str,
        item: Option<&Item>,
        problem_tokens: u32,
        rng: &mut StreamRng,
    ) -> Vec<Stage> {
        let n = n.clamp(1, 4);
        let mean = self.p.mean_output_tokens(params_b, solved, level);
        match (item, &self.p.items, &self.factor) {
            (Some(it), Some(items), _) => {
                let cvs = vec![items.residual_cv; n];
                self.layout(n, mean * it.length_factor, Some(&cvs), problem_tokens, rng)
            }
            // A latent problem: a factor of its own, then the same per-stage spread.
            (None, Some(items), Some(f)) => {
                let cvs = vec![items.residual_cv; n];
                let factor = f.sample(rng);
                self.layout(n, mean * factor, Some(&cvs), problem_tokens, rng)
            }
            _ => {
                let cvs = self.p.stages.turn_cv[n - 1].clone();
                self.layout(n, mean, Some(&cvs), problem_tokens, rng)
            }
        }
    }
}

/// A real problem the generator can draw: its text (read from the data folder), the fitted
/// latent difficulty and output length factor (`traces/fitted-params.yaml`, `items`).
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub level: String,
    pub b: f64,
    pub length_factor: f64,
    pub text: Arc<str>,
}

/// The real problems of one task, joined with their text from the data folder
/// (../shared/data layout: MATH level 5 from `model-outcomes/math-l5_problems.jsonl`, APPS from
/// `apps/selected150.jsonl`).
pub fn load_items(params: &TaskParams, task: Task, data: &Path) -> Result<Vec<Item>> {
    let (file, id_key, text_key) = match task {
        Task::Math => ("model-outcomes/math-l5_problems.jsonl", "item_id", "problem"),
        Task::Apps => ("apps/selected150.jsonl", "name", "description"),
    };
    let path = data.join(file);
    let listed = params.items.as_ref().ok_or_else(|| {
        Error::bad(format!(
            "the fitted parameters have no {} items (refit with `chimera trace fit`)",
            task.name()
        ))
    })?;
    let mut texts: BTreeMap<String, Arc<str>> = BTreeMap::new();
    for (i, line) in crate::input::read_text(&path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::bad(format!("{}: line {}: {e}", path.display(), i + 1)))?;
        let id = match &v[id_key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(Error::bad(format!("{}: line {}: no `{id_key}`", path.display(), i + 1))),
        };
        let text = v[text_key]
            .as_str()
            .ok_or_else(|| Error::bad(format!("{}: line {}: no `{text_key}` text", path.display(), i + 1)))?;
        texts.insert(id, Arc::from(text));
    }
    let items: Vec<Item> = listed
        .list
        .iter()
        .filter_map(|(id, level, b, f)| {
            texts.get(id).map(|t| Item {
                id: id.clone(),
                level: level.clone(),
                b: *b,
                length_factor: *f,
                text: t.clone(),
            })
        })
        .collect();
    if items.is_empty() {
        return Err(Error::bad(format!(
            "{}: none of the {} fitted {} items has its text here",
            path.display(),
            listed.list.len(),
            task.name()
        )));
    }
    Ok(items)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Draw one of equal-mass quantiles with a uniform `u` in [0, 1).
pub fn sample_quantiles(q: &[f64], u: f64) -> f64 {
    q[((u * q.len() as f64) as usize).min(q.len() - 1)]
}

/// A lazy generator of one task's workflows for a set of models.
pub struct TraceGen<'a> {
    task: Task,
    p: &'a TaskParams,
    sm: StageModel<'a>,
    specs: Vec<(String, f64)>,
    problem: Sampler,
    wf_rng: StreamRng,
    model_rngs: Vec<StreamRng>,
    next_id: u64,
    /// Real problems to draw from; latent difficulties without text when empty.
    items: Vec<Item>,
}

impl<'a> TraceGen<'a> {
    /// `models` are catalogue names (aliases accepted).
    pub fn new(params: &'a FittedParams, task: Task, models: &[String], seed: u64) -> Result<Self> {
        let cat = Catalog::builtin();
        let specs: Vec<(String, f64)> = models
            .iter()
            .map(|m| cat.model(m).map(|s| (s.name.clone(), s.total_params() as f64 / 1e9)))
            .collect::<Result<_>>()?;
        let p = params.task(task);
        Ok(TraceGen {
            task,
            p,
            sm: StageModel::new(p),
            problem: lognormal(p.problem_tokens.mean, p.problem_tokens.cv),
            wf_rng: stream(seed, &format!("trace.{}.workflow", task.name())),
            model_rngs: specs
                .iter()
                .map(|(m, _)| stream(seed, &format!("trace.{}.model.{m}", task.name())))
                .collect(),
            specs,
            next_id: 0,
            items: Vec::new(),
        })
    }

    /// Draw real problems (with their text) from the data folder instead of latent
    /// difficulties.
    pub fn with_items(mut self, data: &Path) -> Result<Self> {
        self.items = load_items(self.p, self.task, data)?;
        Ok(self)
    }

    /// Keep only one part of the problems (`keep`), or all but it (`!keep`): part `k` of `n`
    /// holds the problems whose id hashes to `k` modulo `n`. For held-out checks: train on
    /// one part, evaluate on another.
    pub fn select_items(mut self, part: (u64, u64), keep: bool) -> Result<Self> {
        let (k, n) = part;
        self.items
            .retain(|it| (crate::router::text_key(&it.id) % n == k) == keep);
        if self.items.is_empty() {
            return Err(Error::bad(format!("--items: part {k}/{n} leaves no problem")));
        }
        Ok(self)
    }

    /// Scale every tool delay (the draws stay the same: common random numbers).
    pub fn with_tool_delay_scale(mut self, scale: f64) -> Self {
        self.sm.delay_scale = scale;
        self
    }

    pub fn items(&self) -> usize {
        self.items.len()
    }

    pub fn models(&self) -> Vec<String> {
        self.specs.iter().map(|(m, _)| m.clone()).collect()
    }

    /// The next workflow.
    pub fn next_workflow(&mut self) -> TraceWorkflow {
        let p = self.p;
        let item = if self.items.is_empty() {
            None
        } else {
            let u: f64 = self.wf_rng.random();
            Some(self.items[((u * self.items.len() as f64) as usize).min(self.items.len() - 1)].clone())
        };
        let (level, b, problem_tokens) = match &item {
            Some(it) => (
                it.level.clone(),
                it.b,
                ((it.text.chars().count() as f64 / p.chars_per_token).round() as u32).max(8),
            ),
            None => {
                let total_w: f64 = p.difficulty_mix.iter().map(|(_, w)| w).sum();
                let u: f64 = self.wf_rng.random::<f64>() * total_w;
                let mut acc = 0.0;
                let level = p.difficulty_mix.iter().find(|(_, w)| {
                    acc += w;
                    u < acc
                });
                let level = level
                    .or(p.difficulty_mix.last())
                    .map(|(l, _)| l.clone())
                    .expect("a level");
                let b = sample_quantiles(p.quantiles(&level), self.wf_rng.random());
                (level, b, self.problem.sample_tokens(&mut self.wf_rng, 8))
            }
        };
        let sm = &self.sm;
        let plans = self
            .specs
            .iter()
            .zip(self.model_rngs.iter_mut())
            .map(|((name, params_b), rng)| {
                let solved = rng.random::<f64>() < sigmoid(p.ability_of(name, *params_b, &level) - b);
                let k = sm.stage_count(*params_b, solved, rng);
                let stages = sm.stages(k, *params_b, solved, &level, item.as_ref(), problem_tokens, rng);
                Plan {
                    model: Some(Arc::from(name.as_str())),
                    stages,
                    success: Some(solved),
                }
            })
            .collect();
        let id = self.next_id;
        self.next_id += 1;
        TraceWorkflow {
            id,
            task: self.task.name().into(),
            problem_id: match &item {
                Some(it) => format!("{}-{}", self.task.name(), it.id),
                None => format!("{}-gen-{id}", self.task.name()),
            },
            difficulty: level,
            text: item.map(|it| it.text),
            plans,
        }
    }
}

/// Generate `n` workflows of `task` for `models` (catalogue names).
/// With `data` (the ../shared/data folder), workflows are real problems with their text.
pub fn generate(
    params: &FittedParams,
    task: Task,
    models: &[String],
    n: u64,
    seed: u64,
    data: Option<&Path>,
) -> Result<Trace> {
    generate_part(params, task, models, n, seed, data, None)
}

/// [`generate`] drawing only from one part of the problems (see [`TraceGen::select_items`]).
pub fn generate_part(
    params: &FittedParams,
    task: Task,
    models: &[String],
    n: u64,
    seed: u64,
    data: Option<&Path>,
    part: Option<((u64, u64), bool)>,
) -> Result<Trace> {
    let mut g = TraceGen::new(params, task, models, seed)?;
    if let Some(d) = data {
        g = g.with_items(d)?;
        if let Some((p, keep)) = part {
            g = g.select_items(p, keep)?;
        }
    }
    let workflows = (0..n).map(|_| g.next_workflow()).collect();
    let provenance = serde_json::json!({
        "kind": "generated",
        "generator": format!("chimera {} trace gen", env!("CARGO_PKG_VERSION")),
        "task": task.name(),
        "models": g.models(),
        "workflows": n,
        "seed": seed,
        "params": "traces/fitted-params.yaml (embedded)",
        "problems": match data {
            Some(_) => serde_json::json!(format!("{} real {} problems with their text, drawn uniformly{} (data folder given at generation; text from the files named in traces/fitted-params.yaml's item notes)", g.items(), task.name(), match part { Some(((k, n), true)) => format!(", part {k}/{n}"), Some(((k, n), false)) => format!(", all but part {k}/{n}"), None => String::new() })),
            None => serde_json::json!("latent difficulties, no text"),
        },
        "params_notes": params.notes,
    });
    Ok(Trace {
        models: g.models(),
        workflows,
        provenance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Latent workflows (no problem text) of `task` for `models`.
    fn latent(task: Task, models: &[&str], n: u64, seed: u64) -> Trace {
        let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        generate(FittedParams::embedded(), task, &models, n, seed, None).unwrap()
    }

    #[test]
    fn generation_is_deterministic_and_models_do_not_disturb_each_other() {
        let two = ["Qwen2.5-1.5B", "Qwen2.5-7B"];
        let a = latent(Task::Math, &two, 200, 5);
        let b = latent(Task::Math, &two, 200, 5);
        let c = latent(Task::Math, &["Qwen2.5-7B"], 200, 5);
        assert_eq!(a.workflows, b.workflows);
        for (wa, wc) in a.workflows.iter().zip(&c.workflows) {
            assert_eq!(
                wa.plans[1], wc.plans[0],
                "the 7B plan does not depend on the other models"
            );
        }
        let d = latent(Task::Math, &two, 200, 6);
        assert_ne!(a.workflows, d.workflows);
    }

    #[test]
    fn stages_are_well_formed() {
        let t = latent(Task::Apps, &["Qwen2.5-1.5B", "Qwen2.5-14B"], 300, 1);
        for w in &t.workflows {
            for plan in &w.plans {
                assert!((1..=4).contains(&plan.stages.len()));
                for (k, s) in plan.stages.iter().enumerate() {
                    assert!(s.output_tokens >= 1 && s.prompt_tokens >= 1 && s.context_tokens <= s.prompt_tokens);
                    if k > 0 {
                        let prev = plan.stages[k - 1];
                        assert_eq!(
                            s.context_tokens,
                            prev.prompt_tokens + prev.output_tokens,
                            "context carries the history"
                        );
                        assert!(prev.tool_delay_ns > 0);
                    }
                }
                assert_eq!(plan.stages.last().unwrap().tool_delay_ns, 0);
            }
        }
    }

    #[test]
    fn bigger_models_solve_more_and_a_problem_hard_for_the_big_model_is_hard_for_the_small() {
        let t = latent(Task::Math, &["Qwen2.5-1.5B", "Qwen2.5-7B"], 4000, 2);
        let solved = |k: usize| t.workflows.iter().filter(|w| w.plans[k].success == Some(true)).count() as f64;
        assert!(solved(1) > solved(0) * 1.3, "{} vs {}", solved(1), solved(0));
        // Correlation through the latent difficulty: P(small solves | big fails) < P(small solves).
        let big_fails: Vec<_> = t
            .workflows
            .iter()
            .filter(|w| w.plans[1].success == Some(false))
            .collect();
        let p_small_given_big_fail =
            big_fails.iter().filter(|w| w.plans[0].success == Some(true)).count() as f64 / big_fails.len() as f64;
        assert!(
            p_small_given_big_fail < 0.6 * solved(0) / 4000.0,
            "{p_small_given_big_fail}"
        );
    }
}
