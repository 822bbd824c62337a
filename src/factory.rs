//! Building what a scenario names: its policy core over a set of engines (simulated engines or
//! a replay's endpoints) and its workload source. The simulator and the replay both build
//! here; there is no second construction of a policy or a source.

use crate::error::Result;
use crate::hw::StepModel;
use crate::policy::baselines::{Fcfs, FixedFraction, LeastOutstanding, RoundRobin, WorkflowOrder};
use crate::policy::chimera::{
    ChimeraRouter, NoisyOracle, OracleConfidence, OracleLength, PriorConfidence, QrfLength, SemanticConfidence, Sjf,
    Stjf,
};
use crate::policy::{CoreOptions, EngineInfo, PolicyCore, Prioritizer, Router};
use crate::rng::stream;
use crate::scenario::{ConfidenceSpec, LengthSpec, PrioritySpec, Resolved, RoutingSpec, Workload};
use crate::time::Nanos;
use crate::workload::arrivals::InterArrival;
use crate::workload::azure::{AzureWorkload, LengthCaps};
use crate::workload::synthetic::SyntheticWorkload;
use crate::workload::WorkloadSource;
use std::sync::Arc;

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
        RoutingSpec::RoundRobin {} => Box::new(RoundRobin::default()),
        RoutingSpec::LeastOutstanding {} => Box::new(LeastOutstanding),
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
                g.problems.as_ref().map(|p| r.base_dir.join(p)).as_deref(),
                g.tool_delay_scale,
            )?)
        }
    })
}
