//! The policy core: routing, priorities and the middleware queue, as a sans-IO state machine.
//!
//! Inputs arrive through `handle_*(now, ..)`; decisions leave through [`PolicyCore::poll_decision`];
//! [`PolicyCore::poll_timeout`] says when the core wants [`PolicyCore::handle_timeout`] called.
//! The simulator's event loop and a live replay driver are two drivers of this same object.
//!
//! Architecture Invariant: nothing in this module reads a clock, sleeps, spawns, or touches
//! a file or socket; time is only ever the `now` argument. Randomness comes from a stream
//! handed in at construction. (`tests/architecture.rs` checks the source for forbidden uses.)

pub mod baselines;
pub mod chimera;
pub mod journal;

use crate::rng::IdMap;
use crate::time::Nanos;
use std::collections::VecDeque;
use std::sync::Arc;

pub type EngineId = u32;

/// What the core knows of an engine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub id: EngineId,
    pub name: String,
    pub model: Arc<str>,
    pub gpu: String,
    /// Calibrated decode throughput (tokens/s) at a nominal batch: the engine's speed.
    pub decode_tokens_per_s: f64,
}

/// Load the core tracks per engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineLoad {
    /// Requests dispatched to the engine and not yet finished or failed.
    pub in_flight: u32,
    /// Prompt tokens of those requests.
    pub in_flight_prompt_tokens: u64,
    /// Requests routed to the engine but held in the middleware queue.
    pub held: u32,
    /// Last figures the engine reported (running, waiting, KV usage 0..1).
    pub reported_running: u32,
    pub reported_waiting: u32,
    pub reported_kv_usage: f64,
    /// Predicted output tokens in flight: each dispatched request charges its workflow's
    /// predicted remaining output, released when the request ends (the activity monitor's V).
    pub predicted_volume: f64,
}

/// Simulation-only truths about a request, for oracle policies. A live driver passes None.
#[derive(Debug, Clone, PartialEq)]
pub struct Oracle {
    /// Output tokens of this call on each candidate model.
    pub output_tokens: Vec<(Arc<str>, u32)>,
    /// Output tokens of the whole rest of the workflow (this call included), per model.
    pub remaining_workflow_tokens: Vec<(Arc<str>, u64)>,
    /// Whether the workflow succeeds, per model, when known.
    pub success: Vec<(Arc<str>, Option<bool>)>,
}

/// A request (one workflow stage) ready to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInfo {
    pub request: u64,
    pub workflow: u64,
    pub stage: u32,
    pub prompt_tokens: u32,
    pub context_tokens: u32,
    /// Output tokens the workflow has produced in earlier stages.
    pub workflow_output_so_far: u64,
    pub text: Option<Arc<str>>,
    /// Task family (`apps`, `math`), when the application says.
    pub task: Option<Arc<str>>,
    pub oracle: Option<Arc<Oracle>>,
}

/// Why a request failed at an engine.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureKind {
    /// The engine refused it (HTTP 4xx, or a prompt over max_model_len).
    Rejected(String),
    /// Timeout, HTTP 5xx, a broken stream: may succeed if retried.
    Transient(String),
    /// No connection to the engine at all (refused, unreachable): retried like a transient
    /// failure, and counted against the engine's health.
    Unreachable(String),
}

/// What the core tells its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send `request` to `engine` with `priority` (lower runs first), not before `not_before`.
    Dispatch {
        request: u64,
        engine: EngineId,
        priority: i64,
        not_before: Nanos,
    },
    /// Give up on `request`.
    Abandon { request: u64, reason: String },
    /// Ask whether `engine`, taken out of routing, answers its health check again (not
    /// before `not_before`); the answer comes back through [`PolicyCore::handle_probe`].
    Probe { engine: EngineId, not_before: Nanos },
}

/// A read-only view of the cluster handed to routers.
pub struct ClusterView<'a> {
    pub engines: &'a [EngineInfo],
    pub load: &'a [EngineLoad],
    /// Predicted remaining workflow output if the request went to each engine (NaN: no
    /// length model).
    pub predicted_remaining: &'a [f64],
    /// Per-engine confidence that the workflow succeeds there (NaN: no confidence model).
    pub confidence: &'a [f64],
}

