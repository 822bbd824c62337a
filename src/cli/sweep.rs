//! `chimera sweep` (run, resume, shard) and `chimera sweep merge`.

use crate::error::{Error, Result};
use crate::sweep::{self, GridAxis, RunOptions, Series, Shard, SweepSpec};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Base scenario (default: the embedded default scenario). Not with --plan.
    pub scenario: Option<PathBuf>,
    /// A grid axis: path=v1,v2,... (repeatable; the cross product is run).
    #[arg(long = "grid", value_name = "PATH=V1,V2,...")]
    pub grids: Vec<String>,
    /// A sweep plan (YAML) with several labelled series instead of SCENARIO and --grid.
    #[arg(long, conflicts_with_all = ["scenario", "grids"])]
    pub plan: Option<PathBuf>,
    /// Seeds per grid point: the scenario's seed, +1, +2, ...
    #[arg(long)]
    pub seeds: Option<u32>,
    /// Runs in parallel (one per thread).
    #[arg(long, default_value_t = default_jobs(), value_parser = parse_jobs)]
    pub jobs: usize,
    /// Run only shard i of n (points whose index modulo n is i).
    #[arg(long)]
    pub shard: Option<String>,
    /// Continue an interrupted sweep in --out without redoing finished points.
    #[arg(long)]
    pub resume: bool,
    /// Base overrides applied before the grid: --set path=value (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub sets: Vec<String>,
    /// The series label (default: the scenario's name).
    #[arg(long)]
    pub label: Option<String>,
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[derive(Subcommand, Debug)]
pub enum SweepCmd {
    /// Join shard folders into one table, identical to an unsharded run's.
    Merge {
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(what: Option<SweepCmd>, a: SweepArgs) -> Result<i32> {
    if let Some(SweepCmd::Merge { shards, out }) = what {
        let p = sweep::merge(&shards, &out)?;
        let t = sweep::table::SweepTable::read(&p)?;
        println!(
            "wrote {} ({} runs from {} shard folders)",
            p.display(),
            t.rows,
            shards.len()
        );
        return Ok(0);
    }
    let out = a.out.ok_or_else(|| Error::bad("sweep: --out DIR is required"))?;
    let mut spec = match &a.plan {
        Some(plan) => {
            let mut s = SweepSpec::load_plan(plan)?;
            s.sets.extend(a.sets.iter().cloned());
            s
        }
        None => {
            if a.grids.is_empty() {
                return Err(Error::bad(
                    "sweep: give at least one --grid path=v1,v2,... (or a --plan)",
                ));
            }
            let grid: Vec<GridAxis> = a.grids.iter().map(|g| sweep::parse_grid(g)).collect::<Result<_>>()?;
            let label = match &a.label {
                Some(l) => l.clone(),
                None => match &a.scenario {
                    Some(p) => crate::scenario::load(p, &a.sets)?.scenario.name,
                    None => "default".into(),
                },
            };
            SweepSpec {
                scenario: a.scenario.clone(),
                sets: a.sets.clone(),
                seeds: 1,
                series: vec![Series {
                    label,
                    sets: vec![],
                    grid,
                }],
            }
        }
    };
    if let Some(n) = a.seeds {
        spec.seeds = n;
    }
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let bar = if a.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} sweep [{bar:30}] {pos}/{len} runs  {elapsed} (eta {eta})")
                .expect("template")
                .progress_chars("=> "),
        );
        b
    };
    let started = std::time::Instant::now();
    let rep = sweep::run(
        &spec,
        &out,
        &RunOptions {
            jobs: a.jobs,
            shard,
            resume: a.resume,
        },
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    println!(
        "wrote {} ({} runs: {} run now, {} already done) in {:.1} s with {} jobs",
        rep.table.display(),
        rep.total,
        rep.ran,
        rep.skipped,
        started.elapsed().as_secs_f64(),
        a.jobs
    );
    Ok(0)
}

/// `--jobs`: 1 to 1024 runs in parallel.
fn parse_jobs(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=1024) => Ok(n),
        _ => Err(format!("expected a number of parallel runs from 1 to 1024, got `{s}`")),
    }
}
