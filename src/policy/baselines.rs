//! Baseline routers and the FCFS prioritizer: policies that know nothing of model quality or
//! output lengths. Fixed fraction per model (swept to draw a baseline's frontier), round
//! robin, and least outstanding requests.

use super::{ClusterView, EngineId, Prediction, Prioritizer, RequestInfo, Router};
use crate::rng::StreamRng;
use crate::time::Nanos;
use rand::RngExt;
use std::sync::Arc;

/// Send each workflow to a model with a fixed probability; within the model, the least
/// loaded replica.
pub struct FixedFraction {
    /// (model, cumulative probability), in a stable order.
    cdf: Vec<(Arc<str>, f64)>,
    rng: StreamRng,
}

impl FixedFraction {
    /// `fractions` must sum to 1 and name only models that have engines (checked by the scenario).
    pub fn new(fractions: &[(String, f64)], rng: StreamRng) -> Self {
        let mut acc = 0.0;
        let cdf = fractions
            .iter()
            .map(|(m, f)| {
                acc += f;
                (Arc::from(m.as_str()), acc)
            })
            .collect();
        FixedFraction { cdf, rng }
    }
}

impl Router for FixedFraction {
    fn name(&self) -> &'static str {
        "fixed_fraction"
    }
    fn route(&mut self, _now: Nanos, _req: &RequestInfo, view: &ClusterView) -> EngineId {
        let u: f64 = self.rng.random();
        let model = self
            .cdf
            .iter()
            .find(|(_, c)| u < *c)
            .or(self.cdf.last())
            .map(|(m, _)| m.clone())
            .expect("non-empty");
        view.least_loaded(view.engines.iter().filter(|e| e.model == model).map(|e| e.id), None)
            .expect("every model in the fractions has an engine")
    }
}

/// Engines in turn, one workflow each.
#[derive(Default)]
pub struct RoundRobin {
    next: usize,
}

impl Router for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }
    fn route(&mut self, _now: Nanos, _req: &RequestInfo, view: &ClusterView) -> EngineId {
        let e = self.next % view.engines.len();
        self.next = (e + 1) % view.engines.len();
        e as EngineId
    }
}

/// The engine with the fewest outstanding requests (ties: lowest id).
#[derive(Default)]
pub struct LeastOutstanding;

impl Router for LeastOutstanding {
    fn name(&self) -> &'static str {
        "least_outstanding"
    }
    fn route(&mut self, _now: Nanos, _req: &RequestInfo, view: &ClusterView) -> EngineId {
        view.least_loaded(view.engines.iter().map(|e| e.id), None)
            .expect("at least one engine")
    }
}

/// Every request gets priority 0: the engine serves in arrival order.
#[derive(Default)]
pub struct Fcfs;

impl Prioritizer for Fcfs {
    fn name(&self) -> &'static str {
        "fcfs"
    }
    fn priority(&mut self, _now: Nanos, _req: &RequestInfo, _engine: EngineId, _pred: &Prediction) -> i64 {
        0
    }
}

/// Earlier workflows first: priority is the workflow's id (ids follow arrival order), so a
/// workflow's later stages overtake newer workflows in a priority-ordered queue.
#[derive(Default)]
pub struct WorkflowOrder;

impl Prioritizer for WorkflowOrder {
    fn name(&self) -> &'static str {
        "workflow_order"
    }
    fn priority(&mut self, _now: Nanos, req: &RequestInfo, _engine: EngineId, _pred: &Prediction) -> i64 {
        req.workflow as i64
    }
}
