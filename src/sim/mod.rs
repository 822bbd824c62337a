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
use crate::output::summary::{Aggregates, EngineSummary, Summary};
use crate::output::{ColType, Table, Val};
use crate::policy::baselines::{Fcfs, FixedFraction, LeastOutstanding, RoundRobin, WorkflowOrder};
use crate::policy::chimera::{
    ChimeraRouter, NoisyOracle, OracleConfidence, OracleLength, PriorConfidence, QrfLength, SemanticConfidence, Sjf,
    Stjf,
};
use crate::policy::journal::{CoreInput, JournalDecision};
use crate::policy::{
    CoreOptions, Decision, EngineInfo, FailureKind, Oracle, PolicyCore, Prioritizer, RequestInfo, Router,
};
use crate::rng::{fnv1a64, stream};
use crate::scenario::{ConfidenceSpec, LengthSpec, PrioritySpec, Resolved, RoutingSpec, Workload};
use crate::time::Nanos;
use crate::workload::arrivals::InterArrival;
use crate::workload::azure::{AzureWorkload, LengthCaps};
use crate::workload::synthetic::SyntheticWorkload;
use crate::workload::{Stage, WorkflowSpec, WorkloadSource};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Ev {
    Arrival,
    StageReady(u64),
    Dispatch(u64),
    Kick(u32),
    /// A step of engine .0 ends; .1 is the engine's life (a restarted engine ignores the
    /// steps of its previous life).
    StepDone(u32, u32),
    Timer,
    /// Engine .0 dies (a `faults:` entry).
    Crash(u32),
    /// The core's probe of engine .0.
    Probe(u32),
}

impl Ev {
    fn code(self) -> u64 {
        match self {
            Ev::Arrival => 1,
            Ev::StageReady(w) => 2 ^ (w << 4),
            Ev::Dispatch(r) => 3 ^ (r << 4),
            Ev::Kick(e) => 4 ^ ((e as u64) << 4),
            Ev::StepDone(e, life) => 5 ^ ((e as u64) << 4) ^ ((life as u64) << 40),
            Ev::Timer => 6,
            Ev::Crash(e) => 7 ^ ((e as u64) << 4),
            Ev::Probe(e) => 8 ^ ((e as u64) << 4),
        }
    }
}

struct Wf {
    spec: WorkflowSpec,
    plan: Option<usize>,
    stage: u32,
    first_engine: u32,
    output_so_far: u64,
    prompt_tokens: u64,
    preemptions: u32,
    failed: bool,
    /// Content of the last finished stage's whole sequence (prompt and output), which the
    /// next stage's prompt resends as its context.
    seq: Option<Arc<[Seg]>>,
}

