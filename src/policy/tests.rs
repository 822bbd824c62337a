//! The policy core as a library: inputs in, decisions out, no clock.

use super::baselines::*;
use super::*;
use crate::rng::stream;

fn engines(models: &[&str]) -> Vec<EngineInfo> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| EngineInfo {
            id: i as u32,
            name: format!("e{i}"),
            model: Arc::from(*m),
            gpu: "RTX-A6000".into(),
            decode_tokens_per_s: 1000.0,
        })
        .collect()
}

fn req(request: u64, workflow: u64, stage: u32) -> RequestInfo {
    RequestInfo {
        request,
        workflow,
        stage,
        prompt_tokens: 100,
        context_tokens: 0,
        workflow_output_so_far: 0,
        text: None,
        task: None,
        oracle: None,
    }
}

fn drain(core: &mut PolicyCore) -> Vec<Decision> {
    std::iter::from_fn(|| core.poll_decision()).collect()
}

fn engine_of(d: &Decision) -> EngineId {
    match d {
        Decision::Dispatch { engine, .. } => *engine,
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

#[test]
fn fixed_fraction_sends_the_asked_share_and_is_seeded() {
    let run = |seed| {
        let router = FixedFraction::new(&[("small".into(), 0.3), ("big".into(), 0.7)], stream(seed, "routing"));
        let mut core = PolicyCore::new(
            engines(&["small", "big"]),
            Box::new(router),
            Box::new(Fcfs),
            CoreOptions::default(),
        );
        (0..10_000u64)
            .map(|w| {
                core.handle_request(0, req(w, w, 0));
                let e = engine_of(&drain(&mut core)[0]);
                core.handle_finished(0, w, 1);
                core.handle_workflow_done(0, w);
                e
            })
            .collect::<Vec<_>>()
    };
    let a = run(1);
    let share_small = a.iter().filter(|&&e| e == 0).count() as f64 / a.len() as f64;
    assert!((share_small - 0.3).abs() < 0.015, "{share_small}");
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
}

#[test]
fn round_robin_cycles_and_least_outstanding_balances() {
    let mut rr = PolicyCore::new(
        engines(&["m", "m", "m"]),
        Box::new(RoundRobin::default()),
        Box::new(Fcfs),
        CoreOptions::default(),
    );
    let picks: Vec<EngineId> = (0..6)
        .map(|w| {
            rr.handle_request(0, req(w, w, 0));
            engine_of(&drain(&mut rr)[0])
        })
        .collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);

    let mut lo = PolicyCore::new(
        engines(&["m", "m"]),
        Box::new(LeastOutstanding),
        Box::new(Fcfs),
        CoreOptions::default(),
    );
    let table = [
        // (action, expected engine of the new request)
        (None, 0),    // both idle: lowest id
        (None, 1),    // engine 0 has one
        (None, 0),    // one each: lowest id
        (Some(1), 1), // request 1 (on engine 1) finished: engine 1 has none
    ];
    for (i, (finish, want)) in table.iter().enumerate() {
        if let Some(r) = finish {
            lo.handle_finished(0, *r, 1);
        }
        lo.handle_request(0, req(i as u64, i as u64, 0));
        assert_eq!(engine_of(&drain(&mut lo)[0]), *want, "step {i}");
    }
}

#[test]
fn later_stages_stay_on_the_workflows_model() {
    let mut core = PolicyCore::new(
        engines(&["small", "big", "big"]),
        Box::new(RoundRobin::default()),
        Box::new(Fcfs),
        CoreOptions::default(),
    );
    core.handle_request(0, req(0, 7, 0)); // round robin: engine 0 (small)
    core.handle_request(0, req(1, 8, 0)); // engine 1 (big)
    drain(&mut core);
    core.handle_finished(5, 0, 10);
    core.handle_finished(5, 1, 10);
    for k in 0..5 {
        core.handle_request(10, req(100 + k, 7, 1));
        assert_eq!(engine_of(&drain(&mut core)[0]), 0);
        core.handle_finished(11, 100 + k, 1);
    }
    // Workflow 8 is on "big": replicas 1 and 2 are both candidates; load one of them.
    core.handle_request(10, req(200, 99, 0)); // round robin: engine 2
    drain(&mut core);
    core.handle_request(10, req(201, 8, 1));
    assert_eq!(engine_of(&drain(&mut core)[0]), 1);
}

#[test]
fn the_middleware_queue_holds_and_releases_by_priority() {
    let opts = CoreOptions {
        max_in_flight_per_engine: Some(1),
        ..CoreOptions::default()
    };
    let mut core = PolicyCore::new(
        engines(&["m"]),
        Box::new(LeastOutstanding),
        Box::new(WorkflowOrder),
        opts,
    );
    for (r, w) in [(0, 5), (1, 9), (2, 3)] {
        core.handle_request(0, req(r, w, 0));
    }
    let d = drain(&mut core);
    assert_eq!(d.len(), 1, "only one in flight at a time: {d:?}");
    assert_eq!(core.load()[0].held, 2);
    core.handle_finished(10, 0, 1);
    // Workflow 3 (request 2) has the lower priority value: it goes before workflow 9.
    match &drain(&mut core)[..] {
        [Decision::Dispatch {
            request: 2,
            not_before: 10,
            ..
        }] => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn failures_are_retried_elsewhere_then_abandoned() {
    let opts = CoreOptions {
        max_retries: 2,
        retry_backoff_ns: 100,
        ..CoreOptions::default()
    };
    let mut core = PolicyCore::new(
        engines(&["m", "m"]),
        Box::new(RoundRobin::default()),
        Box::new(Fcfs),
        opts,
    );
    core.handle_request(0, req(0, 0, 0));
    assert_eq!(engine_of(&drain(&mut core)[0]), 0);
    core.handle_failed(1_000, 0, FailureKind::Transient("connection refused".into()));
    match &drain(&mut core)[..] {
        [Decision::Dispatch {
            engine: 1,
            not_before: 1_100,
            ..
        }] => {}
        other => panic!("first retry on the other replica after 100 ns: {other:?}"),
    }
    core.handle_failed(2_000, 0, FailureKind::Transient("timeout".into()));
    match &drain(&mut core)[..] {
        [Decision::Dispatch {
            engine: 0,
            not_before: 2_200,
            ..
        }] => {}
        other => panic!("second retry, doubled backoff: {other:?}"),
    }
    core.handle_failed(3_000, 0, FailureKind::Transient("HTTP 503".into()));
    match &drain(&mut core)[..] {
        [Decision::Abandon { request: 0, reason }] => assert!(reason.contains("HTTP 503")),
        other => panic!("{other:?}"),
    }
    assert_eq!(core.tracked(), 0);
    assert!(core.load().iter().all(|l| l.in_flight == 0));
    // A rejection is never retried.
    core.handle_request(4_000, req(1, 1, 0));
    drain(&mut core);
    core.handle_failed(4_001, 1, FailureKind::Rejected("prompt too long".into()));
    assert!(matches!(&drain(&mut core)[..], [Decision::Abandon { request: 1, .. }]));
}
