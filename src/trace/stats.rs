//! `chimera trace stats`: what a trace holds per model (accuracy, output tokens per workflow,
//! stage counts), and with `--compare-data` the same figures from the real data beside them.

use super::fit::{class, lcb_ladder_pass, mint_stage_hists, read_mint, zeroeval_math_figures};
use super::format::Trace;
use super::params::interp;
use super::params::FittedParams;
use crate::error::Result;
use crate::hw::Catalog;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub task: String,
    pub workflows: u64,
    pub accuracy: f64,
    pub output_tokens_mean: f64,
    pub output_tokens_p50: f64,
    pub output_tokens_p99: f64,
    /// Mean over workflows of their output over the sum of their stages' per-turn ratios
    /// (`stages.turn_ratio`): the single-call answer length the workflow corresponds to, what
    /// the data's single-call lengths are compared with.
    pub single_call_tokens_mean: f64,
    /// Share of workflows with 1, 2, 3, 4+ stages.
    pub stages: [f64; 4],
    pub stages_solved: [f64; 4],
    pub stages_failed: [f64; 4],
    pub data: Option<DataStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataStats {
    /// Where the accuracy and length figures come from.
    pub source: String,
    pub accuracy: Option<f64>,
    pub output_tokens_mean: Option<f64>,
    /// MINT episodes of comparable size with the same outcome: stage shares and the total
    /// variation distance to this trace's.
    pub mint_bucket: String,
    pub mint_stages_solved: [f64; 4],
    pub mint_stages_failed: [f64; 4],
    pub tv_solved: f64,
    pub tv_failed: f64,
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    crate::stats::quantile(v, q)
}

fn shares(h: &[u64; 4]) -> [f64; 4] {
    let t: u64 = h.iter().sum();
    h.map(|x| x as f64 / t.max(1) as f64)
}

fn tv(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}