impl ClusterView<'_> {
    /// Among `candidates`, the engine with the fewest requests in flight or held (ties: lowest id,
    /// or `prefer` when it ties for least).
    pub fn least_loaded(
        &self,
        candidates: impl Iterator<Item = EngineId>,
        prefer: Option<EngineId>,
    ) -> Option<EngineId> {
        let key = |e: EngineId| {
            let l = &self.load[e as usize];
            (l.in_flight + l.held, if Some(e) == prefer { 0 } else { 1 }, e)
        };
        candidates.min_by_key(|&e| key(e))
    }
}

/// Chooses the engine of a workflow's first stage.
pub trait Router: Send {
    fn name(&self) -> &'static str;
    fn route(&mut self, now: Nanos, req: &RequestInfo, view: &ClusterView) -> EngineId;
}

/// What the length model predicts for a request on its engine's model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Output tokens of the whole rest of the workflow, this call included.
    pub remaining_tokens: f64,
    /// Output tokens of this call alone.
    pub call_tokens: f64,
}

/// Gives each request its priority (lower runs first).
pub trait Prioritizer: Send {
    fn name(&self) -> &'static str;
    fn priority(&mut self, now: Nanos, req: &RequestInfo, engine: EngineId, pred: &Prediction) -> i64;
}

/// Predicts output lengths (the length predictor, or the oracle in simulation).
pub trait LengthModel: Send {
    fn name(&self) -> &'static str;
    fn predict(&mut self, req: &RequestInfo, model: &str) -> Prediction;
    /// Whether it reads `RequestInfo::oracle` (simulation only).
    fn needs_oracle(&self) -> bool {
        false
    }
}

/// Per-model confidence that a request's workflow succeeds (the semantic router, or oracles).
pub trait ConfidenceModel: Send {
    fn name(&self) -> &'static str;
    fn confidence(&mut self, req: &RequestInfo, model: &str) -> f64;
    fn needs_oracle(&self) -> bool {
        false
    }
}

/// Options of the core that are not a router or prioritizer.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// Hold requests in the core while an engine already has this many in flight.
    pub max_in_flight_per_engine: Option<u32>,
    /// Retries of a transiently failed request before giving up.
    pub max_retries: u32,
    /// Backoff before retry k (1-based): base * 2^(k-1).
    pub retry_backoff_ns: Nanos,
    /// Aging in the middleware queue: a held request passed over this many times is promoted
    /// to the head of its queue.
    pub middleware_starvation: Option<u32>,
    /// Consecutive unreachable failures after which an engine is taken out of routing and
    /// probed until it answers (0: never).
    pub down_after_failures: u32,
    /// Wait before the first probe of an engine taken out; doubled after each failed probe, up
    /// to `probe_max_interval_ns`.
    pub probe_interval_ns: Nanos,
    pub probe_max_interval_ns: Nanos,
}

impl Default for CoreOptions {
    fn default() -> Self {
        CoreOptions {
            max_in_flight_per_engine: None,
            max_retries: 2,
            retry_backoff_ns: 100_000_000,
            middleware_starvation: None,
            down_after_failures: 3,
            probe_interval_ns: 1_000_000_000,
            probe_max_interval_ns: 8_000_000_000,
        }
    }
}

/// What the core knows of an engine's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// In routing (true), or taken out after repeated unreachable failures (false).
    pub up: bool,
    /// Unreachable failures since the engine last finished a request or answered a probe.
    pub consecutive_unreachable: u32,
    /// The wait before the next probe of an engine that is out.
    pub probe_wait_ns: Nanos,
}

#[derive(Debug, Clone)]
struct Tracked {
    workflow: u64,
    engine: EngineId,
    priority: i64,
    prompt_tokens: u32,
    attempts: u32,
    dispatched: bool,
    predicted: f64,
}

#[derive(Debug, Clone)]
struct Held {
    priority: i64,
    seq: u64,
    request: u64,
    passed_over: u32,
}

