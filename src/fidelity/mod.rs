//! Fidelity against real vLLM measurements: find measured experiments in folders, recreate
//! each as a scenario (model, GPU, tensor parallelism, engine limits, the workload's shape and
//! load stages, or the exact per-request trace), simulate it, and compare measured with
//! simulated TTFT and E2E per load stage.
//!
//! Two layouts are read:
//! - **inference-perf** (kubernetes-sigs/inference-perf): `exp-config.yaml` (model, tensor
//!   parallelism, engine limits), `profile.yaml` (data shape, load stages) and
//!   `results/stage_N_lifecycle_metrics.json` (latency distributions in seconds);
//! - **per-request** (LLMServingSim's vLLM benchmark): `meta.json` (engine arguments, vLLM
//!   version), `requests.jsonl` (per request: tokens in and out, queued, first and last token
//!   times) and optionally `config.json` (the hardware name).
//!
//! This module reads files and runs simulations; it never fits anything (see
//! [`crate::fidelity::fit`]) and never prints.

pub mod fit;

use crate::error::{Error, Result};
use crate::hw::{Catalog, Coefficients};
use crate::sim::{RequestTiming, Simulation};
use crate::time::Nanos;
use crate::workload::serving::{LoadSpec, LoadStage, RequestShape, ServingSpec};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How long inference-perf waits for a request (its aiohttp client's default total timeout).
pub const INFERENCE_PERF_TIMEOUT_S: f64 = 300.0;

/// The engine of an experiment whose files do not record it.
pub const UNRECORDED_ENGINE: &str = "vLLM (version not recorded)";

/// Latency distribution figures, seconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Dist {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Dist {
    fn from_json(v: &Value) -> Option<Dist> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        Some(Dist {
            mean: f("mean")?,
            p50: f("median").or_else(|| f("p50"))?,
            p90: f("p90")?,
            p99: f("p99")?,
        })
    }

    /// From samples (seconds); linear interpolation between order statistics.
    pub fn of(xs: &mut [f64]) -> Dist {
        if xs.is_empty() {
            return Dist::default();
        }
        xs.sort_by(f64::total_cmp);
        let q = |p: f64| crate::stats::quantile_sorted(xs, p);
        Dist {
            mean: xs.iter().sum::<f64>() / xs.len() as f64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
        }
    }
}

/// One load stage as measured.
#[derive(Debug, Clone, Serialize)]
pub struct MeasuredStage {
    pub stage: usize,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub requests: u64,
    pub failures: u64,
    /// Answered requests per second of the stage (rate stages).
    pub served_per_s: Option<f64>,
    pub ttft: Dist,
    pub e2e: Dist,
    /// Time per output token after the first, (last - first token) / (output - 1), where the
    /// measurement has per-request token times (the per-request layout).
    pub tpot: Option<Dist>,
    /// The server did not keep up: requests failed, or queueing dominated (TTFT p50 > 2 s), or
    /// (a per-request trace) the queue grew over the run as a simulated stage's rule has it.
    pub overloaded: bool,
}

/// A measured experiment, recreated.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    pub name: String,
    pub dir: PathBuf,
    pub layout: &'static str,
    pub model: String,
    pub gpu: String,
    /// Where the GPU name came from (a field, or the folder name).
    pub gpu_from: String,
    pub tensor_parallel: u32,
    /// vLLM's `data_parallel_size`: engines (ranks) serving the experiment together.
    pub data_parallel: u32,
    /// The ranks split a MoE model's experts (`enable_expert_parallel`).
    pub expert_parallel: bool,
    /// Requests came through vLLM's HTTP API server (false: the engine driven in-process).
    pub api_server: bool,
    /// The load generator gives up on a request after this long (it then counts as failed).
    pub client_timeout_s: Option<f64>,
    pub max_num_batched_tokens: u32,
    pub max_num_seqs: u32,
    pub max_model_len: Option<u32>,
    pub engine: String,
    pub workload: ServingSpec,
    /// Per-request rows (arrival_s, prompt, output) for the per-request layout.
    #[serde(skip)]
    pub trace: Option<Vec<(f64, u32, u32)>>,
    pub stages: Vec<MeasuredStage>,
    pub notes: Vec<String>,
}

/// A folder that holds measurements but cannot be recreated, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub dir: PathBuf,
    pub reason: String,
}

fn read_value(path: &Path) -> Result<Value> {
    let text = crate::input::read_text(&path)?;
    if let Ok(v) = serde_json::from_str(&text) {
        return Ok(v);
    }
    serde_saphyr::from_str(&text).map_err(|e| Error::bad(format!("{}: {e}", path.display())))
}

