//! The workflow runtime: the one copy of a workflow's lifecycle, owned by both drivers.
//!
//! It holds the workflows in flight and their pending requests, issues each stage as a
//! request to the policy core, applies the core's decisions, advances a workflow when a stage
//! finishes (after its tool delay), retires it when its last stage ends or the core gives up,
//! and checks at the end that nothing was lost. Every input reaches the core through
//! [`journal::feed_into`](crate::policy::journal::feed_into), and is journalled with its
//! decisions when asked.
//!
//! Sans-IO like the core: every call takes `now`; nothing here reads a clock, a socket or a
//! file. What it wants done comes out as typed [`Action`]s, polled by the driver: the
//! simulator turns a `Send` into `Engine::add_request` at a virtual time, the replay into an
//! HTTP request; a `Wake` is a timer the driver sets and hands back through [`Runtime::wake`].
//! Each driver keeps its own per-workflow and per-request data in `ext` (the simulator the
//! prompt's cache content, the replay the token ids it sent).

use crate::error::{Error, Result};
use crate::policy::journal::{feed_into, CoreInput, JournalDecision, JournalEntry};
use crate::policy::{Decision, FailureKind, Oracle, PolicyCore};
use crate::rng::IdMap;
use crate::time::Nanos;
use crate::workload::{Stage, WorkflowSpec};
use std::collections::VecDeque;
use std::sync::Arc;

/// A workflow in flight.
#[derive(Debug)]
pub struct Workflow<W> {
    pub spec: WorkflowSpec,
    /// The plan (per-model script) chosen at the first dispatch.
    pub plan: Option<usize>,
    /// The stage in flight (or next).
    pub stage: u32,
    /// The engine of the first dispatch (the workflow's model).
    pub first_engine: u32,
    pub output_so_far: u64,
    pub prompt_tokens: u64,
    pub preemptions: u32,
    /// Why the core gave up on it, if it did.
    pub error: Option<String>,
    /// The confidence per model it was routed by, with that model's outcome when known
    /// (empty without a confidence model).
    pub confidence: Vec<(Arc<str>, f64, Option<bool>)>,
    pub ext: W,
}

impl<W> Workflow<W> {
    /// Stage `k` of the chosen plan (the first plan before any dispatch).
    pub fn stage_spec(&self, k: u32) -> Stage {
        self.spec.plans[self.plan.unwrap_or(0)].stages[k as usize]
    }

    /// Stages of the chosen plan.
    pub fn stages(&self) -> usize {
        self.spec.plans[self.plan.unwrap_or(0)].stages.len()
    }
}

/// A request issued to the core and not yet finished.
#[derive(Debug)]
pub struct Pending<P> {
    pub workflow: u64,
    pub stage: u32,
    /// When the stage became ready (the request's arrival at the core).
    pub arrival_ns: Nanos,
    /// The engine and priority of the latest dispatch.
    pub engine: u32,
    pub priority: i64,
    /// Dispatches so far.
    pub dispatches: u32,
    /// Failed attempts so far (the attempt number of the next send).
    pub attempt: u32,
    pub ext: P,
}

/// A timer the runtime asks its driver for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Wake {
    /// The tool call after a stage is over: issue the workflow's next stage.
    Stage(u64),
    /// The core asked for `handle_timeout`.
    Timer,
}

/// What the runtime wants its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `request` to `engine` at `at` (the dispatch time; a driver adds its own delays,
    /// the simulator the decision and front-end costs). `first` for the first dispatch.
    Send {
        request: u64,
        engine: u32,
        priority: i64,
        at: Nanos,
        first: bool,
    },
    /// Call [`Runtime::wake`] with `wake` at `at`.
    Wake { at: Nanos, wake: Wake },
    /// Check the health of `engine` (out of routing) at `at`, and answer with
    /// [`Runtime::probe_answer`].
    Probe { engine: u32, at: Nanos },
    /// A workflow is over: record it.
    Done(WorkflowOutcome),
}

/// A finished (or abandoned) workflow, as both drivers record it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowOutcome {
    pub id: u64,
    /// The engine of its first dispatch.
    pub engine: u32,
    pub arrival_ns: Nanos,
    pub finish_ns: Nanos,
    /// Stages finished.
    pub stages: u32,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub preemptions: u32,
    /// Whether the task was solved, when the trace knows (false when abandoned).
    pub success: Option<bool>,
    /// Why the core gave up on it.
    pub error: Option<String>,
    /// The confidence per model it was routed by, with that model's outcome when known.
    pub confidence: Vec<(Arc<str>, f64, Option<bool>)>,
}