/// The policy core.
pub struct PolicyCore {
    engines: Vec<EngineInfo>,
    load: Vec<EngineLoad>,
    router: Box<dyn Router>,
    prioritizer: Box<dyn Prioritizer>,
    opts: CoreOptions,
    /// Engine each live workflow was routed to.
    workflow_engine: IdMap<u64, EngineId>,
    requests: IdMap<u64, Tracked>,
    /// Middleware queue per engine, ordered by (priority, arrival sequence).
    held: Vec<Vec<Held>>,
    length: Option<Box<dyn LengthModel>>,
    confidence: Option<Box<dyn ConfidenceModel>>,
    held_seq: u64,
    out: VecDeque<Decision>,
    health: Vec<Health>,
    /// The confidences the core routed the last new workflow by, one per distinct model
    /// (kept only with a confidence model; read by [`PolicyCore::take_assessment`]).
    assessment: Option<(u64, Vec<(Arc<str>, f64)>)>,
}

impl PolicyCore {
    pub fn new(
        engines: Vec<EngineInfo>,
        router: Box<dyn Router>,
        prioritizer: Box<dyn Prioritizer>,
        opts: CoreOptions,
    ) -> Self {
        assert!(!engines.is_empty(), "a policy core needs at least one engine");
        for (i, e) in engines.iter().enumerate() {
            assert_eq!(e.id as usize, i, "engine ids must be 0..n in order");
        }
        let n = engines.len();
        PolicyCore {
            engines,
            load: vec![EngineLoad::default(); n],
            router,
            prioritizer,
            opts,
            workflow_engine: IdMap::default(),
            requests: IdMap::default(),
            held: (0..n).map(|_| Vec::new()).collect(),
            length: None,
            confidence: None,
            held_seq: 0,
            out: VecDeque::new(),
            assessment: None,
            health: vec![
                Health {
                    up: true,
                    consecutive_unreachable: 0,
                    probe_wait_ns: 0,
                };
                n
            ],
        }
    }

    /// Each engine's health as the core sees it.
    pub fn health(&self) -> &[Health] {
        &self.health
    }

    pub fn engines(&self) -> &[EngineInfo] {
        &self.engines
    }
    pub fn load(&self) -> &[EngineLoad] {
        &self.load
    }
    pub fn describe(&self) -> String {
        format!("router {}, priority {}", self.router.name(), self.prioritizer.name())
    }

    /// The replica of `model` with the fewest requests in flight or held, other than `exclude`
    /// (ties: `prefer`, then the lowest id).
    fn least_loaded_replica(
        &self,
        model: &Arc<str>,
        exclude: Option<EngineId>,
        prefer: Option<EngineId>,
    ) -> Option<EngineId> {
        let candidates = |up_only: bool| {
            self.engines
                .iter()
                .filter(move |e| &e.model == model && Some(e.id) != exclude)
                .filter(move |e| !up_only || self.health[e.id as usize].up)
                .map(|e| e.id)
        };
        // Engines in routing first; when every replica is out, any (its failure is retried).
        self.least_loaded_of(candidates(true), prefer)
            .or_else(|| self.least_loaded_of(candidates(false), prefer))
    }

    /// [`ClusterView::least_loaded`] over the core's own load, without predictions.
    fn least_loaded_of(
        &self,
        candidates: impl Iterator<Item = EngineId>,
        prefer: Option<EngineId>,
    ) -> Option<EngineId> {
        let nan = vec![f64::NAN; self.engines.len()];
        let view = ClusterView {
            engines: &self.engines,
            load: &self.load,
            predicted_remaining: &nan,
            confidence: &nan,
        };
        view.least_loaded(candidates, prefer)
    }

    /// A router's choice, unless that engine is out of routing: then the least loaded replica
    /// of its model in routing, else the least loaded engine in routing of any model, else the
    /// choice itself (every engine is out).
    fn in_routing(&self, chosen: EngineId) -> EngineId {
        if self.health[chosen as usize].up {
            return chosen;
        }
        let model = self.engines[chosen as usize].model.clone();
        if let Some(e) = self
            .least_loaded_replica(&model, None, None)
            .filter(|&e| self.health[e as usize].up)
        {
            return e;
        }
        self.least_loaded_of(
            self.engines
                .iter()
                .map(|e| e.id)
                .filter(|&e| self.health[e as usize].up),
            None,
        )
        .unwrap_or(chosen)
    }

