//! `chimera replay` (feature `live`) against real HTTP servers on 127.0.0.1: `chimera emulate`
//! engines and a scripted fault server. Conformance with `chimera run`, the policy core's
//! decisions against a fresh core built as the simulator builds it, every fault kind, an
//! endpoint that dies mid-run, and kill + `--resume`.
#![cfg(feature = "live")]

mod common;

use chimera::policy::journal::{feed, CoreInput, JournalDecision, JournalEntry};
use chimera::replay::endpoints::Endpoints;
use chimera::replay::records::{read_lines, RequestRecord, WorkflowRecord};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tests that time emulators in real time run one at a time, so that they do not share the
/// cores (the fault-server tests do not time anything and run beside them).
static REAL_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    REAL_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn chimera(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_chimera")).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small synthetic scenario on one model, quick in real time.
fn small_scenario(dir: &Path, workflows: u32, output_tokens: u32, rate: f64) -> PathBuf {
    write(
        dir,
        "small.yaml",
        &format!(
            "name: small\nseed: 3\ncluster:\n  engines:\n    - {{model: Qwen2.5-1.5B, gpu: H100-SXM, calibration: auto}}\n\
             workload:\n  kind: synthetic\n  workflows: {workflows}\n  stages: {{dist: constant, value: 2}}\n\
             \x20 first_prompt_tokens: {{dist: constant, value: 24}}\n  stage_prompt_tokens: {{dist: constant, value: 8}}\n\
             \x20 output_tokens: {{dist: constant, value: {output_tokens}}}\n  observation_tokens: {{dist: constant, value: 8}}\n\
             \x20 tool_delay_ms: {{dist: constant, value: 20}}\n  max_prompt_tokens: 4000\n\
             \x20 arrivals: {{process: poisson, rate_per_s: {rate}}}\n\
             policy:\n  routing: {{kind: round_robin}}\n  priority: fcfs\n"
        ),
    )
}

fn endpoints(dir: &Path, model_urls: &[(&str, Vec<String>)], extra: &str) -> PathBuf {
    let mut y = String::from("models:\n");
    for (m, urls) in model_urls {
        let urls: Vec<String> = urls.iter().map(|u| format!("'http://{u}'")).collect();
        y.push_str(&format!("  {m}: {{urls: [{}]}}\n", urls.join(", ")));
    }
    y.push_str(extra);
    write(dir, "endpoints.yaml", &y)
}

/// Emulators of the conformance scenario's two engines, and an ENDPOINTS.yaml for them.
fn conformance_emulators(dir: &Path, metrics_ms: u32) -> (Vec<common::Child>, PathBuf) {
    let (a_child, a) = common::emulator("Qwen2.5-1.5B", "H100-SXM", &["scheduling=priority"]);
    let (b_child, b) = common::emulator("Qwen2.5-7B", "H100-SXM", &["scheduling=priority"]);
    let eps = endpoints(
        dir,
        &[("Qwen2.5-1.5B", vec![a]), ("Qwen2.5-7B", vec![b])],
        &format!("metrics_interval_ms: {metrics_ms}\n"),
    );
    (vec![a_child, b_child], eps)
}

#[test]
fn replay_against_emulators_agrees_with_the_simulation() {
    let _serial = serial();
    let dir = common::tmpdir("replay-conformance");
    let (_servers, eps) = conformance_emulators(&dir, 500);
    let scen = common::repo().join("scenarios/replay/conformance.yaml");
    let (sim, rep) = (dir.join("sim"), dir.join("replay"));
    let (ok, _, err) = chimera(&["run", "-q", s(&scen), "--out", s(&sim)]);
    assert!(ok, "{err}");
    let noise_before = common::timing_noise();
    let (ok, _, err) = chimera(&["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&rep)]);
    assert!(ok, "{err}");
    // Tolerances below are widened by twice the machine's timing noise around the replay.
    let slack = 2.0 * noise_before.max(common::timing_noise());
    eprintln!("timing noise slack: {:.1} %", 100.0 * slack);
    // The same Parquet schemas: every simulated column is in the replay's tables.
    for t in ["requests", "workflows"] {
        let cols = |d: &Path| common::schema_names(&d.join(format!("{t}.parquet")));
        let (sc, rc) = (cols(&sim), cols(&rep));
        for c in &sc {
            assert!(rc.contains(c), "{t}.parquet of the replay lacks `{c}`");
        }
    }
    let st = common::strings(&rep.join("workflows.parquet"), "status");
    assert_eq!(st.len(), 24);
    assert!(st.iter().all(|x| x == "ok"));
    // Every chunk gap is recorded, and the send lag is small.
    let gaps = common::column(&rep.join("itl.parquet"), "gap_ns");
    let out_tokens: f64 = common::column(&rep.join("requests.parquet"), "output_tokens")
        .iter()
        .sum();
    assert!(
        gaps.len() as f64 >= 0.5 * out_tokens,
        "{} gaps for {out_tokens} tokens",
        gaps.len()
    );
    let lag = common::column(&rep.join("requests.parquet"), "send_lag_ns");
    let mut lag_sorted = lag.clone();
    lag_sorted.sort_by(f64::total_cmp);
    assert!(
        lag_sorted[lag.len() / 2] < 5e6 * (1.0 + 10.0 * slack),
        "median send lag {} ns",
        lag_sorted[lag.len() / 2]
    );
    // /metrics were sampled through the run, from both servers.
    let eng = common::strings(&rep.join("metrics.parquet"), "engine");
    assert!(
        eng.iter().filter(|e| e.starts_with("Qwen2.5-7B@")).count() >= 10,
        "{}",
        eng.len()
    );
    let running = common::column(&rep.join("metrics.parquet"), "running");
    assert!(running.iter().any(|&r| r > 0.0));
    // Stated tolerance: median request and workflow E2E within 10 % (measured here: < 1 %).
    let (ok, out, err) = chimera(&["compare", s(&sim), s(&rep), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let find = |name: &str| {
        v["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .clone()
    };
    assert_eq!(v["requests_matched"], 76, "{out}");
    for m in ["request E2E", "workflow E2E"] {
        let med = find(m)["error"]["median_rel_err"].as_f64().unwrap();
        assert!(med < 0.10 + slack, "{m}: median relative error {med}\n{out}");
    }
    let tpot = find("request TPOT")["error"]["median_rel_err"].as_f64().unwrap();
    assert!(tpot < 0.10 + slack, "TPOT median relative error {tpot}");
}

#[test]
fn the_replay_makes_the_decisions_a_fresh_core_makes_on_the_same_inputs() {
    let _serial = serial();
    let dir = common::tmpdir("replay-decisions");
    let (_servers, eps) = conformance_emulators(&dir, 200);
    // The Chimera policy: load-aware routing, QRF lengths, a confidence model with its own
    // random stream, STJF priorities.
    let sets = [
        "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.5}, min_confidence_gain: 0.1}",
        "policy.confidence={kind: noisy_oracle, auc: 0.68}",
        "workload.workflows=10",
        "workload.arrivals.rate_per_s=4",
    ];
    let scen = common::repo().join("scenarios/replay/conformance.yaml");
    let rep = dir.join("replay");
    let mut args = vec!["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&rep)];
    for x in &sets {
        args.extend(["--set", x]);
    }
    let (ok, _, err) = chimera(&args);
    assert!(ok, "{err}");
    // The replay's summary reports the confidence model's realised AUC too, from the
    // workflows' records: every workflow was assessed for every model.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("summary.json")).unwrap()).unwrap();
    let by_model = summary["confidence"]["by_model"]
        .as_array()
        .expect("confidence in the summary");
    assert!(!by_model.is_empty());
    assert!(by_model.iter().all(|m| m["workflows"] == 10), "{by_model:?}");

    let sets: Vec<String> = sets.iter().map(|x| x.to_string()).collect();
    let r = chimera::scenario::load(&scen, &sets).unwrap();
    let endpoints = Endpoints::load(&eps).unwrap().engines(&r.models).unwrap();
    let infos = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let se = r.engines.iter().find(|e| e.model == ep.model).unwrap();
            chimera::factory::engine_info(i as u32, &ep.name, se)
        })
        .collect();
    let mut core = chimera::factory::build_policy_for(&r, r.scenario.seed, infos, Some((2, 200_000_000)));
    let mut src = chimera::factory::open_source(&r, r.scenario.seed).unwrap();
    let mut specs = HashMap::new();
    while let Some(w) = src.next_workflow().unwrap() {
        specs.insert(w.id, w);
    }
    let journal: Vec<JournalEntry> = read_lines(&rep.join("decisions.jsonl")).unwrap();
    let (mut dispatches, mut reports, mut engines_used) = (0, 0, std::collections::BTreeSet::new());
    for (k, e) in journal.iter().enumerate() {
        let oracle = || match &e.input {
            CoreInput::Request { workflow, stage, .. } => {
                Some(Arc::new(chimera::runtime::oracle_of(&specs[workflow], *stage as usize)))
            }
            _ => None,
        };
        let got: Vec<JournalDecision> = feed(&mut core, &e.input, oracle)
            .iter()
            .map(JournalDecision::from)
            .collect();
        assert_eq!(got, e.decisions, "journal entry {k}: {:?}", e.input);
        for d in &got {
            if let JournalDecision::Dispatch { engine, .. } = d {
                dispatches += 1;
                engines_used.insert(*engine);
            }
        }
        reports += matches!(e.input, CoreInput::Report { .. }) as u32;
    }
    assert!(dispatches >= 10, "{dispatches} dispatches");
    assert!(reports >= 5, "{reports} engine reports from /metrics");
    assert_eq!(core.tracked(), 0);
    let _ = engines_used;
}

/// What the fault server does with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Ok,
    Status(u16),
    /// Stream two chunks, then close without `data: [DONE]`.
    NoDone,
    /// Send the headers and one chunk, then stall.
    Stall,
    /// Send nothing for a while (no first token).
    Silent,
    /// Close the connection without answering.
    Drop,
}

/// A scripted OpenAI-completions server: each new /v1/completions request takes the next act
/// of the script (`Ok` once it is empty). HTTP/1.1, one request per connection.
struct FaultServer {
    addr: String,
    script: Arc<Mutex<VecDeque<Act>>>,
    served: Arc<Mutex<Vec<Act>>>,
}

fn read_request(s: &mut TcpStream) -> Option<(String, serde_json::Value)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((first, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
}

fn serve(mut s: TcpStream, script: Arc<Mutex<VecDeque<Act>>>, served: Arc<Mutex<Vec<Act>>>) {
    let Some((line, body)) = read_request(&mut s) else {
        return;
    };
    if !line.contains("/v1/completions") {
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let act = script.lock().unwrap().pop_front().unwrap_or(Act::Ok);
    served.lock().unwrap().push(act);
    let n = body["max_tokens"].as_u64().unwrap_or(1);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    let chunk = |i: u64| format!("data: {{\"choices\":[{{\"index\":0,\"text\":\" t{i}\"}}]}}\n\n");
    match act {
        Act::Ok => {
            let mut out = head.to_string();
            for i in 0..n {
                out.push_str(&chunk(i));
            }
            out.push_str(&format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
                n + 1
            ));
            let _ = s.write_all(out.as_bytes());
        }
        Act::Status(code) => {
            let body = format!("{{\"object\":\"error\",\"message\":\"scripted {code}\"}}");
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {code} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        Act::NoDone => {
            let _ = s.write_all(format!("{head}{}{}", chunk(0), chunk(1)).as_bytes());
        }
        Act::Stall => {
            let _ = s.write_all(format!("{head}{}", chunk(0)).as_bytes());
            std::thread::sleep(Duration::from_secs(3));
        }
        Act::Silent => std::thread::sleep(Duration::from_secs(3)),
        Act::Drop => {}
    }
}

impl FaultServer {
    fn start(script: &[Act]) -> FaultServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (sc, sv) = (script.clone(), served.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (sc, sv) = (sc.clone(), sv.clone());
                std::thread::spawn(move || serve(c, sc, sv));
            }
        });
        FaultServer { addr, script, served }
    }
}

const FAST: &str = "timeouts: {connect_s: 1, first_token_s: 0.5, idle_s: 0.5, total_s: 10}\nretries: {max: 2, backoff_ms: 20}\nmetrics_interval_ms: 0\n";

fn records(dir: &Path) -> (Vec<RequestRecord>, Vec<WorkflowRecord>) {
    (
        read_lines(&dir.join("requests.jsonl")).unwrap(),
        read_lines(&dir.join("workflows.jsonl")).unwrap(),
    )
}

#[test]
fn each_fault_is_recorded_retried_where_safe_and_the_run_goes_on() {
    // (fault, text the recorded error must contain, whether a retry saves the workflow)
    let cases: [(Act, &str, bool); 8] = [
        (Act::Status(500), "HTTP 500: scripted 500", true),
        (Act::Status(503), "HTTP 503", true),
        (Act::Status(429), "HTTP 429", true),
        (Act::NoDone, "stream ended without [DONE] after 2 chunks", true),
        (Act::Stall, "timeout: http://", true),
        (Act::Silent, "no response headers within 0.5 s", true),
        (Act::Drop, "stream: http://", true),
        (Act::Status(400), "HTTP 400: scripted 400", false),
    ];
    let dir = common::tmpdir("replay-faults");
    let scen = small_scenario(&dir, 4, 5, 50.0);
    for (k, (act, want, recovers)) in cases.iter().enumerate() {
        let srv = FaultServer::start(&[*act]);
        let d = dir.join(format!("case{k}"));
        std::fs::create_dir_all(&d).unwrap();
        let eps = endpoints(&d, &[("Qwen2.5-1.5B", vec![srv.addr.clone()])], FAST);
        let out = d.join("out");
        let (ok, _, err) = chimera(&["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&out)]);
        assert!(ok, "{act:?}: the run must go on: {err}");
        let (reqs, wfs) = records(&out);
        let failed: Vec<&RequestRecord> = reqs.iter().filter(|r| r.status.as_str() != "ok").collect();
        assert_eq!(failed.len(), 1, "{act:?}: {failed:?}");
        let e = failed[0].error.as_deref().unwrap();
        assert!(e.contains(want), "{act:?}: error `{e}` lacks `{want}`");
        assert_eq!(failed[0].status.as_str(), if *recovers { "failed" } else { "rejected" });
        assert_eq!(wfs.len(), 4, "{act:?}: every workflow has its record");
        let bad: Vec<&WorkflowRecord> = wfs.iter().filter(|w| w.status.as_str() != "ok").collect();
        if *recovers {
            assert!(bad.is_empty(), "{act:?}: {bad:?}");
            // The retry of that request succeeded as attempt 1.
            assert!(reqs
                .iter()
                .any(|r| r.request_id == failed[0].request_id && r.attempt == 1 && r.status.as_str() == "ok"));
        } else {
            assert_eq!(bad.len(), 1, "{act:?}");
            assert!(
                bad[0].error.as_deref().unwrap().contains("rejected: HTTP 400"),
                "{bad:?}"
            );
        }
        assert!(srv.script.lock().unwrap().is_empty());
        assert_eq!(srv.served.lock().unwrap()[0], *act);
        // The tables are there and carry the failure.
        let st = common::strings(&out.join("requests.parquet"), "status");
        assert_eq!(st.iter().filter(|x| *x != "ok").count(), 1);
    }
}

#[test]
fn refused_connections_exhaust_bounded_retries_and_name_the_url() {
    let dir = common::tmpdir("replay-refused");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let scen = small_scenario(&dir, 3, 5, 50.0);
    let url = format!("127.0.0.1:{port}");
    let eps = endpoints(&dir, &[("Qwen2.5-1.5B", vec![url.clone()])], FAST);
    let out = dir.join("out");
    let (ok, _, err) = chimera(&["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&out)]);
    assert!(ok, "{err}");
    let (reqs, wfs) = records(&out);
    // 3 workflows, first stage each, 1 try + 2 retries.
    assert_eq!(reqs.len(), 9, "{reqs:?}");
    assert!(reqs
        .iter()
        .all(|r| r.status.as_str() == "failed"
            && r.error.as_deref().unwrap().contains(&format!("connect: http://{url}"))));
    assert_eq!(wfs.len(), 3);
    assert!(wfs
        .iter()
        .all(|w| w.status.as_str() == "failed" && w.error.as_deref().unwrap().contains("gave up after 2 retries")));
    // Retries wait: the backoff doubles (20 ms, then 40 ms).
    let mut by_req: HashMap<u64, Vec<&RequestRecord>> = HashMap::new();
    for r in &reqs {
        by_req.entry(r.request_id).or_default().push(r);
    }
    for v in by_req.values() {
        assert!(v[1].scheduled_ns - v[0].send_ns >= 20_000_000);
        assert!(v[2].scheduled_ns - v[1].send_ns >= 40_000_000);
    }
}

#[test]
fn an_endpoint_that_dies_mid_run_loses_nothing() {
    let _serial = serial();
    let dir = common::tmpdir("replay-dies");
    let (a_child, a) = common::emulator("Qwen2.5-1.5B", "H100-SXM", &[]);
    let (b_child, b) = common::emulator("Qwen2.5-1.5B", "H100-SXM", &[]);
    let scen = small_scenario(&dir, 40, 300, 8.0);
    let eps = endpoints(
        &dir,
        &[("Qwen2.5-1.5B", vec![a.clone(), b.clone()])],
        "timeouts: {connect_s: 1, first_token_s: 5, idle_s: 2, total_s: 30}\nretries: {max: 3, backoff_ms: 20}\nmetrics_interval_ms: 100\n",
    );
    let out = dir.join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&out)])
        .spawn()
        .unwrap();
    let mut child = common::Child(child);
    std::thread::sleep(Duration::from_millis(1200));
    drop(b_child);
    let status = child.0.wait().unwrap();
    assert!(status.success());
    drop(a_child);
    let (reqs, wfs) = records(&out);
    assert_eq!(wfs.len(), 40);
    assert!(wfs.iter().all(|w| w.status.as_str() == "ok"), "{wfs:?}");
    // The core took the dead replica (engine 1) out after repeated refused connections and
    // probed its /health instead: no attempt was sent to it after that (the bar is fewer
    // than 5 a minute; before endpoint health, 66 in 40 s).
    let journal: Vec<JournalEntry> = read_lines(&out.join("decisions.jsonl")).unwrap();
    let out_at = journal
        .iter()
        .find(|e| {
            e.decisions
                .iter()
                .any(|d| matches!(d, JournalDecision::Probe { engine: 1, .. }))
        })
        .map(|e| match &e.input {
            CoreInput::Failed {
                t, unreachable: true, ..
            } => *t,
            other => panic!("taken out on {other:?}"),
        })
        .expect("the dead replica was taken out of routing");
    let after: Vec<&RequestRecord> = reqs
        .iter()
        .filter(|r| r.engine.ends_with(&b) && r.send_ns > out_at)
        .collect();
    assert!(
        after.is_empty(),
        "attempts on the dead replica after it was taken out: {after:?}"
    );
    assert!(
        journal.iter().any(|e| matches!(
            e.input,
            CoreInput::Probe {
                engine: 1,
                healthy: false,
                ..
            }
        )),
        "its /health was probed"
    );
    assert!(
        reqs.iter()
            .filter(|r| r.send_ns > out_at && r.engine.ends_with(&a))
            .count()
            > 10,
        "the run went on on the live replica"
    );
    let failed: Vec<&RequestRecord> = reqs.iter().filter(|r| r.status.as_str() == "failed").collect();
    assert!(
        !failed.is_empty(),
        "the dead replica's requests failed and were retried"
    );
    for f in &failed {
        assert!(f.engine.ends_with(&b), "{f:?}");
        assert!(reqs
            .iter()
            .any(|r| r.request_id == f.request_id && r.status.as_str() == "ok" && r.engine.ends_with(&a)));
    }
    // Its /metrics scrapes fail from then on, and say so.
    let mets: Vec<chimera::replay::records::MetricsRecord> = read_lines(&out.join("metrics.jsonl")).unwrap();
    assert!(mets.iter().any(|m| m.engine.ends_with(&b) && m.error.is_some()));
    assert!(mets
        .iter()
        .any(|m| m.engine.ends_with(&a) && m.sample.running.is_some()));
}

/// An emulator and a replay of 12 two-stage workflows against it at `rate`, running in the
/// background into `dir/out`: (emulator, replay, scenario, endpoints, out).
fn background_replay(dir: &Path, rate: f64) -> (common::Child, common::Child, PathBuf, PathBuf, PathBuf) {
    let (emu, a) = common::emulator("Qwen2.5-1.5B", "H100-SXM", &[]);
    let scen = small_scenario(dir, 12, 200, rate);
    let eps = endpoints(dir, &[("Qwen2.5-1.5B", vec![a])], "metrics_interval_ms: 0\n");
    let out = dir.join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&out)])
        .spawn()
        .unwrap();
    (emu, common::Child(child), scen, eps, out)
}

/// A second replay, or a --resume, into a folder that a running replay writes is refused
/// (before the lock both ran and the folder ended with workflows twice).
#[test]
fn a_folder_a_running_replay_writes_is_locked() {
    let _serial = serial();
    let dir = common::tmpdir("replay-lock");
    let (_a, mut child, scen, eps, out) = background_replay(&dir, 3.0);
    let t0 = Instant::now();
    while !out.join("requests.jsonl").exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the first replay did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.0.id().to_string();
    for extra in [&[][..], &["--resume"][..]] {
        let mut args = vec!["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&out)];
        args.extend_from_slice(extra);
        let (ok, _, err) = chimera(&args);
        assert!(!ok, "{extra:?} ran beside a running replay");
        assert!(err.contains("a running replay (process") && err.contains(&pid), "{err}");
    }
    assert!(child.0.wait().unwrap().success());
    let (_, wfs) = records(&out);
    assert_eq!(wfs.len(), 12, "each workflow once");
}

/// vLLM 0.32 cuts max_tokens where the sequence reaches its context length and refuses a
/// min_tokens above the cut (the emulator answers as it does). The replay asks for the cut
/// length, as the simulated engine stops there (regression: HTTP 400 and failed workflows).
#[test]
fn outputs_past_the_context_length_are_cut_as_vllm_cuts_them() {
    let _serial = serial();
    let dir = common::tmpdir("replay-maxlen");
    let (_a, a) = common::emulator("Qwen2.5-1.5B", "H100-SXM", &["max_model_len=200"]);
    // One stage each: a second stage would resend more context than the engine holds.
    let scen = small_scenario(&dir, 4, 300, 20.0);
    let one = std::fs::read_to_string(&scen)
        .unwrap()
        .replace("{dist: constant, value: 2}", "{dist: constant, value: 1}");
    let scen = write(&dir, "one-stage.yaml", &one);
    let eps = endpoints(&dir, &[("Qwen2.5-1.5B", vec![a])], "metrics_interval_ms: 0\n");
    let out = dir.join("out");
    let (ok, _, err) = chimera(&["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&out)]);
    assert!(ok, "{err}");
    assert_eq!(records(&out).0.len(), 4);
    let (reqs, wfs) = records(&out);
    assert!(wfs.iter().all(|w| w.status.as_str() == "ok"), "{wfs:?}");
    for r in &reqs {
        assert_eq!(r.status.as_str(), "ok", "{r:?}");
        assert_eq!(r.max_tokens, 200 - r.prompt_tokens, "{r:?}");
        assert_eq!(r.output_tokens, r.max_tokens, "{r:?}");
    }
    // The simulation of the same engine stops at the same lengths.
    let sim = dir.join("sim");
    let (ok, _, err) = chimera(&[
        "run",
        "-q",
        s(&scen),
        "--set",
        "cluster.engines[0].max_model_len=200",
        "--set",
        "workload.max_prompt_tokens=100",
        "--out",
        s(&sim),
    ]);
    assert!(ok, "{err}");
    let mut simulated = common::column(&sim.join("requests.parquet"), "output_tokens");
    let mut measured: Vec<f64> = reqs.iter().map(|r| r.output_tokens as f64).collect();
    simulated.sort_by(f64::total_cmp);
    measured.sort_by(f64::total_cmp);
    assert_eq!(simulated, measured);
}

#[test]
fn a_killed_or_interrupted_replay_resumes_without_redoing_finished_workflows() {
    let _serial = serial();
    // SIGKILL: the logs end where the process died. SIGINT: the replay stops at once, writes
    // its tables and `state: interrupted`, and exits 130.
    for sig in ["KILL", "INT"] {
        let dir = common::tmpdir(&format!("replay-resume-{sig}"));
        let (_a, mut child, scen, eps, out) = background_replay(&dir, 4.0);
        let t0 = Instant::now();
        loop {
            let n = std::fs::read_to_string(out.join("workflows.jsonl"))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if n >= 3 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no workflow finished");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = child.0.wait().unwrap();
        if sig == "INT" {
            assert_eq!(status.code(), Some(130));
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
            assert_eq!(m["status"]["state"], "interrupted", "{m}");
        }
        let (_, before) = records(&out);
        assert!(
            before.len() >= 3 && before.len() < 12,
            "{} finished before the kill",
            before.len()
        );
        // Without --resume the folder is refused, so nothing is overwritten.
        let (ok, _, err) = chimera(&["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&out)]);
        assert!(!ok && err.contains("already holds a replay; pass --resume"), "{err}");
        let (ok, _, err) = chimera(&[
            "replay",
            "-q",
            s(&scen),
            "--endpoints",
            s(&eps),
            "--out",
            s(&out),
            "--resume",
        ]);
        assert!(ok, "{err}");
        let (reqs, wfs) = records(&out);
        assert_eq!(wfs.len(), 12);
        let mut ids: Vec<u64> = wfs.iter().map(|w| w.workflow_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 12, "no workflow twice");
        for w in &before {
            let again = wfs.iter().filter(|x| x.workflow_id == w.workflow_id).count();
            assert_eq!(again, 1);
            assert!(reqs.iter().all(|r| r.workflow_id != w.workflow_id || r.segment == 0));
        }
        assert!(wfs.iter().all(|w| w.status.as_str() == "ok"));
        // The final tables: each workflow once, each of its two stages once (restarted workflows
        // keep only their second run's requests).
        let wf_ids = common::column(&out.join("workflows.parquet"), "workflow_id");
        assert_eq!(wf_ids.len(), 12);
        let req_wf = common::column(&out.join("requests.parquet"), "workflow_id");
        assert_eq!(req_wf.len(), 24);
        // Request ids stay unique across the two segments.
        let mut rid = common::column(&out.join("requests.parquet"), "request_id");
        rid.sort_by(f64::total_cmp);
        rid.dedup();
        assert_eq!(rid.len(), 24);
    }
}

#[test]
fn bad_endpoints_files_name_the_field() {
    let dir = common::tmpdir("replay-bad-endpoints");
    let scen = small_scenario(&dir, 1, 5, 1.0);
    let eps = write(
        &dir,
        "e.yaml",
        "models:\n  Qwen2.5-7B: {urls: ['http://127.0.0.1:1']}\n",
    );
    let (ok, _, err) = chimera(&["replay", s(&scen), "--endpoints", s(&eps), "--out", s(&dir.join("o"))]);
    assert!(!ok);
    assert!(
        err.contains("e.yaml: models.Qwen2.5-7B: not a model of the scenario; allowed: Qwen2.5-1.5B"),
        "{err}"
    );
}

#[test]
fn shipped_endpoint_files_fit_their_scenarios() {
    let root = common::repo().join("scenarios");
    for (scen, eps) in [
        ("replay/conformance.yaml", "endpoints/emulators-local.yaml"),
        ("replay/llamacpp-smollm2.yaml", "endpoints/llamacpp-local.yaml"),
    ] {
        let r = chimera::scenario::load(&root.join(scen), &[]).unwrap();
        let e = Endpoints::load(&root.join(eps)).unwrap().engines(&r.models).unwrap();
        assert_eq!(e.len(), r.models.len(), "{eps}");
    }
}

#[test]
fn the_shipped_llamacpp_calibration_is_a_refit_of_its_probe_points() {
    let dir = common::tmpdir("replay-refit");
    let repo = common::repo();
    let out = dir.join("refit.yaml");
    let (ok, _, err) = chimera(&[
        "calibrate",
        "server",
        "-q",
        "--from-points",
        s(&repo.join("calibration/profiles/llamacpp-smollm2-cpu.points.json")),
        "--model",
        "SmolLM2-135M",
        "--gpu",
        "CPU-2core",
        "--max-num-batched-tokens",
        "512",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    let a = chimera::hw::Calibration::load(&out).unwrap();
    let b = chimera::hw::Calibration::load(&repo.join("calibration/llamacpp-smollm2-cpu.yaml")).unwrap();
    let (x, y) = (
        serde_json::to_value(a.coefficients).unwrap(),
        serde_json::to_value(b.coefficients).unwrap(),
    );
    for (k, v) in x.as_object().unwrap() {
        let (p, q) = (v.as_f64().unwrap(), y[k].as_f64().unwrap());
        assert!((p - q).abs() <= 1e-9 * q.abs().max(1.0), "{k}: refit {p}, shipped {q}");
    }
    assert_eq!(a.fitted, b.fitted);
    assert!(
        b.provenance.source.contains("llama-server") && b.datasheet.unwrap().source.contains("not from a datasheet")
    );
}

/// The decisions of a journal without their times: (request, engine) of each dispatch, the
/// requests given up, the engines probed.
fn decision_shape(journal: &[JournalDecision]) -> Vec<String> {
    journal
        .iter()
        .map(|d| match d {
            JournalDecision::Dispatch { request, engine, .. } => format!("dispatch {request} -> {engine}"),
            JournalDecision::Abandon { request, .. } => format!("abandon {request}"),
            JournalDecision::Probe { engine, .. } => format!("probe {engine}"),
        })
        .collect()
}

/// Issue 14's bar: the simulator and the replay run one workflow runtime, so a scenario with
/// faults gets the same decisions from both. Replica r1 answers every attempt with HTTP 503:
/// in the simulation through `faults: [{kind: fail, fraction: 1, error: transient}]`, in the
/// replay from a scripted server. Arrivals are a second apart, so the order of the inputs
/// (not their times) is the same in both runs.
#[test]
fn the_simulator_and_the_replay_make_the_same_decisions_under_faults() {
    let dir = common::tmpdir("replay-same-decisions");
    let scen = write(
        &dir,
        "faults.yaml",
        "name: faults\nseed: 5\ncluster:\n  engines:\n    - {name: small, model: Qwen2.5-1.5B, gpu: H100-SXM, calibration: auto, replicas: 2}\n\
         workload:\n  kind: synthetic\n  workflows: 5\n  stages: {dist: constant, value: 2}\n\
         \x20 first_prompt_tokens: {dist: constant, value: 24}\n  stage_prompt_tokens: {dist: constant, value: 8}\n\
         \x20 output_tokens: {dist: constant, value: 4}\n  observation_tokens: {dist: constant, value: 8}\n\
         \x20 tool_delay_ms: {dist: constant, value: 20}\n  max_prompt_tokens: 4000\n\
         \x20 arrivals: {process: gamma, rate_per_s: 1.0, cv: 0.01}\n\
         policy:\n  routing: {kind: round_robin}\n  priority: fcfs\n  max_retries: 2\n\
         faults:\n  - {engine: small-r1, kind: fail, fraction: 1.0, error: transient, at_s: 0, for_s: 1000}\n",
    );
    let sim = dir.join("sim");
    let (ok, _, err) = chimera(&["run", "-q", s(&scen), "--out", s(&sim), "--set", "output.journal=true"]);
    assert!(ok, "{err}");
    let good = FaultServer::start(&[]);
    let bad = FaultServer::start(&[Act::Status(503); 32]);
    let eps = endpoints(
        &dir,
        &[("Qwen2.5-1.5B", vec![good.addr.clone(), bad.addr.clone()])],
        "timeouts: {connect_s: 1, first_token_s: 2, idle_s: 2, total_s: 10}\nretries: {max: 2, backoff_ms: 100}\nmetrics_interval_ms: 0\n",
    );
    let rep = dir.join("replay");
    let (ok, _, err) = chimera(&["replay", "-q", s(&scen), "--endpoints", s(&eps), "--out", s(&rep)]);
    assert!(ok, "{err}");
    let flat = |p: &Path| -> Vec<JournalDecision> {
        let j: Vec<JournalEntry> = read_lines(p).unwrap();
        j.into_iter().flat_map(|e| e.decisions).collect()
    };
    let (a, b) = (
        decision_shape(&flat(&sim.join("decisions.jsonl"))),
        decision_shape(&flat(&rep.join("decisions.jsonl"))),
    );
    assert_eq!(a, b, "simulated decisions (left) differ from the replay's (right)");
    // The fault was met and routed around: some dispatches went to r1 and were redone on r0.
    let to_r1 = a.iter().filter(|d| d.ends_with("-> 1")).count();
    assert!(to_r1 >= 2 && a.len() == 10 + to_r1, "{a:?}");
    let (reqs, wfs) = records(&rep);
    assert_eq!(reqs.iter().filter(|r| r.status.as_str() == "failed").count(), to_r1);
    assert!(wfs.iter().all(|w| w.status.as_str() == "ok"), "{wfs:?}");
    let sum: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sim.join("summary.json")).unwrap()).unwrap();
    assert_eq!(sum["requests"]["failed_attempts"], serde_json::json!(to_r1));
    // Both folders say how they were made, in one manifest format.
    for (d, kind) in [(&sim, "run"), (&rep, "replay")] {
        let m = chimera::run::Manifest::read(&d.join("manifest.json")).unwrap();
        assert_eq!(serde_json::to_value(m.kind).unwrap(), kind);
        assert_eq!(m.seed, 5);
        assert_eq!(m.scenario_path.as_deref(), Some(s(&scen)));
        assert!(m.inputs["engines"][0]["step_time"].is_object(), "{}", m.inputs);
        assert!(matches!(m.status, chimera::run::Status::Complete { .. }));
        assert_eq!(m.replay.is_some(), kind == "replay");
    }
}