struct Pending {
    workflow: u64,
    stage: u32,
    arrival_ns: Nanos,
    engine: u32,
    priority: i64,
    decided: bool,
    content: Option<PromptContent>,
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
    /// Every served request's timing, when collected (see [`Simulation::collect_timings`]).
    pub timings: Option<Vec<RequestTiming>>,
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

const REQUEST_STATUS: [&str; 2] = ["ok", "rejected"];
const WORKFLOW_STATUS: [&str; 2] = ["ok", "failed"];

struct Tables {
    requests: Table,
    workflows: Table,
    engines: Table,
}

/// The columns of `requests.parquet`, in order (replay appends its measured columns).
pub fn request_columns(names: &ColType, models: &ColType, status: &[&str]) -> Vec<(&'static str, ColType)> {
    use ColType::*;
    vec![
        ("request_id", U64),
        ("workflow_id", U64),
        ("stage", U32),
        ("engine", names.clone()),
        ("model", models.clone()),
        ("status", str_col(status)),
        ("priority", I64),
        ("arrival_ns", I64),
        ("dispatch_ns", I64),
        ("first_scheduled_ns", I64),
        ("first_token_ns", I64),
        ("finish_ns", I64),
        ("queue_ns", I64),
        ("ttft_ns", I64),
        ("tpot_ns", F64),
        ("e2e_ns", I64),
        ("prompt_tokens", U32),
        ("context_tokens", U32),
        ("output_tokens", U32),
        ("preemptions", U32),
        ("cached_tokens", U32),
    ]
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
    if shared < st.prompt_tokens {
        segs.push(Seg {
            id: own,
            end: st.prompt_tokens,
        });
    }
    PromptContent {
        segs: segs.into(),
        output_id: own,
        reusable: if has_next { u32::MAX } else { group_prefix },
    }
}

/// The columns of `workflows.parquet`, in order.
pub fn workflow_columns(names: &ColType, models: &ColType, status: &[&str]) -> Vec<(&'static str, ColType)> {
    use ColType::*;
    vec![
        ("workflow_id", U64),
        ("model", models.clone()),
        ("engine", names.clone()),
        ("status", str_col(status)),
        ("arrival_ns", I64),
        ("finish_ns", I64),
        ("e2e_ns", I64),
        ("e2e_per_output_token_ns", F64),
        ("stages", U32),
        ("prompt_tokens", U64),
        ("output_tokens", U64),
        ("success", Bool),
        ("preemptions", U32),
    ]
}

/// A string column over a fixed set of values.
pub fn str_col(values: &[&str]) -> ColType {
    ColType::Str(values.iter().map(|x| x.to_string()).collect())
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

/// What the policy core knows of a scenario engine.
pub fn engine_info(id: u32, name: &str, e: &crate::scenario::ResolvedEngine) -> EngineInfo {
    EngineInfo {
        id,
        name: name.to_string(),
        model: Arc::from(e.model.as_str()),
        gpu: e.gpu.clone(),
        decode_tokens_per_s: e
            .steptime
            .decode_tokens_per_s(e.limits.max_num_seqs.min(64) as u64, 1024),
    }
}

/// Build the policy core a scenario asks for, over the scenario's engines.
pub fn build_policy(r: &Resolved, seed: u64) -> PolicyCore {
    let infos: Vec<EngineInfo> = r
        .engines
        .iter()
        .enumerate()
        .map(|(i, e)| engine_info(i as u32, &e.name, e))
        .collect();
    build_policy_for(r, seed, infos, None)
}

/// Build the policy core a scenario asks for over the given engines (a replay's endpoints),
/// optionally with other retry settings (retries, first backoff in ns). The simulator and the
/// replay both build their core here: there is no second construction of any policy.
pub fn build_policy_for(r: &Resolved, seed: u64, infos: Vec<EngineInfo>, retry: Option<(u32, Nanos)>) -> PolicyCore {
    let p = &r.scenario.policy;
    let router: Box<dyn Router> = match &p.routing {
        RoutingSpec::FixedFraction { fractions } => {
            let f: Vec<(String, f64)> = fractions.iter().map(|(m, x)| (m.clone(), *x)).collect();
            Box::new(FixedFraction::new(&f, stream(seed, "policy.routing")))
        }
        RoutingSpec::RoundRobin => Box::new(RoundRobin::default()),
        RoutingSpec::LeastOutstanding => Box::new(LeastOutstanding),
        RoutingSpec::Chimera {
            slack,
            min_confidence_gain,
        } => Box::new(ChimeraRouter {
            slack: *slack,
            delta: *min_confidence_gain,
        }),
    };
    let prio: Box<dyn Prioritizer> = match p.priority {
        PrioritySpec::Fcfs => Box::new(Fcfs),
        PrioritySpec::WorkflowOrder => Box::new(WorkflowOrder),
        PrioritySpec::Stjf => Box::new(Stjf),
        PrioritySpec::Sjf => Box::new(Sjf),
    };
    let mut opts = CoreOptions {
        max_in_flight_per_engine: p.max_in_flight_per_engine,
        max_retries: p.max_retries,
        middleware_starvation: p.middleware_starvation,
        ..CoreOptions::default()
    };
    if let Some((retries, backoff_ns)) = retry {
        opts.max_retries = retries;
        opts.retry_backoff_ns = backoff_ns;
    }
    let mut core = PolicyCore::new(infos, router, prio, opts);
    match &p.length {
        Some(LengthSpec::Qrf { .. }) => {
            let predictor = r.predictor.clone().expect("resolved with its predictor");
            core = core.with_length_model(Box::new(QrfLength {
                predictor,
                with_call_tokens: p.priority == PrioritySpec::Sjf,
            }));
        }
        Some(LengthSpec::Oracle) => core = core.with_length_model(Box::new(OracleLength)),
        None => {}
    }
    match &p.confidence {
        Some(ConfidenceSpec::Router { .. }) => {
            let router = r.router.clone().expect("resolved with its router");
            core = core.with_confidence_model(Box::new(SemanticConfidence::new(router)));
        }
        Some(ConfidenceSpec::Prior { accuracy }) => {
            let accuracy = accuracy.iter().map(|(m, a)| (m.clone(), *a)).collect();
            core = core.with_confidence_model(Box::new(PriorConfidence { accuracy }));
        }
        Some(ConfidenceSpec::Oracle) => core = core.with_confidence_model(Box::new(OracleConfidence)),
        Some(ConfidenceSpec::NoisyOracle { auc }) => {
            core = core.with_confidence_model(Box::new(NoisyOracle::new(*auc, stream(seed, "policy.noisy_oracle"))))
        }
        None => {}
    }
    core
}

pub fn open_source(r: &Resolved, seed: u64) -> Result<Box<dyn WorkloadSource>> {
    Ok(match &r.scenario.workload {
        Workload::Synthetic(s) => Box::new(SyntheticWorkload::new(s, &r.models, seed, &r.base_dir)?),
        Workload::Serving(s) => Box::new(crate::workload::serving::ServingWorkload::new(s, seed, &r.base_dir)?),
        Workload::AzureTrace(a) => Box::new(AzureWorkload::open(
            &r.base_dir.join(&a.path),
            LengthCaps {
                max_total_tokens: a.max_total_tokens,
            },
            a.limit,
            a.cycle,
            &a.arrivals,
            stream(seed, "arrivals"),
        )?),
        Workload::Trace(t) => Box::new(crate::trace::source::TraceWorkload::open(
            &r.base_dir.join(&t.path),
            &r.models,
            InterArrival::from_spec(&t.arrivals).expect("validated: renewal arrivals"),
            seed,
            t.limit,
            t.cycle,
            t.shuffle,
        )?),
        Workload::Generated(g) => {
            let mix: Vec<(crate::trace::Task, f64)> = g
                .tasks
                .iter()
                .map(|(t, w)| crate::trace::Task::parse(t).map(|t| (t, *w)))
                .collect::<Result<_>>()?;
            Box::new(crate::trace::source::GeneratedWorkload::new(
                &mix,
                &r.models,
                g.workflows,
                InterArrival::from_spec(&g.arrivals).expect("validated: renewal arrivals"),
                seed,
            )?)
        }
    })
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
    policy: PolicyCore,
    source: Box<dyn WorkloadSource>,
    next_wf: Option<WorkflowSpec>,
    workflows: HashMap<u64, Wf>,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    finished: Vec<FinishedRequest>,
    tables: Option<Tables>,
    agg: Aggregates,
    decision_delay_ns: Nanos,
    log_every: u64,
    check: bool,
    events: u64,
    hash: u64,
    done_workflows: u64,
    timer_at: Option<Nanos>,
    needs_oracle: bool,
    core_io: Option<CoreIo>,
    timings: Option<Vec<RequestTiming>>,
    /// Per engine: its life (restarts so far) and until when it is down.
    life: Vec<u32>,
    down_until: Vec<Nanos>,
    /// Attempts that failed because their engine died or refused the connection.
    failed_attempts: u64,
}

/// Simulation-only truths about stage `k` of a workflow, per candidate model.
pub fn oracle_of(w: &WorkflowSpec, k: usize) -> Oracle {
    let name = |p: &crate::workload::Plan| -> Arc<str> { p.model.clone().unwrap_or_else(|| Arc::from("")) };
    Oracle {
        output_tokens: w
            .plans
            .iter()
            .filter(|p| k < p.stages.len())
            .map(|p| (name(p), p.stages[k].output_tokens))
            .collect(),
        remaining_workflow_tokens: w
            .plans
            .iter()
            .map(|p| (name(p), p.stages.iter().skip(k).map(|s| s.output_tokens as u64).sum()))
            .collect(),
        success: w.plans.iter().map(|p| (name(p), p.success)).collect(),
    }
}

impl<'a> Simulation<'a> {
    pub fn new(r: &'a Resolved, out_dir: &Path) -> Result<Self> {
        let names: Vec<String> = r.engines.iter().map(|e| e.name.clone()).collect();
        let tables = Tables::create(out_dir, &names, &r.models)?;
        Self::with_tables(r, Some(tables))
    }

    /// A simulation that writes no tables: only the summary comes out (sweeps).
    pub fn summary_only(r: &'a Resolved) -> Result<Self> {
        Self::with_tables(r, None)
    }

    fn with_tables(r: &'a Resolved, tables: Option<Tables>) -> Result<Self> {
        let seed = r.scenario.seed;
        let engines: Vec<Engine> = r
            .engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Engine::new(
                    i as u32,
                    e.limits.clone(),
                    e.steptime.clone(),
                    e.kv.num_gpu_blocks.saturating_sub(1),
                )
            })
            .collect();
        let engine_model = r
            .engines
            .iter()
            .map(|e| r.models.iter().position(|m| *m == e.model).expect("model listed") as u32)
            .collect();
        let n = engines.len();
        Ok(Simulation {
            r,
            seed,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            engines,
            engine_stats: vec![EngineStats::default(); n],
            kick_pending: vec![false; n],
            engine_model,
            policy: build_policy(r, seed),
            source: open_source(r, seed)?,
            next_wf: None,
            workflows: HashMap::new(),
            pending: HashMap::new(),
            next_request: 0,
            finished: Vec::new(),
            tables,
            agg: Aggregates::new(&r.models),
            decision_delay_ns: (r.scenario.policy.decision_delay_us.unwrap_or(0.0) * 1e3).round() as Nanos,
            log_every: r.scenario.output.engine_log_every_steps as u64,
            check: r.scenario.limits.check_invariants,
            events: 0,
            hash: 0xcbf2_9ce4_8422_2325,
            done_workflows: 0,
            timer_at: None,
            needs_oracle: false,
            core_io: None,
            timings: None,
            life: vec![0; n],
            down_until: vec![Nanos::MIN; n],
            failed_attempts: 0,
        })
        .map(|mut s| {
            s.needs_oracle = s.policy.needs_oracle();
            for f in &r.scenario.faults {
                let e = r.engines.iter().position(|x| x.name == f.engine).expect("validated") as u32;
                s.push(crate::time::secs_to_ns(f.at_s), Ev::Crash(e));
            }
            s
        })
    }