    /// Give the core a length model (needed by Chimera routing and STJF/SJF priorities).
    pub fn with_length_model(mut self, m: Box<dyn LengthModel>) -> Self {
        self.length = Some(m);
        self
    }

    /// Give the core a confidence model (needed by Chimera routing).
    pub fn with_confidence_model(mut self, m: Box<dyn ConfidenceModel>) -> Self {
        self.confidence = Some(m);
        self
    }

    /// The confidence per model the last new workflow was routed by: (workflow, [(model,
    /// confidence)]). A driver that knows outcomes scores the confidence model with it.
    pub fn take_assessment(&mut self) -> Option<(u64, Vec<(Arc<str>, f64)>)> {
        self.assessment.take()
    }

    /// Whether a driver must fill `RequestInfo::oracle` (simulation-only policies).
    pub fn needs_oracle(&self) -> bool {
        self.length.as_ref().is_some_and(|l| l.needs_oracle())
            || self.confidence.as_ref().is_some_and(|c| c.needs_oracle())
    }

    /// Predictions and confidences per engine (computed once per distinct model).
    fn assess(
        &mut self,
        req: &RequestInfo,
        engines: &[EngineId],
        with_confidence: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<Prediction>) {
        let n = self.engines.len();
        let (mut rem, mut conf) = (vec![f64::NAN; n], vec![f64::NAN; n]);
        let mut preds = vec![
            Prediction {
                remaining_tokens: f64::NAN,
                call_tokens: f64::NAN
            };
            n
        ];
        let mut done: Vec<(Arc<str>, Prediction, f64)> = Vec::new();
        for &e in engines {
            let model = self.engines[e as usize].model.clone();
            let (p, c) = match done.iter().find(|d| d.0 == model) {
                Some(d) => (d.1, d.2),
                None => {
                    let p = match &mut self.length {
                        Some(l) => l.predict(req, &model),
                        None => Prediction {
                            remaining_tokens: f64::NAN,
                            call_tokens: f64::NAN,
                        },
                    };
                    let c = match (&mut self.confidence, with_confidence) {
                        (Some(c), true) => c.confidence(req, &model),
                        _ => f64::NAN,
                    };
                    done.push((model, p, c));
                    (p, c)
                }
            };
            rem[e as usize] = p.remaining_tokens;
            conf[e as usize] = c;
            preds[e as usize] = p;
        }
        if with_confidence && self.confidence.is_some() {
            self.assessment = Some((req.workflow, done.into_iter().map(|(m, _, c)| (m, c)).collect()));
        }
        (rem, conf, preds)
    }

    /// A request is ready to be sent.
    pub fn handle_request(&mut self, now: Nanos, req: RequestInfo) {
        let (engine, pred) = match self.workflow_engine.get(&req.workflow) {
            // Later stages stay on the workflow's model: the least loaded replica of it.
            Some(&prev) => {
                let model = self.engines[prev as usize].model.clone();
                let engine = self
                    .least_loaded_replica(&model, None, Some(prev))
                    .expect("the previous engine is a candidate");
                let (_, _, preds) = self.assess(&req, &[engine], false);
                (engine, preds[engine as usize])
            }
            // A new workflow: predictions and confidences for every engine, then the router.
            None => {
                let all: Vec<EngineId> = (0..self.engines.len() as u32).collect();
                let (rem, conf, preds) = self.assess(&req, &all, true);
                let view = ClusterView {
                    engines: &self.engines,
                    load: &self.load,
                    predicted_remaining: &rem,
                    confidence: &conf,
                };
                let engine = self.router.route(now, &req, &view);
                assert!(
                    (engine as usize) < self.engines.len(),
                    "router {} chose engine {engine} of {}",
                    self.router.name(),
                    self.engines.len()
                );
                let engine = self.in_routing(engine);
                (engine, preds[engine as usize])
            }
        };
        assert!(
            (engine as usize) < self.engines.len(),
            "router {} chose engine {engine} of {}",
            self.router.name(),
            self.engines.len()
        );
        self.workflow_engine.insert(req.workflow, engine);
        let priority = self.prioritizer.priority(now, &req, engine, &pred);
        self.requests.insert(
            req.request,
            Tracked {
                workflow: req.workflow,
                engine,
                priority,
                prompt_tokens: req.prompt_tokens,
                attempts: 0,
                dispatched: false,
                predicted: if pred.remaining_tokens.is_finite() {
                    pred.remaining_tokens.max(0.0)
                } else {
                    0.0
                },
            },
        );
        self.send_or_hold(req.request, now);
    }

