//! `chimera plot frontier | heatmap | lines`: figures redrawn from sweep results.

use crate::analysis::{self, plot, XMetric};
use crate::error::Result;
use clap::Subcommand;
use std::path::PathBuf;

/// `chimera compare SIM_DIR MEASURED_DIR`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Results folder of the simulation (`chimera run`).
    pub simulated: PathBuf,
    /// Results folder of the measurement (a replay, or another run).
    pub measured: PathBuf,
    /// Also draw scatter plots: writes PREFIX.png and PREFIX.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn compare(a: CompareArgs) -> Result<i32> {
    let c = crate::analysis::compare::compare_dirs(&a.simulated, &a.measured)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&c).map_err(|e| crate::Error::other(e.to_string()))?
        );
    } else {
        println!(
            "{} requests matched ({} only simulated, {} only measured), {} workflows",
            c.requests_matched, c.requests_only_simulated, c.requests_only_measured, c.workflows_matched
        );
        println!(
            "{:<14} {:>8} {:>10} {:>10} {:>10}",
            "metric", "rows", "median", "p90", "bias"
        );
        for m in &c.metrics {
            println!(
                "{:<14} {:>8} {:>9.1}% {:>9.1}% {:>+9.1}%",
                m.name,
                m.error.points,
                100.0 * m.error.median_rel_err,
                100.0 * m.error.p90_rel_err,
                100.0 * m.error.median_bias
            );
        }
    }
    if let Some(out) = &a.out {
        for f in plot::scatter(&c, out)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(0)
}

#[derive(Subcommand, Debug)]
pub enum PlotCmd {
    /// Latency-accuracy Pareto frontiers of every series in the given sweeps, on one chart.
    Frontier {
        /// Sweep folders (or sweep.parquet files).
        #[arg(required = true)]
        sweeps: Vec<PathBuf>,
        /// Output prefix: writes PREFIX.png and PREFIX.svg.
        #[arg(long)]
        out: PathBuf,
        /// x axis: per-token (latency per output token), mean or p99 (workflow latency).
        #[arg(long, default_value = "per-token")]
        x: String,
        #[arg(long, default_value = "Latency-accuracy frontiers")]
        title: String,
        /// Also print the points (label, x, accuracy, on frontier, parameters).
        #[arg(long)]
        print: bool,
        /// x axis scale: log, linear, or auto (log when latencies span more than 20x).
        #[arg(long, default_value = "auto")]
        scale: String,
    },
    /// A heatmap of one metric over two grid axes (e.g. S x Q).
    Heatmap {
        sweep: PathBuf,
        /// Grid path on the x axis.
        #[arg(long = "x")]
        x_param: String,
        /// Grid path on the y axis.
        #[arg(long = "y")]
        y_param: String,
        /// Summary metric (a sweep.parquet column), e.g. workflows.e2e_s.p99.
        #[arg(long, default_value = "workflows.e2e_s.p99")]
        metric: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Metrics against one grid axis, one line per value of another (e.g. p99 and accuracy vs S per Q).
    Lines {
        sweep: PathBuf,
        #[arg(long = "x")]
        x_param: String,
        #[arg(long = "series")]
        series_param: String,
        #[arg(long, value_delimiter = ',', default_value = "workflows.e2e_s.p99,accuracy.accuracy")]
        metrics: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: PlotCmd) -> Result<i32> {
    let files = match cmd {
        PlotCmd::Frontier {
            sweeps,
            out,
            x,
            title,
            print,
            scale,
        } => {
            let x = XMetric::parse(&x)?;
            let log_x = match scale.as_str() {
                "auto" => None,
                "log" => Some(true),
                "linear" => Some(false),
                other => {
                    return Err(crate::Error::bad(format!(
                        "--scale: expected auto, log or linear, got `{other}`"
                    )))
                }
            };
            let tables = analysis::read_tables(&sweeps)?;
            if print {
                for f in analysis::frontiers(&tables, x)? {
                    for ((p, on), params) in f.points.iter().zip(&f.on_frontier).zip(&f.params) {
                        let ps: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        println!(
                            "{:<24} x {:>10.3}  accuracy {:>6.2} %  {}  {}",
                            f.label,
                            p.0,
                            p.1,
                            if *on { "frontier " } else { "dominated" },
                            ps.join(" ")
                        );
                    }
                }
            }
            plot::frontier(&tables, x, &title, log_x, &out)?
        }
        PlotCmd::Heatmap {
            sweep,
            x_param,
            y_param,
            metric,
            out,
        } => {
            let t = analysis::read_tables(&[sweep])?.remove(0);
            plot::heatmap(&t, &x_param, &y_param, &metric, &out)?
        }
        PlotCmd::Lines {
            sweep,
            x_param,
            series_param,
            metrics,
            out,
        } => {
            let t = analysis::read_tables(&[sweep])?.remove(0);
            let ms: Vec<&str> = metrics.iter().map(String::as_str).collect();
            plot::lines(&t, &x_param, &series_param, &ms, &out)?
        }
    };
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(0)
}