impl WorkflowOutcome {
    pub fn e2e_ns(&self) -> Nanos {
        self.finish_ns - self.arrival_ns
    }
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }
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

/// The workflow runtime (see the module documentation). `W` and `P` are the driver's own
/// data per workflow and per pending request.
pub struct Runtime<W, P> {
    core: PolicyCore,
    needs_oracle: bool,
    engine_model: Vec<Arc<str>>,
    workflows: IdMap<u64, Workflow<W>>,
    pending: IdMap<u64, Pending<P>>,
    next_request: u64,
    /// Decisions the core made, not yet turned into actions (in the core's order).
    decisions: VecDeque<Decision>,
    actions: VecDeque<Action>,
    timer_at: Option<Nanos>,
    timer_checked: bool,
    now: Nanos,
    journal: Option<Vec<JournalEntry>>,
    failed_attempts: u64,
    abandoned: u64,
}

impl<W: Default, P: Default> Runtime<W, P> {
    pub fn new(core: PolicyCore) -> Self {
        let engine_model = core.engines().iter().map(|e| e.model.clone()).collect();
        Runtime {
            needs_oracle: core.needs_oracle(),
            core,
            engine_model,
            workflows: IdMap::default(),
            pending: IdMap::default(),
            next_request: 0,
            decisions: VecDeque::new(),
            actions: VecDeque::new(),
            timer_at: None,
            timer_checked: true,
            now: 0,
            journal: None,
            failed_attempts: 0,
            abandoned: 0,
        }
    }

    /// Journal every input and the decisions it got (see [`Runtime::take_journal`]).
    pub fn with_journal(mut self) -> Self {
        self.journal = Some(Vec::new());
        self
    }

    /// Number requests from `n` on (a resumed replay continues its numbering).
    pub fn starting_at_request(mut self, n: u64) -> Self {
        self.next_request = n;
        self
    }

    pub fn core(&self) -> &PolicyCore {
        &self.core
    }

    /// The journal entries since the last call (empty when not journalling).
    pub fn take_journal(&mut self) -> Vec<JournalEntry> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn workflow(&self, id: u64) -> Option<&Workflow<W>> {
        self.workflows.get(&id)
    }
    pub fn workflow_mut(&mut self, id: u64) -> Option<&mut Workflow<W>> {
        self.workflows.get_mut(&id)
    }
    pub fn pending(&self, request: u64) -> Option<&Pending<P>> {
        self.pending.get(&request)
    }
    pub fn pending_mut(&mut self, request: u64) -> Option<&mut Pending<P>> {
        self.pending.get_mut(&request)
    }

