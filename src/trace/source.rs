//! Traces as workload sources for scenarios: a trace file (`kind: trace`) or workflows
//! generated on the fly from the fitted parameters (`kind: generated`), with arrivals from a
//! renewal process.

use super::format::{read_trace, Trace, TraceWorkflow};
use super::gen::TraceGen;
use super::params::{FittedParams, Task};
use crate::error::{Error, Result};
use crate::rng::{stream, StreamRng};
use crate::time::Nanos;
use crate::workload::arrivals::InterArrival;
use crate::workload::{WorkflowSpec, WorkloadSource};
use rand::RngExt;
use std::path::Path;
use std::sync::Arc;

fn to_spec(w: &TraceWorkflow, id: u64, arrival_ns: Nanos, models: &[String]) -> WorkflowSpec {
    // Keep only the plans of the cluster's models, in the cluster's order.
    let plans = models
        .iter()
        .filter_map(|m| w.plans.iter().find(|p| p.model.as_deref() == Some(m.as_str())).cloned())
        .collect();
    WorkflowSpec {
        id,
        arrival_ns,
        text: w.text.clone(),
        task: Some(Arc::from(w.task.as_str())),
        plans,
    }
}

struct Clock {
    ia: InterArrival,
    rng: StreamRng,
    now: Nanos,
    first: bool,
}

impl Clock {
    fn new(ia: InterArrival, seed: u64) -> Clock {
        Clock {
            ia,
            rng: stream(seed, "arrivals"),
            now: 0,
            first: true,
        }
    }

    fn tick(&mut self) -> Nanos {
        if !self.first {
            self.now = self.now.saturating_add(self.ia.gap_ns(&mut self.rng));
        }
        self.first = false;
        self.now
    }
}

/// Check that a trace has a plan for every model of the cluster.
pub fn check_models(trace_models: &[String], cluster: &[String], what: &str) -> Result<()> {
    for m in cluster {
        if !trace_models.contains(m) {
            return Err(Error::bad(format!(
                "{what} has no plans for model {m} of the cluster; it has {}",
                trace_models.join(", ")
            )));
        }
    }
    Ok(())
}

/// Workflows from a trace file, in file order (or shuffled by the seed), repeated if `cycle`.
pub struct TraceWorkload {
    trace: Arc<Trace>,
    order: Vec<usize>,
    pos: usize,
    produced: u64,
    limit: u64,
    cycle: bool,
    models: Vec<String>,
    clock: Clock,
}

impl TraceWorkload {
    pub fn open(
        path: &Path,
        models: &[String],
        ia: InterArrival,
        seed: u64,
        limit: Option<u64>,
        cycle: bool,
        shuffle: bool,
    ) -> Result<Self> {
        let trace = read_trace(path)?;
        check_models(&trace.models, models, &format!("trace {}", path.display()))?;
        let mut order: Vec<usize> = (0..trace.workflows.len()).collect();
        if shuffle {
            let mut r = stream(seed, "workload.shuffle");
            for i in (1..order.len()).rev() {
                let j = r.random_range(0..=i);
                order.swap(i, j);
            }
        }
        let n = trace.workflows.len() as u64;
        Ok(TraceWorkload {
            trace: Arc::new(trace),
            order,
            pos: 0,
            produced: 0,
            limit: limit.unwrap_or(if cycle { u64::MAX } else { n }),
            cycle,
            models: models.to_vec(),
            clock: Clock::new(ia, seed),
        })
    }
}

impl WorkloadSource for TraceWorkload {
    fn next_workflow(&mut self) -> Result<Option<WorkflowSpec>> {
        if self.produced >= self.limit {
            return Ok(None);
        }
        if self.pos >= self.order.len() {
            if !self.cycle {
                return Ok(None);
            }
            self.pos = 0;
        }
        let w = &self.trace.workflows[self.order[self.pos]];
        self.pos += 1;
        let t = self.clock.tick();
        let spec = to_spec(w, self.produced, t, &self.models);
        self.produced += 1;
        Ok(Some(spec))
    }

    fn expected_len(&self) -> Option<u64> {
        Some(if self.cycle {
            self.limit
        } else {
            self.limit.min(self.order.len() as u64)
        })
    }
}

/// Workflows generated as they arrive, a task drawn per workflow from a mix.
pub struct GeneratedWorkload {
    gens: Vec<(f64, TraceGen<'static>)>,
    task_rng: StreamRng,
    produced: u64,
    n: u64,
    models: Vec<String>,
    clock: Clock,
}

impl GeneratedWorkload {
    /// With `problems` (the data folder), workflows are real problems with their text.
    pub fn new(
        mix: &[(Task, f64)],
        models: &[String],
        n: u64,
        ia: InterArrival,
        seed: u64,
        problems: Option<&std::path::Path>,
        tool_delay_scale: f64,
    ) -> Result<Self> {
        let params = FittedParams::embedded();
        let total: f64 = mix.iter().map(|(_, w)| w).sum();
        let mut gens = Vec::new();
        let mut acc = 0.0;
        for (task, w) in mix {
            acc += w / total;
            let mut g = TraceGen::new(params, *task, models, seed)?.with_tool_delay_scale(tool_delay_scale);
            if let Some(d) = problems {
                g = g.with_items(d).map_err(|e| e.context("workload.problems"))?;
            }
            gens.push((acc, g));
        }
        Ok(GeneratedWorkload {
            gens,
            task_rng: stream(seed, "workload.task"),
            produced: 0,
            n,
            models: models.to_vec(),
            clock: Clock::new(ia, seed),
        })
    }
}

impl WorkloadSource for GeneratedWorkload {
    fn next_workflow(&mut self) -> Result<Option<WorkflowSpec>> {
        if self.produced >= self.n {
            return Ok(None);
        }
        let u: f64 = self.task_rng.random();
        let k = self
            .gens
            .iter()
            .position(|(c, _)| u < *c)
            .unwrap_or(self.gens.len() - 1);
        let w = self.gens[k].1.next_workflow();
        let t = self.clock.tick();
        let spec = to_spec(&w, self.produced, t, &self.models);
        self.produced += 1;
        Ok(Some(spec))
    }

    fn expected_len(&self) -> Option<u64> {
        Some(self.n)
    }
}
