//! Architecture Invariant: the same scenario and seed give byte-identical result files; another
//! seed gives different ones.

mod common;
use common::*;

const FILES: [&str; 4] = [
    "requests.parquet",
    "workflows.parquet",
    "engines.parquet",
    "summary.json",
];

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let sets = ["workload.workflows=400", "limits.check_invariants=true"];
    let (a, b, c) = (tmpdir("det-a"), tmpdir("det-b"), tmpdir("det-c"));
    let ra = run(&default_with(&sets), &a);
    let rb = run(&default_with(&sets), &b);
    let rc = run(&default_with(&[sets[0], sets[1], "seed=2"]), &c);
    for f in FILES {
        let (x, y, z) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            std::fs::read(c.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between two runs with the same seed (rerun: chimera run --set workload.workflows=400 --seed 1)");
        assert!(x != z, "{f} is the same for seeds 1 and 2");
    }
    assert_eq!(ra.event_log_hash, rb.event_log_hash);
    assert_ne!(ra.event_log_hash, rc.event_log_hash);
    // The manifest is deterministic too (no wall-clock time in it).
    assert_eq!(
        std::fs::read(a.join("manifest.json")).unwrap(),
        std::fs::read(b.join("manifest.json")).unwrap()
    );
}

#[test]
fn policies_see_the_same_workload_under_one_seed() {
    // Common random numbers: changing the routing policy must not change what arrives.
    let (a, b) = (tmpdir("crn-a"), tmpdir("crn-b"));
    run(&default_with(&["workload.workflows=200"]), &a);
    run(
        &default_with(&["workload.workflows=200", "policy.routing={kind: round_robin}"]),
        &b,
    );
    let wa = a.join("workflows.parquet");
    let wb = b.join("workflows.parquet");
    // Arrivals are the same whatever the policy. (Stage counts are not: plans are
    // counterfactual, so a workflow's stages depend on the model it is routed to.)
    let key = |f: &std::path::Path| {
        let ids = column(f, "workflow_id");
        let arr = column(f, "arrival_ns");
        let mut v: Vec<(u64, i64)> = ids.iter().zip(&arr).map(|(i, t)| (*i as u64, *t as i64)).collect();
        v.sort();
        v
    };
    assert_eq!(key(&wa), key(&wb));
}

/// The simulator's inputs to the policy core, fed to a fresh core through
/// `policy::journal::feed` (the replay's only way into the core), give the simulator's own
/// decisions: the two drivers reach the same object by the same door. (`tests/replay.rs` does
/// the same with a live replay's journal.)
#[test]
fn the_simulators_core_inputs_replayed_into_a_fresh_core_give_its_decisions() {
    use chimera::policy::journal::{feed, CoreInput, JournalDecision};
    use std::sync::Arc;
    let text = std::fs::read_to_string(repo().join("scenarios/chimera-default.yaml")).unwrap();
    let r = chimera::scenario::load_str(
        &text,
        &["workload.workflows=300".to_string()],
        &repo().join("scenarios"),
    )
    .unwrap();
    let plain = chimera::sim::Simulation::summary_only(&r)
        .unwrap()
        .run(&mut |_, _| {})
        .unwrap();
    let rep = chimera::sim::Simulation::summary_only(&r)
        .unwrap()
        .record_core_io()
        .run(&mut |_, _| {})
        .unwrap();
    assert_eq!(plain.event_log_hash, rep.event_log_hash, "recording changes nothing");
    let io = rep.core_io.unwrap();
    let mut src = chimera::factory::open_source(&r, r.scenario.seed).unwrap();
    let mut specs = std::collections::HashMap::new();
    while let Some(w) = src.next_workflow().unwrap() {
        specs.insert(w.id, w);
    }
    let mut core = chimera::factory::build_policy(&r, r.scenario.seed);
    let mut got = Vec::new();
    for input in &io.inputs {
        let oracle = || match input {
            CoreInput::Request { workflow, stage, .. } => {
                Some(Arc::new(chimera::runtime::oracle_of(&specs[workflow], *stage as usize)))
            }
            _ => None,
        };
        got.extend(feed(&mut core, input, oracle).iter().map(JournalDecision::from));
    }
    assert_eq!(got.len(), io.decisions.len());
    assert_eq!(got, io.decisions);
    let requests = io
        .inputs
        .iter()
        .filter(|i| matches!(i, CoreInput::Request { .. }))
        .count();
    let reports = io
        .inputs
        .iter()
        .filter(|i| matches!(i, CoreInput::Report { .. }))
        .count();
    assert!(
        requests > 300 && reports > 1000,
        "{requests} requests, {reports} reports"
    );
    // Chimera routed to both models.
    let engines: std::collections::BTreeSet<u32> = got
        .iter()
        .filter_map(|d| match d {
            JournalDecision::Dispatch { engine, .. } => Some(*engine),
            _ => None,
        })
        .collect();
    assert_eq!(engines.len(), 2);
}