    /// Record every input the policy core gets and every decision it makes (for checking a
    /// driver against a fresh core; costs memory per request).
    pub fn record_core_io(mut self) -> Self {
        self.core_io = Some(CoreIo::default());
        self
    }

    /// Keep every served request's timing in memory (for fidelity checks and fits; costs
    /// memory per request).
    pub fn collect_timings(mut self) -> Self {
        self.timings = Some(Vec::new());
        self
    }

    fn record(&mut self, input: impl FnOnce() -> CoreInput) {
        if let Some(io) = &mut self.core_io {
            io.inputs.push(input());
        }
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
        Ok(RunReport {
            summary,
            events: self.events,
            sim_end_ns: self.now,
            event_log_hash: self.hash,
            core_io: self.core_io.take(),
            timings: self.timings.take(),
        })
    }

    fn run_loop(&mut self, progress: Progress) -> Result<()> {
        let total = self.source.expected_len();
        self.next_wf = self.source.next_workflow()?;
        if let Some(w) = &self.next_wf {
            let t = w.arrival_ns;
            self.push(t, Ev::Arrival);
        }
        let max_events = self.r.scenario.limits.max_events;
        let mut last_report = 0;
        while let Some(Reverse((t, _, ev))) = self.heap.pop() {
            if t < self.now {
                return Err(self.fail(format!("time went back from {} to {t}", self.now)));
            }
            self.now = t;
            self.events += 1;
            self.hash = (self.hash ^ (t as u64)).wrapping_mul(0x0100_0000_01b3);
            self.hash = (self.hash ^ ev.code()).wrapping_mul(0x0100_0000_01b3);
            if self.events > max_events {
                return Err(self.fail(format!("more than limits.max_events = {max_events} events")));
            }
            match ev {
                Ev::Arrival => self.on_arrival()?,
                Ev::StageReady(w) => self.issue_request(w),
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
                Ev::Crash(e) => self.on_crash(e)?,
                Ev::Probe(e) => {
                    let healthy = self.now >= self.down_until[e as usize];
                    let now = self.now;
                    self.record(|| CoreInput::Probe {
                        t: now,
                        engine: e,
                        healthy,
                    });
                    self.policy.handle_probe(now, e, healthy);
                }
                Ev::Timer => {
                    if self.timer_at == Some(t) {
                        self.timer_at = None;
                        self.record(|| CoreInput::Timeout { t });
                        self.policy.handle_timeout(t);
                    }
                }
            }
            self.apply_decisions()?;
            if self.done_workflows >= last_report + 256 {
                last_report = self.done_workflows;
                progress(self.done_workflows, total);
            }
        }
        progress(self.done_workflows, total);
        // Conservation: everything that arrived has finished.
        if !self.workflows.is_empty() || !self.pending.is_empty() || self.policy.tracked() != 0 {
            return Err(self.fail(format!(
                "run ended with {} workflows, {} requests unfinished and {} tracked by the policy",
                self.workflows.len(),
                self.pending.len(),
                self.policy.tracked()
            )));
        }
        if let Some(e) = self.engines.iter().find(|e| e.has_work()) {
            return Err(self.fail(format!(
                "engine {} still holds {} requests at the end",
                e.id,
                e.outstanding()
            )));
        }
        if self.agg.requests != self.next_request {
            return Err(self.fail(format!(
                "{} requests issued but {} recorded",
                self.next_request, self.agg.requests
            )));
        }
        Ok(())
    }

