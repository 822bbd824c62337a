//! Simulated against measured: two results folders with the same Parquet schemas (a
//! `chimera run` and a replay of the same workload, or two runs), joined per request and per
//! workflow, with the relative error of TTFT, TPOT and end-to-end latency.

use crate::calib::fit::ErrStats;
use crate::error::{Error, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt32Type, UInt64Type};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// Read numeric columns (as f64, nulls as NaN) and `status` (as text) of one Parquet table.
fn read_table(path: &Path, numeric: &[&str]) -> Result<(Vec<Vec<f64>>, Vec<String>)> {
    let reader = crate::input::open_parquet(path)?.build()?;
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); numeric.len()];
    let mut status = Vec::new();
    for batch in reader {
        let batch = batch?;
        for (k, name) in numeric.iter().enumerate() {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| Error::bad(format!("{}: no column `{name}`", path.display())))?;
            for i in 0..col.len() {
                let v = if col.is_null(i) {
                    f64::NAN
                } else {
                    match col.data_type() {
                        DataType::Int64 => col.as_primitive::<Int64Type>().value(i) as f64,
                        DataType::UInt64 => col.as_primitive::<UInt64Type>().value(i) as f64,
                        DataType::UInt32 => col.as_primitive::<UInt32Type>().value(i) as f64,
                        DataType::Float64 => col.as_primitive::<Float64Type>().value(i),
                        other => {
                            return Err(Error::bad(format!(
                                "{}: column `{name}` has type {other}, expected a number",
                                path.display()
                            )))
                        }
                    }
                };
                cols[k].push(v);
            }
        }
        let s = batch
            .column_by_name("status")
            .ok_or_else(|| Error::bad(format!("{}: no column `status`", path.display())))?;
        let s = arrow::compute::cast(s, &DataType::Utf8)?;
        let s = s.as_string::<i32>();
        status.extend((0..s.len()).map(|i| s.value(i).to_string()));
    }
    Ok((cols, status))
}

/// One latency metric, simulated against measured over the matched rows.
#[derive(Debug, Clone, Serialize)]
pub struct MetricComparison {
    pub name: String,
    pub unit: String,
    /// (simulated, measured) per matched row.
    #[serde(skip)]
    pub pairs: Vec<(f64, f64)>,
    pub error: ErrStats,
}

/// The whole comparison of two results folders.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub requests_matched: usize,
    pub requests_only_simulated: usize,
    pub requests_only_measured: usize,
    pub workflows_matched: usize,
    pub metrics: Vec<MetricComparison>,
}

/// Rows of `requests.parquet` by (workflow, stage), the key that names the same call in two
/// runs (request ids follow issue order, which timing changes): (ttft, tpot, e2e) in
/// milliseconds and the prompt's tokens, finished rows only.
fn requests(dir: &Path) -> Result<HashMap<(u64, u32), [f64; 4]>> {
    let path = dir.join("requests.parquet");
    let (c, status) = read_table(
        &path,
        &[
            "workflow_id",
            "stage",
            "ttft_ns",
            "tpot_ns",
            "arrival_ns",
            "finish_ns",
            "prompt_tokens",
        ],
    )?;
    Ok((0..status.len())
        .filter(|&i| status[i] == "ok")
        .map(|i| {
            (
                (c[0][i] as u64, c[1][i] as u32),
                [c[2][i] / 1e6, c[3][i] / 1e6, (c[5][i] - c[4][i]) / 1e6, c[6][i]],
            )
        })
        .collect())
}

/// Two folders hold one workload when their workflows' first calls have the same prompts: the
/// first prompt is the workload's, whatever the policy or the timing did (later prompts carry
/// earlier outputs, which depend on the model a policy picked). A token or two of difference
/// is allowed (a server may count a start token); more than a tenth of first calls differing
/// means two unrelated runs, whose "errors" would be meaningless.
fn check_same_workload(
    s: &HashMap<(u64, u32), [f64; 4]>,
    m: &HashMap<(u64, u32), [f64; 4]>,
    ids: &[(u64, u32)],
    simulated: &Path,
    measured: &Path,
) -> Result<()> {
    let firsts: Vec<&(u64, u32)> = ids.iter().filter(|k| k.1 == 0).collect();
    let differ: Vec<&&(u64, u32)> = firsts
        .iter()
        .filter(|k| {
            let (a, b) = (s[k][3], m[k][3]);
            (a - b).abs() > 2.0_f64.max(0.02 * a.max(b))
        })
        .collect();
    if !firsts.is_empty() && differ.len() * 10 > firsts.len() {
        let k = differ[0];
        return Err(Error::bad(format!(
            "compare: {} and {} are not runs of one workload: {} of {} workflows start with prompts of different lengths (workflow {}: {} against {} tokens); compare a run with the replay of the same scenario and seed",
            simulated.display(),
            measured.display(),
            differ.len(),
            firsts.len(),
            k.0,
            s[k][3],
            m[k][3]
        )));
    }
    Ok(())
}

fn workflows(dir: &Path) -> Result<HashMap<u64, f64>> {
    let path = dir.join("workflows.parquet");
    let (c, status) = read_table(&path, &["workflow_id", "arrival_ns", "finish_ns"])?;
    Ok((0..status.len())
        .filter(|&i| status[i] == "ok")
        .map(|i| (c[0][i] as u64, (c[2][i] - c[1][i]) / 1e9))
        .collect())
}

fn metric(name: &str, unit: &str, pairs: Vec<(f64, f64)>) -> MetricComparison {
    let pairs: Vec<(f64, f64)> = pairs
        .into_iter()
        .filter(|(s, m)| s.is_finite() && m.is_finite() && *m > 0.0)
        .collect();
    let ratios: Vec<f64> = pairs.iter().map(|(s, m)| s / m).collect();
    MetricComparison {
        name: name.into(),
        unit: unit.into(),
        error: ErrStats::of(&ratios),
        pairs,
    }
}

/// Join `simulated` and `measured` results folders per request and per workflow.
pub fn compare_dirs(simulated: &Path, measured: &Path) -> Result<Comparison> {
    let (s, m) = (requests(simulated)?, requests(measured)?);
    let mut ids: Vec<(u64, u32)> = s.keys().filter(|k| m.contains_key(k)).copied().collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(Error::bad(format!(
            "compare: {} and {} share no finished (workflow, stage) calls (not the same workload?)",
            simulated.display(),
            measured.display()
        )));
    }
    check_same_workload(&s, &m, &ids, simulated, measured)?;
    let col = |k: usize| ids.iter().map(|i| (s[i][k], m[i][k])).collect::<Vec<_>>();
    let (sw, mw) = (workflows(simulated)?, workflows(measured)?);
    let mut wids: Vec<u64> = sw.keys().filter(|k| mw.contains_key(k)).copied().collect();
    wids.sort_unstable();
    Ok(Comparison {
        requests_matched: ids.len(),
        requests_only_simulated: s.len() - ids.len(),
        requests_only_measured: m.len() - ids.len(),
        workflows_matched: wids.len(),
        metrics: vec![
            metric("request TTFT", "ms", col(0)),
            metric("request TPOT", "ms", col(1)),
            metric("request E2E", "ms", col(2)),
            metric("workflow E2E", "s", wids.iter().map(|w| (sw[w], mw[w])).collect()),
        ],
    })
}
