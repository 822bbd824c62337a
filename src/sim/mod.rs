//! The discrete-event simulator: one deterministic loop over a cluster of engines, a workload
//! source and the policy core.
//!
//! Events are ordered by (integer nanosecond time, insertion sequence). All randomness comes
//! from named streams seeded by the scenario seed. The loop drives the same [`PolicyCore`]
//! a live driver would, feeding it arrivals, completions and engine reports, and carrying out
//! its decisions. Results stream to the output tables as they happen.
//!
//! Architecture Invariant: same resolved scenario and seed, same bytes in every result file
//! (`tests/determinism.rs`).

use crate::engine::kv::{mix, Seg};
use crate::engine::{Engine, FinishedRequest, NewRequest, PromptContent};
use crate::error::{Error, Result};
use crate::factory::{build_policy, open_source};
use crate::output::schema::{
    request_columns, workflow_columns, workflow_row, RequestRow, RequestStatus, REQUEST_STATUS, WORKFLOW_STATUS,
};
use crate::output::summary::{Aggregates, EngineSummary, Summary};
use crate::output::{ColType, Table, Val};
use crate::policy::journal::{CoreInput, JournalDecision, JournalEntry};
use crate::policy::FailureKind;
use crate::rng::stream;
use crate::runtime::{Action, Runtime, Wake, WorkflowOutcome};
use crate::scenario::{Fault, FaultEffect, Resolved};
use crate::time::Nanos;
use crate::workload::{Stage, WorkflowSpec, WorkloadSource};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Ev {
    Arrival,
    /// A timer the workflow runtime asked for.
    Wake(Wake),
    Dispatch(u64),
    Kick(u32),
    /// A step of engine .0 ends; .1 is the engine's life (a restarted engine ignores the
    /// steps of its previous life).
    StepDone(u32, u32),
    /// Fault .0 (an index into `Resolved::faults`) starts, or ends.
    FaultStart(u32),
    FaultEnd(u32),
    /// The core's probe of engine .0.
    Probe(u32),
}

impl Ev {
    fn code(self) -> u64 {
        match self {
            Ev::Arrival => 1,
            Ev::Wake(Wake::Stage(w)) => 2 ^ (w << 4),
            Ev::Dispatch(r) => 3 ^ (r << 4),
            Ev::Kick(e) => 4 ^ ((e as u64) << 4),
            Ev::StepDone(e, life) => 5 ^ ((e as u64) << 4) ^ ((life as u64) << 40),
            Ev::Wake(Wake::Timer) => 6,
            Ev::FaultStart(i) => 7 ^ ((i as u64) << 4),
            Ev::Probe(e) => 8 ^ ((e as u64) << 4),
            Ev::FaultEnd(i) => 9 ^ ((i as u64) << 4),
        }
    }
}

/// Progress as the run goes: workflows finished, and the total when known.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// What a finished run reports besides its files.
#[derive(Debug)]
pub struct RunReport {
    pub summary: Summary,
    pub events: u64,
    pub sim_end_ns: Nanos,
    /// FNV-1a hash over every processed event (time, kind, payload): equal logs, equal hash.
    pub event_log_hash: u64,
    /// Every input the policy core got and every decision it made, when recorded.
    pub core_io: Option<CoreIo>,
    /// The same, input by input with its decisions (`decisions.jsonl`), when recorded.
    pub journal: Option<Vec<JournalEntry>>,
    /// Every served request's timing, when collected (see [`Simulation::collect_timings`]).
    pub timings: Option<Vec<RequestTiming>>,
    /// Attempts that failed without an answer (faults).
    pub failed_attempts: u64,
}

/// One served request's times, nanoseconds from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestTiming {
    pub arrival_ns: Nanos,
    pub ttft_ns: Nanos,
    pub e2e_ns: Nanos,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub cached_tokens: u32,
}

/// The policy core's inputs and decisions over a run, in order (see `policy::journal`).
#[derive(Debug, Clone, Default)]
pub struct CoreIo {
    pub inputs: Vec<CoreInput>,
    pub decisions: Vec<JournalDecision>,
}

struct Tables {
    requests: Table,
    workflows: Table,
    engines: Table,
}

