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
mod plot;
mod report;
mod show;
mod sweep;

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
    /// Train on a trace with text and per-model outcomes; write the router (JSON).
    Train {
        #[arg(long)]
        trace: PathBuf,
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
        Command::Sweep { what, args } => sweep::run(what, args),
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
            let out = out.unwrap_or_else(|| PathBuf::from("out").join(&resolved.scenario.name));
            run_cmd(&resolved, &out, &sets, path.as_deref(), quiet, json)
        }
    }
}

fn bench_policy(predictor: &Path, router: &Path, text_trace: Option<&Path>, requests: u64, json: bool) -> Result<i32> {
    use crate::policy::{Decision, RequestInfo};
    use std::sync::Arc;
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(|e| Error::io(p, e));
    let sets = vec![
        "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.5}, min_confidence_gain: 0.1}"
            .to_string(),
        format!("policy.length={{kind: qrf, path: {}}}", abs(predictor)?.display()),
        format!("policy.confidence={{kind: router, path: {}}}", abs(router)?.display()),
        "policy.priority=stjf".to_string(),
    ];
    // The default cluster, with the router's first two models in place of its two.
    let text = std::fs::read_to_string(router).map_err(|e| Error::io(router, e))?;
    let rm: crate::router::RouterModel =
        serde_json::from_str(&text).map_err(|e| Error::bad(format!("{}: not a router file: {e}", router.display())))?;
    if rm.models.len() < 2 {
        return Err(Error::bad(format!(
            "{}: the benchmark needs a router with two models",
            router.display()
        )));
    }
    let mut sets = sets;
    for k in 0..2 {
        sets.push(format!("cluster.engines[{k}].model={}", rm.models[k]));
        sets.push(format!(
            "cluster.engines[{k}].name={}",
            rm.models[k].to_ascii_lowercase()
        ));
    }
    let r = scenario::load_str(DEFAULT_SCENARIO, &sets, Path::new("."))?;
    let mut core = crate::factory::build_policy(&r, 1);
    let texts: Vec<Arc<str>> = match text_trace {
        Some(p) => crate::trace::read_trace(p)?.workflows.iter().filter_map(|w| w.text.clone()).collect(),
        None => vec![Arc::from("Let $f(x) = x^3 - 3x + 1$. Find the number of real solutions of $f(f(x)) = 0$, and compute the sum of the squares of all real solutions. Express your answer as a common fraction if it is not an integer. Recall that the composition of two cubic polynomials has degree nine; count carefully, using the intermediate value theorem on suitable intervals, and justify why no solution is repeated.")],
    };
    if texts.is_empty() {
        return Err(Error::bad("--text-trace: the trace has no problem text"));
    }
    let mut src = crate::trace::source::GeneratedWorkload::new(
        &[(crate::trace::Task::Apps, 0.5), (crate::trace::Task::Math, 0.5)],
        &r.models,
        requests,
        crate::workload::arrivals::InterArrival::from_spec(&crate::workload::arrivals::ArrivalSpec::Poisson {
            rate_per_s: 1.0,
            rate_scale: 1.0,
        })
        .expect("poisson"),
        1,
    )?;
    use crate::workload::WorkloadSource;
    let mut costs_ns: Vec<f64> = Vec::with_capacity(requests as usize);
    let mut id = 0u64;
    while let Some(w) = src.next_workflow()? {
        let plan = &w.plans[0];
        let mut so_far = 0u64;
        for (k, st) in plan.stages.iter().enumerate() {
            let info = RequestInfo {
                request: id,
                workflow: w.id,
                stage: k as u32,
                prompt_tokens: st.prompt_tokens,
                context_tokens: st.context_tokens,
                workflow_output_so_far: so_far,
                text: Some(texts[(w.id as usize) % texts.len()].clone()),
                task: w.task.clone(),
                oracle: None,
            };
            let t0 = Instant::now();
            core.handle_request(0, info);
            while let Some(d) = core.poll_decision() {
                std::hint::black_box(&d);
                if let Decision::Abandon { .. } = d {
                    return Err(Error::other("the policy abandoned a request"));
                }
            }
            costs_ns.push(t0.elapsed().as_nanos() as f64);
            core.handle_finished(0, id, st.output_tokens);
            so_far += st.output_tokens as u64;
            id += 1;
            if id >= requests {
                break;
            }
        }
        core.handle_workflow_done(0, w.id);
        if id >= requests {
            break;
        }
    }
    costs_ns.sort_by(f64::total_cmp);
    let q = |p: f64| crate::stats::quantile_sorted(&costs_ns, p) / 1e3;
    let mean_us = costs_ns.iter().sum::<f64>() / costs_ns.len() as f64 / 1e3;
    // Share of workflow latency: the same policy on the default scenario.
    let out = std::env::temp_dir().join(format!("chimera-bench-policy-{}", std::process::id()));
    let rep = crate::run::run_to_dir(&r, &out, &sets, None, &mut |_, _| {})?;
    let _ = std::fs::remove_dir_all(&out);
    let per_wf = rep.summary.requests.count as f64 / rep.summary.workflows.count.max(1) as f64;
    let e2e_s = rep.summary.workflows.e2e_s.mean.unwrap_or(f64::NAN);
    let share = mean_us * 1e-6 * per_wf / e2e_s;
    let v = serde_json::json!({
        "requests": costs_ns.len(), "decision_us_p50": q(0.5), "decision_us_p99": q(0.99), "decision_us_mean": mean_us,
        "requests_per_workflow": per_wf, "workflow_e2e_s_mean": e2e_s, "share_of_workflow_latency": share,
    });
    if json {
        print_json(&v)?;
    } else {
        println!(
            "chimera decision (router + predictor + balancer + STJF), {} requests: p50 {:.1} us, p99 {:.1} us, mean {:.1} us",
            costs_ns.len(),
            q(0.5),
            q(0.99),
            mean_us
        );
        println!(
            "default scenario with this policy: {per_wf:.2} requests per workflow, mean workflow E2E {e2e_s:.2} s: decisions are {:.4} % of workflow latency",
            share * 100.0
        );
    }
    Ok(0)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| Error::other(e.to_string()))?
    );
    Ok(())
}

