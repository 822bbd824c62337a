//! Every policy of the scenario language runs the default scenario to completion with requests
//! conserved (the loop checks conservation at the end), and the Chimera balancer with an oracle
//! router buys accuracy over a blind split.

mod common;
use chimera::trace::{self, FittedParams, Task};
use common::*;
use std::path::Path;
use std::sync::Arc;

/// A small predictor and router trained here, so the test needs no shipped model files.
fn model_files(dir: &Path) {
    let t = trace::gen::generate(
        FittedParams::embedded(),
        Task::Math,
        &["Qwen2.5-1.5B".into(), "Qwen2.5-7B".into()],
        150,
        9,
        None,
    )
    .unwrap();
    let mut t2 = trace::gen::generate(
        FittedParams::embedded(),
        Task::Apps,
        &["Qwen2.5-1.5B".into(), "Qwen2.5-7B".into()],
        150,
        10,
        None,
    )
    .unwrap();
    let mut all = t.clone();
    for w in t2.workflows.drain(..) {
        let mut w = w;
        w.id += 1000;
        all.workflows.push(w);
    }
    let cfg = chimera::predictor::qrf::ForestConfig {
        trees: 8,
        sample_size: 1000,
        ..Default::default()
    };
    let p = chimera::predictor::LengthPredictor::train(&all, 0.5, &cfg, serde_json::json!({"kind": "test"}));
    std::fs::write(dir.join("predictor.json"), serde_json::to_string(&p).unwrap()).unwrap();
    // A router trained on made-up texts whose words carry the outcome.
    let texts: Vec<String> = (0..80)
        .map(|i| {
            if i % 3 == 0 {
                format!("easy sum of {i} and two")
            } else {
                format!("hard integral number {i}")
            }
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let labels: Vec<Vec<bool>> = (0..80).map(|i| vec![i % 3 == 0, i % 3 == 0 || i % 3 == 1]).collect();
    let m = chimera::router::train(
        &refs,
        &labels,
        &["Qwen2.5-1.5B".into(), "Qwen2.5-7B".into()],
        &Default::default(),
        &Default::default(),
        serde_json::json!({}),
    );
    std::fs::write(dir.join("router.json"), serde_json::to_string(&m).unwrap()).unwrap();
    let r = chimera::router::Router::new(m);
    let easy = r.predict("easy sum of 5 and two");
    let hard = r.predict("hard integral number 7");
    assert!(easy[0] > hard[0], "the router learnt the words: {easy:?} {hard:?}");
    let _ = Arc::new(r);
}

#[test]
fn every_policy_runs_the_default_scenario_with_requests_conserved() {
    let dir = tmpdir("policies");
    model_files(&dir);
    let stjf = "policy.priority=stjf";
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("vllm fcfs, fixed fraction", vec![]),
        (
            "round robin, workflow order, priority engines",
            vec![
                "policy.routing={kind: round_robin}".into(),
                "policy.priority=workflow_order".into(),
                "cluster.engines[0].scheduling=priority".into(),
                "cluster.engines[1].scheduling=priority".into(),
            ],
        ),
        (
            "least outstanding, middleware queue",
            vec![
                "policy.routing={kind: least_outstanding}".into(),
                "policy.max_in_flight_per_engine=8".into(),
            ],
        ),
        (
            "chimera, oracle router and lengths",
            vec![
                "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 1.0}, min_confidence_gain: 0.1}"
                    .into(),
                "policy.length={kind: oracle}".into(),
                "policy.confidence={kind: oracle}".into(),
                stjf.into(),
                "cluster.engines[1].scheduling=priority".into(),
            ],
        ),
        (
            "chimera, noisy oracle, LTR-style aging engines",
            vec![
                "policy.routing={kind: chimera, slack: {kind: additive, seconds: 5}}".into(),
                "policy.length={kind: oracle}".into(),
                "policy.confidence={kind: noisy_oracle, auc: 0.7}".into(),
                stjf.into(),
                "cluster.engines[0].scheduling={priority_aging: {starvation_steps: 100, quantum_steps: 20}}".into(),
                "cluster.engines[1].scheduling={priority_aging: {starvation_steps: 100, quantum_steps: 20}}".into(),
            ],
        ),
        (
            "chimera, qrf and router files, middleware aging",
            vec![
                "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.5}}".into(),
                "policy.length={kind: qrf, path: predictor.json}".into(),
                "policy.confidence={kind: router, path: router.json}".into(),
                stjf.into(),
                "policy.max_in_flight_per_engine=16".into(),
                "policy.middleware_starvation=50".into(),
            ],
        ),
        (
            "fixed fraction, SJF (LTR) with aging",
            vec![
                "policy.length={kind: qrf, path: predictor.json, quantile: 0.7}".into(),
                "policy.priority=sjf".into(),
                "cluster.engines[1].scheduling={priority_aging: {starvation_steps: 50, quantum_steps: 10}}".into(),
            ],
        ),
        (
            "chimera, prior confidences",
            vec![
                "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.3}}".into(),
                "policy.length={kind: qrf, path: predictor.json}".into(),
                "policy.confidence={kind: prior, accuracy: {Qwen2.5-1.5B: 0.2, Qwen2.5-7B: 0.4}}".into(),
            ],
        ),
    ];
    for (name, sets) in cases {
        let mut sets = sets;
        sets.push("workload.workflows=250".into());
        sets.push("limits.check_invariants=true".into());
        let r = chimera::scenario::load_str(chimera::scenario::DEFAULT_SCENARIO, &sets, &dir)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = tmpdir(&format!("policies-out-{}", name.replace([' ', ','], "-")));
        let rep =
            chimera::run::run_to_dir(&r, &out, &sets, None, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(rep.summary.workflows.count, 250, "{name}");
        assert_eq!(rep.summary.workflows.failed, 0, "{name}");
        // The confidence model's quality as realised in the run: the oracle ranks perfectly; the
        // noisy oracle in between; a text router on workflows without text, and fixed priors,
        // give every workflow one confidence (all ties: 0.5); no confidence model, no figure.
        let auc = rep.summary.confidence.as_ref().and_then(|c| c.mean_auc);
        let want: Option<(f64, f64)> = if name.contains("oracle router") {
            Some((1.0, 1.0))
        } else if name.contains("noisy oracle") {
            Some((0.6, 0.9))
        } else if name.contains("router files") || name.contains("prior confidences") {
            Some((0.5, 0.5))
        } else {
            None
        };
        match (want, auc) {
            (None, None) => {}
            (Some((lo, hi)), Some(a)) => assert!((lo..=hi).contains(&a), "{name}: realised AUC {a}"),
            _ => panic!("{name}: realised AUC {auc:?}, expected {want:?}"),
        }
    }
}

#[test]
fn the_oracle_router_buys_accuracy_over_a_blind_split() {
    let dir = tmpdir("chimera-vs-blind");
    let base = [
        "workload.workflows=600".to_string(),
        "workload.arrivals.rate_per_s=1.0".to_string(),
    ];
    let blind = run(
        &chimera::scenario::load_str(chimera::scenario::DEFAULT_SCENARIO, &base, &dir).unwrap(),
        &tmpdir("blind"),
    );
    let mut sets = base.to_vec();
    sets.extend([
        "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 3.0}, min_confidence_gain: 0.5}"
            .to_string(),
        "policy.length={kind: oracle}".to_string(),
        "policy.confidence={kind: oracle}".to_string(),
    ]);
    let chim = run(
        &chimera::scenario::load_str(chimera::scenario::DEFAULT_SCENARIO, &sets, &dir).unwrap(),
        &tmpdir("chim"),
    );
    let (a, b) = (
        blind.summary.accuracy.unwrap().accuracy,
        chim.summary.accuracy.unwrap().accuracy,
    );
    assert!(
        b > a + 0.05,
        "chimera with the oracle router {b:.3} vs blind 50/50 {a:.3}"
    );
}

#[test]
fn policy_errors_name_what_is_missing() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.5}}"],
            "policy.length",
        ),
        (
            &[
                "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.5}}",
                "policy.length={kind: oracle}",
            ],
            "policy.confidence",
        ),
        (&["policy.priority=stjf"], "policy.length"),
        (&["policy.length={kind: qrf, path: nope.json}"], "policy.length.path"),
        (
            &["policy.confidence={kind: noisy_oracle, auc: 1.5}"],
            "policy.confidence.auc",
        ),
        (
            &[
                "policy.routing={kind: chimera, slack: {kind: sideways, value: 1}}",
                "policy.length={kind: oracle}",
                "policy.confidence={kind: oracle}",
            ],
            "unknown variant `sideways`",
        ),
    ];
    for (sets, want) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = chimera::scenario::load_str(chimera::scenario::DEFAULT_SCENARIO, &sets, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{sets:?}: `{e}` should mention `{want}`");
    }
}
