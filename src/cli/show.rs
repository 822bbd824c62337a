//! `chimera summary DIR...`: the key figures of finished runs (or replays) side by side, for
//! what-ifs: the same scenario with one thing changed.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    /// Result folders (`chimera run`, `chimera replay`), each with its summary.json.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Print JSON (one object per folder) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// (label, dotted path in summary.json, scale, decimals)
const ROWS: [(&str, &str, f64, usize); 14] = [
    ("workflows", "workflows.count", 1.0, 0),
    ("workflows failed", "workflows.failed", 1.0, 0),
    ("workflow E2E p50 (s)", "workflows.e2e_s.p50", 1.0, 2),
    ("workflow E2E p90 (s)", "workflows.e2e_s.p90", 1.0, 2),
    ("workflow E2E p99 (s)", "workflows.e2e_s.p99", 1.0, 2),
    ("request TTFT p50 (ms)", "requests.ttft_ms.p50", 1.0, 1),
    ("request TTFT p99 (ms)", "requests.ttft_ms.p99", 1.0, 1),
    ("request TPOT p50 (ms)", "requests.tpot_ms.p50", 1.0, 2),
    ("request E2E p99 (ms)", "requests.e2e_ms.p99", 1.0, 1),
    ("failed attempts", "requests.failed_attempts", 1.0, 0),
    ("accuracy (%)", "accuracy.accuracy", 100.0, 1),
    ("workflows / s", "throughput.workflows_per_s", 1.0, 3),
    ("output tokens / s", "throughput.output_tokens_per_s", 1.0, 0),
    ("makespan (s)", "throughput.makespan_s", 1.0, 1),
];

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

pub fn run(a: SummaryArgs) -> Result<i32> {
    let mut sums = Vec::new();
    for d in &a.dirs {
        let p = d.join("summary.json");
        let text = crate::input::read_text(&p)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::bad(format!("{}: {e}", p.display())))?;
        if v.get("workflows").is_none() {
            return Err(Error::bad(format!(
                "{}: not a chimera summary (no `workflows`)",
                p.display()
            )));
        }
        sums.push(v);
    }
    if a.json {
        let rows: Vec<Value> = a
            .dirs
            .iter()
            .zip(&sums)
            .map(|(d, s)| {
                let mut o = serde_json::Map::new();
                o.insert("dir".into(), Value::from(d.display().to_string()));
                for (_, path, _, _) in ROWS {
                    o.insert(path.into(), get(s, path).cloned().unwrap_or(Value::Null));
                }
                Value::Object(o)
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return Ok(0);
    }
    let names: Vec<String> = a
        .dirs
        .iter()
        .map(|d| {
            d.file_name()
                .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(0).clamp(10, 28);
    print!("{:<24}", "");
    for n in &names {
        print!(" {n:>w$}");
    }
    println!();
    for (label, path, scale, dec) in ROWS {
        let cells: Vec<String> = sums
            .iter()
            .map(|s| match get(s, path).and_then(Value::as_f64) {
                Some(x) => format!("{:.dec$}", x * scale),
                None => "-".into(),
            })
            .collect();
        if cells.iter().all(|c| c == "-") {
            continue;
        }
        print!("{label:<24}");
        for c in &cells {
            print!(" {c:>w$}");
        }
        println!();
    }
    Ok(0)
}