fn predictor_cmd(what: PredictorCmd) -> Result<i32> {
    use crate::predictor::{evaluate, qrf::ForestConfig, LengthPredictor, PREDICTOR_FORMAT};
    let print = |r: &crate::predictor::PredictorReport, json: bool| -> Result<()> {
        if json {
            print_json(&r)?;
        } else {
            println!("{} calls, quantile {}", r.rows, r.quantile);
            println!(
                "  {:<34} {:>12} {:>10} {:>9}",
                "predictor", "pinball", "MAE", "Spearman"
            );
            for s in &r.scores {
                println!(
                    "  {:<34} {:>12.1} {:>10.1} {:>9.3}",
                    s.predictor, s.pinball_loss, s.mae, s.spearman
                );
            }
        }
        Ok(())
    };
    match what {
        PredictorCmd::Train {
            traces,
            out,
            quantile,
            trees,
            seed,
            json,
        } => {
            if !(0.0..=1.0).contains(&quantile) {
                return Err(Error::bad(format!("--quantile: expected 0..=1, got {quantile}")));
            }
            if trees == 0 {
                return Err(Error::bad("--trees: expected at least 1"));
            }
            let mut all = crate::trace::read_trace(&traces[0])?;
            for p in &traces[1..] {
                let t = crate::trace::read_trace(p)?;
                let base = all.workflows.len() as u64;
                all.workflows.extend(t.workflows.into_iter().map(|mut w| {
                    w.id += base;
                    w
                }));
            }
            let prov = serde_json::json!({
                "trained_on": traces.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "workflows": all.workflows.len(),
                "trainer": format!("chimera {} predictor train", env!("CARGO_PKG_VERSION")),
            });
            let p = LengthPredictor::train(
                &all,
                quantile,
                &ForestConfig {
                    trees,
                    seed,
                    ..ForestConfig::default()
                },
                prov,
            );
            let text = serde_json::to_string(&p).map_err(|e| Error::other(e.to_string()))?;
            std::fs::write(&out, text).map_err(|e| Error::io(&out, e))?;
            if !json {
                println!(
                    "wrote {} (figures below are in-sample; evaluate on a held-out trace)",
                    out.display()
                );
            }
            print(&evaluate(&p, &all), json)?;
        }
        PredictorCmd::Eval { predictor, trace, json } => {
            let text = std::fs::read_to_string(&predictor).map_err(|e| Error::io(&predictor, e))?;
            let p: LengthPredictor = serde_json::from_str(&text)
                .map_err(|e| Error::bad(format!("{}: not a predictor file: {e}", predictor.display())))?;
            if p.format != PREDICTOR_FORMAT {
                return Err(Error::bad(format!(
                    "{}: format `{}`, expected `{PREDICTOR_FORMAT}`",
                    predictor.display(),
                    p.format
                )));
            }
            let t = crate::trace::read_trace(&trace)?;
            print(&evaluate(&p, &t), json)?;
        }
    }
    Ok(0)
}