    fn send_or_hold(&mut self, request: u64, not_before: Nanos) {
        let t = &self.requests[&request];
        let e = t.engine as usize;
        let full = self
            .opts
            .max_in_flight_per_engine
            .is_some_and(|k| self.load[e].in_flight >= k);
        if full {
            self.held[e].push(Held {
                priority: t.priority,
                seq: self.held_seq,
                request,
                passed_over: 0,
            });
            self.held_seq += 1;
            self.load[e].held += 1;
        } else {
            self.dispatch(request, not_before);
        }
    }

    fn dispatch(&mut self, request: u64, not_before: Nanos) {
        let t = self.requests.get_mut(&request).expect("tracked");
        t.dispatched = true;
        let l = &mut self.load[t.engine as usize];
        l.in_flight += 1;
        l.in_flight_prompt_tokens += t.prompt_tokens as u64;
        l.predicted_volume += t.predicted;
        self.out.push_back(Decision::Dispatch {
            request,
            engine: t.engine,
            priority: t.priority,
            not_before,
        });
    }

    /// Release what the middleware queue holds for `engine` while it has room.
    fn release(&mut self, now: Nanos, engine: EngineId) {
        let e = engine as usize;
        while self
            .opts
            .max_in_flight_per_engine
            .is_none_or(|k| self.load[e].in_flight < k)
        {
            // Promoted (passed over `middleware_starvation` times) first, then priority, then age.
            let starve = self.opts.middleware_starvation;
            let key = |h: &Held| (!starve.is_some_and(|k| h.passed_over >= k), h.priority, h.seq);
            let Some(pos) = (0..self.held[e].len()).min_by_key(|&k| key(&self.held[e][k])) else {
                break;
            };
            let request = self.held[e].swap_remove(pos).request;
            for h in &mut self.held[e] {
                h.passed_over += 1;
            }
            self.load[e].held -= 1;
            self.dispatch(request, now);
        }
    }

    fn settle(&mut self, request: u64) -> Option<Tracked> {
        let t = self.requests.remove(&request)?;
        if t.dispatched {
            let l = &mut self.load[t.engine as usize];
            l.in_flight -= 1;
            l.in_flight_prompt_tokens -= t.prompt_tokens as u64;
            l.predicted_volume = (l.predicted_volume - t.predicted).max(0.0);
        }
        Some(t)
    }

    /// A request finished on its engine.
    pub fn handle_finished(&mut self, now: Nanos, request: u64, _output_tokens: u32) {
        if let Some(t) = self.settle(request) {
            self.health[t.engine as usize].consecutive_unreachable = 0;
            self.release(now, t.engine);
        }
    }

