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

mod chimera_parts {
    use super::*;
    use crate::policy::chimera::*;

    fn with_oracle(request: u64, workflow: u64, call: u32, remaining: u64) -> RequestInfo {
        let mut r = req(request, workflow, 0);
        r.oracle = Some(Arc::new(Oracle {
            output_tokens: vec![(Arc::from("m"), call)],
            remaining_workflow_tokens: vec![(Arc::from("m"), remaining)],
            success: vec![(Arc::from("m"), Some(true))],
        }));
        r
    }

    fn priorities(prio: Box<dyn Prioritizer>) -> (i64, i64) {
        let mut core = PolicyCore::new(
            engines(&["m"]),
            Box::new(RoundRobin::default()),
            prio,
            CoreOptions::default(),
        )
        .with_length_model(Box::new(OracleLength));
        // Request 0: a short call in a long workflow; request 1: a long call that ends its workflow.
        core.handle_request(0, with_oracle(0, 0, 50, 5_000));
        core.handle_request(0, with_oracle(1, 1, 800, 800));
        let d = drain(&mut core);
        let p = |k: usize| match &d[k] {
            Decision::Dispatch { priority, .. } => *priority,
            other => panic!("{other:?}"),
        };
        (p(0), p(1))
    }

    #[test]
    fn stjf_orders_by_total_remaining_work_and_sjf_by_the_current_call() {
        let (a, b) = priorities(Box::new(Stjf));
        assert!(b < a, "STJF runs the workflow with less total work left first: {a} {b}");
        let (a, b) = priorities(Box::new(Sjf));
        assert!(a < b, "SJF runs the shorter call first: {a} {b}");
    }

    fn view<'a>(engines: &'a [EngineInfo], load: &'a [EngineLoad], rem: &'a [f64], conf: &'a [f64]) -> ClusterView<'a> {
        ClusterView {
            engines,
            load,
            predicted_remaining: rem,
            confidence: conf,
        }
    }

    #[test]
    fn the_balancer_picks_the_fastest_with_zero_slack_and_is_monotone_in_load() {
        let mut es = engines(&["small", "big"]);
        es[0].decode_tokens_per_s = 2000.0;
        es[1].decode_tokens_per_s = 500.0;
        let rem = [300.0, 300.0];
        let conf = [0.3, 0.7];
        let mut router = ChimeraRouter {
            slack: Slack::Multiplicative { value: 0.0 },
            delta: 0.1,
        };
        let load = vec![EngineLoad::default(); 2];
        let r0 = req(0, 0, 0);
        assert_eq!(
            router.route(0, &r0, &view(&es, &load, &rem, &conf)),
            0,
            "zero slack: the fastest"
        );
        // With slack, the more confident big model is chosen until its load makes it too slow;
        // more load on it never brings it back.
        let mut generous = ChimeraRouter {
            slack: Slack::Multiplicative { value: 5.0 },
            delta: 0.1,
        };
        let mut last_big = true;
        for v in (0..60).map(|k| k as f64 * 500.0) {
            let mut load = vec![EngineLoad::default(); 2];
            load[1].predicted_volume = v;
            let big = generous.route(0, &r0, &view(&es, &load, &rem, &conf)) == 1;
            assert!(
                !big || last_big,
                "more load on the big model sent it a workflow it had refused at less load (V={v})"
            );
            last_big = big;
        }
        assert!(!last_big, "enough load sends work to the small model");
        // A confidence gain below delta keeps the fastest.
        let close = [0.65, 0.7];
        assert_eq!(generous.route(0, &r0, &view(&es, &load, &rem, &close)), 0);
        // Additive slack works in seconds.
        let mut add = ChimeraRouter {
            slack: Slack::Additive { seconds: 0.5 },
            delta: 0.1,
        };
        assert_eq!(
            add.route(0, &r0, &view(&es, &load, &rem, &conf)),
            1,
            "0.6 s vs 0.15 s: within 0.5 s"
        );
    }