/// Embeddings of `texts` with the encoder in `dir` (the `encoder` build feature).
#[cfg(feature = "encoder")]
fn embed_all(dir: &Path, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    let enc = crate::encoder::TextEncoder::load(dir)?;
    texts.iter().map(|t| enc.embed(t)).collect()
}

#[cfg(not(feature = "encoder"))]
fn embed_all(_dir: &Path, _texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    Err(Error::bad("--encoder: this chimera was built without the `encoder` feature; rebuild with `cargo build --release --features encoder`"))
}

fn router_dataset(t: &crate::trace::Trace) -> Result<crate::router::eval::Dataset<'_>> {
    let ws: Vec<_> = t.workflows.iter().filter(|w| w.text.is_some()).collect();
    if ws.is_empty() {
        return Err(Error::bad(
            "the trace has no problem text; a router trains on text (import one with `chimera trace import math-l5`)",
        ));
    }
    Ok(crate::router::eval::Dataset {
        texts: ws.iter().map(|w| w.text.as_deref().expect("filtered")).collect(),
        labels: ws
            .iter()
            .map(|w| w.plans.iter().map(|p| p.success == Some(true)).collect())
            .collect(),
        models: t.models.clone(),
    })
}

fn print_router_report(r: &crate::router::eval::EvalReport, json: bool) -> Result<()> {
    if json {
        print_json(&r)?;
        return Ok(());
    }
    println!("{} items", r.items);
    println!(
        "  {:<14} {:>6} {:>6} {:>8} {:>8} {:>12}",
        "model", "items", "solved", "AUC", "Brier", "AUC length"
    );
    let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    for m in &r.models {
        println!(
            "  {:<14} {:>6} {:>6} {:>8} {:>8.3} {:>12}",
            m.model,
            m.count,
            m.positives,
            f(m.auc),
            m.brier,
            f(m.auc_length_only)
        );
    }
    println!(
        "  {:<14} {:>6} {:>6} {:>8} {:>8} {:>12}",
        "mean",
        "",
        "",
        f(r.mean_auc),
        "",
        f(r.mean_auc_length_only)
    );
    println!("  (mean-accuracy baseline: AUC 0.5 for every model)");
    println!("  calibration (predicted -> observed solve rate, items):");
    for m in &r.models {
        let bins: Vec<String> = m
            .calibration
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| format!("{:.2}->{:.2} ({})", b.mean_predicted, b.observed_rate, b.count))
            .collect();
        println!("  {:<14} {}", m.model, bins.join("  "));
    }
    Ok(())
}