/// Figures per (task, model) of a trace; with `data`, the real figures beside them.
pub fn stats(t: &Trace, data: Option<&Path>, params: &FittedParams) -> Result<Vec<ModelStats>> {
    let mut tasks: Vec<String> = t.workflows.iter().map(|w| w.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    let zeroeval = match data {
        Some(d) => Some(zeroeval_math_figures(&d.join("model-outcomes/zeroeval_per_item.csv"))?),
        None => None,
    };
    let mint = match data {
        Some(d) => Some(read_mint(&d.join("agent-episodes/mint_episodes_max5.csv"))?),
        None => None,
    };
    let lcb = match data {
        Some(d) if tasks.iter().any(|t| t == "apps") => Some(lcb_ladder_pass(
            &d.join("code-outcomes/performances_generation_2024_02_26.json"),
        )?),
        _ => None,
    };
    let mut out = Vec::new();
    for task in &tasks {
        for (k, m) in t.models.iter().enumerate() {
            let ws: Vec<_> = t.workflows.iter().filter(|w| &w.task == task).collect();
            let mut toks = Vec::new();
            let mut single = 0.0;
            let ratios = &params.task(super::params::Task::parse(task)?).stages.turn_ratio;
            let (mut solved, mut hist, mut hs, mut hf) = (0u64, [0u64; 4], [0u64; 4], [0u64; 4]);
            for w in &ws {
                let p = &w.plans[k];
                let total = p.stages.iter().map(|s| s.output_tokens as f64).sum::<f64>();
                toks.push(total);
                let n = p.stages.len().clamp(1, 4) - 1;
                single += total / ratios[n].iter().sum::<f64>().max(1e-9);
                hist[n] += 1;
                if p.success == Some(true) {
                    solved += 1;
                    hs[n] += 1;
                } else {
                    hf[n] += 1;
                }
            }
            let n = ws.len() as u64;
            let mean = toks.iter().sum::<f64>() / n.max(1) as f64;
            let (ss, sf) = (shares(&hs), shares(&hf));
            let data_stats = match (&zeroeval, &mint) {
                (Some(z), Some(mint)) => {
                    let size = Catalog::builtin().model(m).map(|s| s.total_params() as f64 / 1e9).ok();
                    let p = params.task(super::params::Task::parse(task)?);
                    let small = p.stages.small_bucket_max_b;
                    let mint_tasks: &[&str] = if task == "math" {
                        &["math"]
                    } else {
                        &["mbpp", "humaneval"]
                    };
                    let hists = mint_stage_hists(mint, mint_tasks, small);
                    let size_b = size.unwrap_or(7.0);
                    let (ms, mf) = (
                        shares(&hists[class(size_b, small, true)]),
                        shares(&hists[class(size_b, small, false)]),
                    );
                    let (source, acc, len) = if task == "math" {
                        match z.iter().find(|(name, _)| {
                            name.to_ascii_lowercase().replace("-instruct", "") == m.to_ascii_lowercase()
                        }) {
                            Some((name, (_, a, chars))) => (
                                format!("ZeroEval math-l5, {name}"),
                                Some(*a),
                                Some(chars / p.chars_per_token),
                            ),
                            None => ("no per-item data for this model".to_string(), None, None),
                        }
                    } else {
                        // The DeepSeek-Coder ladder's LiveCodeBench pass rates, interpolated in
                        // ln(parameters) at this size and mixed by this trace's levels.
                        let ladder = lcb.as_ref().expect("read with the data");
                        let xs: Vec<f64> = ladder.iter().map(|(s, _)| s.ln()).collect();
                        let mut acc = 0.0;
                        for w in &ws {
                            let ys: Vec<f64> = ladder
                                .iter()
                                .map(|(_, l)| l.get(&w.difficulty).copied().unwrap_or(0.0))
                                .collect();
                            acc += interp(&xs, &ys, size_b.ln()).clamp(0.0, 1.0);
                        }
                        (
                            "LiveCodeBench DSCoder ladder pass@1 at this size (interpolated)".to_string(),
                            Some(acc / ws.len().max(1) as f64),
                            None,
                        )
                    };
                    Some(DataStats {
                        source,
                        accuracy: acc,
                        output_tokens_mean: len,
                        mint_bucket: if size_b <= small {
                            format!("<= {small} B")
                        } else {
                            format!("> {small} B")
                        },
                        mint_stages_solved: ms,
                        mint_stages_failed: mf,
                        tv_solved: tv(&ss, &ms),
                        tv_failed: tv(&sf, &mf),
                    })
                }
                _ => None,
            };
            out.push(ModelStats {
                model: m.clone(),
                task: task.clone(),
                workflows: n,
                accuracy: solved as f64 / n.max(1) as f64,
                output_tokens_mean: mean,
                single_call_tokens_mean: single / n.max(1) as f64,
                output_tokens_p50: pct(&mut toks.clone(), 0.5),
                output_tokens_p99: pct(&mut toks, 0.99),
                stages: shares(&hist),
                stages_solved: ss,
                stages_failed: sf,
                data: data_stats,
            });
        }
    }
    Ok(out)
}

/// The stats as a Markdown table (what traces/README.md shows).
pub fn table(rows: &[ModelStats]) -> String {
    let f = |x: Option<f64>, d: usize| x.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "-".into());
    let h = |a: &[f64; 4]| a.iter().map(|x| format!("{:.2}", x)).collect::<Vec<_>>().join("/");
    let mut s = String::from(
        "| task | model | workflows | accuracy | data accuracy | output tokens mean | p50 | p99 | single-call equivalent | data single-call mean | stages 1/2/3/4 | TV to MINT (solved, failed) | data source |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let d = r.data.as_ref();
        s += &format!(
            "| {} | {} | {} | {:.3} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            r.task,
            r.model,
            r.workflows,
            r.accuracy,
            f(d.and_then(|d| d.accuracy), 3),
            r.output_tokens_mean,
            r.output_tokens_p50,
            r.output_tokens_p99,
            r.single_call_tokens_mean,
            f(d.and_then(|d| d.output_tokens_mean), 0),
            h(&r.stages),
            d.map(|d| format!("{:.3}, {:.3} ({})", d.tv_solved, d.tv_failed, d.mint_bucket))
                .unwrap_or_else(|| "-".into()),
            d.map(|d| d.source.clone()).unwrap_or_else(|| "-".into()),
        );
    }
    s
}
