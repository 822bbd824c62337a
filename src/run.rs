//! One simulation run from a resolved scenario to a results folder: manifest first, tables as
//! the run goes, summary at the end, and the manifest updated with how the run ended.

use crate::error::{Error, Result};
use crate::scenario::{Resolved, Workload};
use crate::sim::{file_fingerprint, RunReport, Simulation};
use crate::workload::arrivals::ArrivalSpec;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("CHIMERA_GIT_COMMIT");

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// The provenance of every input of a resolved scenario.
pub fn inputs_provenance(r: &Resolved) -> Result<Value> {
    let mut files = Vec::new();
    let mut add = |role: &str, p: &Path| -> Result<()> {
        let (bytes, fnv) = file_fingerprint(p)?;
        files.push(json!({"role": role, "path": p.display().to_string(), "bytes": bytes, "fnv1a64": fnv}));
        Ok(())
    };
    match &r.scenario.workload {
        Workload::AzureTrace(a) => add("workload trace (Azure CSV)", &r.base_dir.join(&a.path))?,
        Workload::Trace(t) => {
            let p = r.base_dir.join(&t.path);
            add("workflow trace (chimera-trace/v1)", &p)?;
        }
        Workload::Generated(_) => {}
        Workload::Serving(s) => {
            if let crate::workload::serving::RequestShape::Trace { path } = &s.requests {
                add("per-request trace", &r.base_dir.join(path))?;
            }
        }
        Workload::Synthetic(s) => {
            if let ArrivalSpec::Trace { path: Some(p), .. } = &s.arrivals {
                add("arrival timestamps (Azure CSV)", &r.base_dir.join(p))?;
            }
        }
    }
    let engines: Vec<Value> = r
        .engines
        .iter()
        .map(|e| {
            json!({
                "engine": e.name,
                "model": e.model,
                "model_provenance": e.model_provenance,
                "gpu": e.gpu,
                "gpu_provenance": e.gpu_provenance,
                "tensor_parallel": e.tensor_parallel,
                "max_num_batched_tokens": e.limits.max_num_batched_tokens,
                "max_num_seqs": e.limits.max_num_seqs,
                "max_model_len": e.limits.max_model_len,
                "scheduling": e.limits.policy,
                "kv": e.kv,
                "step_time": e.step_time_source,
                "coefficients": e.steptime.coeffs,
            })
        })
        .collect();
    let workload = match &r.scenario.workload {
        Workload::Trace(t) => crate::trace::read_trace(&r.base_dir.join(&t.path))?.provenance,
        Workload::Generated(_) => {
            json!({"generator": "traces/fitted-params.yaml (embedded)", "notes": crate::trace::FittedParams::embedded().notes})
        }
        Workload::Synthetic(_) => json!("distributions given in the scenario"),
        Workload::Serving(_) => json!("serving benchmark shape given in the scenario (see files for a trace)"),
        Workload::AzureTrace(_) => json!("Azure LLM inference trace format; see files"),
    };
    Ok(json!({"files": files, "workload": workload, "engines": engines}))
}

/// What a results folder holds and how it was made (`manifest.json`), for a run and a replay
/// alike: version, scenario file and overrides, seed, the resolved scenario, the provenance of
/// every input, the files written, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub chimera_version: String,
    pub git_commit: String,
    pub kind: RunKind,
    pub scenario_path: Option<String>,
    pub overrides: Vec<String>,
    pub seed: u64,
    pub scenario: Value,
    pub inputs: Value,
    pub outputs: Vec<String>,
    /// A replay's endpoints, timeouts, retries and prompt salt.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayInfo>,
    pub status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Run,
    Replay,
}

/// The replay's own part of its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayInfo {
    pub endpoints: Vec<Value>,
    pub timeouts: Value,
    pub retries: Value,
    pub metrics_interval_ms: u64,
    /// Salt of the prompts' token ids (kept by `--resume`).
    pub prompt_salt: u64,
}