fn router_cmd(what: RouterCmd) -> Result<i32> {
    use crate::router::{self, eval, FeatureConfig, RouterModel, TrainConfig};
    let frac_ok = |f: f64| {
        if (0.0..1.0).contains(&f) {
            Ok(())
        } else {
            Err(Error::bad(format!("--test-fraction: expected 0 <= f < 1, got {f}")))
        }
    };
    match what {
        RouterCmd::Train {
            trace,
            out,
            test_fraction,
            seed,
            json,
            encoder: Some(dir),
        } => {
            frac_ok(test_fraction)?;
            let t = crate::trace::read_trace(&trace)?;
            let data = router_dataset(&t)?;
            let (train_idx, _) = data.split(test_fraction, seed);
            let embs = embed_all(&dir, &train_idx.iter().map(|&i| data.texts[i]).collect::<Vec<_>>())?;
            let labels: Vec<Vec<bool>> = train_idx.iter().map(|&i| data.labels[i].clone()).collect();
            let prov = serde_json::json!({
                "trained_on": trace.display().to_string(), "encoder": dir.display().to_string(),
                "items": embs.len(), "held_out_fraction": test_fraction, "split_seed": seed,
            });
            let m = router::train_dense(&embs, &labels, &data.models, prov);
            std::fs::write(
                &out,
                serde_json::to_string(&m).map_err(|e| Error::other(e.to_string()))?,
            )
            .map_err(|e| Error::io(&out, e))?;
            let r = router::Router::new(m);
            let p: Vec<Vec<f64>> = embs.iter().map(|x| r.predict_dense(x)).collect();
            if !json {
                println!("wrote {} (encoder heads; figures below are in-sample)", out.display());
            }
            print_router_report(&eval::score(&p, &p, &labels, &data.models), json)?;
        }
        RouterCmd::Train {
            trace,
            out,
            test_fraction,
            seed,
            json,
            encoder: None,
        } => {
            frac_ok(test_fraction)?;
            let t = crate::trace::read_trace(&trace)?;
            let data = router_dataset(&t)?;
            let (train_idx, _) = data.split(test_fraction, seed);
            let texts: Vec<&str> = train_idx.iter().map(|&i| data.texts[i]).collect();
            let labels: Vec<Vec<bool>> = train_idx.iter().map(|&i| data.labels[i].clone()).collect();
            let prov = serde_json::json!({
                "trained_on": trace.display().to_string(),
                "trace_provenance": t.provenance,
                "items": texts.len(),
                "held_out_fraction": test_fraction,
                "split_seed": seed,
                "trainer": format!("chimera {} router train", env!("CARGO_PKG_VERSION")),
            });
            let m = router::train(
                &texts,
                &labels,
                &data.models,
                &FeatureConfig::default(),
                &TrainConfig::default(),
                prov,
            );
            let text = serde_json::to_string(&m).map_err(|e| Error::other(e.to_string()))?;
            std::fs::write(&out, text).map_err(|e| Error::io(&out, e))?;
            let r = router::Router::new(m);
            let p: Vec<Vec<f64>> = texts.iter().map(|x| r.predict(x)).collect();
            let report = eval::score(&p, &p, &labels, &data.models);
            if json {
                print_router_report(&report, true)?;
            } else {
                println!(
                    "wrote {} (trained on {} items; figures below are in-sample)",
                    out.display(),
                    texts.len()
                );
                print_router_report(&report, false)?;
            }
        }
        RouterCmd::Eval {
            router: path,
            trace,
            test_fraction,
            seed,
            json,
        } => {
            frac_ok(test_fraction)?;
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let m: RouterModel = serde_json::from_str(&text)
                .map_err(|e| Error::bad(format!("{}: not a router file: {e}", path.display())))?;
            if m.format != router::ROUTER_FORMAT {
                return Err(Error::bad(format!(
                    "{}: format `{}`, expected `{}`",
                    path.display(),
                    m.format,
                    router::ROUTER_FORMAT
                )));
            }
            let t = crate::trace::read_trace(&trace)?;
            let data = router_dataset(&t)?;
            if m.models != data.models {
                return Err(Error::bad(format!(
                    "router models {} differ from the trace's {}",
                    m.models.join(","),
                    data.models.join(",")
                )));
            }
            let (train_idx, test_idx) = if test_fraction > 0.0 {
                data.split(test_fraction, seed)
            } else {
                (vec![], (0..data.texts.len()).collect())
            };
            let r = router::Router::new(m);
            let p: Vec<Vec<f64>> = test_idx.iter().map(|&i| r.predict(data.texts[i])).collect();
            let lens = if train_idx.is_empty() {
                p.clone()
            } else {
                eval::length_baseline(&data, &train_idx, &test_idx)
            };
            let labels: Vec<Vec<bool>> = test_idx.iter().map(|&i| data.labels[i].clone()).collect();
            print_router_report(&eval::score(&p, &lens, &labels, &data.models), json)?;
        }
        RouterCmd::Cv {
            trace,
            folds,
            seed,
            json,
            encoder,
        } => {
            if folds < 2 {
                return Err(Error::bad("--folds: expected at least 2"));
            }
            let t = crate::trace::read_trace(&trace)?;
            let data = router_dataset(&t)?;
            let r = match encoder {
                None => eval::cross_validate(&data, folds, seed, &FeatureConfig::default(), &TrainConfig::default()),
                Some(dir) => {
                    let embs = embed_all(&dir, &data.texts)?;
                    eval::cross_validate_with(&data, folds, seed, |train, test| {
                        let e: Vec<Vec<f32>> = train.iter().map(|&i| embs[i].clone()).collect();
                        let l: Vec<Vec<bool>> = train.iter().map(|&i| data.labels[i].clone()).collect();
                        let r = router::Router::new(router::train_dense(&e, &l, &data.models, serde_json::Value::Null));
                        test.iter().map(|&i| r.predict_dense(&embs[i])).collect()
                    })
                }
            };
            print_router_report(&r, json)?;
        }
    }
    Ok(0)
}

