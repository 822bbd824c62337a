//! `chimera calibrate profile | fit | derive | check`.

use crate::calib::{self, FitOptions, OpClass, Profile};
use crate::error::{Error, Result};
use crate::hw::calibration::Calibration;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum CalibrateCmd {
    /// Time the operators of one transformer layer of a model on this machine's CPU or GPU.
    Profile {
        /// Catalogue model (e.g. Qwen2.5-7B, Llama-2-7B).
        #[arg(long)]
        model: String,
        /// cpu (candle, f32; feature `profile`) or cuda[:N] (cudarc, bf16; feature `cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Output profile (chimera-profile/v1 JSON); rewritten as points are measured.
        #[arg(long)]
        out: PathBuf,
        /// Grid: small (seconds on a CPU) or full (the GPU grid). Default: small on cpu, full on cuda.
        #[arg(long)]
        grid: Option<String>,
        /// Timed repetitions per point (default: the grid's).
        #[arg(long)]
        reps: Option<u32>,
        /// Token counts for the per-layer operators, comma-separated (default: the grid's).
        #[arg(long, value_delimiter = ',')]
        tokens: Vec<u64>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Fit step-time coefficients to operator profiles and write a calibration file.
    Fit {
        /// Profiles (chimera-profile/v1 JSON or Vidur *.mlp.csv), all from one device.
        #[arg(long = "profile", required = true)]
        profiles: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Catalogue GPU the profiles were measured on (default: from the profiles).
        #[arg(long)]
        gpu: Option<String>,
        /// Restrict the calibration to one catalogue model.
        #[arg(long)]
        model: Option<String>,
        /// The engine the calibration is meant for (free text, e.g. "vLLM 0.11.0").
        #[arg(long)]
        engine: Option<String>,
        /// Operator classes to fit: matmul, elementwise, attention (default: all with points).
        #[arg(long, value_delimiter = ',')]
        ops: Vec<String>,
        /// Start from this calibration (same GPU) and refit only the classes in the profiles.
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Derive a calibration for a GPU without measurements from another GPU's calibration.
    Derive {
        #[arg(long = "from")]
        from: PathBuf,
        #[arg(long)]
        gpu: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fit step-time coefficients to a live server from client-side timings of probe requests
    /// (prefill TTFT, decode TPOT at several batch sizes; feature `live`).
    Server {
        /// Base URL of the server (http://HOST:PORT).
        #[arg(long, required_unless_present = "from_points")]
        url: Option<String>,
        /// Refit probe points written earlier by --points, without a server.
        #[arg(long, conflicts_with = "url")]
        from_points: Option<PathBuf>,
        /// vllm or llamacpp.
        #[arg(long, default_value = "vllm")]
        kind: String,
        /// Catalogue model the server runs.
        #[arg(long)]
        model: String,
        /// Catalogue device the server runs on.
        #[arg(long)]
        gpu: String,
        /// The engine's prefill chunk (vLLM max_num_batched_tokens; llama.cpp --ubatch-size).
        #[arg(long, default_value_t = 512)]
        max_num_batched_tokens: u32,
        /// Concurrent sequences the server runs (vLLM max_num_seqs; llama.cpp --parallel).
        #[arg(long, default_value_t = 4)]
        slots: u32,
        /// Prompt lengths of the prefill probes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "32,128,256,512,1024,1536")]
        prefill: Vec<u32>,
        /// Longest prompt of the long-context decode probe (0: none).
        #[arg(long, default_value_t = 1536)]
        long_context: u32,
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// The engine, free text, written into the calibration.
        #[arg(long)]
        engine: Option<String>,
        /// Calibration file to write.
        #[arg(long)]
        out: PathBuf,
        /// Also write the probe points with their predictions (JSON).
        #[arg(long)]
        points: Option<PathBuf>,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Fit the step model to real vLLM serving measurements (request latencies under load),
    /// with a leave-one-experiment-out check.
    FitServing {
        /// Folders holding measured experiments (both `chimera fidelity` layouts).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Fit only the experiments on this GPU (default: every GPU, one coefficient set).
        #[arg(long)]
        gpu: Option<String>,
        /// Calibration file to write.
        #[arg(long)]
        out: PathBuf,
        /// Each load stage is cut to this many seconds while fitting (the report uses full stages).
        #[arg(long, default_value_t = 120.0)]
        stage_seconds: f64,
        /// Nelder-Mead iterations per start.
        #[arg(long, default_value_t = 150)]
        iterations: usize,
        /// Also write the fit report (JSON: in-sample stages, leave-one-model-out and
        /// leave-one-GPU-out stages with their median and max errors).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Folder for the recreated scenarios (default: next to --out).
        #[arg(long)]
        scenarios: Option<PathBuf>,
        /// The engine and version measured, when the files do not record it.
        #[arg(long)]
        engine: Option<String>,
        /// Also write each measured GPU's calibration (the global fit with that GPU's
        /// efficiency factors refined) into this folder, as `<gpu>-vllm-serving.yaml`.
        #[arg(long)]
        gpu_out: Option<PathBuf>,
    },
    /// A calibration's predictions against measured operator points.
    Check {
        #[arg(long)]
        calibration: PathBuf,
        #[arg(long = "profile", required = true)]
        profiles: Vec<PathBuf>,
        /// Print JSON (per operator, per class and `overall`).
        #[arg(long)]
        json: bool,
    },
}

fn load_profiles(paths: &[PathBuf]) -> Result<Vec<Profile>> {
    paths.iter().map(|p| Profile::load(p)).collect()
}

fn save_calibration(cal: &Calibration, out: &Path) -> Result<()> {
    let mut text = String::from(
        "# Step-time calibration (chimera-calibration/v1). Written by `chimera calibrate`; see calibration/README.md.\n",
    );
    text += &serde_saphyr::to_string(cal).map_err(|e| Error::other(e.to_string()))?;
    crate::output::write_atomic(out, text.as_bytes())
}

fn parse_classes(ops: &[String]) -> Result<Option<Vec<OpClass>>> {
    if ops.is_empty() {
        return Ok(None);
    }
    ops.iter()
        .map(|o| match o.as_str() {
            "matmul" => Ok(OpClass::Matmul),
            "elementwise" => Ok(OpClass::Elementwise),
            "attention" => Ok(OpClass::Attention),
            other => Err(Error::bad(format!(
                "--ops: unknown class `{other}` (expected matmul, elementwise, attention)"
            ))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub fn run(cmd: CalibrateCmd) -> Result<i32> {
    match cmd {
        CalibrateCmd::FitServing {
            dirs,
            gpu,
            out,
            stage_seconds,
            iterations,
            report,
            scenarios,
            engine,
            gpu_out,
        } => {
            if !(stage_seconds >= 10.0 && stage_seconds.is_finite()) {
                return Err(Error::bad("--stage-seconds: expected at least 10"));
            }
            if iterations == 0 || iterations > 100_000 {
                return Err(Error::bad("--iterations: expected 1 to 100000"));
            }
            let sdir = scenarios.unwrap_or_else(|| out.with_extension("scenarios"));
            let (cal, rep) = crate::fidelity::fit::fit_serving(
                &dirs,
                gpu.as_deref(),
                crate::hw::Coefficients::default(),
                stage_seconds,
                iterations,
                &sdir,
            )?;
            let mut cal = cal;
            if let Some(e) = engine {
                // Experiments whose files do not record the engine were run on `e`.
                let engines = cal.provenance.details.get("engines").cloned().unwrap_or_default();
                let engines = engines.replace(
                    crate::fidelity::UNRECORDED_ENGINE,
                    &format!("{e} (given with --engine)"),
                );
                cal.provenance.details.insert("engines".into(), engines.clone());
                cal.engine = Some(format!("vLLM serving (fitted to {engines})"));
            }
            save_calibration(&cal, &out)?;
            if let Some(dir) = gpu_out {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                let name = out
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| out.display().to_string());
                for (g, c) in &rep.gpu_coefficients {
                    let p = dir.join(format!("{}-vllm-serving.yaml", g.to_ascii_lowercase()));
                    save_calibration(&crate::fidelity::fit::gpu_calibration(&cal, &name, g, *c), &p)?;
                    eprintln!("wrote {}", p.display());
                }
            }
            println!(
                "fitted on {} ({}): {:?}",
                rep.gpu,
                rep.experiments.join(", "),
                rep.coefficients
            );
            super::fidelity::print_stages(&rep.stages);
            println!("in sample: {}", rep.in_sample.line());
            for (by, held, pooled) in [
                ("model", &rep.leave_one_model_out, &rep.leave_one_model_out_summary),
                ("GPU", &rep.leave_one_gpu_out, &rep.leave_one_gpu_out_summary),
            ] {
                for l in held {
                    println!("\nleave out {by} {} (fitted on the others):", l.held_out);
                    super::fidelity::print_stages(&l.stages);
                }
                if let Some(s) = pooled {
                    println!("leave one {by} out, all held-out stages: {}", s.line());
                }
            }
            if let Some(p) = report {
                let j = serde_json::to_string_pretty(&rep).map_err(|e| Error::other(e.to_string()))?;
                crate::output::write_atomic(&p, j.as_bytes())?;
            }
            eprintln!("wrote {}", out.display());
            Ok(0)
        }
        CalibrateCmd::Server {
            url,
            from_points,
            kind,
            model,
            gpu,
            max_num_batched_tokens,
            slots,
            prefill,
            long_context,
            reps,
            engine,
            out,
            points,
            quiet,
        } => server(
            &ServerArgs {
                url,
                from_points,
                kind,
                model,
                gpu,
                budget: max_num_batched_tokens,
                slots,
                prefill,
                long_context,
                reps,
                engine,
                points,
                quiet,
            },
            &out,
        ),
        CalibrateCmd::Profile {
            model,
            device,
            out,
            grid,
            reps,
            tokens,
            quiet,
        } => profile(&model, &device, &out, grid.as_deref(), reps, &tokens, quiet),
        CalibrateCmd::Fit {
            profiles,
            out,
            gpu,
            model,
            engine,
            ops,
            base,
        } => {
            let cat = crate::hw::Catalog::builtin();
            let model = match model {
                Some(m) => Some(cat.model(&m).map_err(|e| e.context("--model"))?.name.clone()),
                None => None,
            };
            let opts = FitOptions {
                gpu,
                model,
                engine,
                classes: parse_classes(&ops)?,
                base: match base {
                    Some(b) => Some((Calibration::load(&b)?, b.display().to_string())),
                    None => None,
                },
            };
            let ps = load_profiles(&profiles)?;
            let cal = calib::fit(&ps, &opts)?;
            save_calibration(&cal, &out)?;
            let f = cal.fit.as_ref().expect("fit quality");
            let c = &cal.coefficients;
            println!(
                "wrote {} ({} points on {}): median error {:.1} %, p90 {:.1} %",
                out.display(),
                f.points,
                cal.gpu,
                100.0 * f.median_rel_err,
                100.0 * f.p90_rel_err
            );
            println!(
                "  matmul: mfu {:.3} mbu {:.3} fixed {:.1} us | elementwise: mbu {:.3} fixed {:.1} us | attention: mfu {:.3} mbu {:.3} fixed {:.1} us",
                c.mfu,
                c.mbu,
                c.matmul_fixed_us,
                c.mbu_elementwise,
                c.elementwise_fixed_us,
                c.mfu_attention,
                c.mbu_attention,
                c.attention_fixed_us
            );
            println!("  fitted: {}", cal.fitted.join(", "));
            Ok(0)
        }
        CalibrateCmd::Derive { from, gpu, out } => {
            let cal = Calibration::load(&from)?;
            let d = calib::derive(&cal, &from.display().to_string(), &gpu).map_err(|e| e.context("--gpu"))?;
            save_calibration(&d, &out)?;
            println!(
                "wrote {} ({} derived from {}; not measured)",
                out.display(),
                d.gpu,
                cal.gpu
            );
            Ok(0)
        }
        CalibrateCmd::Check {
            calibration,
            profiles,
            json,
        } => {
            let cal = Calibration::load(&calibration)?;
            let ps = load_profiles(&profiles)?;
            let rep = calib::check(&cal, &ps)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rep).map_err(|e| Error::other(e.to_string()))?
                );
                return Ok(0);
            }
            if rep.profile_devices.iter().any(|d| *d != rep.calibration_gpu) {
                println!(
                    "note: calibration for {} checked against points from {}",
                    rep.calibration_gpu,
                    rep.profile_devices.join(", ")
                );
            }
            println!(
                "{:<26} {:>7} {:>10} {:>10} {:>10}",
                "operator", "points", "median", "p90", "bias"
            );
            let row = |name: &str, s: &calib::fit::ErrStats| {
                println!(
                    "{:<26} {:>7} {:>9.1}% {:>9.1}% {:>+9.1}%",
                    name,
                    s.points,
                    100.0 * s.median_rel_err,
                    100.0 * s.p90_rel_err,
                    100.0 * s.median_bias
                )
            };
            for (op, s) in &rep.ops {
                row(op, s);
            }
            for (c, s) in &rep.classes {
                row(&format!("[{c}]"), s);
            }
            row("overall", &rep.overall);
            Ok(0)
        }
    }
}

fn profile(
    model: &str,
    device: &str,
    out: &Path,
    grid: Option<&str>,
    reps: Option<u32>,
    tokens: &[u64],
    quiet: bool,
) -> Result<i32> {
    let cat = crate::hw::Catalog::builtin();
    let m = cat.model(model).map_err(|e| e.context("--model"))?;
    let (kind, ordinal) = match device.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| Error::bad(format!("--device {device}: expected cuda:N with N a device number")))?,
        ),
        None => (device, 0),
    };
    let mut g = match (grid, kind) {
        (Some("small"), _) | (None, "cpu") => calib::profile::Grid::cpu(),
        (Some("full"), _) | (None, _) => calib::profile::Grid::gpu(),
        (Some(other), _) => return Err(Error::bad(format!("--grid: expected small or full, got `{other}`"))),
    };
    if let Some(r) = reps {
        g.reps = r.max(1);
    }
    if !tokens.is_empty() {
        g.tokens = tokens.to_vec();
    }
    let mut timer: Box<dyn calib::profile::OpTimer> = match kind {
        "cpu" => cpu_timer()?,
        "cuda" => cuda_timer(ordinal)?,
        other => return Err(Error::bad(format!("--device: expected cpu or cuda[:N], got `{other}`"))),
    };
    let meta = timer.meta();
    eprintln!(
        "profiling {} on {} ({}, {})",
        m.name, meta.device, meta.backend, meta.dtype
    );
    for (k, v) in &meta.details {
        eprintln!("  {k}: {v}");
    }
    let started = std::time::Instant::now();
    let p = calib::profile::run(timer.as_mut(), m, &g, out, !quiet)?;
    println!(
        "wrote {} ({} points, {:.1} s)",
        out.display(),
        p.points.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

#[cfg(feature = "profile")]
fn cpu_timer() -> Result<Box<dyn calib::profile::OpTimer>> {
    Ok(Box::new(calib::cpu::CpuTimer::new()?))
}
#[cfg(not(feature = "profile"))]
fn cpu_timer() -> Result<Box<dyn calib::profile::OpTimer>> {
    Err(Error::bad(
        "--device cpu: this binary was built without the `profile` feature (candle); rebuild with `cargo build --release --features profile`",
    ))
}

#[cfg(feature = "cuda")]
fn cuda_timer(ordinal: usize) -> Result<Box<dyn calib::profile::OpTimer>> {
    Ok(Box::new(calib::cuda::CudaTimer::new(ordinal)?))
}
#[cfg(not(feature = "cuda"))]
fn cuda_timer(_ordinal: usize) -> Result<Box<dyn calib::profile::OpTimer>> {
    Err(Error::bad(
        "--device cuda: this binary was built without the `cuda` feature (cudarc); rebuild with `cargo build --release --features cuda`",
    ))
}

#[cfg_attr(not(feature = "live"), allow(dead_code))]
struct ServerArgs {
    url: Option<String>,
    from_points: Option<PathBuf>,
    kind: String,
    model: String,
    gpu: String,
    budget: u32,
    slots: u32,
    prefill: Vec<u32>,
    long_context: u32,
    reps: u32,
    engine: Option<String>,
    points: Option<PathBuf>,
    quiet: bool,
}

#[cfg(feature = "live")]
fn server(a: &ServerArgs, out: &Path) -> Result<i32> {
    use crate::hw::calibration::{Datasheet, FitQuality, Provenance, ProvenanceKind, CALIBRATION_FORMAT};
    use crate::replay::endpoints::{BaseUrl, Endpoint, Kind, PromptForm, Timeouts};
    use crate::replay::probe;
    let cat = crate::hw::Catalog::builtin();
    let model = cat.model(&a.model).map_err(|e| e.context("--model"))?;
    let gpu = cat.gpu(&a.gpu).map_err(|e| e.context("--gpu"))?;
    let kind = match a.kind.as_str() {
        "vllm" => Kind::Vllm,
        "llamacpp" => Kind::Llamacpp,
        k => return Err(Error::bad(format!("--kind: unknown `{k}` (expected vllm or llamacpp)"))),
    };
    if a.slots == 0 || a.reps == 0 || a.budget == 0 {
        return Err(Error::bad(
            "--slots, --reps and --max-num-batched-tokens must be at least 1",
        ));
    }
    let url = a.url.clone().unwrap_or_default();
    let base = match &a.from_points {
        Some(_) => BaseUrl::parse("http://0.0.0.0:0").expect("placeholder"),
        None => BaseUrl::parse(&url).map_err(|e| Error::bad(format!("--url: {e}")))?,
    };
    let ep = Endpoint {
        name: format!("{}@{}", model.name, base.authority()),
        model: model.name.clone(),
        base,
        kind,
        served_model: model.name.clone(),
        api_key: None,
        max_concurrency: a.slots,
        prompt: PromptForm::TokenIds,
        send_priority: Some(false),
        vocab: model.vocab.min(32_000) as u32,
    };
    let plan = probe::ProbePlan {
        prefill_tokens: a.prefill.clone(),
        decode_batches: (1..=a.slots).collect(),
        decode_prompt_tokens: 64,
        decode_output_tokens: 64,
        long_prompt_tokens: a.long_context,
        reps: a.reps,
    };
    let t = Timeouts {
        connect_s: 5.0,
        first_token_s: 300.0,
        idle_s: 60.0,
        total_s: 900.0,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::other(e.to_string()))?;
    let quiet = a.quiet;
    let mut pts = match &a.from_points {
        Some(p) => {
            let text = crate::input::read_text(&p)?;
            serde_json::from_str::<Vec<probe::ProbePoint>>(&text)
                .map_err(|e| Error::bad(format!("{}: not a probe points file: {e}", p.display())))?
        }
        None => rt.block_on(probe::probe(&ep, &t, &plan, &mut |p| {
            if !quiet {
                eprintln!(
                    "probe {:<7} prompt {:>5} batch {:>2}: {:.2} ms",
                    p.kind, p.prompt_tokens, p.batch, p.measured_ms
                );
            }
        }))?,
    };
    let origin = match &a.from_points {
        Some(p) => format!("probe points {}", p.display()),
        None => format!("{url} ({})", kind.as_str()),
    };
    let (coeffs, err) = probe::fit(&mut pts, model, gpu, a.budget)?;
    let mut details = std::collections::BTreeMap::new();
    details.insert("url".into(), url.clone());
    details.insert("endpoint_kind".into(), kind.as_str().into());
    details.insert("date".into(), crate::calib::profile::utc_now());
    details.insert("host_cpu".into(), host_cpu());
    details.insert(
        "engine_limits".into(),
        format!("max_num_batched_tokens {}, max_num_seqs {}", a.budget, a.slots),
    );
    details.insert(
        "fitted_by".into(),
        format!(
            "chimera {} ({}) calibrate server",
            crate::run::VERSION,
            crate::run::GIT_COMMIT
        ),
    );
    details.insert(
        "probes".into(),
        format!(
            "prefill prompts {:?} (TTFT), decode batches 1..={} at 64-token prompts and batch 1 at {} (TPOT), {} repetitions each",
            a.prefill, a.slots, a.long_context, a.reps
        ),
    );
    let cal = crate::hw::calibration::Calibration {
        format: CALIBRATION_FORMAT.into(),
        gpu: gpu.name.clone(),
        model: Some(model.name.clone()),
        tensor_parallel: Some(1),
        engine: a.engine.clone(),
        coefficients: coeffs,
        fitted: probe::FITTED.iter().map(|s| s.to_string()).collect(),
        datasheet: Some(Datasheet {
            peak_tflops: gpu.fp16_tflops,
            bandwidth_gb_s: gpu.bandwidth_gb_s,
            source: gpu.provenance.clone(),
        }),
        provenance: Provenance {
            kind: ProvenanceKind::Measured,
            source: format!(
                "client-side TTFT and TPOT of {} probe points against {origin}, fitted by least squares on log time",
                pts.len(),
            ),
            details,
        },
        fit: Some(FitQuality {
            median_rel_err: err.median_rel_err,
            p90_rel_err: err.p90_rel_err,
            points: err.points,
            leave_one_model_out: None,
            leave_one_gpu_out: None,
        }),
    };
    save_calibration(&cal, out)?;
    if let Some(p) = &a.points {
        let text = serde_json::to_string_pretty(&pts).map_err(|e| Error::other(e.to_string()))?;
        crate::output::write_atomic(p, text.as_bytes())?;
    }
    if !a.quiet {
        for p in &pts {
            println!(
                "{:<7} prompt {:>5} batch {:>2}: measured {:>8.2} ms, model {:>8.2} ms",
                p.kind,
                p.prompt_tokens,
                p.batch,
                p.measured_ms,
                p.predicted_ms.unwrap_or(f64::NAN)
            );
        }
        println!(
            "fit over {} points: median {:.1} %, p90 {:.1} %; wrote {}",
            err.points,
            err.median_rel_err * 100.0,
            err.p90_rel_err * 100.0,
            out.display()
        );
    }
    Ok(0)
}

#[cfg(feature = "live")]
fn host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{name}, {n} logical CPUs")
}

#[cfg(not(feature = "live"))]
fn server(_: &ServerArgs, _: &Path) -> Result<i32> {
    Err(Error::bad(
        "calibrate server: this binary was built without the `live` feature (on by default); rebuild with `cargo build --release`",
    ))
}