/// What stage `stage` of workflow `wf` sends, for the prefix cache: the previous stage's
/// sequence up to the stage's context, or its group's shared prefix, then tokens of its own
/// (which its output continues). With `has_next`, the next stage resends all of it.
pub fn stage_content(wf: u64, stage: u32, st: &Stage, prev: Option<&[Seg]>, has_next: bool) -> PromptContent {
    let own = mix(0x5747_4745, (wf << 8) ^ stage as u64);
    let mut segs: Vec<Seg> = Vec::with_capacity(4);
    let mut group_prefix = 0;
    let shared = match (prev, st.prefix) {
        (Some(prev), _) if stage > 0 && st.context_tokens > 0 => {
            let cut = st.context_tokens.min(st.prompt_tokens);
            for s in prev {
                segs.push(Seg {
                    id: s.id,
                    end: s.end.min(cut),
                });
                if s.end >= cut {
                    break;
                }
            }
            segs.last().map_or(0, |s| s.end)
        }
        (_, Some((group, n))) if st.context_tokens == 0 => {
            let n = n.min(st.prompt_tokens);
            segs.push(Seg {
                id: mix(0x0067_524F_5550, group),
                end: n,
            });
            group_prefix = n;
            n
        }
        _ => 0,
    };
    // A prompt that repeats whole (a load generator's fixed prompt set): the rest of it is the
    // same for every request of its id, and all of it may be sent again.
    let repeated = st.prompt_id.filter(|_| st.context_tokens == 0);
    if shared < st.prompt_tokens {
        segs.push(Seg {
            id: repeated.map_or(own, |id| mix(0x5052_4F4D_5054, id)),
            end: st.prompt_tokens,
        });
    }
    PromptContent {
        segs: segs.into(),
        output_id: own,
        reusable: if has_next {
            u32::MAX
        } else if repeated.is_some() {
            st.prompt_tokens
        } else {
            group_prefix
        },
    }
}

impl Tables {
    fn create(dir: &Path, engine_names: &[String], models: &[String]) -> Result<Tables> {
        let names = ColType::Str(engine_names.to_vec());
        let models = ColType::Str(models.to_vec());
        use ColType::*;
        Ok(Tables {
            requests: Table::create(
                &dir.join("requests.parquet"),
                &request_columns(&names, &models, &REQUEST_STATUS),
            )?,
            workflows: Table::create(
                &dir.join("workflows.parquet"),
                &workflow_columns(&names, &models, &WORKFLOW_STATUS),
            )?,
            engines: Table::create(
                &dir.join("engines.parquet"),
                &[
                    ("engine", names),
                    ("step", U64),
                    ("start_ns", I64),
                    ("duration_ns", I64),
                    ("tokens", U32),
                    ("prefill_tokens", U32),
                    ("decode_tokens", U32),
                    ("running", U32),
                    ("batch", U32),
                    ("waiting", U32),
                    ("kv_used_blocks", U32),
                    ("kv_usage", F64),
                    ("preempted", U32),
                ],
            )?,
        })
    }

    fn finish(&mut self) -> Result<()> {
        self.requests.finish()?;
        self.workflows.finish()?;
        self.engines.finish()?;
        Ok(())
    }
}

#[derive(Default, Clone)]
struct EngineStats {
    steps: u64,
    busy_ns: i64,
    tokens: u64,
}

/// The simulator's own data per workflow: the content of the last finished stage's whole
/// sequence (prompt and output), which the next stage's prompt resends as its context.
#[derive(Default)]
struct WfExt {
    seq: Option<Arc<[Seg]>>,
}

/// The simulator's own data per request: what its prompt holds, for the prefix cache.
#[derive(Default)]
struct ReqExt {
    content: Option<PromptContent>,
    /// When the latest attempt reached its engine.
    dispatch_ns: Nanos,
}

