//! `chimera report`: the paper comparisons from sweep tables (feature `analysis`, polars).

#[cfg(feature = "analysis")]
use crate::analysis::{report, XMetric};
use crate::error::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Sweep folders, one per setting and load.
    #[arg(required = true)]
    pub sweeps: Vec<PathBuf>,
    /// The series compared against the baselines.
    #[arg(long, default_value = "Chimera")]
    pub reference: String,
    /// The reference's operating point: path=value (repeatable).
    #[arg(long = "operating", value_name = "PATH=VALUE")]
    pub operating: Vec<String>,
    /// Baseline series, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "vLLM,MLFQ,LTR")]
    pub baselines: Vec<String>,
    /// For series without the operating axes: which of their grid points to show (0-based).
    #[arg(long, default_value_t = 5)]
    pub baseline_point: usize,
    /// x metric: per-token, mean or p99.
    #[arg(long, default_value = "per-token")]
    pub x: String,
}

#[cfg(feature = "analysis")]
fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "out of range".into())
}

#[cfg(feature = "analysis")]
pub fn run(a: ReportArgs) -> Result<i32> {
    let x = XMetric::parse(&a.x)?;
    let operating: Vec<(String, String)> = a
        .operating
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Error::bad(format!("--operating {s}: expected path=value")))
        })
        .collect::<Result<_>>()?;
    println!("| sweep | {} point: latency, accuracy | baseline | latency ratio at matched accuracy | accuracy gain at matched latency (points) | best ratio over the frontier | best gain over the frontier |", a.reference);
    println!("|---|---|---|---|---|---|---|");
    for s in &a.sweeps {
        let c = report::compare(s, x, &a.reference, &operating, &a.baselines)?;
        for v in &c.versus {
            println!(
                "| {} | {:.1}, {:.1} % | {} | {} | {} | {} | {} |",
                s.display(),
                c.chimera.0,
                c.chimera.1,
                v.baseline,
                opt(v.latency_ratio, |r| format!("{r:.2}x")),
                opt(v.accuracy_gain, |g| format!("{g:+.1}")),
                opt(v.best_latency_ratio, |r| format!("{r:.2}x")),
                opt(v.best_accuracy_gain, |g| format!("{g:+.1}"))
            );
        }
    }
    println!();
    println!("| sweep | series | latency/token (ms) | workflow e2e mean (s) | p99 (s) | queue mean (ms) | queue p99 (ms) | accuracy (%) |");
    println!("|---|---|---|---|---|---|---|---|");
    for s in &a.sweeps {
        for r in report::series_rows(s, &operating, a.baseline_point)? {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} |",
                s.display(),
                r.label,
                r.per_token_ms,
                r.e2e_mean_s,
                r.e2e_p99_s,
                r.queue_mean_ms,
                r.queue_p99_ms,
                r.accuracy_pct
            );
        }
    }
    Ok(0)
}

#[cfg(not(feature = "analysis"))]
pub fn run(a: ReportArgs) -> Result<i32> {
    let _ = a;
    Err(Error::bad(
        "report: this binary was built without the `analysis` feature (polars); rebuild with `cargo build --release --features analysis`",
    ))
}
