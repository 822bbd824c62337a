//! The simulator against real vLLM: `chimera fidelity` on the shared measurements meets the
//! bar, experiments that cannot be recreated are listed with their reason, `fit-serving`
//! writes a calibration with its leave-one-out check, the shipped A6000 calibration predicts a
//! public vLLM TPOT, and prefix caching shows in workflows.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chimera"))
}

fn measured() -> PathBuf {
    shared_data()
        .expect("../shared/data is missing: these tests check the simulator against its real vLLM measurements")
        .join("vllm-measured")
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn fidelity_on_the_shared_vllm_measurements_meets_the_bar() {
    let dir = tmpdir("fidelity");
    let out = bin()
        .arg("fidelity")
        .arg(measured())
        .args(["--json", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let r = json_of(&out);
    let s = &r["summary"];
    // Every stage vLLM served within its rate counts: for Llama-2-7B (TP1) and Mixtral-8x7B
    // (TP2) on H100s codegen 5 and 10, roleplay 6, general 8 and 20 req/s; Qwen3-30B-A3B's
    // trace on two RTX PRO 6000s (DP2 + EP). The two reasoning stages and the saturated
    // Llama-3.1-8B trace are listed, not counted.
    assert_eq!(s["stages_compared"], 11, "{s}");
    assert_eq!(s["stages_overloaded_measured"], 3, "{s}");
    let f = |k: &str| s[k].as_f64().unwrap();
    assert!(f("median_abs_err_e2e_p50") <= 0.10, "{s}");
    assert!(f("max_abs_err_e2e_p50") <= 0.25, "{s}");
    assert!(f("max_abs_err_ttft_p50") <= 0.30, "{s}");
    assert_eq!(s["served_but_predicted_overloaded"], 0, "{s}");
    assert_eq!(r["skipped"].as_array().unwrap().len(), 0, "{}", r["skipped"]);
    // Both layouts were read: 8 inference-perf experiments and 2 per-request traces.
    let layouts: Vec<&str> = r["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["layout"].as_str().unwrap())
        .collect();
    assert_eq!(
        layouts.iter().filter(|l| **l == "inference-perf").count(),
        8,
        "{layouts:?}"
    );
    assert_eq!(
        layouts.iter().filter(|l| **l == "per-request").count(),
        2,
        "{layouts:?}"
    );
    // Shared system prompts hit the prefix cache.
    let general = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["experiment"].as_str().unwrap().ends_with("general") && x["stage"] == 0)
        .unwrap();
    assert!(
        general["simulated"]["prefix_hit_rate"].as_f64().unwrap() > 0.1,
        "{general}"
    );
    // Every recreated scenario was written, is valid and runs on its own.
    let scenarios: Vec<PathBuf> = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert_eq!(scenarios.len(), 10);
    let v = bin().arg("validate").args(&scenarios).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    for f in ["fidelity.json", "fidelity.md", "fidelity.png", "fidelity.svg"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(dir.join("fidelity.md")).unwrap();
    assert!(md.contains("| experiment |") && md.contains("codegen"), "{md}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn experiments_that_cannot_be_recreated_are_listed_with_the_reason() {
    let src = measured().join("h100-inference-perf/20260217-231439-llama-2-7b-tp1-general");
    let dir = tmpdir("fidelity-skips");
    // (a) a model the catalogue lacks, in a folder that names the GPU;
    let a = dir.join("h100-runs/unknown-model");
    copy_dir(&src, &a);
    let cfg = std::fs::read_to_string(a.join("exp-config.yaml")).unwrap();
    std::fs::write(
        a.join("exp-config.yaml"),
        cfg.replace("meta-llama/Llama-2-7b-hf", "acme/Falcon-7b"),
    )
    .unwrap();
    // (b) the right model but no GPU anywhere.
    let b = dir.join("runs/no-gpu");
    copy_dir(&src, &b);
    let (found, skipped) = chimera::fidelity::discover(&[dir.clone()], None).unwrap();
    assert!(found.is_empty());
    let reasons: Vec<String> = skipped
        .iter()
        .map(|s| format!("{}: {}", s.dir.display(), s.reason))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown-model") && r.contains("model not in the catalogue") && r.contains("Falcon")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no-gpu") && r.contains("names no GPU") && r.contains("--gpu")),
        "{reasons:?}"
    );
    // --gpu recreates the one without a GPU; the unknown model stays skipped.
    let (found, skipped) = chimera::fidelity::discover(&[dir.clone()], Some("H100")).unwrap();
    assert_eq!((found.len(), skipped.len()), (1, 1));
    // A folder with nothing measured is an error naming it.
    let empty = tmpdir("fidelity-empty");
    let e = bin().arg("fidelity").arg(&empty).output().unwrap();
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("no measured experiments"));
}

#[test]
fn fit_serving_writes_a_measured_calibration_with_a_leave_one_out_check() {
    let dir = tmpdir("fit-serving");
    let cal = dir.join("h100.yaml");
    let rep = dir.join("report.json");
    // A short fit (few iterations, 20 s stages): this checks the command, not the fit quality.
    let out = bin()
        .args(["calibrate", "fit-serving"])
        .arg(measured())
        .args([
            "--gpu",
            "H100",
            "--iterations",
            "4",
            "--stage-seconds",
            "20",
            "--engine",
            "vLLM v0.15.1",
        ])
        .arg("--out")
        .arg(&cal)
        .arg("--report")
        .arg(&rep)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = chimera::hw::Calibration::load(&cal).unwrap();
    assert_eq!(c.gpu, "H100-SXM");
    assert_eq!(c.fitted.len(), 7);
    assert_eq!(c.provenance.kind, chimera::hw::calibration::ProvenanceKind::Measured);
    assert!(c.provenance.details["engines"].contains("v0.15.1"));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    // Three experiments on the H100 have stages served within their rate; each is held out once.
    assert_eq!(r["experiments"].as_array().unwrap().len(), 3);
    assert_eq!(r["leave_one_out"].as_array().unwrap().len(), 3);
    // A GPU with no measurements is refused, naming it.
    let e = bin()
        .args(["calibrate", "fit-serving"])
        .arg(measured())
        .args(["--gpu", "L4", "--out"])
        .arg(dir.join("l4.yaml"))
        .output()
        .unwrap();
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("no measured experiment on L4"));
}