/// The simulation of one resolved scenario.
pub struct Simulation<'a> {
    r: &'a Resolved,
    seed: u64,
    now: Nanos,
    seq: u64,
    heap: BinaryHeap<Reverse<(Nanos, u64, Ev)>>,
    engines: Vec<Engine>,
    engine_stats: Vec<EngineStats>,
    kick_pending: Vec<bool>,
    engine_model: Vec<u32>,
    rt: Runtime<WfExt, ReqExt>,
    source: Box<dyn WorkloadSource>,
    next_wf: Option<WorkflowSpec>,
    finished: Vec<FinishedRequest>,
    tables: Option<Tables>,
    agg: Aggregates,
    decision_delay_ns: Nanos,
    log_every: u64,
    check: bool,
    events: u64,
    hash: u64,
    done_workflows: u64,
    timings: Option<Vec<RequestTiming>>,
    /// Per engine: its life (restarts so far) and until when it is down.
    life: Vec<u32>,
    down_until: Vec<Nanos>,
    /// The scenario's faults, and per engine the step-time factor and failure draw now in force.
    faults: Vec<Fault>,
    slow: Vec<f64>,
    fail: Vec<Option<(f64, bool)>>,
    fault_rng: rand_pcg::Pcg64,
    /// Attempts that failed because their engine died, refused the connection, or a `fail`
    /// fault answered them with an error.
    failed_attempts: u64,
    /// Requests that ended with an answer.
    answered: u64,
}

impl<'a> Simulation<'a> {
    pub fn new(r: &'a Resolved, out_dir: &Path) -> Result<Self> {
        let names: Vec<String> = r.engines.iter().map(|e| e.name.clone()).collect();
        let tables = Tables::create(out_dir, &names, &r.models)?;
        let sim = Self::with_tables(r, Some(tables))?;
        Ok(if r.scenario.output.journal {
            sim.record_core_io()
        } else {
            sim
        })
    }

    /// A simulation that writes no tables: only the summary comes out (sweeps).
    pub fn summary_only(r: &'a Resolved) -> Result<Self> {
        Self::with_tables(r, None)
    }

    fn with_tables(r: &'a Resolved, tables: Option<Tables>) -> Result<Self> {
        let seed = r.scenario.seed;
        let engines: Vec<Engine> = (0..r.engines.len()).map(|i| fresh_engine(r, i)).collect();
        let engine_model = r
            .engines
            .iter()
            .map(|e| r.models.iter().position(|m| *m == e.model).expect("model listed") as u32)
            .collect();
        let n = engines.len();
        let faults = r.faults();
        let mut s = Simulation {
            r,
            seed,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            engines,
            engine_stats: vec![EngineStats::default(); n],
            kick_pending: vec![false; n],
            engine_model,
            rt: Runtime::new(build_policy(r, seed)),
            source: open_source(r, seed)?,
            next_wf: None,
            finished: Vec::new(),
            tables,
            agg: Aggregates::new(&r.models),
            decision_delay_ns: (r.scenario.policy.decision_delay_us.unwrap_or(0.0) * 1e3).round() as Nanos,
            log_every: r.scenario.output.engine_log_every_steps as u64,
            check: r.scenario.limits.check_invariants,
            events: 0,
            hash: 0xcbf2_9ce4_8422_2325,
            done_workflows: 0,
            timings: None,
            life: vec![0; n],
            down_until: vec![Nanos::MIN; n],
            slow: vec![1.0; n],
            fail: vec![None; n],
            fault_rng: stream(seed, "faults"),
            faults,
            failed_attempts: 0,
            answered: 0,
        };
        for i in 0..s.faults.len() {
            let f = s.faults[i];
            s.push(f.start_ns, Ev::FaultStart(i as u32));
            if f.effect != FaultEffect::Down {
                s.push(f.end_ns, Ev::FaultEnd(i as u32));
            }
        }
        Ok(s)
    }

    /// Record every input the policy core gets and every decision it makes (for checking a
    /// driver against a fresh core; costs memory per request).
    pub fn record_core_io(mut self) -> Self {
        self.rt = self.rt.with_journal();
        self
    }

    /// Keep every served request's timing in memory (for fidelity checks and fits; costs
    /// memory per request).
    pub fn collect_timings(mut self) -> Self {
        self.timings = Some(Vec::new());
        self
    }

    fn push(&mut self, t: Nanos, ev: Ev) {
        debug_assert!(t >= self.now, "event scheduled in the past");
        self.heap.push(Reverse((t, self.seq, ev)));
        self.seq += 1;
    }