    fn on_arrival(&mut self) -> Result<()> {
        let spec = self.next_wf.take().expect("an arrival event has its workflow");
        if spec.plans.is_empty() || spec.plans.iter().any(|p| p.stages.is_empty()) {
            return Err(Error::bad(format!("workflow {} has no stages", spec.id)));
        }
        let id = spec.id;
        self.agg.first_arrival_ns.get_or_insert(self.now);
        self.workflows.insert(
            id,
            Wf {
                spec,
                plan: None,
                stage: 0,
                first_engine: 0,
                output_so_far: 0,
                prompt_tokens: 0,
                preemptions: 0,
                failed: false,
                seq: None,
            },
        );
        self.issue_request(id);
        self.next_wf = self.source.next_workflow()?;
        if let Some(w) = &self.next_wf {
            let t = w.arrival_ns.max(self.now);
            self.push(t, Ev::Arrival);
        }
        Ok(())
    }

    fn issue_request(&mut self, wf_id: u64) {
        let wf = &self.workflows[&wf_id];
        let plan = &wf.spec.plans[wf.plan.unwrap_or(0)];
        let st = plan.stages[wf.stage as usize];
        let request = self.next_request;
        self.next_request += 1;
        let info = RequestInfo {
            request,
            workflow: wf_id,
            stage: wf.stage,
            prompt_tokens: st.prompt_tokens,
            context_tokens: st.context_tokens,
            workflow_output_so_far: wf.output_so_far,
            text: wf.spec.text.clone(),
            task: wf.spec.task.clone(),
            oracle: self
                .needs_oracle
                .then(|| Arc::new(oracle_of(&wf.spec, wf.stage as usize))),
        };
        self.pending.insert(
            request,
            Pending {
                workflow: wf_id,
                stage: wf.stage,
                arrival_ns: self.now,
                engine: 0,
                priority: 0,
                decided: false,
                content: None,
            },
        );
        let now = self.now;
        self.record(|| CoreInput::Request {
            t: now,
            request: info.request,
            workflow: info.workflow,
            stage: info.stage,
            prompt_tokens: info.prompt_tokens,
            context_tokens: info.context_tokens,
            workflow_output_so_far: info.workflow_output_so_far,
            text: info.text.as_deref().map(str::to_string),
            task: info.task.as_deref().map(str::to_string),
            oracle: info.oracle.is_some(),
        });
        self.policy.handle_request(self.now, info);
    }