fn trace_cmd(what: TraceCmd) -> Result<i32> {
    use crate::trace::{self, FittedParams, Task};
    match what {
        TraceCmd::Gen {
            task,
            models,
            workflows,
            seed,
            out,
        } => {
            let task = Task::parse(&task).map_err(|e| e.context("--task"))?;
            if workflows == 0 {
                return Err(Error::bad("--workflows: expected at least 1"));
            }
            let t = trace::gen::generate(FittedParams::embedded(), task, &models, workflows, seed)?;
            trace::write_trace(&out, &t)?;
            println!(
                "wrote {} ({} workflows of {} for {})",
                out.display(),
                t.workflows.len(),
                task.name(),
                t.models.join(", ")
            );
        }
        TraceCmd::Import {
            what:
                ImportCmd::MathL5 {
                    outcomes,
                    problems,
                    models,
                    seed,
                    out,
                },
        } => {
            let t = trace::import::import_math_l5(&outcomes, &problems, &models, seed, FittedParams::embedded())?;
            trace::write_trace(&out, &t)?;
            println!(
                "wrote {} ({} workflows with real problem text and outcomes for {})",
                out.display(),
                t.workflows.len(),
                t.models.join(", ")
            );
        }
        TraceCmd::Stats {
            file,
            compare_data,
            json,
        } => {
            let t = trace::read_trace(&file)?;
            let rows = trace::stats::stats(&t, compare_data.as_deref(), FittedParams::embedded())?;
            if json {
                print_json(&rows)?;
            } else {
                println!(
                    "{}: {} workflows, models {}",
                    file.display(),
                    t.workflows.len(),
                    t.models.join(", ")
                );
                print!("{}", trace::stats::table(&rows));
            }
        }
        TraceCmd::Fit { data, out } => {
            let p = trace::fit::fit(&data)?;
            let mut text = String::from("# Generator parameters fitted by `chimera trace fit --data ../shared/data`.\n# Do not edit by hand: refit. Each note says which file and columns a part came from.\n");
            text += &serde_saphyr::to_string(&p).map_err(|e| Error::other(e.to_string()))?;
            std::fs::write(&out, text).map_err(|e| Error::io(&out, e))?;
            println!("wrote {}", out.display());
        }
    }
    Ok(0)
}

fn run_cmd(r: &Resolved, out: &Path, sets: &[String], path: Option<&Path>, quiet: bool, json: bool) -> Result<i32> {
    let bar = if quiet || json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} workflows ({elapsed})")
            .map_err(|e| Error::other(e.to_string()))?
            .progress_chars("=> "),
    );
    bar.set_message(r.scenario.name.clone());
    let t0 = Instant::now();
    let mut progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let rep = crate::run::run_to_dir(r, out, sets, path, &mut progress);
    bar.finish_and_clear();
    let rep = rep?;
    let wall = t0.elapsed().as_secs_f64();
    if json {
        let s =
            std::fs::read_to_string(out.join("summary.json")).map_err(|e| Error::io(out.join("summary.json"), e))?;
        print!("{s}");
    } else if !quiet {
        print_summary(&rep.summary, rep.sim_end_ns, wall, out, false);
    }
    Ok(0)
}

fn fmt_opt(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 1000.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    }
}

