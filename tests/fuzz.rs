//! A fuzz harness that stays (issue 15): generated hostile overrides thrown at the scenario
//! loader and at short runs of the scenarios they make, and mutated files thrown at every
//! loader a user feeds (calibrations, predictor and router files, traces, Azure CSVs, request
//! files, a sweep's points.jsonl). Whatever the input: no panic, bounded time (every run is
//! capped by `limits.max_events`), and a refused input is bad input (exit code 2) with a
//! message that names a field or a file and says it in plain words (no Rust type names). A
//! bounded number of cases runs in CI (`PROPTEST_CASES` raises the scenario cases).

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
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96), .. ProptestConfig::default() })]

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
                prop_assert!(plain(&m), "{:?}: names a Rust type: {}", sets, m);
            }
        }
    }
}

/// Whether a message is free of the program's words: Rust type names, serde and YAML options.
fn plain(m: &str) -> bool {
    const WORDS: &[&str] = &[
        "expected struct ",
        "expected enum ",
        "tagged enum ",
        "expected u64",
        "expected u32",
        "expected u16",
        "expected u8",
        "expected usize",
        "expected i64",
        "expected i32",
        "expected f64",
        "expected f32",
        "DuplicateKeyPolicy",
        "::",
        "Option<",
        "Vec<",
    ];
    !WORDS.iter().any(|w| m.contains(w))
}

/// How many times the default number of file mutations to try (`CHIMERA_FUZZ_SCALE`, 1 in CI).
fn scale() -> usize {
    std::env::var("CHIMERA_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// A small deterministic generator (xorshift), so that the file harnesses need no seed file.
struct Xs(u64);
impl Xs {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Values a mutated JSON field takes.
fn hostile_json() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!(0),
        json!(-1),
        json!(u32::MAX),
        json!(u64::MAX),
        json!(1e308),
        json!(-1e308),
        json!(1e-300),
        json!("x"),
        json!(""),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!([1, 2, 3]),
        json!({"kind": "measured"}),
    ]
}

/// Replace, remove or add one field somewhere in a JSON tree.
fn mutate_json(v: &mut serde_json::Value, rng: &mut Xs, hostile: &[serde_json::Value]) {
    use serde_json::Value;
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = keys[rng.below(keys.len())].clone();
            match rng.below(6) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    m.insert("surprise".into(), hostile[rng.below(hostile.len())].clone());
                }
                2 => {
                    m.insert(k, hostile[rng.below(hostile.len())].clone());
                }
                _ => mutate_json(m.get_mut(&k).unwrap(), rng, hostile),
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            match rng.below(5) {
                0 => {
                    a.remove(i);
                }
                1 => a[i] = hostile[rng.below(hostile.len())].clone(),
                _ => mutate_json(&mut a[i], rng, hostile),
            }
        }
        leaf => *leaf = hostile[rng.below(hostile.len())].clone(),
    }
}

/// Run `f` and fail on a panic; a refusal must be exit code 2 in plain words naming `origin`.
fn refused_cleanly<T>(what: &str, origin: &str, f: impl FnOnce() -> chimera::Result<T>) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(_) => panic!("{what}: panicked"),
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            let m = e.to_string();
            assert_eq!(e.exit_code(), 2, "{what}: {m}");
            assert!(m.contains(origin), "{what}: the message does not name {origin}: {m}");
            assert!(plain(&m), "{what}: names a Rust type: {m}");
            None
        }
    }
}

#[test]
fn mutated_calibrations_are_refused_or_valid() {
    use chimera::hw::calibration::{Calibration, BUILTIN};
    let hostile = hostile_json();
    let mut rng = Xs(0x9e37_79b9_7f4a_7c15);
    let (mut refused, mut accepted) = (0, 0);
    for (name, text) in BUILTIN {
        let base = chimera::scenario::yaml::parse_tree(text).unwrap();
        for _ in 0..25 * scale() {
            let mut v = base.clone();
            for _ in 0..1 + rng.below(2) {
                mutate_json(&mut v, &mut rng, &hostile);
            }
            let text = serde_json::to_string(&v).unwrap();
            match refused_cleanly(name, "calibration mutated.yaml", || {
                Calibration::parse(&text, "mutated.yaml")
            }) {
                None => refused += 1,
                Some(c) => {
                    accepted += 1;
                    c.coefficients.validate().unwrap();
                }
            }
        }
    }
    assert!(refused > 60, "{refused} refused, {accepted} accepted");
}

