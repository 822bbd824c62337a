//! `chimera compare`: two results folders joined per (workflow, stage) call and per workflow.

mod common;

use std::process::Command;

fn run(dir: &std::path::Path, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["run", "-q", "--set", "workload.workflows=150"])
        .args(extra)
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_run_against_itself_agrees_exactly_and_against_other_step_times_does_not() {
    let d = common::tmpdir("compare");
    let (a, b) = (d.join("a"), d.join("b"));
    run(&a, &[]);
    run(&b, &["--set", "cluster.engines[*].calibration=null"]);
    let same = chimera::analysis::compare::compare_dirs(&a, &a).unwrap();
    assert!(same.requests_matched > 150 && same.workflows_matched == 150);
    assert!(same
        .metrics
        .iter()
        .all(|m| m.error.median_rel_err == 0.0 && m.error.p90_rel_err == 0.0));
    let diff = chimera::analysis::compare::compare_dirs(&a, &b).unwrap();
    assert_eq!(
        diff.requests_matched, same.requests_matched,
        "the same calls, matched by (workflow, stage)"
    );
    let e2e = diff.metrics.iter().find(|m| m.name == "request E2E").unwrap();
    assert!(
        e2e.error.median_rel_err > 0.01 && e2e.error.median_rel_err < 1.0,
        "{:?}",
        e2e.error
    );
    // The CLI prints the table, JSON, and draws the scatter plots.
    let out = Command::new(env!("CARGO_BIN_EXE_chimera"))
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .arg("--out")
        .arg(d.join("scatter"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("request TTFT") && text.contains("workflow E2E"), "{text}");
    assert!(d.join("scatter.png").exists() && d.join("scatter.svg").exists());
    let svg = std::fs::read_to_string(d.join("scatter.svg")).unwrap();
    assert!(svg.contains("measured (ms)") && svg.contains("simulated (ms)"));
    let out = Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["compare", "--json"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metrics"].as_array().unwrap().len(), 4);
    // Two unrelated runs (another seed: other workflows under the same ids) are refused, not
    // compared as if their rows matched.
    let c = d.join("other-seed");
    run(&c, &["--seed", "7"]);
    let e = chimera::analysis::compare::compare_dirs(&a, &c).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("not runs of one workload"), "{e}");
    // A folder without results is named.
    let out = Command::new(env!("CARGO_BIN_EXE_chimera"))
        .arg("compare")
        .arg(&a)
        .arg(d.join("nothing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing/requests.parquet"));
}