    fn fail(&self, what: String) -> Error {
        Error::other(format!(
            "invariant violated at t={} ns: {what}\n  scenario `{}`, seed {}; rerun with the same scenario and `--seed {}` to reproduce",
            self.now, self.r.scenario.name, self.seed, self.seed
        ))
    }

    /// Run to the end. `progress` is called now and then with (workflows done, total).
    pub fn run(mut self, progress: Progress) -> Result<RunReport> {
        let result = self.run_loop(progress);
        // Whatever happened, finish the tables so rows written so far stay readable.
        let closed = self.tables.as_mut().map_or(Ok(()), |t| t.finish());
        result?;
        closed?;
        let summary = self.summarize();
        let journal = self.rt.take_journal();
        let core_io = (!journal.is_empty()).then(|| CoreIo {
            decisions: journal.iter().flat_map(|e| e.decisions.iter().cloned()).collect(),
            inputs: journal.iter().map(|e| e.input.clone()).collect(),
        });
        Ok(RunReport {
            summary,
            events: self.events,
            sim_end_ns: self.now,
            event_log_hash: self.hash,
            core_io,
            journal: (!journal.is_empty()).then_some(journal),
            timings: self.timings.take(),
            failed_attempts: self.failed_attempts,
        })
    }

    fn run_loop(&mut self, progress: Progress) -> Result<()> {
        let total = self.source.expected_len();
        if let Some(n) = total {
            self.agg.set_window(n);
        }
        self.next_wf = self.source.next_workflow()?;
        match &self.next_wf {
            Some(w) => {
                let t = w.arrival_ns;
                self.push(t, Ev::Arrival);
            }
            // A run of nothing would print a summary of nothing and exit 0.
            None => {
                return Err(Error::bad(
                    "workload: no workflow arrives (an empty file, a limit or an arrival window that admits none); nothing to simulate",
                ))
            }
        }
        let max_events = self.r.scenario.limits.max_events;
        let mut last_report = 0;
        while let Some(Reverse((t, _, ev))) = self.heap.pop() {
            if t < self.now {
                return Err(self.fail(format!("time went back from {} to {t}", self.now)));
            }
            if t > crate::time::MAX_RUN_NS {
                return Err(Error::bad(format!(
                    "scenario `{}`: the run passes {:.1e} s of simulated time (about 3 years, the most a run may last) after {} workflows; the arrival rate (workload.arrivals) is too low for the number of workflows, or a delay too long",
                    self.r.scenario.name,
                    crate::time::MAX_RUN_NS as f64 / 1e9,
                    self.done_workflows
                )));
            }
            self.now = t;
            self.events += 1;
            self.hash = (self.hash ^ (t as u64)).wrapping_mul(0x0100_0000_01b3);
            self.hash = (self.hash ^ ev.code()).wrapping_mul(0x0100_0000_01b3);
            if self.events > max_events {
                return Err(self.fail(format!("more than limits.max_events = {max_events} events")));
            }
            if self.events & 0xfff == 0 && crate::interrupt::requested() {
                return Err(Error::Interrupted(format!(
                    "stopped at t = {:.3} s of simulated time after {} workflows; the rows written so far are kept",
                    self.now as f64 / 1e9,
                    self.done_workflows
                )));
            }
            match ev {
                Ev::Arrival => self.on_arrival()?,
                Ev::Wake(w) => self.rt.wake(t, w),
                Ev::Dispatch(r) => self.on_dispatch(r)?,
                Ev::Kick(e) => {
                    self.kick_pending[e as usize] = false;
                    if !self.engines[e as usize].in_step() {
                        self.start_step(e);
                    }
                }
                Ev::StepDone(e, life) => {
                    if life == self.life[e as usize] {
                        self.on_step_done(e)?
                    }
                }
                Ev::FaultStart(i) => self.on_fault(i as usize, true)?,
                Ev::FaultEnd(i) => self.on_fault(i as usize, false)?,
                Ev::Probe(e) => {
                    let healthy = self.now >= self.down_until[e as usize];
                    self.rt.probe_answer(t, e, healthy);
                }
            }
            self.apply_actions()?;
            if self.done_workflows >= last_report + 256 {
                last_report = self.done_workflows;
                progress(self.done_workflows, total);
            }
        }
        progress(self.done_workflows, total);
        // Conservation: everything that arrived has finished.
        if let Err(m) = self.rt.check_end() {
            return Err(self.fail(m));
        }
        if let Some(e) = self.engines.iter().find(|e| e.has_work()) {
            return Err(self.fail(format!(
                "engine {} still holds {} requests at the end",
                e.id,
                e.outstanding()
            )));
        }
        // Every request was answered (a row) or given up on (after its failed attempts' rows).
        if self.answered + self.rt.abandoned() != self.rt.issued() {
            return Err(self.fail(format!(
                "{} requests issued but {} answered and {} given up",
                self.rt.issued(),
                self.answered,
                self.rt.abandoned()
            )));
        }
        Ok(())
    }