    fn apply_decisions(&mut self) -> Result<()> {
        while let Some(d) = self.policy.poll_decision() {
            if let Some(io) = &mut self.core_io {
                io.decisions.push(JournalDecision::from(&d));
            }
            match d {
                Decision::Dispatch {
                    request,
                    engine,
                    priority,
                    not_before,
                } => {
                    let p = self
                        .pending
                        .get_mut(&request)
                        .ok_or_else(|| Error::other(format!("policy dispatched unknown request {request}")))?;
                    p.engine = engine;
                    p.priority = priority;
                    let delay = if p.decided { 0 } else { self.decision_delay_ns };
                    // The server's front end (HTTP, tokenisation, hand-off to the engine core).
                    let frontend = (self.r.engines[engine as usize].steptime.coeffs.frontend_us * 1e3).round() as Nanos;
                    let delay = delay + frontend;
                    p.decided = true;
                    let wf = self.workflows.get_mut(&p.workflow).expect("live workflow");
                    if wf.plan.is_none() {
                        wf.plan = Some(wf.spec.plan_index(&self.r.engines[engine as usize].model));
                        wf.first_engine = engine;
                    }
                    let t = self.now.max(not_before) + delay;
                    self.push(t, Ev::Dispatch(request));
                }
                Decision::Abandon { request, reason: _ } => {
                    let p = self
                        .pending
                        .remove(&request)
                        .ok_or_else(|| Error::other(format!("policy abandoned unknown request {request}")))?;
                    if let Some(wf) = self.workflows.get_mut(&p.workflow) {
                        wf.failed = true;
                    }
                    self.finish_workflow(p.workflow)?;
                }
                Decision::Probe { engine, not_before } => {
                    let t = self.now.max(not_before);
                    self.push(t, Ev::Probe(engine));
                }
            }
        }
        if let Some(t) = self.policy.poll_timeout() {
            if self.timer_at != Some(t) && t >= self.now {
                self.timer_at = Some(t);
                self.push(t, Ev::Timer);
            }
        }
        Ok(())
    }