/// How a run or replay stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    Running {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        segment: Option<u32>,
    },
    Complete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sim_end_ns: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_log_hash: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        segment: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wall_s: Option<f64>,
    },
    Failed {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        segment: Option<u32>,
    },
    /// Stopped by Ctrl-C or SIGTERM: the files hold every row finished before.
    Interrupted {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        segment: Option<u32>,
    },
}

impl Status {
    /// How a run that ended with `e` stands.
    pub fn of_error(e: &Error, segment: Option<u32>) -> Status {
        match e {
            Error::Interrupted(m) => Status::Interrupted {
                message: m.clone(),
                segment,
            },
            e => Status::Failed {
                error: e.to_string(),
                segment,
            },
        }
    }
}

impl Manifest {
    /// The manifest of `r` (scenario file `scenario_path` with `sets`), with its inputs'
    /// provenance; `outputs` are the files the folder will hold.
    pub fn new(
        kind: RunKind,
        r: &Resolved,
        sets: &[String],
        scenario_path: Option<&Path>,
        outputs: &[&str],
        status: Status,
    ) -> Result<Manifest> {
        Ok(Manifest {
            chimera_version: VERSION.into(),
            git_commit: GIT_COMMIT.into(),
            kind,
            scenario_path: scenario_path.map(|p| p.display().to_string()),
            overrides: sets.to_vec(),
            seed: r.scenario.seed,
            scenario: serde_json::to_value(&r.scenario).expect("a scenario serialises"),
            inputs: inputs_provenance(r)?,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            replay: None,
            status,
        })
    }

    /// Read a folder's manifest.json.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = crate::input::read_text(&path)?;
        serde_json::from_str(&text).map_err(|e| Error::bad(format!("{}: not a chimera manifest: {e}", path.display())))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

const RUN_OUTPUTS: [&str; 5] = [
    "requests.parquet",
    "workflows.parquet",
    "engines.parquet",
    "summary.json",
    "manifest.json",
];

/// Run `r` and write every result file into `out_dir`.
pub fn run_to_dir(
    r: &Resolved,
    out_dir: &Path,
    sets: &[String],
    scenario_path: Option<&Path>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<RunReport> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mpath = out_dir.join("manifest.json");
    let mut outputs = RUN_OUTPUTS.to_vec();
    if r.scenario.output.journal {
        outputs.push("decisions.jsonl");
    }
    let mut manifest = Manifest::new(
        RunKind::Run,
        r,
        sets,
        scenario_path,
        &outputs,
        Status::Running { segment: None },
    )?;
    manifest.write(&mpath)?;
    let result = Simulation::new(r, out_dir).and_then(|sim| sim.run(progress));
    match result {
        Ok(rep) => {
            if let Some(j) = &rep.journal {
                write_journal(&out_dir.join("decisions.jsonl"), j)?;
            }
            write_json(&out_dir.join("summary.json"), &summary_json(&rep))?;
            manifest.status = Status::Complete {
                events: Some(rep.events),
                sim_end_ns: Some(rep.sim_end_ns),
                event_log_hash: Some(format!("{:016x}", rep.event_log_hash)),
                segment: None,
                wall_s: None,
            };
            manifest.write(&mpath)?;
            Ok(rep)
        }
        Err(e) => {
            manifest.status = Status::of_error(&e, None);
            let _ = manifest.write(&mpath);
            Err(e)
        }
    }
}

/// The policy core's journal as JSON lines (the replay's `decisions.jsonl` format).
fn write_journal(path: &Path, j: &[crate::policy::journal::JournalEntry]) -> Result<()> {
    use std::io::Write;
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    for e in j {
        serde_json::to_writer(&mut w, e).map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
        w.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    }
    w.flush().map_err(|e| Error::io(path, e))
}

pub fn summary_json(rep: &RunReport) -> Value {
    let mut v = serde_json::to_value(&rep.summary).expect("summary serialises");
    v["event_log_hash"] = json!(format!("{:016x}", rep.event_log_hash));
    v["events"] = json!(rep.events);
    v
}