    fn on_arrival(&mut self) -> Result<()> {
        let spec = self.next_wf.take().expect("an arrival event has its workflow");
        self.rt.arrive(self.now, spec)?;
        self.next_wf = self.source.next_workflow()?;
        if let Some(w) = &self.next_wf {
            let t = w.arrival_ns.max(self.now);
            self.push(t, Ev::Arrival);
        }
        Ok(())
    }

    /// Carry out what the runtime asks, in its order.
    fn apply_actions(&mut self) -> Result<()> {
        while let Some(a) = self.rt.poll_action() {
            match a {
                Action::Send {
                    request,
                    engine,
                    at,
                    first,
                    ..
                } => {
                    let delay = if first { self.decision_delay_ns } else { 0 };
                    // The server's front end (HTTP, tokenisation, hand-off to the engine core).
                    let frontend = self.r.engines[engine as usize].frontend_ns;
                    self.push(at.saturating_add(delay).saturating_add(frontend), Ev::Dispatch(request));
                }
                Action::Wake { at, wake } => self.push(at, Ev::Wake(wake)),
                Action::Probe { engine, at } => self.push(at, Ev::Probe(engine)),
                Action::Done(w) => self.record_workflow(w)?,
            }
        }
        Ok(())
    }

    /// A request failed at its engine without an answer (the engine died, refused the
    /// connection while down, or a `fail` fault answered it): tell the runtime.
    fn fail_attempt(&mut self, request: u64, kind: FailureKind) -> Result<()> {
        self.failed_attempts += 1;
        let p = self.rt.pending(request).expect("a failed attempt is pending");
        let wf = self.rt.workflow(p.workflow).expect("live workflow");
        let st = wf.stage_spec(p.stage);
        // One row per failed attempt, as the replay writes: no answer, so no times.
        let row = RequestRow {
            request_id: request,
            workflow_id: p.workflow,
            stage: p.stage,
            engine: p.engine,
            model: self.engine_model[p.engine as usize],
            status: match kind {
                FailureKind::Rejected(_) => RequestStatus::Rejected,
                _ => RequestStatus::Failed,
            },
            priority: p.priority,
            arrival_ns: p.arrival_ns,
            dispatch_ns: p.ext.dispatch_ns,
            first_scheduled_ns: None,
            first_token_ns: None,
            finish_ns: None,
            queue_ns: None,
            prompt_tokens: st.prompt_tokens,
            context_tokens: st.context_tokens,
            output_tokens: 0,
            preemptions: 0,
            cached_tokens: Some(0),
        };
        if let Some(t) = &mut self.tables {
            t.requests.push_named(&row.named(false))?;
        }
        self.agg.add_request(&row, None);
        self.rt.failed(self.now, request, kind)
    }