    #[test]
    fn the_activity_monitor_charges_and_releases_predicted_volume() {
        let mut core = PolicyCore::new(
            engines(&["m"]),
            Box::new(RoundRobin::default()),
            Box::new(Stjf),
            CoreOptions::default(),
        )
        .with_length_model(Box::new(OracleLength));
        core.handle_request(0, with_oracle(0, 0, 50, 700));
        core.handle_request(0, with_oracle(1, 1, 50, 300));
        drain(&mut core);
        assert_eq!(core.load()[0].predicted_volume, 1000.0);
        core.handle_finished(1, 0, 50);
        assert_eq!(core.load()[0].predicted_volume, 300.0);
        core.handle_failed(2, 1, FailureKind::Rejected("x".into()));
        assert_eq!(core.load()[0].predicted_volume, 0.0);
    }

    #[test]
    fn noisy_oracle_reaches_its_target_auc() {
        use crate::router::metrics::auc;
        for target in [0.6, 0.75, 0.9] {
            let mut o = NoisyOracle::new(target, crate::rng::stream(1, "t"));
            let (mut s, mut y) = (vec![], vec![]);
            for i in 0..20_000u64 {
                let solved = i % 3 == 0;
                let mut r = req(i, i, 0);
                r.oracle = Some(Arc::new(Oracle {
                    output_tokens: vec![],
                    remaining_workflow_tokens: vec![],
                    success: vec![(Arc::from("m"), Some(solved))],
                }));
                s.push(o.confidence(&r, "m"));
                y.push(solved);
            }
            let a = auc(&s, &y).unwrap();
            // Calibrated: the mean confidence is the base rate (a third solved).
            let mean = s.iter().sum::<f64>() / s.len() as f64;
            assert!(
                (mean - 1.0 / 3.0).abs() < 0.03,
                "target {target}: mean confidence {mean}"
            );
            assert!((a - target).abs() < 0.015, "target {target}, got {a}");
        }
    }

    #[test]
    fn middleware_aging_promotes_a_request_passed_over_s_times() {
        let opts = CoreOptions {
            max_in_flight_per_engine: Some(1),
            middleware_starvation: Some(2),
            ..CoreOptions::default()
        };
        let mut core = PolicyCore::new(engines(&["m"]), Box::new(RoundRobin::default()), Box::new(Stjf), opts)
            .with_length_model(Box::new(OracleLength));
        core.handle_request(0, with_oracle(0, 0, 10, 10)); // dispatched at once
        core.handle_request(0, with_oracle(1, 1, 10, 9_000)); // long: would wait behind short ones
        drain(&mut core);
        let mut order = vec![];
        let mut running = 0;
        for k in 0..3u64 {
            // A fresh short request arrives before each slot frees up.
            core.handle_request(k as i64, with_oracle(2 + k, 2 + k, 10, 10));
            core.handle_finished(k as i64 + 1, running, 10);
            match &drain(&mut core)[..] {
                [Decision::Dispatch { request, .. }] => {
                    order.push(*request);
                    running = *request;
                }
                other => panic!("{other:?}"),
            }
        }
        // Fresh short ones go first twice; then the long one, passed over twice, is promoted.
        assert_eq!(order[..3], [2, 3, 1], "{order:?}");
    }
}

/// A router that always picks one engine.
struct Always(EngineId);

impl Router for Always {
    fn name(&self) -> &'static str {
        "always"
    }
    fn route(&mut self, _: Nanos, _: &RequestInfo, _: &ClusterView) -> EngineId {
        self.0
    }
}