fn stat_row(label: &str, s: &Stats) -> String {
    format!(
        "  {label:<28} {:>8} {:>10} {:>10} {:>10} {:>10}",
        s.count,
        fmt_opt(s.mean),
        fmt_opt(s.p50),
        fmt_opt(s.p90),
        fmt_opt(s.p99)
    )
}

/// The human-readable summary table.
/// `measured`: the summary of a replay (times measured, not simulated; no engine steps).
pub fn print_summary(s: &Summary, sim_end_ns: i64, wall_s: f64, out: &Path, measured: bool) {
    println!(
        "chimera {} · scenario {} · seed {} · {}",
        crate::run::VERSION,
        s.scenario,
        s.seed,
        s.policy
    );
    if measured {
        println!(
            "{} workflows ({} failed), {} request attempts ({} rejected) · measured over {:.1} s",
            s.workflows.count, s.workflows.failed, s.requests.count, s.requests.rejected, wall_s
        );
    } else {
        println!(
            "{} workflows ({} failed), {} requests ({} rejected, {} preemptions) · {:.1} s simulated in {:.2} s wall",
            s.workflows.count,
            s.workflows.failed,
            s.requests.count,
            s.requests.rejected,
            s.requests.preemptions,
            sim_end_ns as f64 / 1e9,
            wall_s
        );
    }
    println!();
    println!(
        "  {:<28} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "latency", "count", "mean", "p50", "p90", "p99"
    );
    println!("{}", stat_row("request TTFT (ms)", &s.requests.ttft_ms));
    println!("{}", stat_row("request TPOT (ms)", &s.requests.tpot_ms));
    println!("{}", stat_row("request E2E (ms)", &s.requests.e2e_ms));
    let queue = if measured {
        "request client queue (ms)"
    } else {
        "request engine queue (ms)"
    };
    println!("{}", stat_row(queue, &s.requests.queue_ms));
    println!("{}", stat_row("workflow E2E (s)", &s.workflows.e2e_s));
    println!(
        "{}",
        stat_row("workflow E2E / out token (ms)", &s.workflows.e2e_per_output_token_ms)
    );
    println!();
    println!(
        "  {:<16} {:>10} {:>7} {:>10} {:>14}",
        "model", "workflows", "share", "accuracy", "mean E2E (s)"
    );
    for m in &s.by_model {
        let acc = m
            .accuracy
            .as_ref()
            .map(|a| format!("{:.1}%", a.accuracy * 100.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} {:>10} {:>6.1}% {:>10} {:>14}",
            m.model,
            m.workflows,
            m.share * 100.0,
            acc,
            fmt_opt(m.e2e_s.mean)
        );
    }
    if let Some(a) = &s.accuracy {
        println!("  {:<16} {:>10} {:>7} {:>9.1}%", "all", a.known, "", a.accuracy * 100.0);
    }
    println!();
    if measured {
        println!("  {:<32} {:<13} timing", "endpoint", "model");
        for e in &s.engines {
            println!("  {:<32} {:<13} {}", e.name, e.model, e.step_time_source);
        }
    } else {
        print_engines(s);
    }
    println!();
    println!(
        "  throughput: {:.2} workflows/s, {:.2} requests/s, {:.0} output tokens/s over {:.1} s",
        s.throughput.workflows_per_s,
        s.throughput.requests_per_s,
        s.throughput.output_tokens_per_s,
        s.throughput.makespan_s
    );
    if measured {
        println!(
            "  results: {}/{{requests,workflows,itl,metrics}}.parquet (+ .jsonl as recorded), decisions.jsonl, summary.json, manifest.json",
            out.display()
        );
        return;
    }
    if s.engines.iter().any(|e| e.step_time_source == "roofline-default") {
        println!("  step times: roofline defaults from datasheets (not measured); give engines a calibration file to change that");
    }
    if s.engines.iter().any(|e| e.step_time_source == "calibration (derived)") {
        println!("  step times: a calibration derived from another GPU's measurements and the datasheets (not measured on this GPU; see manifest.json)");
    }
    println!(
        "  results: {}/{{requests,workflows,engines}}.parquet, summary.json, manifest.json",
        out.display()
    );
}