fn tpot_p50(scenario: &Path, concurrency: u32) -> f64 {
    let out = bin()
        .args(["run", "-q", "--json"])
        .arg(scenario)
        .args([
            "--set",
            &format!("workload.arrivals.concurrency={concurrency}"),
            "--set",
            &format!("workload.arrivals.requests={}", concurrency * 12),
            "--out",
        ])
        .arg(tmpdir(&format!("a6000-c{concurrency}")))
        .output()
        .unwrap();
    json_of(&out)["requests"]["tpot_ms"]["p50"].as_f64().unwrap()
}

#[test]
fn shipped_a6000_calibration_predicts_public_vllm_tpot_with_closed_loop_clients() {
    // Public vLLM v0.23.0 measurement, RTX A6000, Qwen2.5-7B-Instruct (calibration/README.md):
    // TPOT p50 21.9 ms at concurrency 1, 27.5 ms at 64. The calibration's mbu was fitted at
    // concurrency 8 only.
    let s = repo().join("scenarios/fidelity/a6000-qwen7b-closed-loop.yaml");
    for (c, measured) in [(1, 21.9), (64, 27.5)] {
        let t = tpot_p50(&s, c);
        assert!(
            (t / measured - 1.0).abs() <= 0.10,
            "concurrency {c}: simulated {t} ms vs measured {measured} ms"
        );
    }
}

#[test]
fn workflow_stages_reuse_their_context_from_the_prefix_cache() {
    let on = default_with(&["workload.workflows=120"]);
    let off = default_with(&[
        "workload.workflows=120",
        "cluster.engines[*].enable_prefix_caching=false",
    ]);
    let (d1, d2) = (tmpdir("prefix-on"), tmpdir("prefix-off"));
    let (a, b) = (run(&on, &d1), run(&off, &d2));
    let hits = |r: &chimera::sim::RunReport| {
        r.summary
            .engines
            .iter()
            .map(|e| e.prefix_cache_hits.unwrap())
            .sum::<u64>()
    };
    assert!(hits(&a) > 0 && hits(&b) == 0);
    // Later stages find most of their context cached; first stages little.
    let stage = column(&d1.join("requests.parquet"), "stage");
    let cached = column(&d1.join("requests.parquet"), "cached_tokens");
    let context = column(&d1.join("requests.parquet"), "context_tokens");
    let (mut later, mut later_ctx) = (0.0, 0.0);
    for i in 0..stage.len() {
        if stage[i] > 0.0 {
            later += cached[i];
            later_ctx += context[i];
        }
    }
    assert!(later > 0.5 * later_ctx, "cached {later} of {later_ctx} context tokens");
    assert!(column(&d2.join("requests.parquet"), "cached_tokens")
        .iter()
        .all(|c| *c == 0.0));
    // Less prefill: later stages' TTFT is lower with caching.
    let ttft = |d: &Path| {
        let s = column(&d.join("requests.parquet"), "stage");
        let t = column(&d.join("requests.parquet"), "ttft_ns");
        let v: Vec<f64> = s.iter().zip(&t).filter(|(s, _)| **s > 0.0).map(|(_, t)| *t).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(ttft(&d1) < ttft(&d2), "{} vs {}", ttft(&d1), ttft(&d2));
}