    /// Fault `i` starts (or, for `slow` and `fail`, ends).
    fn on_fault(&mut self, i: usize, start: bool) -> Result<()> {
        let f = self.faults[i];
        let e = f.engine as usize;
        match f.effect {
            FaultEffect::Down => self.crash(f.engine, f.end_ns)?,
            FaultEffect::Slow(_) | FaultEffect::Fail { .. } => {
                // What is in force is what the faults active now say (they may overlap).
                let now = self.now;
                let active = |g: &&Fault| {
                    g.engine == f.engine && g.start_ns <= now && now < g.end_ns && (start || g.end_ns != now)
                };
                self.slow[e] = self
                    .faults
                    .iter()
                    .filter(active)
                    .filter_map(|g| match g.effect {
                        FaultEffect::Slow(x) => Some(x),
                        _ => None,
                    })
                    .product();
                self.fail[e] = self
                    .faults
                    .iter()
                    .filter(active)
                    .filter_map(|g| match g.effect {
                        FaultEffect::Fail { fraction, permanent } => Some((fraction, permanent)),
                        _ => None,
                    })
                    .last();
            }
        }
        Ok(())
    }

    /// Engine `e` dies until `until`: what it held is lost (each request's attempt fails, as
    /// a broken stream), and it comes back empty (a fresh cache).
    fn crash(&mut self, e: u32, until: Nanos) -> Result<()> {
        let i = e as usize;
        self.down_until[i] = self.down_until[i].max(until);
        let lost = self.engines[i].request_ids();
        let (queries, hits) = (self.engines[i].prefix_queries, self.engines[i].prefix_hits);
        let mut fresh = fresh_engine(self.r, i);
        // The summary counts over the whole run, across restarts.
        fresh.prefix_queries = queries;
        fresh.prefix_hits = hits;
        self.engines[i] = fresh;
        self.life[i] += 1;
        self.kick_pending[i] = false;
        for id in lost {
            self.fail_attempt(id, FailureKind::Transient("connection broke: the engine died".into()))?;
        }
        Ok(())
    }

    fn on_dispatch(&mut self, request: u64) -> Result<()> {
        let now = self.now;
        let Some(p) = self.rt.pending_mut(request) else {
            return Err(self.fail(format!("dispatch of unknown request {request}")));
        };
        p.ext.dispatch_ns = now;
        let e = p.engine;
        if self.now < self.down_until[e as usize] {
            return self.fail_attempt(
                request,
                FailureKind::Unreachable("connection refused: the engine is down".into()),
            );
        }
        if let Some((fraction, permanent)) = self.fail[e as usize] {
            if rand::RngExt::random::<f64>(&mut self.fault_rng) < fraction {
                let kind = if permanent {
                    FailureKind::Rejected("HTTP 400 (an injected `fail` fault)".into())
                } else {
                    FailureKind::Transient("HTTP 503 (an injected `fail` fault)".into())
                };
                return self.fail_attempt(request, kind);
            }
        }
        let p = self.rt.pending(request).expect("pending");
        let wf = self.rt.workflow(p.workflow).expect("live workflow");
        let st = wf.stage_spec(p.stage);
        let stages = wf.stages();
        // Content matters only to an engine with a prefix cache, and only when some of it may
        // be sent again (a shared prefix, a later stage) or comes from before: a lone call of
        // its own is unique content, which the engine assumes without a description.
        let has_next = (p.stage as usize) + 1 < stages;
        let content = (self.engines[e as usize].kv().caching()
            && (has_next || st.prefix.is_some() || st.prompt_id.is_some() || (p.stage > 0 && st.context_tokens > 0)))
            .then(|| stage_content(p.workflow, p.stage, &st, wf.ext.seq.as_deref(), has_next));
        let req = NewRequest {
            id: request,
            workflow: p.workflow,
            stage: p.stage,
            prompt_tokens: st.prompt_tokens,
            output_tokens: st.output_tokens,
            priority: p.priority,
            arrival_ns: p.arrival_ns,
            dispatch_ns: self.now,
        };
        self.rt.pending_mut(request).expect("pending").ext.content = content.clone();
        if let Some(rejected) = self.engines[e as usize].add_request_with(req, content) {
            self.record_request(&rejected, st.context_tokens)?;
            let max = self.engines[e as usize].limits.max_model_len;
            let why = format!("prompt of {} tokens is not below max_model_len {max}", st.prompt_tokens);
            return self.rt.failed(self.now, request, FailureKind::Rejected(why));
        }
        if !self.engines[e as usize].in_step() && !self.kick_pending[e as usize] {
            self.kick_pending[e as usize] = true;
            self.push(self.now, Ev::Kick(e));
        }
        Ok(())
    }

