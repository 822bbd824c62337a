//! `faults:` in virtual time: an engine down, slowed, failing a fraction of its attempts, or a
//! whole model's replicas lost; each measured by the simulator with the same core code the
//! replay runs (tests/replay.rs shows both drivers deciding alike under a fault).

mod common;
use common::*;

fn scenario(faults: &str, workflows: u32) -> String {
    scenario_at(faults, workflows, 20.0)
}

fn scenario_at(faults: &str, workflows: u32, rate: f64) -> String {
    format!(
        "name: faults\nseed: 4\n\
        cluster:\n  engines:\n    - {{name: small, model: Qwen2.5-1.5B, gpu: H100-SXM, replicas: 4, calibration: auto}}\n\
        workload:\n  kind: synthetic\n  workflows: {workflows}\n  stages: {{dist: constant, value: 2}}\n\
        \x20 first_prompt_tokens: {{dist: lognormal, mean: 500, cv: 0.5, min: 16, max: 2000}}\n\
        \x20 stage_prompt_tokens: {{dist: lognormal, mean: 50, cv: 0.5, min: 4, max: 200}}\n\
        \x20 output_tokens: {{dist: lognormal, mean: 200, cv: 0.5, min: 4, max: 800}}\n\
        \x20 observation_tokens: {{dist: lognormal, mean: 50, cv: 0.5, min: 0, max: 200}}\n\
        \x20 tool_delay_ms: {{dist: constant, value: 100}}\n\
        \x20 arrivals: {{process: poisson, rate_per_s: {rate}}}\n\
        policy:\n  routing: {{kind: least_outstanding}}\n  priority: fcfs\n  max_retries: 3\n{faults}"
    )
}

fn simulate(yaml: &str) -> chimera::sim::RunReport {
    let r = chimera::scenario::load_str(yaml, &[], &repo().join("scenarios")).unwrap();
    chimera::sim::Simulation::summary_only(&r)
        .unwrap()
        .run(&mut |_, _| {})
        .unwrap()
}

fn p99_e2e(rep: &chimera::sim::RunReport) -> f64 {
    rep.summary.workflows.e2e_s.p99.unwrap()
}

/// "What does losing one of four replicas for a while do to p99?": measurably worse, and
/// nothing is lost (every request on the dead replica is retried on the others).
#[test]
fn losing_one_of_four_replicas_raises_p99_and_loses_nothing() {
    // 80 workflows/s keep four replicas busy (measured: p99 1.80 s -> 1.88 s).
    let base = simulate(&scenario_at("", 3000, 80.0));
    let hit = simulate(&scenario_at(
        "faults:\n  - {engine: small-r2, at_s: 5, for_s: 30}\n",
        3000,
        80.0,
    ));
    assert_eq!(hit.summary.workflows.count, 3000);
    assert_eq!(
        hit.summary.workflows.failed, 0,
        "every lost attempt was retried elsewhere"
    );
    let lost = hit.summary.requests.failed_attempts.unwrap();
    assert!(lost > 0, "the replica held requests when it died");
    assert!(base.summary.requests.failed_attempts.is_none());
    assert!(
        p99_e2e(&hit) > p99_e2e(&base),
        "p99 {} s with the fault, {} s without",
        p99_e2e(&hit),
        p99_e2e(&base)
    );
}

/// A `slow` fault stretches every step of its engine by the factor while it lasts.
#[test]
fn a_slowed_engine_takes_factor_times_as_long_per_token() {
    let one = |faults: &str| {
        let yaml = scenario(faults, 200).replace("replicas: 4", "replicas: 1");
        simulate(&yaml)
    };
    let base = one("");
    let slow = one("faults:\n  - {engine: small, kind: slow, factor: 3.0, at_s: 0, for_s: 100000}\n");
    let (a, b) = (
        base.summary.requests.tpot_ms.p50.unwrap(),
        slow.summary.requests.tpot_ms.p50.unwrap(),
    );
    // Three times as long per step; batches grow when steps are slower, so more (each step
    // then carries more tokens, and the A6000's steps turn compute-bound sooner).
    assert!((2.8..6.0).contains(&(b / a)), "TPOT p50 {a} ms -> {b} ms");
    // Back to normal after the window: a short slowdown costs less than a long one.
    let short = one("faults:\n  - {engine: small, kind: slow, factor: 3.0, at_s: 0, for_s: 1}\n");
    assert!(short.summary.requests.tpot_ms.p50.unwrap() < 0.5 * (a + b));
}