#[test]
fn an_unreachable_engine_is_taken_out_probed_with_backoff_and_taken_back() {
    let s = 1_000_000_000;
    let mut core = PolicyCore::new(
        engines(&["m", "m"]),
        Box::new(Always(0)),
        Box::new(Fcfs),
        CoreOptions {
            max_retries: 10,
            retry_backoff_ns: 0,
            ..CoreOptions::default()
        },
    );
    let unreachable = || FailureKind::Unreachable("refused".into());
    // Two failures to connect are not enough, and a request finished there resets the count.
    for r in 0..2 {
        core.handle_request(0, req(r, r, 0));
        assert_eq!(engine_of(&drain(&mut core)[0]), 0);
        core.handle_failed(0, r, unreachable());
        assert_eq!(engine_of(&drain(&mut core)[0]), 1, "retried on the other replica");
        core.handle_finished(0, r, 1);
    }
    core.handle_request(0, req(2, 2, 0));
    let _ = drain(&mut core);
    core.handle_finished(0, 2, 1);
    assert_eq!(core.health()[0].consecutive_unreachable, 0);
    // Three in a row take engine 0 out, with a probe a second later.
    let mut probes = Vec::new();
    for r in 10..13 {
        core.handle_request(s, req(r, r, 0));
        assert_eq!(engine_of(&drain(&mut core)[0]), 0);
        core.handle_failed(s, r, unreachable());
        for d in drain(&mut core) {
            match d {
                Decision::Probe { engine, not_before } => probes.push((engine, not_before)),
                d => assert_eq!(engine_of(&d), 1),
            }
        }
    }
    assert_eq!(probes, vec![(0, 2 * s)]);
    assert!(!core.health()[0].up);
    // Out of routing: the router still picks 0, new workflows go to engine 1.
    for r in 20..30 {
        core.handle_request(2 * s, req(r, r, 0));
        assert_eq!(engine_of(&drain(&mut core)[0]), 1);
    }
    // Failed probes back off (2 s, 4 s, then capped at 8 s); a healthy answer takes it back.
    let mut t = 2 * s;
    for wait in [2, 4, 8, 8] {
        core.handle_probe(t, 0, false);
        assert_eq!(
            drain(&mut core),
            vec![Decision::Probe {
                engine: 0,
                not_before: t + wait * s
            }]
        );
        t += wait * s;
    }
    core.handle_probe(t, 0, true);
    assert!(drain(&mut core).is_empty() && core.health()[0].up);
    core.handle_request(t, req(40, 40, 0));
    assert_eq!(engine_of(&drain(&mut core)[0]), 0, "back in routing");
}

#[test]
fn the_journal_replays_probes_and_unreachable_failures() {
    use super::journal::{feed, CoreInput};
    let build = || {
        PolicyCore::new(
            engines(&["m", "m"]),
            Box::new(RoundRobin::default()),
            Box::new(Fcfs),
            CoreOptions {
                down_after_failures: 1,
                ..CoreOptions::default()
            },
        )
    };
    let inputs = vec![
        CoreInput::Request {
            t: 0,
            request: 0,
            workflow: 0,
            stage: 0,
            prompt_tokens: 10,
            context_tokens: 0,
            workflow_output_so_far: 0,
            text: None,
            task: None,
            oracle: false,
        },
        CoreInput::Failed {
            t: 5,
            request: 0,
            transient: true,
            unreachable: true,
            why: "refused".into(),
        },
        CoreInput::Probe {
            t: 1_000_000_005,
            engine: 0,
            healthy: false,
        },
        CoreInput::Probe {
            t: 3_000_000_005,
            engine: 0,
            healthy: true,
        },
    ];
    let run = |core: &mut PolicyCore| -> Vec<Vec<Decision>> { inputs.iter().map(|i| feed(core, i, || None)).collect() };
    let a = run(&mut build());
    assert_eq!(a, run(&mut build()));
    assert!(
        a[1].contains(&Decision::Probe {
            engine: 0,
            not_before: 1_000_000_005
        }),
        "{a:?}"
    );
    assert_eq!(
        a[2],
        vec![Decision::Probe {
            engine: 0,
            not_before: 3_000_000_005
        }]
    );
    // Journal lines round-trip, the new fields included.
    for i in &inputs {
        let line = serde_json::to_string(i).unwrap();
        assert_eq!(&serde_json::from_str::<CoreInput>(&line).unwrap(), i, "{line}");
    }
}
