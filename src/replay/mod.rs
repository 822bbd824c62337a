//! `chimera replay` (feature `live`): re-issue a scenario's workflows against live
//! OpenAI-compatible endpoints in real time, with the scenario's own policy core deciding
//! where and in what order requests go, and record what really happened.
//!
//! This is the second driver of [`PolicyCore`](crate::policy::PolicyCore): a tokio loop on one thread owns the core, the
//! workload source and the timers; HTTP requests and /metrics scrapes run as tasks that report
//! back over a bounded channel. Time is integer nanoseconds since the replay began (the
//! simulation's timeline: workflows arrive at their `arrival_ns` as in `chimera run`). Every
//! input to the core goes through [`feed`](crate::policy::journal::feed) and is journalled with its decisions.
//!
//! It deliberately does not contain any policy: routing, priorities, retries and re-routing
//! after a failure are the core's decisions (built by `factory::build_policy_for`), and the workflow lifecycle is the shared
//! [`Runtime`]'s, as in the simulator.

pub mod client;
pub mod endpoints;
pub mod probe;
pub mod records;

use crate::error::{Error, Result};
use crate::output::schema::{RequestStatus, WorkflowStatus};
use crate::output::summary::{Aggregates, EngineSummary, Summary};
use crate::run::{Manifest, ReplayInfo, RunKind, Status};
use crate::runtime::{Action, Runtime, Wake, WorkflowOutcome};
use crate::scenario::Resolved;
use crate::time::Nanos;
use crate::workload::{WorkflowSpec, WorkloadSource};
use client::{CallError, MetricsSample, Streamed};
use endpoints::{Endpoint, Endpoints, Kind, PromptForm, Timeouts};
use records::{Appender, MetricsRecord, RequestRecord, WorkflowRecord};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// The longest the driver waits before looking whether Ctrl-C asked it to stop.
const POLL_STOP: std::time::Duration = std::time::Duration::from_millis(200);

/// Within this many ns of the next event the driver sleeps on its own thread, not on a timer.
const PRECISE_NS: Nanos = 2_000_000;

/// Files of a replay folder.
pub const REQUESTS_JSONL: &str = "requests.jsonl";
pub const WORKFLOWS_JSONL: &str = "workflows.jsonl";
pub const METRICS_JSONL: &str = "metrics.jsonl";
pub const JOURNAL_JSONL: &str = "decisions.jsonl";

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Continue the replay in the output folder, skipping workflows it finished.
    pub resume: bool,
    /// No progress lines.
    pub quiet: bool,
    /// The overrides the scenario was loaded with, and its file (for the manifest).
    pub sets: Vec<String>,
    pub scenario_path: Option<std::path::PathBuf>,
}

/// What a finished replay reports besides its files.
#[derive(Debug)]
pub struct ReplayReport {
    pub summary: Summary,
    /// Workflows replayed in this invocation, and skipped because an earlier one finished them.
    pub replayed: u64,
    pub skipped: u64,
    /// Attempts that failed (retried or not), in this invocation.
    pub failed_attempts: u64,
    /// Send lag (actual minus scheduled send), ns: p50, p99, max over this invocation.
    pub send_lag_ns: (i64, i64, i64),
    pub wall_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    Wake(Wake),
    Send(u64),
    Probe(u32),
}

/// One attempt of one request, as its HTTP task reports it.
struct Attempt {
    request: u64,
    attempt: u32,
    engine: u32,
    scheduled_ns: Nanos,
    send_ns: Nanos,
    result: std::result::Result<Streamed, CallError>,
}

enum Msg {
    Done(Attempt),
    Probe {
        engine: u32,
        healthy: bool,
    },
    Metrics {
        engine: u32,
        t_ns: Nanos,
        result: std::result::Result<MetricsSample, CallError>,
    },
}

/// A request's own prompt tokens as ids in [1000, vocab), drawn from (seed, workflow, stage):
/// the same on every run and every retry, different between requests.
pub fn prompt_ids(seed: u64, workflow: u64, stage: u32, n: u32, vocab: u32) -> Vec<u32> {
    token_ids(&format!("replay.prompt/{seed}/{workflow}/{stage}"), n, vocab)
}

/// `n` token ids in [1000, vocab) drawn from a key.
fn token_ids(key: &str, n: u32, vocab: u32) -> Vec<u32> {
    let mut x = crate::rng::fnv1a64(key.as_bytes());
    let span = (vocab.max(1001) - 1000) as u64;
    (0..n)
        .map(|_| {
            let z = crate::rng::splitmix64(x);
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            1000 + (z % span) as u32
        })
        .collect()
}