fn print_engines(s: &Summary) {
    println!(
        "  {:<18} {:<13} {:<10} {:>8} {:>6} {:>11} {:>8} {:>10}  {}",
        "engine", "model", "gpu", "steps", "busy", "tok/step", "preempt", "KV tokens", "step time"
    );
    for e in &s.engines {
        println!(
            "  {:<18} {:<13} {:<10} {:>8} {:>5.0}% {:>11.1} {:>8} {:>10}  {}",
            e.name,
            e.model,
            e.gpu,
            e.steps,
            e.busy_fraction * 100.0,
            e.mean_step_tokens,
            e.preemptions,
            e.kv_capacity_tokens,
            e.step_time_source
        );
    }
}

#[cfg(feature = "live")]
fn emulate(model: &str, gpu: &str, calibration: Option<&str>, host: &str, port: u16, sets: &[String]) -> Result<i32> {
    let e = scenario::single_engine(model, gpu, calibration, sets)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|x| Error::other(format!("emulate: {x}")))?;
    rt.block_on(async {
        let addr = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|x| Error::other(format!("emulate: cannot listen on {addr}: {x}")))?;
        let local = listener.local_addr().map_err(|x| Error::other(x.to_string()))?;
        println!(
            "emulating {} on {} ({} blocks of KV, max {} sequences; step times: {}) at http://{local}",
            e.model,
            e.gpu,
            e.kv.num_gpu_blocks,
            e.limits.max_num_seqs,
            e.step_time_source["kind"].as_str().unwrap_or("?")
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        chimera_emulate(listener, &e).await
    })?;
    Ok(0)
}

/// The replay's command-line options.
#[cfg_attr(not(feature = "live"), allow(dead_code))]
struct ReplayCli {
    resume: bool,
    quiet: bool,
    json: bool,
    sets: Vec<String>,
    scenario_path: Option<PathBuf>,
}

#[cfg(feature = "live")]
fn replay_cmd(r: &Resolved, endpoints: &Path, out: &Path, o: ReplayCli) -> Result<i32> {
    let (quiet, json) = (o.quiet, o.json);
    let eps = crate::replay::endpoints::Endpoints::load(endpoints)?;
    eps.engines(&r.models).map_err(|e| e.context(endpoints.display()))?;
    let opts = crate::replay::ReplayOptions {
        resume: o.resume,
        quiet: quiet || json,
        sets: o.sets,
        scenario_path: o.scenario_path,
    };
    let rep = crate::replay::replay(r, &eps, out, &opts)?;
    if json {
        let p = out.join("summary.json");
        print!("{}", std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?);
    } else if !quiet {
        print_summary(&rep.summary, (rep.wall_s * 1e9) as i64, rep.wall_s, out, true);
        println!(
            "  replay: {} workflows replayed, {} skipped (finished before --resume), {} failed attempts; send lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            rep.replayed,
            rep.skipped,
            rep.failed_attempts,
            rep.send_lag_ns.0 as f64 / 1e6,
            rep.send_lag_ns.1 as f64 / 1e6,
            rep.send_lag_ns.2 as f64 / 1e6
        );
    }
    Ok(0)
}

#[cfg(not(feature = "live"))]
fn replay_cmd(_: &Resolved, _: &Path, _: &Path, _: ReplayCli) -> Result<i32> {
    Err(Error::bad("replay: this binary was built without the `live` feature (on by default); rebuild with `cargo build --release` (or `--features live` after `--no-default-features`)"))
}

#[cfg(feature = "live")]
async fn chimera_emulate(listener: tokio::net::TcpListener, e: &scenario::ResolvedEngine) -> Result<()> {
    crate::emulate::serve(listener, e).await
}

#[cfg(not(feature = "live"))]
fn emulate(_: &str, _: &str, _: Option<&str>, _: &str, _: u16, _: &[String]) -> Result<i32> {
    Err(Error::bad("emulate: this binary was built without the `live` feature (on by default); rebuild with `cargo build --release` (or `--features live` after `--no-default-features`)"))
}

/// Check a scenario, a sweep plan (it has `series`) or an endpoints file (it has `models` and no
/// `cluster`), whichever `f` is; say what it holds.
fn validate_file(f: &Path, sets: &[String]) -> Result<String> {
    let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
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