/// A replica that dies (a `faults:` entry) in virtual time: its requests fail and are retried
/// on the other replica, the core takes it out after repeated refused connections, probes it
/// with backoff while it is down, and takes it back once it answers; nothing is lost, and the
/// run stays deterministic and replayable through the journal.
#[test]
fn a_replica_that_dies_is_taken_out_probed_and_taken_back_in_virtual_time() {
    use chimera::policy::journal::{feed, CoreInput, JournalDecision};
    let yaml = "name: fault\nseed: 3\n\
        cluster:\n  engines:\n    - {name: small, model: Qwen2.5-1.5B, gpu: H100-SXM, replicas: 2, calibration: auto}\n\
        workload:\n  kind: synthetic\n  workflows: 240\n  stages: {dist: empirical, values: [1, 2], weights: [0.5, 0.5]}\n\
        \x20 first_prompt_tokens: {dist: lognormal, mean: 500, cv: 0.5, min: 16, max: 2000}\n\
        \x20 stage_prompt_tokens: {dist: lognormal, mean: 50, cv: 0.5, min: 4, max: 200}\n\
        \x20 output_tokens: {dist: lognormal, mean: 200, cv: 0.5, min: 4, max: 800}\n\
        \x20 observation_tokens: {dist: lognormal, mean: 50, cv: 0.5, min: 0, max: 200}\n\
        \x20 tool_delay_ms: {dist: lognormal, mean: 300, cv: 0.5, min: 10, max: 2000}\n\
        \x20 arrivals: {process: poisson, rate_per_s: 6}\n\
        policy:\n  routing: {kind: round_robin}\n  priority: fcfs\n  max_retries: 5\n\
        faults:\n  - {engine: small-r0, at_s: 10, for_s: 15}\n";
    let r = chimera::scenario::load_str(yaml, &[], &repo().join("scenarios")).unwrap();
    let go = || {
        chimera::sim::Simulation::summary_only(&r)
            .unwrap()
            .record_core_io()
            .run(&mut |_, _| {})
            .unwrap()
    };
    let (a, b) = (go(), go());
    assert_eq!(a.event_log_hash, b.event_log_hash);
    assert_eq!(a.summary.workflows.count, 240);
    assert_eq!(
        a.summary.workflows.failed, 0,
        "every lost request was retried elsewhere"
    );
    let io = a.core_io.unwrap();
    // Walk the journal: lost attempts at 10 s, refused connections until the core takes the
    // replica out, then no dispatch to it until a probe finds it up (at 25 s or later).
    let s = 1_000_000_000i64;
    let (mut broke, mut refused, mut probes_down, mut probes_up) = (0, 0, 0, 0);
    let mut out_since: Option<i64> = None;
    let mut dispatched_while_out = 0;
    let mut dispatched_after = 0;
    let mut core = chimera::factory::build_policy(&r, r.scenario.seed);
    let mut k = 0;
    for input in &io.inputs {
        let t = match input {
            CoreInput::Failed { t, unreachable, .. } => {
                if *unreachable {
                    refused += 1;
                } else {
                    broke += 1;
                }
                *t
            }
            CoreInput::Probe { t, engine: 0, healthy } => {
                if *healthy {
                    assert!(*t >= 25 * s, "up again only after the fault window");
                    probes_up += 1;
                    out_since = None;
                } else {
                    assert!(*t < 25 * s);
                    probes_down += 1;
                }
                *t
            }
            _ => 0,
        };
        let _ = t;
        let decisions: Vec<JournalDecision> = feed(&mut core, input, || None)
            .iter()
            .map(JournalDecision::from)
            .collect();
        for d in &decisions {
            assert_eq!(d, &io.decisions[k], "the journal replays into a fresh core");
            k += 1;
            match d {
                JournalDecision::Probe { engine: 0, not_before } if out_since.is_none() => {
                    out_since = Some(*not_before)
                }
                JournalDecision::Dispatch { engine: 0, .. } if out_since.is_some() => dispatched_while_out += 1,
                JournalDecision::Dispatch { engine: 0, .. } if probes_up > 0 => dispatched_after += 1,
                _ => {}
            }
        }
    }
    assert_eq!(k, io.decisions.len());
    assert!(broke > 0, "the crash broke running requests");
    assert_eq!(refused, 3, "three refused connections take the replica out");
    assert!(
        probes_down >= 2 && probes_up == 1,
        "{probes_down} failed probes, {probes_up} healthy"
    );
    assert_eq!(dispatched_while_out, 0);
    assert!(dispatched_after > 10, "back in routing: {dispatched_after}");
}
