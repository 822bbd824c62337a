//! A fuzz harness that stays (issue 15): generated hostile overrides thrown at the scenario
//! loader and at short runs of the scenarios they make. Whatever the input: no panic, bounded
//! time (every run is capped by `limits.max_events`), and a refused input is bad input (exit
//! code 2) with a message that names a field. A bounded number of cases runs in CI
//! (`PROPTEST_CASES` raises it).

mod common;

use proptest::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Fields of the synthetic scenario a user (or an attacker) may set.
const PATHS: &[&str] = &[
    "seed",
    "cluster.engines[0].gpu",
    "cluster.engines[0].model",
    "cluster.engines[0].replicas",
    "cluster.engines[0].max_num_seqs",
    "cluster.engines[0].max_num_batched_tokens",
    "cluster.engines[0].max_model_len",
    "cluster.engines[0].gpu_memory_utilization",
    "cluster.engines[0].block_size",
    "cluster.engines[0].tensor_parallel",
    "cluster.engines[0].non_torch_gib",
    "cluster.engines[0].scheduling",
    "workload.workflows",
    "workload.stages",
    "workload.first_prompt_tokens",
    "workload.output_tokens",
    "workload.observation_tokens",
    "workload.tool_delay_ms",
    "workload.max_prompt_tokens",
    "workload.arrivals",
    "workload.arrivals.rate_per_s",
    "workload.arrivals.rate_scale",
    "policy.routing",
    "policy.priority",
    "policy.max_retries",
    "policy.max_in_flight_per_engine",
    "policy.decision_delay_us",
    "faults",
];

/// Values that have broken tools before: extremes, wrong types, odd shapes.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "17",
    "4294967295",
    "18446744073709551615",
    "1e308",
    "-1e308",
    "1e-300",
    ".nan",
    ".inf",
    "x",
    "''",
    "[]",
    "{}",
    "[1, 2, 3]",
    "null",
    "true",
    "{dist: constant, value: 1e300}",
    "{dist: lognormal, mean: 10, cv: 1e200}",
    "{dist: empirical, values: [], weights: []}",
    "{dist: uniform, min: 5, max: 1}",
    "{process: gamma, rate_per_s: 1e300, cv: 1e-300}",
    "{process: poisson, rate_per_s: 1e-9}",
    "{kind: round_robin, extra: 1}",
    "{kind: fixed_fraction, fractions: {Qwen2.5-1.5B: 2}}",
    "{priority_aging: {starvation_steps: 0, quantum_steps: 0}}",
    "[{engine: nope, at_s: 1, for_s: 1}]",
    "[{model: Qwen2.5-1.5B, kind: slow, factor: 1000, at_s: 0, for_s: 1e6}]",
    "[{model: Qwen2.5-1.5B, kind: fail, fraction: 1, at_s: 0, for_s: 1e6}]",
];

const BASE: &str = "name: fuzz\nseed: 1\ncluster:\n  engines:\n    - {name: e, model: Qwen2.5-1.5B, gpu: H100-SXM, calibration: auto}\n\
workload:\n  kind: synthetic\n  workflows: 20\n  stages: {dist: constant, value: 2}\n\
\x20 first_prompt_tokens: {dist: constant, value: 64}\n  stage_prompt_tokens: {dist: constant, value: 8}\n\
\x20 output_tokens: {dist: constant, value: 16}\n  observation_tokens: {dist: constant, value: 8}\n\
\x20 tool_delay_ms: {dist: constant, value: 10}\n  arrivals: {process: poisson, rate_per_s: 20}\n\
policy:\n  routing: {kind: round_robin}\n  priority: fcfs\n\
limits:\n  max_events: 200000\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn hostile_overrides_never_panic_and_are_refused_as_bad_input(
        picks in proptest::collection::vec((0..PATHS.len(), 0..VALUES.len()), 1..4)
    ) {
        let sets: Vec<String> = picks.iter().map(|(p, v)| format!("{}={}", PATHS[*p], VALUES[*v])).collect();
        let base = common::repo().join("scenarios");
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            match chimera::scenario::load_str(BASE, &sets, &base) {
                Err(e) => Err(e),
                Ok(r) => chimera::sim::Simulation::summary_only(&r).and_then(|s| s.run(&mut |_, _| {})).map(|_| ()),
            }
        }));
        let result = match outcome {
            Ok(r) => r,
            Err(_) => return Err(TestCaseError::fail(format!("panicked on {sets:?}"))),
        };
        if let Err(e) = result {
            let m = e.to_string();
            // The event cap is the harness's bound on time, not the input's fault.
            if !m.contains("limits.max_events") {
                prop_assert_eq!(e.exit_code(), 2, "{:?}: {}", sets, m);
                prop_assert!(m.contains(':'), "{:?}: the message names no field: {}", sets, m);
            }
        }
    }
}

/// The harness's base scenario itself runs (else every case would be refused at once).
#[test]
fn the_base_scenario_runs() {
    let r = chimera::scenario::load_str(BASE, &[], &common::repo().join("scenarios")).unwrap();
    let rep = chimera::sim::Simulation::summary_only(&r)
        .unwrap()
        .run(&mut |_, _| {})
        .unwrap();
    assert_eq!(rep.summary.workflows.count, 20);
}

/// Mutated predictor files (children pointing back or out of range, features out of range,
/// emptied trees, NaN thresholds) are refused whole on loading, or, when still valid, predict
/// without a panic or an endless walk.
#[test]
fn mutated_predictor_files_are_refused_or_predict() {
    use chimera::predictor::{CallFeatures, LengthPredictor};
    use serde_json::{json, Value};
    let text = std::fs::read_to_string(common::repo().join("models/predictor-qwen2.5-apps-math.json")).unwrap();
    let base: Value = serde_json::from_str(&text).unwrap();
    let hostile = [
        json!(0),
        json!(1),
        json!(u32::MAX),
        json!(-1),
        json!(1e300),
        json!("x"),
        json!(null),
    ];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..60 {
        let mut v = base.clone();
        for _ in 0..1 + next(3) {
            let forest = ["workflow", "request"][next(2)];
            let trees = v[forest]["trees"].as_array_mut().unwrap();
            let t = next(trees.len());
            let nodes = trees[t]["nodes"].as_array_mut().unwrap();
            match next(5) {
                0 => nodes.clear(),
                _ if nodes.is_empty() => {}
                k => {
                    let j = next(nodes.len());
                    if let Some(split) = nodes[j].get_mut("Split") {
                        let field = ["feature", "threshold", "left", "right"][k - 1];
                        split[field] = hostile[next(hostile.len())].clone();
                    } else if let Some(leaf) = nodes[j].get_mut("Leaf") {
                        leaf["targets"] = json!([5.0, 1.0]);
                    }
                }
            }
        }
        let text = serde_json::to_string(&v).unwrap();
        match std::panic::catch_unwind(|| LengthPredictor::from_json(&text)) {
            Err(_) => panic!("from_json panicked"),
            Ok(Err(_)) => refused += 1,
            Ok(Ok(p)) => {
                accepted += 1;
                let f = CallFeatures {
                    prompt_tokens: 500,
                    context_tokens: 100,
                    output_so_far: 50,
                    stage: 1,
                    model_params_b: 7.0,
                    task: Some("math"),
                    text: Some("Find all x such that x^2 = 4."),
                };
                let y = std::panic::catch_unwind(|| p.remaining(&f)).expect("prediction panicked");
                assert!(y.is_finite(), "{y}");
            }
        }
    }
    assert!(refused > 20, "{refused} refused, {accepted} accepted");
}