    fn start_step(&mut self, e: u32) {
        let i = e as usize;
        if let Some(mut d) = self.engines[i].begin_step(self.now) {
            if self.slow[i] != 1.0 {
                d = self.engines[i].stretch_step(self.slow[i]);
            }
            self.push(self.now + d, Ev::StepDone(e, self.life[i]));
        }
    }

    fn on_step_done(&mut self, e: u32) -> Result<()> {
        let mut finished = std::mem::take(&mut self.finished);
        let eng = &mut self.engines[e as usize];
        let rep = eng.end_step(self.now, &mut finished);
        let st = &mut self.engine_stats[e as usize];
        st.steps += 1;
        st.busy_ns += rep.duration_ns;
        st.tokens += rep.tokens as u64;
        if self.log_every > 0 && (st.steps - 1) % self.log_every == 0 {
            let usable = eng.kv().usable().max(1);
            if let Some(t) = &mut self.tables {
                t.engines.push(&[
                    Val::Str(e),
                    Val::U64(st.steps - 1),
                    Val::I64(rep.start_ns),
                    Val::I64(rep.duration_ns),
                    Val::U32(rep.tokens),
                    Val::U32(rep.prefill_tokens),
                    Val::U32(rep.decode_tokens),
                    Val::U32(rep.running),
                    Val::U32(rep.batch),
                    Val::U32(rep.waiting),
                    Val::U32(rep.kv_used_blocks),
                    Val::F64(Some(rep.kv_used_blocks as f64 / usable as f64)),
                    Val::U32(rep.preempted),
                ])?;
            }
        }
        if self.check {
            if let Err(m) = self.engines[e as usize].check_invariants() {
                return Err(self.fail(m));
            }
        }
        for f in finished.drain(..) {
            self.complete_request(f)?;
        }
        self.finished = finished;
        let eng = &self.engines[e as usize];
        let (running, waiting, kv_usage) = (eng.num_running() as u32, eng.num_waiting() as u32, eng.kv().usage());
        self.rt.report(self.now, e, running, waiting, kv_usage);
        if self.engines[e as usize].has_work() {
            self.start_step(e);
        }
        Ok(())
    }

    fn record_request(&mut self, f: &FinishedRequest, context_tokens: u32) -> Result<()> {
        let q = &f.req;
        if !f.rejected
            && !(q.arrival_ns <= q.dispatch_ns
                && q.dispatch_ns <= f.first_scheduled_ns
                && f.first_scheduled_ns < f.first_token_ns
                && f.first_token_ns <= f.finish_ns)
        {
            return Err(self.fail(format!(
                "request {} timeline out of order: arrival {} dispatch {} scheduled {} first token {} finish {}",
                q.id, q.arrival_ns, q.dispatch_ns, f.first_scheduled_ns, f.first_token_ns, f.finish_ns
            )));
        }
        let row = RequestRow {
            request_id: q.id,
            workflow_id: q.workflow,
            stage: q.stage,
            engine: f.engine,
            model: self.engine_model[f.engine as usize],
            status: if f.rejected {
                RequestStatus::Rejected
            } else {
                RequestStatus::Ok
            },
            priority: q.priority,
            arrival_ns: q.arrival_ns,
            dispatch_ns: q.dispatch_ns,
            // A refused request was never scheduled and got no token.
            first_scheduled_ns: (!f.rejected).then_some(f.first_scheduled_ns),
            first_token_ns: (!f.rejected).then_some(f.first_token_ns),
            finish_ns: Some(f.finish_ns),
            queue_ns: (!f.rejected).then_some(f.first_scheduled_ns - q.dispatch_ns),
            prompt_tokens: q.prompt_tokens,
            context_tokens,
            output_tokens: f.output_tokens,
            preemptions: f.preemptions,
            cached_tokens: Some(f.cached_tokens),
        };
        if let Some(t) = &mut self.tables {
            t.requests.push_named(&row.named(false))?;
        }
        if !f.rejected {
            if let Some(t) = &mut self.timings {
                t.push(RequestTiming {
                    arrival_ns: q.arrival_ns,
                    ttft_ns: f.first_token_ns - q.arrival_ns,
                    e2e_ns: f.finish_ns - q.arrival_ns,
                    prompt_tokens: q.prompt_tokens,
                    output_tokens: f.output_tokens,
                    cached_tokens: f.cached_tokens,
                });
            }
        }
        self.agg.add_request(&row, row.queue_ns);
        Ok(())
    }

