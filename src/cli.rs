//! The command line: raw arguments (clap) first, then a validated configuration, then the
//! work. Only this module prints to the terminal and picks exit codes (0 ok, 2 bad input,
//! 1 anything else).

use crate::error::{Error, Result};
use crate::output::summary::{Stats, Summary};
use crate::scenario::{self, Resolved, DEFAULT_SCENARIO};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod calibrate;
mod fidelity;
mod learn;
mod live;
mod plot;
mod report;
mod show;
mod simulate;
mod sweep;
mod traces;
use learn::*;
use live::*;
use simulate::*;
use traces::*;

#[derive(Parser, Debug)]
#[command(
    name = "chimera",
    version,
    about = "Simulate multi-agent LLM workflows on heterogeneous GPU clusters of vLLM-like engines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a scenario (the embedded default when no file is given) and write results.
    Run {
        /// Scenario YAML; omit to run the embedded default scenario.
        scenario: Option<PathBuf>,
        /// Results folder (default: out/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override a field: --set path.to.field=value (repeatable; value read as YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// No progress bar and no table; only errors.
        #[arg(long, short)]
        quiet: bool,
        /// Check engine invariants after every step (slower).
        #[arg(long)]
        check: bool,
        /// Print the summary as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Work with scenarios.
    Scenario {
        #[command(subcommand)]
        what: ScenarioCmd,
    },
    /// Workflow traces: generate, import, inspect, fit.
    Trace {
        #[command(subcommand)]
        what: TraceCmd,
    },
    /// The semantic router: train, evaluate, cross-validate.
    Router {
        #[command(subcommand)]
        what: RouterCmd,
    },
    /// The length predictor (quantile regression forest): train and evaluate.
    Predictor {
        #[command(subcommand)]
        what: PredictorCmd,
    },
    /// Step-time calibration: profile operators, fit, derive, check.
    Calibrate {
        #[command(subcommand)]
        what: calibrate::CalibrateCmd,
    },
    /// Run a parameter sweep (grid x seeds) in parallel into one table; `sweep merge` joins shards.
    #[command(args_conflicts_with_subcommands = true)]
    Sweep {
        #[command(subcommand)]
        what: Option<sweep::SweepCmd>,
        #[command(flatten)]
        args: sweep::SweepArgs,
    },
    /// Figures from sweep results: Pareto frontiers, S x Q heatmaps, sensitivity lines.
    Plot {
        #[command(subcommand)]
        what: plot::PlotCmd,
    },
    /// Serve one emulated engine: OpenAI completions API and vLLM /metrics, timed by the engine
    /// model in real time (feature `live`).
    Emulate {
        /// Catalogue model.
        #[arg(long)]
        model: String,
        /// Catalogue GPU.
        #[arg(long)]
        gpu: String,
        /// Calibration: a file, builtin:<name>, or auto (default).
        #[arg(long)]
        calibration: Option<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0: any free one; the address is printed).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Engine fields: --set max_num_seqs=64 (repeatable).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        sets: Vec<String>,
    },
    /// Replay a scenario's workflows in real time against live OpenAI-compatible endpoints,
    /// with the scenario's policy deciding (feature `live`). Results in the run's schemas.
    Replay {
        /// Scenario YAML; omit for the embedded default scenario.
        scenario: Option<PathBuf>,
        /// ENDPOINTS.yaml: the URLs serving each model of the scenario.
        #[arg(long)]
        endpoints: PathBuf,
        /// Results folder.
        #[arg(long)]
        out: PathBuf,
        /// Continue an interrupted replay in --out, skipping the workflows it finished.
        #[arg(long)]
        resume: bool,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        #[arg(long, short)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Simulated against measured: TTFT, TPOT and E2E per request and workflow of two results folders.
    Compare(plot::CompareArgs),
    /// Key figures of finished runs or replays side by side (a what-if against its base).
    Summary(show::SummaryArgs),
    /// The simulator against real vLLM measurements: recreate every measured experiment under
    /// the folders as a scenario, simulate it, and report TTFT and E2E per load stage.
    Fidelity(fidelity::FidelityArgs),
    /// The paper comparisons from sweeps: Chimera against baselines at matched settings
    /// (feature `analysis`, polars).
    Report(report::ReportArgs),
    /// Benchmarks (not tests).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Check scenario files without running them.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TraceCmd {
    /// Generate APPS or MATH ReAct workflows for some models from the fitted parameters.
    Gen {
        #[arg(long)]
        task: String,
        /// Comma-separated catalogue model names.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        #[arg(long)]
        workflows: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// The data folder (../shared/data): workflows are then real MATH level-5 or APPS
        /// problems, with their text, drawn uniformly, each with its fitted difficulty and
        /// length; without it, latent difficulties and no text.
        #[arg(long)]
        data: Option<PathBuf>,
        /// With --data: draw only part K of N of the problems (`K/N`, by a hash of the problem
        /// id), or all but it (`!K/N`): for checks on problems a model was not trained on.
        #[arg(long, requires = "data")]
        items: Option<String>,
    },
    /// Import real per-item outcomes into a trace.
    Import {
        #[command(subcommand)]
        what: ImportCmd,
    },
    /// Per-model accuracy, output tokens and stage counts of a trace (beside the data's).
    Stats {
        file: PathBuf,
        /// The data folder (../shared/data) to compare with.
        #[arg(long)]
        compare_data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Fit the generator's parameters to the data folder and write them (YAML).
    Fit {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum RouterCmd {
    /// Train on traces with text and per-model outcomes; write the router (JSON).
    Train {
        /// One or more traces (repeat the flag), all with the same models: a MATH and an APPS
        /// trace, say, for a router that reads both.
        #[arg(long = "trace", required = true)]
        traces: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Hold out this fraction of workflows (seeded) from training; `eval` with the same
        /// fraction and seed scores exactly those.
        #[arg(long, default_value_t = 0.0)]
        test_fraction: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
        /// Use a BERT-family encoder from this folder (config.json, model.safetensors,
        /// tokenizer.json) for features instead of TF-IDF (needs the `encoder` build feature).
        #[arg(long)]
        encoder: Option<PathBuf>,
        /// Also train K cross-fitting parts, each without one K-th of the distinct texts; the
        /// router then scores each training text with the part that held it out (for
        /// simulations that draw the training problems). 0: none.
        #[arg(long, default_value_t = 0, conflicts_with = "encoder")]
        cross_fit: usize,
    },
    /// Per-model AUC, Brier score and calibration of a router on a trace (or its held-out part).
    Eval {
        #[arg(long)]
        router: PathBuf,
        #[arg(long)]
        trace: PathBuf,
        #[arg(long, default_value_t = 0.0)]
        test_fraction: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
        /// The encoder an encoder router reads embeddings from (feature `encoder`; default:
        /// the folder the router was trained with, from its provenance)
        #[arg(long)]
        encoder: Option<PathBuf>,
    },
    /// K-fold cross-validation of the training procedure on a trace.
    Cv {
        #[arg(long)]
        trace: PathBuf,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
        /// Cross-validate heads on encoder embeddings instead (needs the `encoder` feature).
        #[arg(long)]
        encoder: Option<PathBuf>,
        /// Train each fold on this trace's rows whose problem text is among the fold's training
        /// texts (a generated trace of the same problems, say) and score on --trace: how a
        /// router trained on generated outcomes ranks real ones it never saw. Its models must
        /// include --trace's.
        #[arg(long, conflicts_with = "encoder")]
        train_trace: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PredictorCmd {
    /// Train on one or more traces; write the predictor (JSON).
    Train {
        #[arg(long = "trace", required = true)]
        traces: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Quantile of remaining tokens the predictor reports.
        #[arg(long, default_value_t = 0.5)]
        quantile: f64,
        #[arg(long, default_value_t = 40)]
        trees: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Pinball loss, MAE and Spearman against the true remaining workflow tokens of a trace,
    /// beside the request-level predictor and the oracle.
    Eval {
        #[arg(long)]
        predictor: PathBuf,
        #[arg(long)]
        trace: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Per-request decision cost of the Chimera policy (router + predictor + balancer + STJF) on
    /// the default cluster, and its share of workflow latency in the default scenario.
    Policy {
        #[arg(long)]
        predictor: PathBuf,
        #[arg(long)]
        router: PathBuf,
        /// A trace with problem text to route on (else a fixed 400-character problem).
        #[arg(long)]
        text_trace: Option<PathBuf>,
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImportCmd {
    /// MATH level 5 from ZeroEval-format outcomes and a problems JSONL.
    #[command(name = "math-l5")]
    MathL5 {
        #[arg(long)]
        outcomes: PathBuf,
        #[arg(long)]
        problems: PathBuf,
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScenarioCmd {
    /// Print the embedded default scenario as YAML.
    Default,
    /// Every scenario field: its type, default, unit and meaning.
    Reference {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A scenario as the simulator sees it: every default filled in (JSON).
    Show {
        file: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
    },
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Scenario {
            what: ScenarioCmd::Default,
        } => {
            print!("{DEFAULT_SCENARIO}");
            Ok(0)
        }
        Command::Scenario {
            what: ScenarioCmd::Reference { json },
        } => {
            print!("{}", scenario::reference::render(json));
            Ok(0)
        }
        Command::Scenario {
            what: ScenarioCmd::Show { file, sets },
        } => {
            let r = scenario::load(&file, &sets)?;
            let v = serde_json::to_value(&r.scenario).map_err(|e| Error::other(e.to_string()))?;
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
            Ok(0)
        }
        Command::Trace { what } => trace_cmd(what),
        Command::Router { what } => router_cmd(what),
        Command::Predictor { what } => predictor_cmd(what),
        Command::Calibrate { what } => calibrate::run(what),
        Command::Sweep { what, args } => {
            crate::interrupt::install();
            sweep::run(what, args)
        }
        Command::Plot { what } => plot::run(what),
        Command::Report(a) => report::run(a),
        Command::Compare(a) => plot::compare(a),
        Command::Summary(a) => show::run(a),
        Command::Fidelity(a) => fidelity::run(a),
        Command::Replay {
            scenario: path,
            endpoints,
            out,
            resume,
            seed,
            mut sets,
            quiet,
            json,
        } => {
            crate::interrupt::install();
            if let Some(s) = seed {
                sets.push(format!("seed={s}"));
            }
            let resolved = match &path {
                Some(p) => scenario::load(p, &sets)?,
                None => scenario::load_str(DEFAULT_SCENARIO, &sets, Path::new("."))
                    .map_err(|e| e.context("embedded default scenario"))?,
            };
            let opts = ReplayCli {
                resume,
                quiet,
                json,
                sets,
                scenario_path: path,
            };
            replay_cmd(&resolved, &endpoints, &out, opts)
        }
        Command::Emulate {
            model,
            gpu,
            calibration,
            host,
            port,
            sets,
        } => emulate(&model, &gpu, calibration.as_deref(), &host, port, &sets),
        Command::Bench {
            what:
                BenchCmd::Policy {
                    predictor,
                    router,
                    text_trace,
                    requests,
                    json,
                },
        } => bench_policy(&predictor, &router, text_trace.as_deref(), requests, json),
        Command::Validate { files, sets } => {
            let mut bad = 0;
            for f in &files {
                match validate_file(f, &sets) {
                    Ok(what) => println!("ok    {}  ({what})", f.display()),
                    Err(e) => {
                        bad += 1;
                        println!("error {e}");
                    }
                }
            }
            Ok(if bad > 0 { 2 } else { 0 })
        }
        Command::Run {
            scenario: path,
            out,
            seed,
            mut sets,
            quiet,
            check,
            json,
        } => {
            crate::interrupt::install();
            if let Some(s) = seed {
                sets.push(format!("seed={s}"));
            }
            if check {
                sets.push("limits.check_invariants=true".into());
            }
            let resolved = match &path {
                Some(p) => scenario::load(p, &sets)?,
                None => scenario::load_str(DEFAULT_SCENARIO, &sets, Path::new("."))
                    .map_err(|e| e.context("embedded default scenario"))?,
            };
            let out = out.unwrap_or_else(|| default_out(&resolved.scenario.name));
            run_cmd(&resolved, &out, &sets, path.as_deref(), quiet, json)
        }
    }
}

/// Check a scenario, a sweep plan (it has `series`) or an endpoints file (it has `models` and no
/// `cluster`), whichever `f` is; say what it holds.
fn validate_file(f: &Path, sets: &[String]) -> Result<String> {
    let text = crate::input::read_text(&f)?;
    let tree = scenario::yaml::parse_tree(&text).map_err(|e| e.context(f.display()))?;
    let has = |k: &str| tree.get(k).is_some();
    if has("series") {
        let spec = crate::sweep::SweepSpec::load_plan(f)?;
        let points = spec.points().map_err(|e| e.context(f.display()))?;
        spec.check_points(&points).map_err(|e| e.context(f.display()))?;
        return Ok(format!(
            "sweep plan: {} series, {} points",
            spec.series.len(),
            points.len()
        ));
    }
    if has("models") && !has("cluster") {
        #[cfg(feature = "live")]
        {
            let eps = crate::replay::endpoints::Endpoints::load(f)?;
            let urls: usize = eps.models.values().map(|m| m.urls.len()).sum();
            return Ok(format!("endpoints: {} models, {urls} URLs", eps.models.len()));
        }
        #[cfg(not(feature = "live"))]
        return Err(Error::bad(format!(
            "{}: an endpoints file; checking it needs the `live` feature (on by default): rebuild with `cargo build --release`",
            f.display()
        )));
    }
    let r = scenario::load(f, sets)?;
    Ok(format!("{} engines, models {}", r.engines.len(), r.models.join(", ")))
}

/// `out/<name>` for a scenario name, as one safe folder name: characters other than letters,
/// digits, `.`, `-` and `_` become `_`, and a leading dot gets a `_` before it, so that no
/// name (`../../x`, `/etc`, `..`) writes outside `out/`.
pub fn default_out(name: &str) -> PathBuf {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    PathBuf::from("out").join(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn folders_from_scenario_names_stay_inside_out() {
        for (name, want) in [
            ("default", "out/default"),
            ("qwen2.5-7b", "out/qwen2.5-7b"),
            ("../../x", "out/_.._.._x"),
            ("/etc/passwd", "out/_etc_passwd"),
            ("..", "out/_.."),
            ("", "out/_"),
            ("a b/c", "out/a_b_c"),
        ] {
            let p = super::default_out(name);
            assert_eq!(p, std::path::PathBuf::from(want), "{name}");
            assert_eq!(p.components().count(), 2, "{name}");
        }
    }
}