/// Find a catalogue GPU named by a field or, failing that, by a token of the path.
fn gpu_from_path(cat: &Catalog, dir: &Path) -> Option<(String, String)> {
    for comp in dir.components().rev() {
        let c = comp.as_os_str().to_string_lossy();
        let toks: Vec<&str> = c.split(['-', '_', '.', ' ']).filter(|t| !t.is_empty()).collect();
        for n in (1..=3).rev() {
            for w in toks.windows(n) {
                let name = w.join("-");
                if name.chars().all(|ch| ch.is_ascii_digit()) {
                    continue;
                }
                if let Ok(g) = cat.gpu(&name) {
                    return Some((g.name.clone(), format!("the folder name `{c}`")));
                }
            }
        }
    }
    None
}

/// Every experiment under `roots` (folders searched to a depth of 6), recreated or skipped.
pub fn discover(roots: &[PathBuf], gpu_override: Option<&str>) -> Result<(Vec<Experiment>, Vec<Skipped>)> {
    let mut dirs = Vec::new();
    for r in roots {
        if !r.is_dir() {
            return Err(Error::bad(format!("{}: not a folder", r.display())));
        }
        walk(r, 0, &mut dirs)?;
    }
    dirs.sort();
    dirs.dedup();
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    for d in dirs {
        let r = if d.join("exp-config.yaml").is_file() {
            read_inference_perf(&d, gpu_override)
        } else {
            read_per_request(&d, gpu_override)
        };
        match r {
            Ok(e) => found.push(e),
            Err(e) => skipped.push(Skipped {
                dir: d,
                reason: e.to_string(),
            }),
        }
    }
    if found.is_empty() && skipped.is_empty() {
        let names: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(Error::bad(format!(
            "no measured experiments under {} (expected folders with exp-config.yaml + results/, or meta.json + requests.jsonl)",
            names.join(", ")
        )));
    }
    Ok((found, skipped))
}