/// The prompt of stage `stage` of workflow `wf`, as the simulator's prefix cache sees it
/// (`sim::stage_content`): a later stage resends the previous stage's sequence (`prev`: its
/// prompt and the tokens the server generated) up to the stage's context, as an agent resends
/// its conversation; a first stage of a shared-prefix group starts with its group's prefix;
/// the rest are tokens of the stage's own.
pub fn stage_prompt(seed: u64, wf: u64, stage: u32, st: &crate::workload::Stage, prev: &[u32], vocab: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::with_capacity(st.prompt_tokens as usize);
    if stage > 0 && st.context_tokens > 0 {
        let cut = (st.context_tokens.min(st.prompt_tokens) as usize).min(prev.len());
        ids.extend_from_slice(&prev[..cut]);
    } else if let Some((group, n)) = st.prefix.filter(|_| st.context_tokens == 0) {
        ids.extend(token_ids(
            &format!("replay.prefix/{seed}/{group}"),
            n.min(st.prompt_tokens),
            vocab,
        ));
    }
    let own = st.prompt_tokens.saturating_sub(ids.len() as u32);
    match st.prompt_id.filter(|_| st.context_tokens == 0) {
        // A prompt that repeats whole: the same ids for every request of its id.
        Some(id) => ids.extend(token_ids(&format!("replay.prompt/{seed}/{id}"), own, vocab)),
        None => ids.extend(prompt_ids(seed, wf, stage, own, vocab)),
    }
    ids
}

/// The sequence a finished stage leaves for the next: its prompt, then its output, as the ids
/// the server generated or, from a server that did not return them, ids of the stage's own.
pub fn stage_sequence(
    seed: u64,
    wf: u64,
    stage: u32,
    prompt: Vec<u32>,
    output_ids: &[u32],
    output_tokens: u32,
    vocab: u32,
) -> Vec<u32> {
    let mut seq = prompt;
    if output_ids.len() == output_tokens as usize {
        seq.extend_from_slice(output_ids);
    } else {
        seq.extend(token_ids(
            &format!("replay.output/{seed}/{wf}/{stage}"),
            output_tokens,
            vocab,
        ));
    }
    seq
}

/// Output tokens to ask for: the trace's, cut where the sequence reaches the server's context
/// length, as vLLM (0.32) cuts `max_tokens` and as the simulated engine stops. A prompt that
/// alone reaches it is sent as it is, for the server to refuse.
pub fn output_cap(output_tokens: u32, prompt_tokens: u32, max_model_len: u32) -> u32 {
    if prompt_tokens >= max_model_len {
        return output_tokens;
    }
    output_tokens.min(max_model_len - prompt_tokens)
}

const WORDS: [&str; 16] = [
    " time", " water", " light", " house", " river", " stone", " paper", " music", " garden", " window", " market",
    " winter", " forest", " silver", " engine", " letter",
];