/// `fail` faults: transient errors are retried (workflows survive), permanent ones fail the
/// workflow; a fault on a `model` hits every replica.
#[test]
fn failing_attempts_are_retried_when_transient_and_fail_the_workflow_when_permanent() {
    let transient = simulate(&scenario(
        "faults:\n  - {model: Qwen2.5-1.5B, kind: fail, fraction: 0.2, error: transient, at_s: 0, for_s: 100000}\n",
        300,
    ));
    let s = &transient.summary;
    assert_eq!(s.workflows.count, 300);
    let failed_attempts = s.requests.failed_attempts.unwrap();
    // About 20 % of ~600 attempts fail; a workflow fails only after 4 failures in a row.
    assert!((80..=200).contains(&failed_attempts), "{failed_attempts}");
    assert!(s.workflows.failed <= 3, "{}", s.workflows.failed);
    let permanent = simulate(&scenario(
        "faults:\n  - {model: Qwen2.5-1.5B, kind: fail, fraction: 1.0, error: permanent, at_s: 0, for_s: 100000}\n",
        50,
    ));
    assert_eq!(permanent.summary.workflows.failed, 50);
    assert_eq!(permanent.summary.requests.failed_attempts, Some(50));
}

/// The same scenario with faults gives the same bytes twice (the fault draws are a named
/// stream), and a model-wide outage is survived when it ends before the retries run out.
#[test]
fn faults_are_deterministic() {
    let y = scenario(
        "faults:\n  - {model: Qwen2.5-1.5B, at_s: 5, for_s: 0.05}\n  - {engine: small-r1, kind: fail, fraction: 0.3, error: transient, at_s: 0, for_s: 20}\n",
        400,
    );
    let (a, b) = (simulate(&y), simulate(&y));
    assert_eq!(a.event_log_hash, b.event_log_hash);
    assert_eq!(a.summary.requests.failed_attempts, b.summary.requests.failed_attempts);
    assert_eq!(a.summary.workflows.count, 400);
}

/// Bad fault entries are refused naming the field and what is allowed.
#[test]
fn bad_faults_name_the_field() {
    for (fault, want) in [
        (
            "{engine: nope, at_s: 1, for_s: 1}",
            "faults[0].engine: no engine named `nope`",
        ),
        (
            "{model: Llama, at_s: 1, for_s: 1}",
            "faults[0].model: no engine serves `Llama`",
        ),
        (
            "{engine: small-r0, model: Qwen2.5-1.5B, at_s: 1, for_s: 1}",
            "not both or neither",
        ),
        ("{at_s: 1, for_s: 1}", "not both or neither"),
        ("{engine: small-r0, at_s: -1, for_s: 1}", "faults[0].at_s"),
        ("{engine: small-r0, at_s: 1, for_s: 0}", "faults[0].for_s"),
        (
            "{engine: small-r0, kind: slow, at_s: 1, for_s: 1}",
            "faults[0].factor: kind `slow` needs",
        ),
        (
            "{engine: small-r0, kind: slow, factor: 0, at_s: 1, for_s: 1}",
            "faults[0].factor: expected",
        ),
        (
            "{engine: small-r0, kind: fail, at_s: 1, for_s: 1}",
            "faults[0].fraction: kind `fail` needs",
        ),
        (
            "{engine: small-r0, kind: fail, fraction: 1.5, at_s: 1, for_s: 1}",
            "faults[0].fraction: expected",
        ),
        (
            "{engine: small-r0, factor: 2, at_s: 1, for_s: 1}",
            "belong to kind `slow` or `fail`",
        ),
        ("{engine: small-r0, kind: melt, at_s: 1, for_s: 1}", "faults[0].kind"),
        (
            "{engine: small-r0, kind: fail, fraction: 0.5, error: sometimes, at_s: 1, for_s: 1}",
            "faults[0].error",
        ),
    ] {
        let y = scenario(&format!("faults:\n  - {fault}\n"), 10);
        let e = chimera::scenario::load_str(&y, &[], &repo().join("scenarios"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{fault}: `{e}` lacks `{want}`");
    }
}

/// `faults:` works in sweeps: a grid over a fault's duration, with the failed attempts and
/// the latency it costs as columns of the sweep table.
#[test]
fn a_sweep_grids_over_a_fault() {
    let dir = tmpdir("faults-sweep");
    let scen = dir.join("f.yaml");
    std::fs::write(
        &scen,
        scenario_at("faults:\n  - {engine: small-r2, at_s: 2, for_s: 5}\n", 600, 80.0),
    )
    .unwrap();
    let out = dir.join("sweep");
    chimera_ok(&[
        "sweep",
        "-q",
        scen.to_str().unwrap(),
        "--grid",
        "faults[0].for_s=0.001,20",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = out.join("sweep.parquet");
    let fa = column(&t, "requests.failed_attempts");
    let p99 = column(&t, "workflows.e2e_s.p99");
    assert_eq!(strings(&t, "param.faults[0].for_s"), ["0.001", "20"]);
    assert!(fa[0] < fa[1], "failed attempts {fa:?}");
    assert!(p99[0] < p99[1], "p99 {p99:?}");
}