fn walk(d: &Path, depth: u32, out: &mut Vec<PathBuf>) -> Result<()> {
    if d.join("exp-config.yaml").is_file() || (d.join("meta.json").is_file() && d.join("requests.jsonl").is_file()) {
        out.push(d.to_path_buf());
        return Ok(());
    }
    if depth >= 6 {
        return Ok(());
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(d)
        .map_err(|e| Error::io(d, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    for s in subs {
        walk(&s, depth + 1, out)?;
    }
    Ok(())
}

fn name_of(d: &Path) -> String {
    d.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn pick_gpu(cat: &Catalog, d: &Path, field: Option<&str>, over: Option<&str>) -> Result<(String, String)> {
    if let Some(g) = over {
        return Ok((cat.gpu(g)?.name.clone(), "--gpu".into()));
    }
    if let Some(f) = field {
        return cat
            .gpu(f)
            .map(|g| (g.name.clone(), format!("the experiment's hardware field `{f}`")))
            .map_err(|e| Error::bad(format!("GPU not in the catalogue: {e}")));
    }
    gpu_from_path(cat, d)
        .ok_or_else(|| Error::bad("the experiment names no GPU (neither a field nor the folder name); pass --gpu"))
}

fn u32_field(v: &Value, k: &str) -> Option<u32> {
    v.get(k).and_then(Value::as_u64).map(|x| x.min(u32::MAX as u64) as u32)
}

fn read_inference_perf(d: &Path, gpu_over: Option<&str>) -> Result<Experiment> {
    let cat = Catalog::builtin();
    let exp = read_value(&d.join("exp-config.yaml"))?;
    let profile_path = if d.join("profile.yaml").is_file() {
        d.join("profile.yaml")
    } else {
        d.join("results/config.yaml")
    };
    let prof = read_value(&profile_path)?;
    let raw_model = exp.get("model").and_then(Value::as_str).unwrap_or("?");
    let model = cat
        .model(raw_model)
        .map_err(|e| Error::bad(format!("model not in the catalogue: {e}")))?
        .name
        .clone();
    let field = exp
        .get("gpu")
        .or_else(|| exp.get("accelerator"))
        .and_then(Value::as_str);
    let (gpu, gpu_from) = pick_gpu(cat, d, field, gpu_over)?;
    let data = &prof["data"];
    let kind = data["type"].as_str().unwrap_or("?");
    if kind != "shared_prefix" {
        return Err(Error::bad(format!(
            "inference-perf data type `{kind}` is not recreated yet (shared_prefix is)"
        )));
    }
    let sp = &data["shared_prefix"];
    let need = |k: &str| {
        u32_field(sp, k)
            .ok_or_else(|| Error::bad(format!("{}: data.shared_prefix.{k} missing", profile_path.display())))
    };
    let (groups, users, sys, q, out) = (
        need("num_unique_system_prompts")?,
        need("num_users_per_system_prompt")?,
        need("system_prompt_len")?,
        need("question_len")?,
        need("output_len")?,
    );
    let load = &prof["load"];
    let stages: Vec<LoadStage> = load["stages"]
        .as_array()
        .ok_or_else(|| Error::bad(format!("{}: load.stages missing", profile_path.display())))?
        .iter()
        .map(|s| LoadStage {
            rate: s["rate"].as_f64().unwrap_or(0.0),
            duration_s: s["duration"].as_f64().unwrap_or(0.0),
        })
        .collect();
    let mut measured = Vec::new();
    let mut prompt_median = None;
    for (i, st) in stages.iter().enumerate() {
        let p = d.join(format!("results/stage_{i}_lifecycle_metrics.json"));
        if !p.is_file() {
            continue;
        }
        let m = read_value(&p)?;
        let lat = &m["successes"]["latency"];
        let (Some(ttft), Some(e2e)) = (
            Dist::from_json(&lat["time_to_first_token"]),
            Dist::from_json(&lat["request_latency"]),
        ) else {
            continue;
        };
        if prompt_median.is_none() {
            prompt_median = m["successes"]["prompt_len"]["median"].as_f64();
        }
        let failures = m["failures"]["count"].as_u64().unwrap_or(0);
        measured.push(MeasuredStage {
            stage: i,
            rate: Some(st.rate),
            duration_s: Some(st.duration_s),
            requests: m["successes"]["count"].as_u64().unwrap_or(0),
            failures,
            served_per_s: (st.duration_s > 0.0)
                .then(|| m["successes"]["count"].as_u64().unwrap_or(0) as f64 / st.duration_s),
            ttft,
            e2e,
            tpot: None,
            overloaded: failures > 0 || ttft.p50 > 2.0,
        });
    }
    if measured.is_empty() {
        return Err(Error::bad("no results/stage_N_lifecycle_metrics.json with latencies"));
    }
    let mut notes = Vec::new();
    // The server's prompt length (inference-perf re-tokenises what it sent) is longer than
    // system + question tokens generated; send what the server counted.
    let question = match prompt_median {
        Some(p) if p as u32 > sys + q => {
            notes.push(format!(
                "question length {} tokens: the measured median prompt ({p:.0} tokens as the server's tokenizer counts them) less the {sys}-token system prompt (profile: {q})",
                p as u32 - sys
            ));
            p as u32 - sys
        }
        _ => q,
    };
    if sp["enable_multi_turn_chat"].as_bool() == Some(true) {
        notes.push("enable_multi_turn_chat is set, but the measured prompt lengths do not grow over a run (each request carried its group's system prompt and one question), so requests are recreated as single turns".into());
    }
    let process = load["type"].as_str().unwrap_or("constant");
    let arrivals = match process {
        "constant" => LoadSpec::Constant { stages },
        "poisson" => LoadSpec::Poisson { stages },
        other => {
            return Err(Error::bad(format!(
                "inference-perf load type `{other}` is not recreated yet"
            )))
        }
    };
    Ok(Experiment {
        name: name_of(d),
        dir: d.to_path_buf(),
        layout: "inference-perf",
        model,
        gpu,
        gpu_from,
        tensor_parallel: u32_field(&exp, "tensor_parallelism").unwrap_or(1),
        data_parallel: 1,
        expert_parallel: false,
        api_server: true,
        // inference-perf's aiohttp client session: aiohttp's default total timeout, 300 s.
        client_timeout_s: Some(INFERENCE_PERF_TIMEOUT_S),
        max_num_batched_tokens: u32_field(&exp, "max_num_batched_tokens").unwrap_or(2048),
        max_num_seqs: u32_field(&exp, "max_num_seqs").unwrap_or(256),
        max_model_len: u32_field(&exp, "max_model_len"),
        engine: exp
            .get("vllm_version")
            .and_then(Value::as_str)
            .map(|v| format!("vLLM {v}"))
            .unwrap_or_else(|| UNRECORDED_ENGINE.into()),
        workload: ServingSpec {
            requests: RequestShape::SharedPrefix {
                groups,
                prompts_per_group: users,
                system_prompt_len: sys,
                question_len: question,
                output_len: out,
            },
            arrivals,
        },
        trace: None,
        stages: measured,
        notes,
    })
}

fn read_per_request(d: &Path, gpu_over: Option<&str>) -> Result<Experiment> {
    let cat = Catalog::builtin();
    let meta = read_value(&d.join("meta.json"))?;
    let kw = &meta["engine_kwargs"];
    let raw_model = meta["model"].as_str().or(kw["model"].as_str()).unwrap_or("?");
    let model = cat
        .model(raw_model)
        .map_err(|e| Error::bad(format!("model not in the catalogue: {e}")))?
        .name
        .clone();
    let hw = if d.join("config.json").is_file() {
        read_value(&d.join("config.json"))?
            .pointer("/nodes/0/instances/0/hardware")
            .and_then(Value::as_str)
            .map(String::from)
    } else {
        None
    };
    let (gpu, gpu_from) = pick_gpu(cat, d, hw.as_deref(), gpu_over)?;
    let path = d.join("requests.jsonl");
    let text = crate::input::read_text(&path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).map_err(|e| Error::bad(format!("{}:{}: {e}", path.display(), i + 1)))?;
        let f = |k: &str| {
            v[k].as_f64()
                .ok_or_else(|| Error::bad(format!("{}:{}: `{k}` missing or not a number", path.display(), i + 1)))
        };
        let (inp, out) = (f("input_toks")?, f("output_toks")?);
        let (q, first, last) = (f("queued_ts")?, f("first_token_ts")?, f("last_token_ts")?);
        if !(inp >= 1.0 && out >= 1.0 && first >= q && last >= first) {
            return Err(Error::bad(format!(
                "{}:{}: expected tokens >= 1 and queued <= first token <= last token",
                path.display(),
                i + 1
            )));
        }
        rows.push((q, inp as u32, out as u32, first - q, last - q));
    }
    if rows.is_empty() {
        return Err(Error::bad(format!("{}: no requests", path.display())));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let t0 = rows[0].0;
    let mut ttft: Vec<f64> = rows.iter().map(|r| r.3).collect();
    let mut e2e: Vec<f64> = rows.iter().map(|r| r.4).collect();
    let mut tpot: Vec<f64> = rows
        .iter()
        .filter(|r| r.2 > 1)
        .map(|r| (r.4 - r.3) / (r.2 - 1) as f64)
        .collect();
    // The queue grows over the trace by the same rule as a simulated stage.
    let queue_grows = queue_grows(&ttft);
    let (ttft, e2e, tpot) = (Dist::of(&mut ttft), Dist::of(&mut e2e), Dist::of(&mut tpot));
    Ok(Experiment {
        name: name_of(d),
        dir: d.to_path_buf(),
        layout: "per-request",
        model,
        gpu,
        gpu_from,
        tensor_parallel: u32_field(kw, "tensor_parallel_size").unwrap_or(1),
        data_parallel: u32_field(kw, "data_parallel_size").unwrap_or(1).max(1),
        expert_parallel: kw["enable_expert_parallel"].as_bool() == Some(true),
        api_server: false,
        client_timeout_s: None,
        max_num_batched_tokens: u32_field(kw, "max_num_batched_tokens").unwrap_or(2048),
        max_num_seqs: u32_field(kw, "max_num_seqs").unwrap_or(256),
        max_model_len: u32_field(kw, "max_model_len"),
        engine: meta["vllm_version"]
            .as_str()
            .map(|v| format!("vLLM {v}"))
            .unwrap_or_else(|| UNRECORDED_ENGINE.into()),
        workload: ServingSpec {
            requests: RequestShape::Trace {
                path: format!("{}.requests.csv", name_of(d)),
            },
            arrivals: LoadSpec::Trace,
        },
        trace: Some(rows.iter().map(|r| (r.0 - t0, r.1, r.2)).collect()),
        stages: vec![MeasuredStage {
            stage: 0,
            rate: None,
            duration_s: None,
            requests: rows.len() as u64,
            failures: 0,
            served_per_s: None,
            ttft,
            e2e,
            tpot: Some(tpot),
            overloaded: ttft.p50 > 2.0 || queue_grows,
        }],
        notes: {
            let mut n = vec![
                "the exact per-request trace: same arrivals (queued times), prompt and output lengths".to_string(),
                "vLLM driven in-process (AsyncLLM, no HTTP server): times run from the engine core's queue, so no front-end time is simulated".to_string(),
            ];
            let dp = u32_field(kw, "data_parallel_size").unwrap_or(1);
            if dp > 1 {
                let moe = cat.model(raw_model).is_ok_and(|m| m.is_moe());
                n.push(format!(
                    "data_parallel_size {dp}: {dp} engines, requests spread round robin{}",
                    if moe {
                        format!("; the ranks share the experts (each holds 1/{dp} of them; every MoE layer exchanges tokens between ranks)")
                    } else {
                        String::new()
                    }
                ));
            }
            n
        },
    })
}

/// The scenario recreating `e`, as YAML a user can rerun and edit, and the per-request trace
/// it needs (file name, CSV text) for the per-request layout.
pub fn scenario_yaml(e: &Experiment, calibration: &str) -> (String, Option<(String, String)>) {
    let w = &e.workload;
    let requests = match &w.requests {
        RequestShape::SharedPrefix {
            groups,
            prompts_per_group,
            system_prompt_len,
            question_len,
            output_len,
        } => format!(
            "{{kind: shared_prefix, groups: {groups}, prompts_per_group: {prompts_per_group}, system_prompt_len: {system_prompt_len}, question_len: {question_len}, output_len: {output_len}}}"
        ),
        RequestShape::Fixed { prompt_len, output_len } => {
            format!("{{kind: fixed, prompt_len: {prompt_len}, output_len: {output_len}}}")
        }
        RequestShape::Trace { path } => format!("{{kind: trace, path: {path}}}"),
    };
    let stages = |s: &[LoadStage]| {
        s.iter()
            .map(|x| format!("{{rate: {}, duration_s: {}}}", x.rate, x.duration_s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let arrivals = match &w.arrivals {
        LoadSpec::Constant { stages: s } => format!("{{process: constant, stages: [{}]}}", stages(s)),
        LoadSpec::Poisson { stages: s } => format!("{{process: poisson, stages: [{}]}}", stages(s)),
        LoadSpec::ClosedLoop { concurrency, requests } => {
            format!("{{process: closed_loop, concurrency: {concurrency}, requests: {requests}}}")
        }
        LoadSpec::Trace => "{process: trace}".into(),
    };
    let max_len = e
        .max_model_len
        .map(|l| format!("      max_model_len: {l}\n"))
        .unwrap_or_default();
    let notes: String = e.notes.iter().map(|n| format!("# - {n}\n")).collect();
    let yaml = format!(
        "# Recreated by `chimera fidelity` from {dir} ({layout} layout; {engine}).\n\
         # GPU from {gpu_from}.\n{notes}\
         name: fidelity-{name}\n\
         seed: 1\n\
         cluster:\n  engines:\n    - model: {model}\n      gpu: {gpu}\n      tensor_parallel: {tp}\n{dp}\
         \x20     max_num_batched_tokens: {budget}\n      max_num_seqs: {seqs}\n{max_len}\
         \x20     enable_prefix_caching: true\n      calibration: {calibration}\n\
         workload:\n  kind: serving\n  requests: {requests}\n  arrivals: {arrivals}\n\
         policy:\n  routing: {{kind: round_robin}}\n\
         output:\n  engine_log_every_steps: 0\n",
        dir = e.dir.display(),
        layout = e.layout,
        engine = e.engine,
        gpu_from = e.gpu_from,
        name = e.name,
        model = e.model,
        gpu = e.gpu,
        tp = e.tensor_parallel,
        dp = {
            let mut x = String::new();
            if e.data_parallel > 1 {
                x += &format!("      replicas: {}\n", e.data_parallel);
                // vLLM runs a MoE model's expert layers across every data-parallel rank
                // (whole experts split with enable_expert_parallel, every expert sharded
                // without: the same bytes per GPU), so its ranks share the experts either way.
                let moe = Catalog::builtin().model(&e.model).is_ok_and(|m| m.is_moe());
                if e.expert_parallel || moe {
                    x += &format!("      expert_parallel: {}\n", e.data_parallel);
                }
            }
            if !e.api_server {
                x += "      api_server: false\n";
            }
            x
        },
        budget = e.max_num_batched_tokens,
        seqs = e.max_num_seqs,
    );
    let trace = match (&e.trace, &w.requests) {
        (Some(rows), RequestShape::Trace { path }) => {
            let mut csv = String::from("arrival_s,prompt_tokens,output_tokens\n");
            for (t, p, o) in rows {
                csv += &format!("{t:.6},{p},{o}\n");
            }
            Some((path.clone(), csv))
        }
        _ => None,
    };
    (yaml, trace)
}

/// One load stage as simulated.
#[derive(Debug, Clone, Serialize)]
pub struct SimStage {
    /// Requests answered (within the client's timeout, where it has one).
    pub requests: u64,
    /// Requests past the client's timeout (the load generator gave up on them).
    pub failed: u64,
    /// Answered requests per second of the stage.
    pub served_per_s: Option<f64>,
    pub ttft: Dist,
    pub e2e: Dist,
    pub tpot: Dist,
    /// The queue grows over the stage: TTFT p50 of the stage's last fifth of arrivals is above
    /// 1 s and 3x that of its first fifth.
    pub overloaded: bool,
    pub prefix_hit_rate: f64,
}

/// Write the scenario (and trace) for `e` into `dir` and return the scenario's path.
pub fn write_scenario(e: &Experiment, calibration: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|x| Error::io(dir, x))?;
    let (yaml, trace) = scenario_yaml(e, calibration);
    if let Some((name, csv)) = trace {
        let p = dir.join(name);
        std::fs::write(&p, csv).map_err(|x| Error::io(&p, x))?;
    }
    let p = dir.join(format!("{}.yaml", e.name));
    std::fs::write(&p, yaml).map_err(|x| Error::io(&p, x))?;
    Ok(p)
}

/// Simulate a written scenario, optionally with other coefficients and load stages shortened
/// to `stage_s` seconds each (fits); returns one [`SimStage`] per measured stage.
pub fn simulate(
    e: &Experiment,
    scenario: &Path,
    coeffs: Option<Coefficients>,
    stage_s: Option<f64>,
) -> Result<Vec<SimStage>> {
    let mut r = crate::scenario::load(scenario, &[])?;
    if let (Some(cap), crate::scenario::Workload::Serving(s)) = (stage_s, &mut r.scenario.workload) {
        if let LoadSpec::Constant { stages } | LoadSpec::Poisson { stages } = &mut s.arrivals {
            for st in stages {
                st.duration_s = st.duration_s.min(cap);
            }
        }
    }
    if let Some(c) = coeffs {
        for en in &mut r.engines {
            en.set_coefficients(c)?;
        }
    }
    let bounds = match &r.scenario.workload {
        crate::scenario::Workload::Serving(s) => s.stage_bounds(),
        _ => vec![(0, Nanos::MAX)],
    };
    let report = Simulation::summary_only(&r)?.collect_timings().run(&mut |_, _| {})?;
    let timings = report.timings.unwrap_or_default();
    let hit = report
        .summary
        .engines
        .first()
        .and_then(|x| x.prefix_cache_hit_rate)
        .unwrap_or(0.0);
    Ok(e.stages
        .iter()
        .map(|m| {
            let (lo, hi) = bounds.get(m.stage).copied().unwrap_or((0, Nanos::MAX));
            let mut v: Vec<&RequestTiming> = timings
                .iter()
                .filter(|t| t.arrival_ns >= lo && t.arrival_ns < hi)
                .collect();
            v.sort_by_key(|t| t.arrival_ns);
            let span = m.duration_s.or_else(|| {
                // A trace: from the first arrival to the last one.
                let (a, b) = (v.first()?.arrival_ns, v.last()?.arrival_ns);
                Some((b - a) as f64 * 1e-9).filter(|d| *d > 0.0)
            });
            stage_of(&v, hit, e.client_timeout_s, span)
        })
        .collect())
}

/// The queue grows over a stage: with TTFTs (seconds) in arrival order, the TTFT p50 of the
/// last fifth of arrivals is above 1 s and three times that of the first fifth. One rule for
/// a simulated stage and a measured per-request trace.
fn queue_grows(ttft_s: &[f64]) -> bool {
    if ttft_s.is_empty() {
        return false;
    }
    let fifth = (ttft_s.len() / 5).clamp(1, ttft_s.len());
    let p50 = |xs: &[f64]| Dist::of(&mut xs.to_vec()).p50;
    let (first, last) = (p50(&ttft_s[..fifth]), p50(&ttft_s[ttft_s.len() - fifth..]));
    last > 1.0 && last > 3.0 * first
}

/// One simulated stage; with a client timeout, requests whose E2E exceeds it count as failed
/// (the load generator gave up on them) and the latencies are those of the rest, as the load
/// generator reports them.
fn stage_of(all: &[&RequestTiming], hit: f64, timeout_s: Option<f64>, span_s: Option<f64>) -> SimStage {
    let s = |x: Nanos| x as f64 * 1e-9;
    let limit = timeout_s.map_or(Nanos::MAX, |t| (t * 1e9) as Nanos);
    let v: Vec<&RequestTiming> = all.iter().copied().filter(|t| t.e2e_ns <= limit).collect();
    let failed = (all.len() - v.len()) as u64;
    let v = &v[..];
    let mut ttft: Vec<f64> = v.iter().map(|t| s(t.ttft_ns)).collect();
    let mut e2e: Vec<f64> = v.iter().map(|t| s(t.e2e_ns)).collect();
    let mut tpot: Vec<f64> = v
        .iter()
        .filter(|t| t.output_tokens > 1)
        .map(|t| s(t.e2e_ns - t.ttft_ns) / (t.output_tokens - 1) as f64)
        .collect();
    let overloaded = queue_grows(&ttft);
    SimStage {
        requests: v.len() as u64,
        failed,
        served_per_s: span_s.map(|d| v.len() as f64 / d),
        ttft: Dist::of(&mut ttft),
        e2e: Dist::of(&mut e2e),
        tpot: Dist::of(&mut tpot),
        overloaded,
        prefix_hit_rate: hit,
    }
}

/// Measured against simulated for one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub experiment: String,
    pub stage: usize,
    pub rate: Option<f64>,
    pub measured: MeasuredStage,
    pub simulated: SimStage,
    /// Relative errors (simulated / measured - 1) of TTFT and E2E mean, p50, p90, p99.
    pub ttft_err: Dist,
    pub e2e_err: Dist,
    /// Where the measurement has per-request token times.
    pub tpot_err: Option<Dist>,
}

fn rel(s: &Dist, m: &Dist) -> Dist {
    let r = |a: f64, b: f64| if b > 0.0 { a / b - 1.0 } else { f64::NAN };
    Dist {
        mean: r(s.mean, m.mean),
        p50: r(s.p50, m.p50),
        p90: r(s.p90, m.p90),
        p99: r(s.p99, m.p99),
    }
}

impl StageReport {
    pub fn new(e: &Experiment, m: &MeasuredStage, s: &SimStage) -> StageReport {
        StageReport {
            experiment: e.name.clone(),
            stage: m.stage,
            rate: m.rate,
            measured: m.clone(),
            simulated: s.clone(),
            ttft_err: rel(&s.ttft, &m.ttft),
            e2e_err: rel(&s.e2e, &m.e2e),
            tpot_err: m.tpot.as_ref().map(|t| rel(&s.tpot, t)),
        }
    }
}

/// How an overloaded stage compares: the share of requests that failed (past the client's
/// timeout), answered requests per second and, with per-request times, TPOT p50.
pub fn overload_line(s: &StageReport) -> String {
    let share = |failed: u64, ok: u64| 100.0 * failed as f64 / (failed + ok).max(1) as f64;
    let served = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}/s"));
    let mut line = format!(
        "{} stage {}: failed {:.0} % measured, {:.0} % simulated; served {} measured, {} simulated",
        s.experiment,
        s.stage,
        share(s.measured.failures, s.measured.requests),
        share(s.simulated.failed, s.simulated.requests),
        served(s.measured.served_per_s),
        served(s.simulated.served_per_s),
    );
    if let Some(t) = &s.measured.tpot {
        line += &format!(
            "; TPOT p50 {:.1} ms measured, {:.1} ms simulated",
            1e3 * t.p50,
            1e3 * s.simulated.tpot.p50
        );
    }
    line
}

/// The bar's figures over the stages vLLM served without overload.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub stages_compared: usize,
    pub stages_overloaded_measured: usize,
    pub median_abs_err_e2e_p50: f64,
    pub max_abs_err_e2e_p50: f64,
    pub median_abs_err_ttft_p50: f64,
    pub max_abs_err_ttft_p50: f64,
    /// Stages vLLM served within its rate that the simulation predicts as overloaded.
    pub served_but_predicted_overloaded: usize,
}

pub fn summarize(stages: &[StageReport]) -> Summary {
    let ok: Vec<&StageReport> = stages.iter().filter(|s| !s.measured.overloaded).collect();
    let med = |mut v: Vec<f64>| -> f64 { crate::stats::median(&mut v) };
    let e2e: Vec<f64> = ok.iter().map(|s| s.e2e_err.p50.abs()).collect();
    let ttft: Vec<f64> = ok.iter().map(|s| s.ttft_err.p50.abs()).collect();
    Summary {
        stages_compared: ok.len(),
        stages_overloaded_measured: stages.len() - ok.len(),
        max_abs_err_e2e_p50: e2e.iter().copied().fold(0.0, f64::max),
        max_abs_err_ttft_p50: ttft.iter().copied().fold(0.0, f64::max),
        median_abs_err_e2e_p50: med(e2e),
        median_abs_err_ttft_p50: med(ttft),
        served_but_predicted_overloaded: ok.iter().filter(|s| s.simulated.overloaded).count(),
    }
}

/// The whole fidelity report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub calibration: String,
    pub experiments: Vec<Experiment>,
    pub scenarios: Vec<PathBuf>,
    pub stages: Vec<StageReport>,
    pub skipped: Vec<Skipped>,
    pub summary: Summary,
}

/// Recreate, simulate and compare every experiment under `roots`; scenarios are written
/// under `scenario_dir`.
pub fn run(roots: &[PathBuf], gpu: Option<&str>, calibration: &str, scenario_dir: &Path) -> Result<Report> {
    let (experiments, mut skipped) = discover(roots, gpu)?;
    let mut stages = Vec::new();
    let mut scenarios = Vec::new();
    let mut kept = Vec::new();
    for e in experiments {
        let path = write_scenario(&e, calibration, scenario_dir)?;
        match simulate(&e, &path, None, None) {
            Ok(sim) => {
                for (m, s) in e.stages.iter().zip(&sim) {
                    stages.push(StageReport::new(&e, m, s));
                }
                scenarios.push(path);
                kept.push(e);
            }
            Err(x) => skipped.push(Skipped {
                dir: e.dir.clone(),
                reason: format!("the recreated scenario {} does not run: {x}", path.display()),
            }),
        }
    }
    let summary = summarize(&stages);
    Ok(Report {
        calibration: calibration.to_string(),
        experiments: kept,
        scenarios,
        stages,
        skipped,
        summary,
    })
}

/// The report as a Markdown table (experiment, stage, measured, simulated, error).
pub fn markdown(r: &Report) -> String {
    let mut t = String::from(
        "| experiment | stage | rate (req/s) | TTFT p50 measured | simulated | error | E2E p50 measured | simulated | error | E2E p90 error | overloaded (measured / simulated) | prefix hits |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in &r.stages {
        t += &format!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:+.1} % | {:.3} s | {:.3} s | {:+.1} % | {:+.1} % | {} / {} | {:.0} % |\n",
            s.experiment,
            s.stage,
            s.rate.map_or("trace".into(), |r| format!("{r}")),
            s.measured.ttft.p50 * 1e3,
            s.simulated.ttft.p50 * 1e3,
            100.0 * s.ttft_err.p50,
            s.measured.e2e.p50,
            s.simulated.e2e.p50,
            100.0 * s.e2e_err.p50,
            100.0 * s.e2e_err.p90,
            if s.measured.overloaded { "yes" } else { "no" },
            if s.simulated.overloaded { "yes" } else { "no" },
            100.0 * s.simulated.prefix_hit_rate,
        );
    }
    for k in &r.skipped {
        t += &format!("| {} | skipped: {} |||||||||||\n", k.dir.display(), k.reason);
    }
    let over: Vec<&StageReport> = r.stages.iter().filter(|s| s.measured.overloaded).collect();
    if !over.is_empty() {
        t += "\nOverloaded in the measurement, compared on what the load generator saw (failures past its timeout, served throughput) and, where per-request times exist, TPOT:\n\n";
        for s in over {
            t += &format!("- {}\n", overload_line(s));
        }
    }
    t += &format!("\n{}\n", r.summary.line());
    t
}

impl Summary {
    /// The summary in one sentence.
    pub fn line(&self) -> String {
        format!(
            "Over the {} stages vLLM served within its rate: E2E p50 error median {:.1} % (max {:.1} %), TTFT p50 error median {:.1} % (max {:.1} %); {} predicted overloaded. {} stage(s) overloaded in the measurement are listed but not counted.",
            self.stages_compared,
            100.0 * self.median_abs_err_e2e_p50,
            100.0 * self.max_abs_err_e2e_p50,
            100.0 * self.median_abs_err_ttft_p50,
            100.0 * self.max_abs_err_ttft_p50,
            self.served_but_predicted_overloaded,
            self.stages_overloaded_measured
        )
    }
}