    /// A request failed at its engine without an answer (the engine died, or refused the
    /// connection while down): tell the core, which retries or gives up.
    fn fail_attempt(&mut self, request: u64, unreachable: bool, why: &str) {
        self.failed_attempts += 1;
        let now = self.now;
        self.record(|| CoreInput::Failed {
            t: now,
            request,
            transient: true,
            unreachable,
            why: why.to_string(),
        });
        let kind = if unreachable {
            FailureKind::Unreachable(why.to_string())
        } else {
            FailureKind::Transient(why.to_string())
        };
        self.policy.handle_failed(now, request, kind);
    }

    /// Engine `e` dies: what it held is lost (each request's attempt fails, as a broken
    /// stream), and it comes back empty (a fresh cache) when its fault window ends.
    fn on_crash(&mut self, e: u32) -> Result<()> {
        let f = self
            .r
            .scenario
            .faults
            .iter()
            .find(|f| f.engine == self.r.engines[e as usize].name && crate::time::secs_to_ns(f.at_s) == self.now)
            .expect("a crash has its fault");
        let until = self.now + crate::time::secs_to_ns(f.for_s);
        let i = e as usize;
        self.down_until[i] = self.down_until[i].max(until);
        let lost = self.engines[i].request_ids();
        let (queries, hits) = (self.engines[i].prefix_queries, self.engines[i].prefix_hits);
        let re = &self.r.engines[i];
        let mut fresh = Engine::new(
            e,
            re.limits.clone(),
            re.steptime.clone(),
            re.kv.num_gpu_blocks.saturating_sub(1),
        );
        // The summary counts over the whole run, across restarts.
        fresh.prefix_queries = queries;
        fresh.prefix_hits = hits;
        self.engines[i] = fresh;
        self.life[i] += 1;
        self.kick_pending[i] = false;
        for id in lost {
            self.fail_attempt(id, false, "connection broke: the engine died");
        }
        Ok(())
    }