/// The body of one completion request, by endpoint kind.
pub fn request_body(ep: &Endpoint, ids: &[u32], max_tokens: u32, priority: Option<i64>) -> Value {
    let prompt = match ep.prompt {
        PromptForm::TokenIds => json!(ids),
        PromptForm::Text => json!(ids.iter().map(|i| WORDS[*i as usize % WORDS.len()]).collect::<String>()),
    };
    let mut b = json!({
        "model": ep.served_model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match ep.kind {
        Kind::Vllm => {
            // min_tokens equals max_tokens, which the caller has already cut to the context
            // length (vLLM refuses min_tokens above the max_tokens it cut itself). The ids of
            // the generated tokens come back in each chunk: they are counted (without a
            // tokenizer vLLM streams empty text) and resent by the next stage.
            b["min_tokens"] = json!(max_tokens);
            b["return_token_ids"] = json!(true);
            if let Some(p) = priority {
                b["priority"] = json!(p);
            }
        }
        // llama.cpp has no min_tokens (ignore_eos already forces the length) and no priority;
        // its prompt cache would reuse a slot's earlier prefix, which vLLM-like engines in the
        // simulator do not, so it is turned off.
        Kind::Llamacpp => {
            b["cache_prompt"] = json!(false);
        }
    }
    b
}

/// The replay's own data per workflow: the last finished stage's sequence (its prompt, then
/// the tokens the server generated), which the next stage resends.
#[derive(Default)]
struct WfExt {
    seq: Vec<u32>,
}

/// The replay's own data per request: when the driver meant to send its latest attempt.
#[derive(Default)]
struct ReqExt {
    scheduled_ns: Nanos,
}

struct Driver {
    /// Seeds the prompts' token ids: the scenario's seed mixed with this replay's salt.
    prompt_seed: u64,
    eps: Vec<Endpoint>,
    /// Context length per endpoint: the scenario engine's, or the server's when smaller.
    max_len: Vec<u32>,
    send_priority: Vec<bool>,
    timeouts: Timeouts,
    rt: Runtime<WfExt, ReqExt>,
    source: Box<dyn WorkloadSource>,
    next_wf: Option<WorkflowSpec>,
    skip: HashSet<u64>,
    heap: BinaryHeap<Reverse<(Nanos, u64, Ev)>>,
    seq: u64,
    start: Instant,
    offset_ns: Nanos,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    sems: Vec<Arc<Semaphore>>,
    requests_out: Appender,
    workflows_out: Appender,
    metrics_out: Appender,
    journal_out: Appender,
    segment: u32,
    replayed: u64,
    skipped: u64,
    lags: Vec<i64>,
    quiet: bool,
}

impl Driver {
    fn now(&self) -> Nanos {
        self.offset_ns + self.start.elapsed().as_nanos() as Nanos
    }

    fn at(&self, t: Nanos) -> Instant {
        self.start + std::time::Duration::from_nanos((t - self.offset_ns).max(0) as u64)
    }

    fn push(&mut self, t: Nanos, ev: Ev) {
        self.heap.push(Reverse((t, self.seq, ev)));
        self.seq += 1;
    }

    /// After every call into the runtime: journal what the core got and decided, then carry
    /// out the runtime's actions.
    fn settle(&mut self) -> Result<()> {
        for entry in self.rt.take_journal() {
            self.journal_out.append(&entry)?;
        }
        while let Some(a) = self.rt.poll_action() {
            match a {
                Action::Send { request, at, .. } => {
                    if let Some(p) = self.rt.pending_mut(request) {
                        p.ext.scheduled_ns = at;
                    }
                    self.push(at, Ev::Send(request));
                }
                Action::Wake { at, wake } => self.push(at, Ev::Wake(wake)),
                Action::Probe { engine, at } => {
                    if !self.quiet {
                        eprintln!(
                            "replay: {} is out of routing after repeated connection failures; probing its /health",
                            self.eps[engine as usize].name
                        );
                    }
                    self.push(at, Ev::Probe(engine));
                }
                Action::Done(w) => self.record_workflow(w)?,
            }
            for entry in self.rt.take_journal() {
                self.journal_out.append(&entry)?;
            }
        }
        Ok(())
    }

    /// GET /health of an engine out of routing; the answer goes to the core.
    fn probe(&mut self, engine: u32) {
        let ep = &self.eps[engine as usize];
        let (base, key, timeouts, tx) = (
            ep.base.clone(),
            ep.api_key.clone(),
            self.timeouts.clone(),
            self.tx.clone(),
        );
        tokio::spawn(async move {
            let healthy = client::get_text(&base, "/health", key.as_deref(), &timeouts)
                .await
                .is_ok();
            let _ = tx.send(Msg::Probe { engine, healthy }).await;
        });
    }

    fn on_arrival(&mut self) -> Result<()> {
        let spec = self.next_wf.take().expect("an arrival has its workflow");
        let now = self.now();
        self.replayed += 1;
        self.rt.arrive(now, spec)?;
        self.settle()?;
        self.pull_next()
    }

    /// The next workflow not finished by an earlier segment, with its arrival event.
    fn pull_next(&mut self) -> Result<()> {
        while let Some(w) = self.source.next_workflow()? {
            if self.skip.contains(&w.id) {
                self.skipped += 1;
                continue;
            }
            let t = w.arrival_ns;
            self.next_wf = Some(w);
            self.push(t, Ev::Arrival);
            break;
        }
        Ok(())
    }

    fn send(&mut self, request: u64) {
        let Some(p) = self.rt.pending(request) else { return };
        let wf = self.rt.workflow(p.workflow).expect("live workflow");
        let st = wf.stage_spec(p.stage);
        let e = p.engine as usize;
        let ep = &self.eps[e];
        let ids = stage_prompt(self.prompt_seed, p.workflow, p.stage, &st, &wf.ext.seq, ep.vocab);
        let body = serde_json::to_vec(&request_body(
            ep,
            &ids,
            output_cap(st.output_tokens, st.prompt_tokens, self.max_len[e]),
            self.send_priority[e].then_some(p.priority),
        ))
        .expect("a JSON body");
        let (base, key, timeouts, sem, tx) = (
            ep.base.clone(),
            ep.api_key.clone(),
            self.timeouts.clone(),
            self.sems[e].clone(),
            self.tx.clone(),
        );
        let (attempt, scheduled_ns, engine) = (p.attempt, p.ext.scheduled_ns, p.engine);
        let (start, offset) = (self.start, self.offset_ns);
        tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let t0 = Instant::now();
            let send_ns = offset + (t0 - start).as_nanos() as Nanos;
            let result = client::stream_completion(&base, key.as_deref(), body, &timeouts, t0).await;
            let _ = tx
                .send(Msg::Done(Attempt {
                    request,
                    attempt,
                    engine,
                    scheduled_ns,
                    send_ns,
                    result,
                }))
                .await;
        });
    }

    fn on_done(&mut self, a: Attempt) -> Result<()> {
        let Attempt {
            request,
            attempt,
            engine,
            scheduled_ns,
            send_ns,
            result,
        } = a;
        let now = self.now();
        let Some(p) = self.rt.pending(request) else {
            return Ok(());
        };
        if p.attempt != attempt {
            return Ok(());
        }
        let wf = self.rt.workflow(p.workflow).expect("live workflow");
        let st = wf.stage_spec(p.stage);
        let ep = &self.eps[engine as usize];
        self.lags.push(send_ns - scheduled_ns);
        let mut rec = RequestRecord {
            request_id: request,
            attempt,
            workflow_id: p.workflow,
            stage: p.stage,
            engine: ep.name.clone(),
            model: ep.model.clone(),
            status: RequestStatus::Ok,
            error: None,
            http_status: None,
            priority: p.priority,
            arrival_ns: p.arrival_ns,
            scheduled_ns,
            send_ns,
            first_token_ns: None,
            finish_ns: None,
            prompt_tokens: st.prompt_tokens,
            context_tokens: st.context_tokens,
            max_tokens: output_cap(st.output_tokens, st.prompt_tokens, self.max_len[engine as usize]),
            output_tokens: 0,
            server_prompt_tokens: None,
            cached_tokens: None,
            chunk_ns: Vec::new(),
            chunk_tokens: Vec::new(),
            segment: self.segment,
            server_timings: None,
        };
        match result {
            Ok(s) => {
                rec.first_token_ns = s.chunk_ns.first().map(|t| send_ns + t);
                rec.finish_ns = Some(send_ns + s.end_ns);
                rec.output_tokens = s.output_tokens;
                rec.server_prompt_tokens = s.prompt_tokens;
                rec.cached_tokens = s.cached_tokens;
                rec.chunk_ns = s.chunk_ns;
                if s.chunk_tokens.iter().any(|&n| n != 1) {
                    rec.chunk_tokens = s.chunk_tokens;
                }
                rec.server_timings = s.server_timings;
                if rec.first_token_ns.is_none() {
                    rec.first_token_ns = rec.finish_ns;
                }
                self.requests_out.append(&rec)?;
                let (wf_id, stage) = (p.workflow, p.stage);
                let prompt = stage_prompt(self.prompt_seed, wf_id, stage, &st, &wf.ext.seq, ep.vocab);
                let seq = stage_sequence(
                    self.prompt_seed,
                    wf_id,
                    stage,
                    prompt,
                    &s.output_ids,
                    rec.output_tokens,
                    ep.vocab,
                );
                self.rt.workflow_mut(wf_id).expect("live workflow").ext.seq = seq;
                self.rt.finished(now, request, rec.output_tokens, 0)?;
            }
            Err(e) => {
                let kind = e.failure_kind();
                let transient = !matches!(kind, crate::policy::FailureKind::Rejected(_));
                rec.status = if transient {
                    RequestStatus::Failed
                } else {
                    RequestStatus::Rejected
                };
                rec.error = Some(e.to_string());
                rec.http_status = e.http_status();
                self.requests_out.append(&rec)?;
                if !self.quiet {
                    eprintln!("replay: request {request} attempt {attempt} on {}: {e}", ep.name);
                }
                self.rt.failed(now, request, kind)?;
            }
        }
        self.settle()
    }

    fn record_workflow(&mut self, w: WorkflowOutcome) -> Result<()> {
        let ep = &self.eps[w.engine as usize];
        self.workflows_out.append(&WorkflowRecord {
            workflow_id: w.id,
            model: ep.model.clone(),
            engine: ep.name.clone(),
            status: if w.failed() {
                WorkflowStatus::Failed
            } else {
                WorkflowStatus::Ok
            },
            error: w.error,
            arrival_ns: w.arrival_ns,
            finish_ns: w.finish_ns,
            stages: w.stages,
            prompt_tokens: w.prompt_tokens,
            output_tokens: w.output_tokens,
            success: w.success,
            segment: self.segment,
            confidence: w
                .confidence
                .into_iter()
                .map(|(m, c, s)| (m.to_string(), c, s))
                .collect(),
        })
    }

    fn on_metrics(
        &mut self,
        engine: u32,
        t_ns: Nanos,
        result: std::result::Result<MetricsSample, CallError>,
    ) -> Result<()> {
        let (sample, error) = match &result {
            Ok(s) => (s.clone(), None),
            Err(e) => (MetricsSample::default(), Some(e.to_string())),
        };
        self.metrics_out.append(&MetricsRecord {
            engine: self.eps[engine as usize].name.clone(),
            t_ns,
            sample,
            error,
        })?;
        if let Ok(s) = result {
            let now = self.now();
            self.rt.report(
                now,
                engine,
                s.running.unwrap_or(0.0).max(0.0) as u32,
                s.waiting.unwrap_or(0.0).max(0.0) as u32,
                s.kv_usage.unwrap_or(0.0),
            );
            self.settle()?;
        }
        Ok(())
    }

    async fn run(&mut self, metrics_interval_ms: u64) -> Result<()> {
        let mut samplers = Vec::new();
        if metrics_interval_ms > 0 {
            for (i, ep) in self.eps.iter().enumerate() {
                let (base, key, kind, tx, timeouts) = (
                    ep.base.clone(),
                    ep.api_key.clone(),
                    ep.kind,
                    self.tx.clone(),
                    self.timeouts.clone(),
                );
                let (start, offset) = (self.start, self.offset_ns);
                let period = std::time::Duration::from_millis(metrics_interval_ms);
                samplers.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let t_ns = offset + start.elapsed().as_nanos() as Nanos;
                        let result = client::get_text(&base, "/metrics", key.as_deref(), &timeouts)
                            .await
                            .map(|text| client::parse_metrics(kind, &text));
                        if tx
                            .send(Msg::Metrics {
                                engine: i as u32,
                                t_ns,
                                result,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }));
            }
        }
        let result = self.event_loop().await;
        for s in samplers {
            s.abort();
        }
        result
    }

    async fn event_loop(&mut self) -> Result<()> {
        let mut last_progress = std::time::Instant::now();
        loop {
            let now = self.now();
            while let Some(&Reverse((t, _, ev))) = self.heap.peek() {
                if t > now {
                    break;
                }
                self.heap.pop();
                match ev {
                    Ev::Arrival => self.on_arrival()?,
                    Ev::Wake(w) => {
                        let now = self.now();
                        self.rt.wake(now, w);
                        self.settle()?;
                    }
                    Ev::Send(r) => self.send(r),
                    Ev::Probe(e) => self.probe(e),
                }
            }
            if self.next_wf.is_none() && self.rt.in_flight() == 0 {
                break;
            }
            if crate::interrupt::requested() {
                return Err(Error::Interrupted(format!(
                    "{} workflows finished or in flight were recorded; continue with --resume",
                    self.replayed
                )));
            }
            if !self.quiet && last_progress.elapsed().as_secs() >= 5 {
                last_progress = std::time::Instant::now();
                eprintln!(
                    "replay: {} workflows started, {} in flight, {} failed attempts",
                    self.replayed,
                    self.rt.in_flight(),
                    self.rt.failed_attempts()
                );
            }
            // tokio's timers tick in whole milliseconds: wait on them until close to the next
            // event, then sleep the rest precisely on this thread (the HTTP tasks, which take
            // the timestamps, run on the runtime's worker threads meanwhile).
            let msg = match self.heap.peek().map(|Reverse((t, _, _))| *t) {
                Some(t) => {
                    let wait = t - self.now();
                    if wait <= 0 {
                        self.rx.try_recv().ok()
                    } else if wait <= PRECISE_NS {
                        std::thread::sleep(std::time::Duration::from_nanos(wait as u64));
                        self.rx.try_recv().ok()
                    } else {
                        let d = self.at(t - PRECISE_NS / 2).min(Instant::now() + POLL_STOP);
                        tokio::select! {
                            m = self.rx.recv() => m,
                            _ = tokio::time::sleep_until(d) => None,
                        }
                    }
                }
                None => tokio::select! {
                    m = self.rx.recv() => m,
                    _ = tokio::time::sleep(POLL_STOP) => None,
                },
            };
            match msg {
                Some(Msg::Done(a)) => self.on_done(a)?,
                Some(Msg::Metrics { engine, t_ns, result }) => self.on_metrics(engine, t_ns, result)?,
                Some(Msg::Probe { engine, healthy }) => {
                    let t = self.now();
                    self.rt.probe_answer(t, engine, healthy);
                    self.settle()?;
                }
                None => {}
            }
        }
        self.rt.check_end().map_err(|m| Error::other(format!("replay: {m}")))
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

fn pct(v: &[i64], q: f64) -> i64 {
    let mut f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    let x = crate::stats::quantile(&mut f, q);
    if x.is_nan() {
        0
    } else {
        x.round() as i64
    }
}

/// The lock file of a replay folder.
pub const LOCK_FILE: &str = ".replay.lock";

/// Take the exclusive lock on a replay folder, or say which process holds it.
pub fn lock_folder(out: &Path) -> Result<std::fs::File> {
    let path = out.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => {
            use std::io::{Seek, Write};
            let mut g = &f;
            let _ = g.set_len(0);
            let _ = g.seek(std::io::SeekFrom::Start(0));
            let _ = writeln!(g, "{}", std::process::id());
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(Error::bad(format!(
                "{}: a running replay (process {}) is writing this folder; wait for it to end or choose another --out",
                out.display(),
                holder.trim()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Replay `r` against `eps`, writing into `out`.
pub fn replay(r: &Resolved, eps: &Endpoints, out: &Path, opts: &ReplayOptions) -> Result<ReplayReport> {
    let endpoints = eps.engines(&r.models)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Held until this function returns (the OS releases it when the process dies): a second
    // replay, or a --resume, into a folder a running replay writes is refused.
    let _lock = lock_folder(out)?;
    let mpath = out.join("manifest.json");
    let scenario_json = serde_json::to_value(&r.scenario).expect("scenario serialises");
    let paths = [REQUESTS_JSONL, WORKFLOWS_JSONL, METRICS_JSONL, JOURNAL_JSONL].map(|f| out.join(f));
    let started_before = paths[0].exists() || paths[1].exists();
    if started_before && !opts.resume {
        return Err(Error::bad(format!(
            "{}: already holds a replay; pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    let mut skip = HashSet::new();
    let (mut next_request, mut segment) = (0, 0);
    // A salt for the prompts' token ids, new for every replay (kept by --resume): a server's
    // prefix cache still holding an earlier replay's prompts would otherwise answer them from
    // cache, where the simulation starts cold. Sharing within a replay is what the scenario says.
    let mut prompt_salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    if opts.resume && started_before {
        let old = Manifest::read(&mpath)?;
        if let Some(x) = &old.replay {
            prompt_salt = x.prompt_salt;
        }
        if old.scenario != scenario_json {
            return Err(Error::bad(format!(
                "{}: --resume needs the same scenario (and overrides) as the interrupted replay; its manifest.json differs",
                out.display()
            )));
        }
        for p in &paths {
            records::repair_tail(p)?;
        }
        let wfs: Vec<WorkflowRecord> = records::read_lines(&paths[1])?;
        let reqs: Vec<RequestRecord> = records::read_lines(&paths[0])?;
        skip = wfs.iter().map(|w| w.workflow_id).collect();
        next_request = reqs.iter().map(|q| q.request_id + 1).max().unwrap_or(0);
        segment = reqs
            .iter()
            .map(|q| q.segment + 1)
            .chain(wfs.iter().map(|w| w.segment + 1))
            .max()
            .unwrap_or(0);
    }
    let mut manifest = Manifest::new(
        RunKind::Replay,
        r,
        &opts.sets,
        opts.scenario_path.as_deref(),
        &[
            "requests.parquet",
            "workflows.parquet",
            "itl.parquet",
            "metrics.parquet",
            "summary.json",
            "manifest.json",
            REQUESTS_JSONL,
            WORKFLOWS_JSONL,
            METRICS_JSONL,
            JOURNAL_JSONL,
        ],
        Status::Running { segment: Some(segment) },
    )?;
    manifest.replay = Some(ReplayInfo {
        endpoints: endpoints.iter().map(|e| json!({"engine": e.name, "model": e.model, "url": e.base.url, "kind": e.kind.as_str(), "served_model": e.served_model, "max_concurrency": e.max_concurrency})).collect(),
        timeouts: serde_json::to_value(&eps.timeouts).expect("timeouts serialise"),
        retries: serde_json::to_value(&eps.retries).expect("retries serialise"),
        metrics_interval_ms: eps.metrics_interval_ms,
        prompt_salt,
    });
    manifest.write(&mpath)?;

    let seed = r.scenario.seed;
    let infos = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let se = r
                .engines
                .iter()
                .find(|e| e.model == ep.model)
                .expect("every scenario model has an engine");
            crate::factory::engine_info(i as u32, &ep.name, se)
        })
        .collect();
    let retry = (
        eps.retries.max.unwrap_or(r.scenario.policy.max_retries),
        (eps.retries.backoff_ms as Nanos) * 1_000_000,
    );
    let core = crate::factory::build_policy_for(r, seed, infos, Some(retry));
    let policy = core.describe();
    let send_priority = endpoints
        .iter()
        .map(|ep| {
            let se = r.engines.iter().find(|e| e.model == ep.model).expect("engine");
            ep.send_priority
                .unwrap_or(ep.kind == Kind::Vllm && se.limits.policy != crate::engine::EnginePolicy::Fcfs)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::other(format!("replay: {e}")))?;
    // Each endpoint's context length: the scenario engine's, or what a vLLM server says it
    // serves when that is smaller (its /v1/models), so that max_tokens is cut as it cuts it.
    let max_len: Vec<u32> = endpoints
        .iter()
        .map(|ep| {
            let se = r.engines.iter().find(|e| e.model == ep.model).expect("engine");
            let server = match ep.kind {
                Kind::Vllm => rt
                    .block_on(client::served_max_model_len(
                        &ep.base,
                        &ep.served_model,
                        ep.api_key.as_deref(),
                        &eps.timeouts,
                    ))
                    .ok()
                    .flatten(),
                Kind::Llamacpp => None,
            };
            server.map_or(se.limits.max_model_len, |s| s.min(se.limits.max_model_len))
        })
        .collect();
    let wall = std::time::Instant::now();
    let (tx, rx) = mpsc::channel(1024);
    let result: Result<(u64, u64, u64, Vec<i64>)> = rt.block_on(async {
        let mut d = Driver {
            prompt_seed: crate::engine::kv::mix(seed, prompt_salt),
            max_len,
            sems: endpoints
                .iter()
                .map(|e| Arc::new(Semaphore::new(e.max_concurrency as usize)))
                .collect(),
            eps: endpoints.clone(),
            send_priority,
            timeouts: eps.timeouts.clone(),
            rt: Runtime::new(core).with_journal().starting_at_request(next_request),
            source: crate::factory::open_source(r, seed)?,
            next_wf: None,
            skip,
            heap: BinaryHeap::new(),
            seq: 0,
            start: Instant::now(),
            offset_ns: 0,
            tx,
            rx,
            requests_out: Appender::open(&paths[0])?,
            workflows_out: Appender::open(&paths[1])?,
            metrics_out: Appender::open(&paths[2])?,
            journal_out: Appender::open(&paths[3])?,
            segment,
            replayed: 0,
            skipped: 0,
            lags: Vec::new(),
            quiet: opts.quiet,
        };
        d.pull_next()?;
        // A resumed replay starts its clock at the first workflow it still has to run.
        if segment > 0 {
            if let Some(w) = &d.next_wf {
                d.offset_ns = w.arrival_ns;
            }
        }
        d.start = Instant::now();
        d.run(eps.metrics_interval_ms).await?;
        Ok((
            d.replayed,
            d.skipped,
            d.rt.failed_attempts(),
            std::mem::take(&mut d.lags),
        ))
    });
    let (replayed, skipped, failed_attempts, lags) = match result {
        Ok(x) => x,
        Err(e) => {
            manifest.status = Status::of_error(&e, Some(segment));
            let _ = manifest.write(&mpath);
            return Err(e);
        }
    };
    let wall_s = wall.elapsed().as_secs_f64();
    let summary = build_tables(r, &endpoints, out, policy)?;
    let send_lag_ns = (
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        lags.iter().copied().max().unwrap_or(0),
    );
    let mut summary = summary;
    summary.requests.failed_attempts = Some(failed_attempts);
    let mut sj = serde_json::to_value(&summary).expect("summary serialises");
    sj["replay"] = json!({
        "wall_s": wall_s,
        "send_lag_ns_p50": send_lag_ns.0,
        "send_lag_ns_p99": send_lag_ns.1,
        "send_lag_ns_max": send_lag_ns.2,
        "failed_attempts": failed_attempts,
        "segments": segment + 1,
    });
    write_json(&out.join("summary.json"), &sj)?;
    manifest.status = Status::Complete {
        events: None,
        sim_end_ns: None,
        event_log_hash: None,
        segment: Some(segment),
        wall_s: Some(wall_s),
    };
    manifest.write(&mpath)?;
    Ok(ReplayReport {
        summary,
        replayed,
        skipped,
        failed_attempts,
        send_lag_ns,
        wall_s,
    })
}

/// Build the Parquet tables and the summary of a replay folder from its JSON lines; `policy`
/// is the core's description for the summary.
pub fn build_tables(r: &Resolved, endpoints: &[Endpoint], out: &Path, policy: String) -> Result<Summary> {
    let reqs: Vec<RequestRecord> = records::read_lines(&out.join(REQUESTS_JSONL))?;
    let wfs: Vec<WorkflowRecord> = records::read_lines(&out.join(WORKFLOWS_JSONL))?;
    let mets: Vec<MetricsRecord> = records::read_lines(&out.join(METRICS_JSONL))?;
    let reqs = records::final_requests(reqs, &wfs);
    let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
    let mut agg = Aggregates::new(&r.models);
    if let Some(last) = wfs.iter().map(|w| w.workflow_id).max() {
        agg.set_window(last + 1);
    }
    records::write_tables(out, &names, &r.models, &reqs, &wfs, &mets, &mut agg)?;
    let engines = endpoints
        .iter()
        .map(|ep| {
            let se = r.engines.iter().find(|e| e.model == ep.model).expect("engine");
            EngineSummary {
                name: ep.name.clone(),
                model: ep.model.clone(),
                gpu: se.gpu.clone(),
                tensor_parallel: se.tensor_parallel,
                steps: 0,
                busy_fraction: 0.0,
                mean_step_tokens: 0.0,
                preemptions: 0,
                kv_capacity_tokens: 0,
                decode_tokens_per_s_nominal: 0.0,
                step_time_source: format!("measured ({} at {})", ep.kind.as_str(), ep.base.url),
                step_time_expected_error: "none: measured".into(),
                prefix_cache_queries: None,
                prefix_cache_hits: None,
                prefix_cache_hit_rate: None,
            }
        })
        .collect();
    Ok(agg.summarize(&r.scenario.name, r.scenario.seed, policy, engines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(kind: Kind, prompt: PromptForm) -> Endpoint {
        Endpoint {
            name: "m@h:1".into(),
            model: "m".into(),
            base: endpoints::BaseUrl::parse("http://h:1").unwrap(),
            kind,
            served_model: "org/m".into(),
            api_key: None,
            max_concurrency: 1,
            prompt,
            send_priority: None,
            vocab: 32_000,
        }
    }

    #[test]
    fn request_fields_follow_the_endpoint_kind() {
        let ids = prompt_ids(1, 2, 0, 5, 32_000);
        let v = request_body(&endpoint(Kind::Vllm, PromptForm::TokenIds), &ids, 7, Some(3));
        assert_eq!(v["prompt"], json!(ids));
        assert_eq!((v["max_tokens"].clone(), v["min_tokens"].clone()), (json!(7), json!(7)));
        assert_eq!(
            (v["ignore_eos"].clone(), v["priority"].clone()),
            (json!(true), json!(3))
        );
        assert_eq!(v["stream_options"]["include_usage"], json!(true));
        assert_eq!(v["model"], "org/m");
        let v = request_body(&endpoint(Kind::Vllm, PromptForm::TokenIds), &ids, 7, None);
        assert!(v.get("priority").is_none());
        let l = request_body(&endpoint(Kind::Llamacpp, PromptForm::TokenIds), &ids, 7, Some(3));
        assert!(l.get("min_tokens").is_none() && l.get("priority").is_none());
        assert_eq!(
            (l["cache_prompt"].clone(), l["max_tokens"].clone()),
            (json!(false), json!(7))
        );
        let t = request_body(&endpoint(Kind::Vllm, PromptForm::Text), &ids, 7, None);
        let text = t["prompt"].as_str().unwrap();
        assert_eq!(text.split_whitespace().count(), 5, "{text}");
    }

    /// vLLM 0.32 cuts max_tokens to what the context leaves and refuses min_tokens above the
    /// cut (regression: the replay kept min_tokens at the trace's length, HTTP 400).
    #[test]
    fn output_is_cut_at_the_context_length_and_min_tokens_follows() {
        let ep = endpoint(Kind::Vllm, PromptForm::TokenIds);
        for (out, prompt, max_len, sent) in [
            (157, 1907, 2048, 141),
            (50, 100, 2048, 50),
            (10, 2048, 2048, 10),
            (5, 2043, 2048, 5),
        ] {
            let cap = output_cap(out, prompt, max_len);
            assert_eq!(cap, sent, "{out} {prompt} {max_len}");
            let v = request_body(&ep, &[1000], cap, None);
            assert_eq!(v["min_tokens"], v["max_tokens"]);
            assert_eq!(v["return_token_ids"], json!(true));
        }
    }

    #[test]
    fn later_stages_resend_the_previous_sequence_and_groups_share_their_prefix() {
        use crate::workload::Stage;
        let st = |prompt, context, prefix| Stage {
            prompt_tokens: prompt,
            context_tokens: context,
            output_tokens: 4,
            tool_delay_ns: 0,
            prefix,
            prompt_id: None,
        };
        let p0 = stage_prompt(3, 9, 0, &st(10, 0, None), &[], 32_000);
        assert_eq!(p0, prompt_ids(3, 9, 0, 10, 32_000));
        let seq = stage_sequence(3, 9, 0, p0.clone(), &[5, 6, 7, 8], 4, 32_000);
        assert_eq!(seq.len(), 14);
        // Stage 1: the whole sequence (context 14 + an observation of 3), then its own tokens.
        let p1 = stage_prompt(3, 9, 1, &st(20, 17, None), &seq, 32_000);
        assert_eq!(&p1[..14], &seq[..]);
        assert_eq!(p1.len(), 20);
        // A context cut shorter than the sequence resends only its start.
        let p1 = stage_prompt(3, 9, 1, &st(12, 8, None), &seq, 32_000);
        assert_eq!(&p1[..8], &seq[..8]);
        // Without the server's ids, the output is made up, deterministically.
        assert_eq!(
            stage_sequence(3, 9, 0, p0.clone(), &[], 4, 32_000),
            stage_sequence(3, 9, 0, p0, &[], 4, 32_000)
        );
        // Two workflows of one group start alike, then differ.
        let a = stage_prompt(3, 1, 0, &st(40, 0, Some((2, 32))), &[], 32_000);
        let b = stage_prompt(3, 5, 0, &st(40, 0, Some((2, 32))), &[], 32_000);
        assert_eq!(a[..32], b[..32]);
        assert_ne!(a[32..], b[32..]);
    }

    #[test]
    fn prompts_are_stable_distinct_and_in_range() {
        let a = prompt_ids(7, 3, 1, 500, 32_000);
        assert_eq!(a, prompt_ids(7, 3, 1, 500, 32_000));
        assert_ne!(a[..8], prompt_ids(7, 3, 2, 500, 32_000)[..8]);
        assert_ne!(a[..8], prompt_ids(8, 3, 1, 500, 32_000)[..8]);
        assert!(a.iter().all(|&t| (1000..32_000).contains(&t)));
        assert_eq!(prompt_ids(1, 1, 1, 0, 5000).len(), 0);
    }
}
