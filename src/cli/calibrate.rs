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
        "--device cpu: this binary was built without CPU profiling; rebuild with `--features profile`",
    ))
}

#[cfg(feature = "cuda")]
fn cuda_timer(ordinal: usize) -> Result<Box<dyn calib::profile::OpTimer>> {
    Ok(Box::new(calib::cuda::CudaTimer::new(ordinal)?))
}
#[cfg(not(feature = "cuda"))]
fn cuda_timer(_ordinal: usize) -> Result<Box<dyn calib::profile::OpTimer>> {
    Err(Error::bad(
        "--device cuda: this binary was built without GPU profiling; rebuild with `--features cuda`",
    ))
}