    fn on_dispatch(&mut self, request: u64) -> Result<()> {
        if self.now < self.down_until[self.pending[&request].engine as usize] {
            self.fail_attempt(request, true, "connection refused: the engine is down");
            return Ok(());
        }
        let p = &self.pending[&request];
        let wf = &self.workflows[&p.workflow];
        let st = wf.spec.plans[wf.plan.expect("routed")].stages[p.stage as usize];
        let e = p.engine;
        let stages = wf.spec.plans[wf.plan.expect("routed")].stages.len();
        // Content matters only to an engine with a prefix cache, and only when some of it may
        // be sent again (a shared prefix, a later stage) or comes from before: a lone call of
        // its own is unique content, which the engine assumes without a description.
        let has_next = (p.stage as usize) + 1 < stages;
        let content = (self.engines[e as usize].kv().caching()
            && (has_next || st.prefix.is_some() || (p.stage > 0 && st.context_tokens > 0)))
            .then(|| stage_content(p.workflow, p.stage, &st, wf.seq.as_deref(), has_next));
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
        self.pending.get_mut(&request).expect("pending").content = content.clone();
        if let Some(rejected) = self.engines[e as usize].add_request_with(req, content) {
            self.record_request(&rejected, st.context_tokens)?;
            let max = self.engines[e as usize].limits.max_model_len;
            let why = format!("prompt of {} tokens is not below max_model_len {max}", st.prompt_tokens);
            let now = self.now;
            self.record(|| CoreInput::Failed {
                t: now,
                request,
                transient: false,
                unreachable: false,
                why: why.clone(),
            });
            self.policy.handle_failed(self.now, request, FailureKind::Rejected(why));
            return Ok(());
        }
        if !self.engines[e as usize].in_step() && !self.kick_pending[e as usize] {
            self.kick_pending[e as usize] = true;
            self.push(self.now, Ev::Kick(e));
        }
        Ok(())
    }