    fn complete_request(&mut self, f: FinishedRequest) -> Result<()> {
        self.answered += 1;
        let id = f.req.id;
        let Some(p) = self.rt.pending(id) else {
            return Err(self.fail(format!("engine finished unknown request {id}")));
        };
        let wf_id = p.workflow;
        let content = p.ext.content.clone();
        let st = self.rt.workflow(wf_id).expect("live workflow").stage_spec(p.stage);
        if let Some(c) = content.filter(|c| c.reusable == u32::MAX) {
            let mut seq: Vec<Seg> = c.segs.to_vec();
            seq.push(Seg {
                id: c.output_id,
                end: f.req.prompt_tokens + f.output_tokens,
            });
            self.rt.workflow_mut(wf_id).expect("live workflow").ext.seq = Some(seq.into());
        }
        self.record_request(&f, st.context_tokens)?;
        self.rt.finished(self.now, id, f.output_tokens, f.preemptions)
    }

    fn record_workflow(&mut self, w: WorkflowOutcome) -> Result<()> {
        let model = self.engine_model[w.engine as usize];
        if let Some(t) = &mut self.tables {
            t.workflows.push_named(&workflow_row(&w, model))?;
        }
        self.agg.add_workflow(model, &w);
        self.done_workflows += 1;
        Ok(())
    }

    fn summarize(&self) -> Summary {
        let span = (self.agg.last_finish_ns - self.agg.first_arrival_ns.unwrap_or(0)).max(1) as f64;
        let engines = self
            .r
            .engines
            .iter()
            .zip(&self.engines)
            .zip(&self.engine_stats)
            .map(|((re, e), st)| EngineSummary {
                name: re.name.clone(),
                model: re.model.clone(),
                gpu: re.gpu.clone(),
                tensor_parallel: re.tensor_parallel,
                steps: st.steps,
                busy_fraction: crate::output::summary::round6(st.busy_ns as f64 / span),
                mean_step_tokens: crate::output::summary::round6(st.tokens as f64 / st.steps.max(1) as f64),
                preemptions: e.total_preemptions(),
                kv_capacity_tokens: re.kv.kv_capacity_tokens,
                decode_tokens_per_s_nominal: crate::output::summary::round6(
                    self.rt.core().engines()[e.id as usize].decode_tokens_per_s,
                ),
                step_time_source: re.step_time_source.label(),
                step_time_expected_error: re.step_time_source.expected_error(),
                prefix_cache_queries: Some(e.prefix_queries),
                prefix_cache_hits: Some(e.prefix_hits),
                prefix_cache_hit_rate: Some(crate::output::summary::round6(
                    e.prefix_hits as f64 / e.prefix_queries.max(1) as f64,
                )),
            })
            .collect();
        let mut s = self
            .agg
            .summarize(&self.r.scenario.name, self.seed, self.rt.core().describe(), engines);
        s.requests.failed_attempts = (!self.r.scenario.faults.is_empty()).then_some(self.failed_attempts);
        s
    }
}

/// A scenario engine as it starts (and restarts after a `down` fault): empty.
fn fresh_engine(r: &Resolved, i: usize) -> Engine {
    let e = &r.engines[i];
    Engine::new(
        i as u32,
        e.limits.clone(),
        std::sync::Arc::new(e.steptime.clone()),
        e.kv.num_gpu_blocks.saturating_sub(1),
    )
}

/// Hash of a file's bytes, for provenance in manifests.
pub fn file_fingerprint(path: &Path) -> Result<(u64, String)> {
    use std::io::Read;
    let mut f = crate::input::open(path)?;
    let (mut h, mut len, mut buf) = (crate::rng::FNV_OFFSET, 0u64, vec![0u8; 1 << 16]);
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h = crate::rng::fnv1a64_more(h, &buf[..n]);
        len += n as u64;
    }
    Ok((len, format!("{h:016x}")))
}