    /// Count an unreachable failure against `engine`; at `down_after_failures` in a row, take
    /// it out of routing, move what the middleware queue holds for it to replicas in routing,
    /// and ask for a probe.
    fn note_unreachable(&mut self, now: Nanos, engine: EngineId) {
        let k = self.opts.down_after_failures;
        let h = &mut self.health[engine as usize];
        h.consecutive_unreachable += 1;
        if k == 0 || !h.up || h.consecutive_unreachable < k {
            return;
        }
        h.up = false;
        h.probe_wait_ns = self.opts.probe_interval_ns;
        self.out.push_back(Decision::Probe {
            engine,
            not_before: now + self.opts.probe_interval_ns,
        });
        let model = self.engines[engine as usize].model.clone();
        if let Some(to) = self.least_loaded_replica(&model, Some(engine), None) {
            if self.health[to as usize].up {
                let moved = std::mem::take(&mut self.held[engine as usize]);
                self.load[engine as usize].held = 0;
                for h in moved {
                    let t = self.requests.get_mut(&h.request).expect("held request is tracked");
                    t.engine = to;
                    self.workflow_engine.insert(t.workflow, to);
                    self.held[to as usize].push(h);
                    self.load[to as usize].held += 1;
                }
                self.release(now, to);
            }
        }
    }

    /// The answer to a [`Decision::Probe`]: an engine that answers is back in routing; one
    /// that does not is probed again after twice the wait, up to `probe_max_interval_ns`.
    pub fn handle_probe(&mut self, now: Nanos, engine: EngineId, healthy: bool) {
        let max = self.opts.probe_max_interval_ns;
        let h = &mut self.health[engine as usize];
        if h.up {
            return;
        }
        if healthy {
            h.up = true;
            h.consecutive_unreachable = 0;
            self.release(now, engine);
        } else {
            h.probe_wait_ns = h.probe_wait_ns.saturating_mul(2).min(max).max(1);
            let wait = h.probe_wait_ns;
            self.out.push_back(Decision::Probe {
                engine,
                not_before: now + wait,
            });
        }
    }

    /// A request failed. Transient failures are retried with backoff (on another replica of the
    /// same model when there is one) up to `max_retries`; the rest are abandoned.
    pub fn handle_failed(&mut self, now: Nanos, request: u64, kind: FailureKind) {
        let Some(mut t) = self.settle(request) else {
            return;
        };
        let failed_engine = t.engine;
        if matches!(kind, FailureKind::Unreachable(_)) {
            self.note_unreachable(now, failed_engine);
        }
        match kind {
            FailureKind::Transient(why) | FailureKind::Unreachable(why) if t.attempts < self.opts.max_retries => {
                t.attempts += 1;
                let model = self.engines[failed_engine as usize].model.clone();
                t.engine = self
                    .least_loaded_replica(&model, Some(failed_engine), None)
                    .unwrap_or(failed_engine);
                t.dispatched = false;
                self.workflow_engine.insert(t.workflow, t.engine);
                let _ = why;
                let backoff = self.opts.retry_backoff_ns.saturating_mul(1 << (t.attempts - 1).min(20));
                self.requests.insert(request, t);
                self.send_or_hold(request, now + backoff);
            }
            FailureKind::Transient(why) | FailureKind::Unreachable(why) => {
                self.out.push_back(Decision::Abandon {
                    request,
                    reason: format!("gave up after {} retries: {why}", self.opts.max_retries),
                });
            }
            FailureKind::Rejected(why) => {
                self.out.push_back(Decision::Abandon {
                    request,
                    reason: format!("rejected: {why}"),
                });
            }
        }
        self.release(now, failed_engine);
    }

    /// An engine reported its state.
    pub fn handle_engine_report(&mut self, _now: Nanos, engine: EngineId, running: u32, waiting: u32, kv_usage: f64) {
        let l = &mut self.load[engine as usize];
        l.reported_running = running;
        l.reported_waiting = waiting;
        l.reported_kv_usage = kv_usage;
    }

    /// A workflow ended (all stages done, or abandoned): forget it.
    pub fn handle_workflow_done(&mut self, _now: Nanos, workflow: u64) {
        self.workflow_engine.remove(&workflow);
    }

    /// The next decision, if any.
    #[must_use]
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.out.pop_front()
    }

    /// When the core wants `handle_timeout` called (None: no timer). Baselines need none; the
    /// hook is here for policies with periodic work (aging, batched prediction).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        None
    }

    /// A timer fired. Extra calls do nothing.
    pub fn handle_timeout(&mut self, _now: Nanos) {}

    /// Requests the core is tracking (dispatched or held).
    pub fn tracked(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests;