    fn start_step(&mut self, e: u32) {
        if let Some(d) = self.engines[e as usize].begin_step(self.now) {
            self.push(self.now + d, Ev::StepDone(e, self.life[e as usize]));
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
        let now = self.now;
        self.record(|| CoreInput::Report {
            t: now,
            engine: e,
            running,
            waiting,
            kv_usage,
        });
        self.policy
            .handle_engine_report(self.now, e, running, waiting, kv_usage);
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
        let ttft = f.first_token_ns - q.arrival_ns;
        let e2e = f.finish_ns - q.arrival_ns;
        let queue = f.first_scheduled_ns - q.dispatch_ns;
        let tpot = (f.output_tokens > 1).then(|| (e2e - ttft) as f64 / (f.output_tokens - 1) as f64);
        if let Some(t) = &mut self.tables {
            t.requests.push(&[
                Val::U64(q.id),
                Val::U64(q.workflow),
                Val::U32(q.stage),
                Val::Str(f.engine),
                Val::Str(self.engine_model[f.engine as usize]),
                Val::Str(f.rejected as u32),
                Val::I64(q.priority),
                Val::I64(q.arrival_ns),
                Val::I64(q.dispatch_ns),
                Val::I64(f.first_scheduled_ns),
                Val::I64(f.first_token_ns),
                Val::I64(f.finish_ns),
                Val::I64(queue),
                Val::I64(ttft),
                Val::F64(tpot),
                Val::I64(e2e),
                Val::U32(q.prompt_tokens),
                Val::U32(context_tokens),
                Val::U32(f.output_tokens),
                Val::U32(f.preemptions),
                Val::U32(f.cached_tokens),
            ])?;
        }
        if !f.rejected {
            if let Some(t) = &mut self.timings {
                t.push(RequestTiming {
                    arrival_ns: q.arrival_ns,
                    ttft_ns: ttft,
                    e2e_ns: e2e,
                    prompt_tokens: q.prompt_tokens,
                    output_tokens: f.output_tokens,
                    cached_tokens: f.cached_tokens,
                });
            }
        }
        let a = &mut self.agg;
        a.requests += 1;
        a.preemptions += f.preemptions as u64;
        a.cached_tokens += f.cached_tokens as u64;
        if f.rejected {
            a.rejected += 1;
        } else {
            a.ttft.add(ttft as f64);
            a.e2e.add(e2e as f64);
            a.queue.add(queue as f64);
            if let Some(t) = tpot {
                a.tpot.add(t);
            }
            a.prompt_tokens += q.prompt_tokens as u64;
            a.output_tokens += f.output_tokens as u64;
        }
        a.last_finish_ns = a.last_finish_ns.max(f.finish_ns);
        Ok(())
    }

    fn complete_request(&mut self, f: FinishedRequest) -> Result<()> {
        let id = f.req.id;
        let p = self
            .pending
            .remove(&id)
            .ok_or_else(|| self.fail(format!("engine finished unknown request {id}")))?;
        let wf = self.workflows.get_mut(&p.workflow).expect("live workflow");
        let st = wf.spec.plans[wf.plan.expect("routed")].stages[p.stage as usize];
        wf.output_so_far += f.output_tokens as u64;
        wf.prompt_tokens += f.req.prompt_tokens as u64;
        wf.preemptions += f.preemptions;
        if let Some(c) = p.content.as_ref().filter(|c| c.reusable == u32::MAX) {
            let mut seq: Vec<Seg> = c.segs.to_vec();
            seq.push(Seg {
                id: c.output_id,
                end: f.req.prompt_tokens + f.output_tokens,
            });
            wf.seq = Some(seq.into());
        }
        wf.stage += 1;
        let more = (wf.stage as usize) < wf.spec.plans[wf.plan.expect("routed")].stages.len();
        self.record_request(&f, st.context_tokens)?;
        let now = self.now;
        self.record(|| CoreInput::Finished {
            t: now,
            request: id,
            output_tokens: f.output_tokens,
        });
        self.policy.handle_finished(self.now, id, f.output_tokens);
        if more {
            self.push(self.now + st.tool_delay_ns, Ev::StageReady(p.workflow));
        } else {
            self.finish_workflow(p.workflow)?;
        }
        Ok(())
    }

    fn finish_workflow(&mut self, id: u64) -> Result<()> {
        let wf = self.workflows.remove(&id).expect("live workflow");
        let now = self.now;
        self.record(|| CoreInput::WorkflowDone { t: now, workflow: id });
        self.policy.handle_workflow_done(self.now, id);
        let plan = &wf.spec.plans[wf.plan.unwrap_or(0)];
        let e2e = self.now - wf.spec.arrival_ns;
        let per_tok = (wf.output_so_far > 0).then(|| e2e as f64 / wf.output_so_far as f64);
        let success = if wf.failed {
            plan.success.map(|_| false)
        } else {
            plan.success
        };
        let model_idx = self.engine_model[wf.first_engine as usize];
        if let Some(t) = &mut self.tables {
            t.workflows.push(&[
                Val::U64(id),
                Val::Str(model_idx),
                Val::Str(wf.first_engine),
                Val::Str(wf.failed as u32),
                Val::I64(wf.spec.arrival_ns),
                Val::I64(self.now),
                Val::I64(e2e),
                Val::F64(per_tok),
                Val::U32(wf.stage),
                Val::U64(wf.prompt_tokens),
                Val::U64(wf.output_so_far),
                Val::Bool(success),
                Val::U32(wf.preemptions),
            ])?;
        }
        let a = &mut self.agg;
        a.workflows += 1;
        if wf.failed {
            a.workflows_failed += 1;
        } else {
            a.wf_e2e.add(e2e as f64);
            if let Some(x) = per_tok {
                a.wf_e2e_per_token.add(x);
            }
        }
        let m = &mut a.by_model[model_idx as usize].1;
        m.workflows += 1;
        m.output_tokens += wf.output_so_far;
        if !wf.failed {
            m.e2e.add(e2e as f64);
        }
        if let Some(s) = success {
            m.known += 1;
            m.solved += s as u64;
        }
        a.last_finish_ns = a.last_finish_ns.max(self.now);
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
                    self.policy.engines()[e.id as usize].decode_tokens_per_s,
                ),
                step_time_source: match re.step_time_source["provenance"]["kind"].as_str() {
                    Some(k) => format!("calibration ({k})"),
                    None => re.step_time_source["kind"].as_str().unwrap_or("?").to_string(),
                },
                prefix_cache_queries: Some(e.prefix_queries),
                prefix_cache_hits: Some(e.prefix_hits),
                prefix_cache_hit_rate: Some(crate::output::summary::round6(
                    e.prefix_hits as f64 / e.prefix_queries.max(1) as f64,
                )),
            })
            .collect();
        self.agg
            .summarize(&self.r.scenario.name, self.seed, self.policy.describe(), engines)
    }
}

/// Hash of a file's bytes, for provenance in manifests.
pub fn file_fingerprint(path: &Path) -> Result<(u64, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok((bytes.len() as u64, format!("{:016x}", fnv1a64(&bytes))))
}