    /// Workflows in flight.
    pub fn in_flight(&self) -> usize {
        self.workflows.len()
    }
    /// Requests issued so far (the next request's id).
    pub fn issued(&self) -> u64 {
        self.next_request
    }
    /// Attempts failed so far.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts
    }
    /// Requests the core gave up on.
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }

    /// The next thing to do, in the order the core decided it.
    pub fn poll_action(&mut self) -> Option<Action> {
        loop {
            if let Some(a) = self.actions.pop_front() {
                return Some(a);
            }
            if let Some(d) = self.decisions.pop_front() {
                self.apply(d);
                continue;
            }
            if !self.timer_checked {
                self.timer_checked = true;
                if let Some(t) = self.core.poll_timeout() {
                    if self.timer_at != Some(t) && t >= self.now {
                        self.timer_at = Some(t);
                        self.actions.push_back(Action::Wake {
                            at: t,
                            wake: Wake::Timer,
                        });
                        continue;
                    }
                }
            }
            return None;
        }
    }

    /// A workflow arrives: its first stage goes to the core.
    pub fn arrive(&mut self, now: Nanos, spec: WorkflowSpec) -> Result<()> {
        if spec.plans.is_empty() || spec.plans.iter().any(|p| p.stages.is_empty()) {
            return Err(Error::bad(format!("workflow {} has no stages", spec.id)));
        }
        let id = spec.id;
        if self.workflows.contains_key(&id) {
            return Err(Error::bad(format!("workflow {id} arrived twice")));
        }
        self.workflows.insert(
            id,
            Workflow {
                spec,
                plan: None,
                stage: 0,
                first_engine: 0,
                output_so_far: 0,
                prompt_tokens: 0,
                preemptions: 0,
                error: None,
                confidence: Vec::new(),
                ext: W::default(),
            },
        );
        self.issue(now, id);
        Ok(())
    }

    /// A timer set by an [`Action::Wake`] is due.
    pub fn wake(&mut self, now: Nanos, wake: Wake) {
        match wake {
            Wake::Stage(w) => {
                if self.workflows.contains_key(&w) {
                    self.issue(now, w)
                }
            }
            Wake::Timer => {
                if self.timer_at == Some(now) {
                    self.timer_at = None;
                    self.input(CoreInput::Timeout { t: now });
                }
            }
        }
    }

    fn issue(&mut self, now: Nanos, wf_id: u64) {
        let wf = &self.workflows[&wf_id];
        let st = wf.stage_spec(wf.stage);
        let request = self.next_request;
        self.next_request += 1;
        self.pending.insert(
            request,
            Pending {
                workflow: wf_id,
                stage: wf.stage,
                arrival_ns: now,
                engine: 0,
                priority: 0,
                dispatches: 0,
                attempt: 0,
                ext: P::default(),
            },
        );
        let input = CoreInput::Request {
            t: now,
            request,
            workflow: wf_id,
            stage: wf.stage,
            prompt_tokens: st.prompt_tokens,
            context_tokens: st.context_tokens,
            workflow_output_so_far: wf.output_so_far,
            text: wf.spec.text.clone(),
            task: wf.spec.task.clone(),
            oracle: self.needs_oracle,
        };
        self.input(input);
    }

    /// A request's answer is complete: `output_tokens` generated, `preemptions` suffered at
    /// its engine. The workflow's next stage is issued after the stage's tool delay, or the
    /// workflow ends.
    pub fn finished(&mut self, now: Nanos, request: u64, output_tokens: u32, preemptions: u32) -> Result<()> {
        let p = self
            .pending
            .remove(&request)
            .ok_or_else(|| Error::other(format!("a finished answer for unknown request {request}")))?;
        let wf = self
            .workflows
            .get_mut(&p.workflow)
            .expect("a pending request has its workflow");
        let st = wf.stage_spec(p.stage);
        wf.output_so_far += output_tokens as u64;
        wf.prompt_tokens += st.prompt_tokens as u64;
        wf.preemptions += preemptions;
        wf.stage += 1;
        let more = (wf.stage as usize) < wf.stages();
        self.input(CoreInput::Finished {
            t: now,
            request,
            output_tokens,
        });
        if more {
            self.actions.push_back(Action::Wake {
                at: now.saturating_add(st.tool_delay_ns),
                wake: Wake::Stage(p.workflow),
            });
        } else {
            self.finish_workflow(now, p.workflow);
        }
        Ok(())
    }

    /// An attempt failed without an answer; the core retries, re-routes or gives up.
    pub fn failed(&mut self, now: Nanos, request: u64, kind: FailureKind) -> Result<()> {
        let p = self
            .pending
            .get_mut(&request)
            .ok_or_else(|| Error::other(format!("a failure for unknown request {request}")))?;
        p.attempt += 1;
        self.failed_attempts += 1;
        let (transient, unreachable, why) = match kind {
            FailureKind::Rejected(w) => (false, false, w),
            FailureKind::Transient(w) => (true, false, w),
            FailureKind::Unreachable(w) => (true, true, w),
        };
        self.input(CoreInput::Failed {
            t: now,
            request,
            transient,
            unreachable,
            why,
        });
        Ok(())
    }

    /// An engine's load figures (after a step, or from its /metrics).
    pub fn report(&mut self, now: Nanos, engine: u32, running: u32, waiting: u32, kv_usage: f64) {
        self.input(CoreInput::Report {
            t: now,
            engine,
            running,
            waiting,
            kv_usage,
        });
    }

    /// The answer to an [`Action::Probe`].
    pub fn probe_answer(&mut self, now: Nanos, engine: u32, healthy: bool) {
        self.input(CoreInput::Probe {
            t: now,
            engine,
            healthy,
        });
    }

    /// Conservation at the end of a run: nothing in flight here or in the core.
    pub fn check_end(&self) -> std::result::Result<(), String> {
        if !self.workflows.is_empty() || !self.pending.is_empty() || self.core.tracked() != 0 {
            return Err(format!(
                "run ended with {} workflows, {} requests unfinished and {} tracked by the policy",
                self.workflows.len(),
                self.pending.len(),
                self.core.tracked()
            ));
        }
        Ok(())
    }

    /// The single way into the core: feed, journal, queue the decisions.
    fn input(&mut self, input: CoreInput) {
        self.now = self.now.max(input_time(&input));
        let oracle = match &input {
            CoreInput::Request {
                workflow,
                stage,
                oracle: true,
                ..
            } => self
                .workflows
                .get(workflow)
                .map(|w| Arc::new(oracle_of(&w.spec, *stage as usize))),
            _ => None,
        };
        let n = feed_into(&mut self.core, &input, || oracle, &mut self.decisions);
        if let Some((wf, confs)) = self.core.take_assessment() {
            if let Some(w) = self.workflows.get_mut(&wf) {
                w.confidence = confs
                    .into_iter()
                    .map(|(model, c)| {
                        let plan = w.spec.plans.iter().find(|p| p.model.as_deref() == Some(&*model));
                        (model, c, plan.and_then(|p| p.success))
                    })
                    .collect();
            }
        }
        if let Some(j) = &mut self.journal {
            let new = self.decisions.range(self.decisions.len() - n..);
            j.push(JournalEntry {
                decisions: new.map(JournalDecision::from).collect(),
                input,
            });
        }
        self.timer_checked = false;
    }

    fn apply(&mut self, d: Decision) {
        let now = self.now;
        match d {
            Decision::Dispatch {
                request,
                engine,
                priority,
                not_before,
            } => {
                let Some(p) = self.pending.get_mut(&request) else {
                    // The core dispatches only what it tracks; a stale decision is a bug there.
                    debug_assert!(false, "policy dispatched unknown request {request}");
                    return;
                };
                p.engine = engine;
                p.priority = priority;
                p.dispatches += 1;
                let first = p.dispatches == 1;
                let wf = self.workflows.get_mut(&p.workflow).expect("live workflow");
                if wf.plan.is_none() {
                    wf.plan = Some(wf.spec.plan_index(&self.engine_model[engine as usize]));
                    wf.first_engine = engine;
                }
                self.actions.push_back(Action::Send {
                    request,
                    engine,
                    priority,
                    at: now.max(not_before),
                    first,
                });
            }
            Decision::Abandon { request, reason } => {
                let Some(p) = self.pending.remove(&request) else {
                    debug_assert!(false, "policy abandoned unknown request {request}");
                    return;
                };
                self.abandoned += 1;
                if let Some(wf) = self.workflows.get_mut(&p.workflow) {
                    wf.error = Some(reason);
                }
                self.finish_workflow(now, p.workflow);
            }
            Decision::Probe { engine, not_before } => {
                self.actions.push_back(Action::Probe {
                    engine,
                    at: now.max(not_before),
                });
            }
        }
    }

    fn finish_workflow(&mut self, now: Nanos, id: u64) {
        let Some(wf) = self.workflows.remove(&id) else { return };
        let plan = &wf.spec.plans[wf.plan.unwrap_or(0)];
        let success = match wf.error {
            Some(_) => plan.success.map(|_| false),
            None => plan.success,
        };
        self.actions.push_back(Action::Done(WorkflowOutcome {
            id,
            engine: wf.first_engine,
            arrival_ns: wf.spec.arrival_ns,
            finish_ns: now,
            stages: wf.stage,
            prompt_tokens: wf.prompt_tokens,
            output_tokens: wf.output_so_far,
            preemptions: wf.preemptions,
            success,
            error: wf.error,
            confidence: wf.confidence,
        }));
        self.input(CoreInput::WorkflowDone { t: now, workflow: id });
    }
}

fn input_time(i: &CoreInput) -> Nanos {
    match i {
        CoreInput::Request { t, .. }
        | CoreInput::Finished { t, .. }
        | CoreInput::Failed { t, .. }
        | CoreInput::Probe { t, .. }
        | CoreInput::Report { t, .. }
        | CoreInput::WorkflowDone { t, .. }
        | CoreInput::Timeout { t } => *t,
    }
}
