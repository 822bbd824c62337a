//! `chimera trace import math-l5`: a trace from per-item model outcomes in the ZeroEval format
//! (`task,model,...,item_id,...,correct_heuristic,output_chars,...`) and a problems JSONL
//! (`{"item_id": ..., "problem": ...}`): the real problem text, the real outcome and output length
//! of every model, with stages laid out by the generator's stage model. Works on any files of
//! that format (another split of the same data, say).

use super::fit::{col, read_csv};
use super::format::{Trace, TraceWorkflow};
use super::gen::StageModel;
use super::params::FittedParams;
use crate::error::{Error, Result};
use crate::hw::Catalog;
use crate::rng::stream;
use crate::workload::Plan;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn norm(s: &str) -> String {
    s.to_ascii_lowercase().replace("-instruct", "").replace("-chat", "")
}

/// Import MATH level-5 outcomes for `models` (catalogue names; the outcome file may call them
/// `<name>-Instruct`).
pub fn import_math_l5(
    outcomes: &Path,
    problems: &Path,
    models: &[String],
    seed: u64,
    params: &FittedParams,
) -> Result<Trace> {
    let cat = Catalog::builtin();
    let specs: Vec<(String, f64)> = models
        .iter()
        .map(|m| cat.model(m).map(|s| (s.name.clone(), s.total_params() as f64 / 1e9)))
        .collect::<Result<_>>()?;
    let (h, rows) = read_csv(outcomes)?;
    let (ct, cm, ci, cc, co) = (
        col(&h, "task", outcomes)?,
        col(&h, "model", outcomes)?,
        col(&h, "item_id", outcomes)?,
        col(&h, "correct_heuristic", outcomes)?,
        col(&h, "output_chars", outcomes)?,
    );
    let mut seen_models: Vec<String> = Vec::new();
    // item -> model index -> (solved, output chars)
    let mut items: BTreeMap<String, Vec<Option<(bool, f64)>>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if r[ct] != "math-l5" {
            continue;
        }
        if !seen_models.contains(&r[cm]) {
            seen_models.push(r[cm].clone());
        }
        let Some(k) = specs.iter().position(|(m, _)| norm(m) == norm(&r[cm])) else {
            continue;
        };
        let line = i + 2;
        let solved = match r[cc].as_str() {
            "1" => true,
            "0" => false,
            other => {
                return Err(Error::bad(format!(
                    "{}: line {line}: column correct_heuristic: `{other}` is not 0 or 1",
                    outcomes.display()
                )))
            }
        };
        let chars: f64 = r[co].parse().ok().filter(|c: &f64| *c >= 0.0).ok_or_else(|| {
            Error::bad(format!(
                "{}: line {line}: column output_chars: `{}` is not a non-negative number",
                outcomes.display(),
                r[co]
            ))
        })?;
        items.entry(r[ci].clone()).or_insert_with(|| vec![None; specs.len()])[k] = Some((solved, chars));
    }
    for (m, _) in &specs {
        if !seen_models.iter().any(|s| norm(s) == norm(m)) {
            return Err(Error::bad(format!(
                "{}: no math-l5 rows for model {m}; models there: {}",
                outcomes.display(),
                seen_models.join(", ")
            )));
        }
    }
    let text = crate::input::read_text(&problems)?;
    let p = &params.math;
    let sm = StageModel::new(p);
    let mut rng = stream(seed, "trace.import.math-l5");
    let mut workflows = Vec::new();
    let mut skipped = 0u64;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::bad(format!("{}: line {}: {e}", problems.display(), i + 1)))?;
        let id = match &v["item_id"] {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            _ => {
                return Err(Error::bad(format!(
                    "{}: line {}: field item_id: missing",
                    problems.display(),
                    i + 1
                )))
            }
        };
        let problem = v["problem"].as_str().ok_or_else(|| {
            Error::bad(format!(
                "{}: line {}: field problem: missing",
                problems.display(),
                i + 1
            ))
        })?;
        let Some(outs) = items.get(&id) else {
            skipped += 1;
            continue;
        };
        if outs.iter().any(|o| o.is_none()) {
            skipped += 1;
            continue;
        }
        let problem_tokens = ((problem.chars().count() as f64 / p.chars_per_token).round() as u32).max(1);
        let plans = specs
            .iter()
            .zip(outs)
            .map(|((name, params_b), o)| {
                let (solved, chars) = o.expect("complete");
                let k = sm.stage_count(*params_b, solved, &mut rng);
                // The real single-call answer's length; stages by MINT's per-turn ratios.
                let call = (chars / p.chars_per_token).max(1.0);
                Plan {
                    model: Some(Arc::from(name.as_str())),
                    stages: sm.layout(k, call, None, problem_tokens, &mut rng),
                    success: Some(solved),
                }
            })
            .collect();
        workflows.push(TraceWorkflow {
            id: workflows.len() as u64,
            task: "math".into(),
            problem_id: format!("math-l5-{id}"),
            difficulty: "level 5".into(),
            text: Some(Arc::from(problem)),
            plans,
        });
    }
    if workflows.is_empty() {
        return Err(Error::bad(format!(
            "{} and {} share no item with outcomes for every model ({} problems skipped)",
            outcomes.display(),
            problems.display(),
            skipped
        )));
    }
    let provenance = serde_json::json!({
        "kind": "imported",
        "importer": format!("chimera {} trace import math-l5", env!("CARGO_PKG_VERSION")),
        "outcomes": outcomes.display().to_string(),
        "problems": problems.display().to_string(),
        "models": specs.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
        "seed": seed,
        "problems_skipped_without_all_outcomes": skipped,
        "output_tokens": format!("output_chars / {} (chars per token, traces/fitted-params.yaml)", p.chars_per_token),
        "stages": "stage model of traces/fitted-params.yaml (MINT), given the real outcome",
    });
    Ok(Trace {
        models: specs.into_iter().map(|(m, _)| m).collect(),
        workflows,
        provenance,
    })
}
