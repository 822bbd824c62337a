//! `chimera fidelity` and `chimera calibrate fit-serving`: the simulator against real vLLM.

use crate::analysis::compare::MetricComparison;
use crate::calib::fit::ErrStats;
use crate::error::{Error, Result};
use crate::fidelity::{self, Report, StageReport};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct FidelityArgs {
    /// Folders holding measured experiments (searched recursively).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Print the whole report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the report (fidelity.json, fidelity.md), the plot and the recreated scenarios here
    /// (default: out/fidelity).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// GPU of experiments that do not name one.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Calibration of every engine: auto (default), builtin:<name>, a file, or null (roofline
    /// defaults).
    #[arg(long, default_value = "auto")]
    pub calibration: String,
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.1}%", 100.0 * x)
    } else {
        "-".into()
    }
}

pub fn print_stages(stages: &[StageReport]) {
    println!(
        "{:<44} {:>5} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
        "experiment",
        "stage",
        "rate",
        "TTFT50 m",
        "TTFT50 s",
        "err",
        "E2E50 m",
        "E2E50 s",
        "err",
        "E2E90 e",
        "overload m/s"
    );
    for s in stages {
        println!(
            "{:<44} {:>5} {:>6} {:>7.1}ms {:>7.1}ms {:>8} {:>7.3}s {:>7.3}s {:>8} {:>8}  {}/{}",
            s.experiment,
            s.stage,
            s.rate.map_or("trace".into(), |r| format!("{r}")),
            s.measured.ttft.p50 * 1e3,
            s.simulated.ttft.p50 * 1e3,
            pct(s.ttft_err.p50),
            s.measured.e2e.p50,
            s.simulated.e2e.p50,
            pct(s.e2e_err.p50),
            pct(s.e2e_err.p90),
            if s.measured.overloaded { "yes" } else { "no" },
            if s.simulated.overloaded { "yes" } else { "no" },
        );
    }
    let over: Vec<&StageReport> = stages.iter().filter(|s| s.measured.overloaded).collect();
    if !over.is_empty() {
        println!("overloaded in the measurement (compared on failures past the client's timeout, served throughput and TPOT):");
        for s in over {
            println!("  {}", crate::fidelity::overload_line(s));
        }
    }
}

fn plot(r: &Report, prefix: &Path) -> Result<Vec<PathBuf>> {
    let metric = |name: &str, f: &dyn Fn(&StageReport) -> (f64, f64)| {
        let pairs: Vec<(f64, f64)> = r.stages.iter().map(f).collect();
        let ratios: Vec<f64> = pairs.iter().filter(|(_, m)| *m > 0.0).map(|(s, m)| s / m).collect();
        MetricComparison {
            name: name.into(),
            unit: "s".into(),
            pairs,
            error: ErrStats::of(&ratios),
        }
    };
    let c = crate::analysis::compare::Comparison {
        requests_matched: 0,
        requests_only_simulated: 0,
        requests_only_measured: 0,
        workflows_matched: 0,
        metrics: vec![
            metric("TTFT p50 per stage", &|s| (s.simulated.ttft.p50, s.measured.ttft.p50)),
            metric("E2E p50 per stage", &|s| (s.simulated.e2e.p50, s.measured.e2e.p50)),
            metric("E2E p90 per stage", &|s| (s.simulated.e2e.p90, s.measured.e2e.p90)),
        ],
    };
    crate::analysis::plot::scatter(&c, prefix)
}

pub fn run(a: FidelityArgs) -> Result<i32> {
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("out/fidelity"));
    let r = fidelity::run(&a.dirs, a.gpu.as_deref(), &a.calibration, &out.join("scenarios"))?;
    let json = serde_json::to_string_pretty(&r).map_err(|e| Error::other(e.to_string()))?;
    crate::output::write_atomic(&out.join("fidelity.json"), json.as_bytes())?;
    crate::output::write_atomic(&out.join("fidelity.md"), fidelity::markdown(&r).as_bytes())?;
    let files = plot(&r, &out.join("fidelity"))?;
    if a.json {
        println!("{json}");
    } else {
        print_stages(&r.stages);
        for k in &r.skipped {
            println!("skipped {}: {}", k.dir.display(), k.reason);
        }
        println!("\n{}", r.summary.line());
        eprintln!(
            "wrote {}/fidelity.json, fidelity.md, the scenarios in {}/scenarios",
            out.display(),
            out.display()
        );
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(0)
}