#[test]
fn mutated_router_files_are_refused_or_predict() {
    use chimera::router::{train, FeatureConfig, Router, RouterModel, TrainConfig};
    let texts = [
        "add two numbers",
        "prove the theorem about primes",
        "sum a list",
        "integrate by parts",
        "sort an array",
    ];
    let labels = vec![
        vec![true, true],
        vec![false, true],
        vec![true, true],
        vec![false, false],
        vec![true, true],
    ];
    let cfg = FeatureConfig {
        buckets_log2: 12,
        ..FeatureConfig::default()
    };
    let m = train(
        &texts,
        &labels,
        &["a".into(), "b".into()],
        &cfg,
        &TrainConfig::default(),
        serde_json::Value::Null,
    );
    let base = serde_json::to_value(&m).unwrap();
    let hostile = hostile_json();
    let mut rng = Xs(0x2545_f491_4f6c_dd1d);
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..120 * scale() {
        let mut v = base.clone();
        mutate_json(&mut v, &mut rng, &hostile);
        let text = serde_json::to_string(&v).unwrap();
        let r = catch_unwind(|| RouterModel::from_json(&text)).expect("from_json panicked");
        match r {
            Err(e) => {
                refused += 1;
                assert!(plain(&e), "{e}");
            }
            Ok(m) => {
                accepted += 1;
                let p = catch_unwind(|| Router::new(m).predict("prove that 2 + 2 = 4")).expect("predict panicked");
                assert!(p.iter().all(|x| (0.0..=1.0).contains(x)), "{p:?}");
            }
        }
    }
    assert!(refused > 40, "{refused} refused, {accepted} accepted");
}

/// Flip, drop or insert bytes of a file's text.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut Xs) {
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            return;
        }
        let i = rng.below(b.len());
        match rng.below(4) {
            0 => b[i] = rng.below(256) as u8,
            1 => {
                b.remove(i);
            }
            2 => b.insert(i, b"0,-9e\"\n\xff"[rng.below(8)]),
            _ => b.truncate(i),
        }
    }
}

#[test]
fn mutated_traces_are_refused_or_read() {
    let dir = common::tmpdir("fuzz-traces");
    let mut t = chimera::trace::read_trace(&common::repo().join("traces/math-qwen2.5-1.5b-3b-7b-14b.parquet")).unwrap();
    t.workflows.truncate(6);
    let good = dir.join("good.parquet");
    chimera::trace::write_trace(&good, &t).unwrap();
    let base = std::fs::read(&good).unwrap();
    let mut rng = Xs(0x51_7cc1_b727_220a);
    let bad = dir.join("bad.parquet");
    let origin = bad.display().to_string();
    let mut refused = 0;
    for k in 0..150 * scale() {
        let mut b = base.clone();
        mutate_bytes(&mut b, &mut rng);
        std::fs::write(&bad, &b).unwrap();
        if refused_cleanly(&format!("trace mutation {k}"), &origin, || {
            chimera::trace::read_trace(&bad)
        })
        .is_none()
        {
            refused += 1;
        }
    }
    assert!(refused > 100, "{refused} refused");
}

#[test]
fn mutated_csv_files_are_refused_or_read() {
    let dir = common::tmpdir("fuzz-csv");
    let azure = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:51.4163180,879,29\n";
    let requests = "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens\n0.0,120,30,1,64\n0.5,80,10,1,64\n1.25,300,7,,\n";
    let mut rng = Xs(0x8f1b_bcdc_ab1e_f00d);
    for (name, text) in [("azure.csv", azure), ("requests.csv", requests)] {
        let p = dir.join(name);
        let origin = p.display().to_string();
        for k in 0..150 * scale() {
            let mut b = text.as_bytes().to_vec();
            mutate_bytes(&mut b, &mut rng);
            std::fs::write(&p, &b).unwrap();
            let what = format!("{name} mutation {k}");
            if name == "azure.csv" {
                refused_cleanly(&what, &origin, || {
                    let mut r = chimera::workload::azure::AzureReader::open(&p)?;
                    while r.next_row()?.is_some() {}
                    Ok(())
                });
            } else {
                refused_cleanly(&what, &origin, || {
                    chimera::workload::serving::read_trace(&p).map(|_| ())
                });
            }
        }
    }
}

#[test]
fn a_mutated_points_file_is_refused_or_resumed() {
    use chimera::sweep::{GridAxis, RunOptions, Series, SweepSpec};
    let dir = common::tmpdir("fuzz-points");
    let spec = SweepSpec {
        scenario: None,
        sets: vec!["workload.workflows=20".into()],
        seeds: 1,
        series: vec![Series {
            label: "s".into(),
            sets: vec![],
            grid: vec![GridAxis {
                path: "policy.max_retries".into(),
                values: vec!["1".into(), "2".into(), "3".into()],
            }],
        }],
    };
    let opts = |resume| RunOptions {
        jobs: 1,
        shard: None,
        resume,
    };
    let d = dir.join("s");
    chimera::sweep::run(&spec, &d, &opts(false), &mut |_, _| {}).unwrap();
    let jsonl = d.join("points.jsonl");
    let base = std::fs::read(&jsonl).unwrap();
    let origin = jsonl.display().to_string();
    let mut rng = Xs(0x1234_5678_9abc_def1);
    let (mut refused, mut resumed) = (0, 0);
    for k in 0..40 {
        let mut b = base.clone();
        mutate_bytes(&mut b, &mut rng);
        std::fs::write(&jsonl, &b).unwrap();
        match refused_cleanly(&format!("points mutation {k}"), &origin, || {
            chimera::sweep::run(&spec, &d, &opts(true), &mut |_, _| {})
        }) {
            None => refused += 1,
            Some(rep) => {
                // Accepted only with every kept record intact: the table is the original one.
                resumed += 1;
                assert_eq!(rep.total, 3);
            }
        }
    }
    assert!(refused > 10, "{refused} refused, {resumed} resumed");
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
