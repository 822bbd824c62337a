//! What the result files say, checked against their definitions: every latency from its
//! timestamps, TPOT as `vllm bench serve` defines it, stages in order with their tool delays,
//! requests conserved, no token before dispatch, KV within capacity.

mod common;
use common::*;

#[test]
fn request_rows_obey_their_definitions() {
    let dir = tmpdir("rows");
    let rep = run(
        &default_with(&["workload.workflows=300", "limits.check_invariants=true"]),
        &dir,
    );
    let f = dir.join("requests.parquet");
    let col = |n| column(&f, n);
    let (arr, disp, sched, first, fin) = (
        col("arrival_ns"),
        col("dispatch_ns"),
        col("first_scheduled_ns"),
        col("first_token_ns"),
        col("finish_ns"),
    );
    let (ttft, e2e, tpot, queue, out) = (
        col("ttft_ns"),
        col("e2e_ns"),
        col("tpot_ns"),
        col("queue_ns"),
        col("output_tokens"),
    );
    assert_eq!(arr.len() as u64, rep.summary.requests.count);
    for i in 0..arr.len() {
        assert!(
            arr[i] <= disp[i] && disp[i] <= sched[i] && sched[i] < first[i] && first[i] <= fin[i],
            "row {i}: no token before dispatch"
        );
        assert_eq!(ttft[i], first[i] - arr[i]);
        assert_eq!(e2e[i], fin[i] - arr[i]);
        assert_eq!(queue[i], sched[i] - disp[i]);
        if out[i] > 1.0 {
            assert!((tpot[i] - (e2e[i] - ttft[i]) / (out[i] - 1.0)).abs() < 1e-6);
        } else {
            assert!(tpot[i].is_nan());
        }
    }
    // Requests conserved: every workflow's stages are all there, in order, each issued after the
    // previous one finished plus a tool delay.
    let wf = col("workflow_id");
    let stage = col("stage");
    let mut by_wf: std::collections::BTreeMap<u64, Vec<(u32, f64, f64)>> = Default::default();
    for i in 0..wf.len() {
        by_wf
            .entry(wf[i] as u64)
            .or_default()
            .push((stage[i] as u32, arr[i], fin[i]));
    }
    let wfile = dir.join("workflows.parquet");
    let stages = column(&wfile, "stages");
    let ids = column(&wfile, "workflow_id");
    assert_eq!(ids.len(), 300);
    assert_eq!(by_wf.len(), 300);
    for (id, n) in ids.iter().zip(&stages) {
        let mut v = by_wf[&(*id as u64)].clone();
        v.sort_by_key(|x| x.0);
        assert_eq!(v.len(), *n as usize, "workflow {id}");
        for (k, w) in v.windows(2).enumerate() {
            assert_eq!(w[1].0, k as u32 + 1);
            assert!(
                w[1].1 >= w[0].2,
                "workflow {id}: stage {} issued before stage {} finished",
                k + 1,
                k
            );
        }
    }
    // Workflow rows: E2E and per-token latency from their own columns.
    let (wa, wfin, we2e, wpt, wout) = (
        column(&wfile, "arrival_ns"),
        column(&wfile, "finish_ns"),
        column(&wfile, "e2e_ns"),
        column(&wfile, "e2e_per_output_token_ns"),
        column(&wfile, "output_tokens"),
    );
    for i in 0..wa.len() {
        assert_eq!(we2e[i], wfin[i] - wa[i]);
        assert!((wpt[i] - we2e[i] / wout[i]).abs() < 1e-6);
    }
}

#[test]
fn engine_log_stays_within_limits() {
    let dir = tmpdir("englog");
    let r = default_with(&["workload.workflows=300", "workload.arrivals.rate_per_s=20"]);
    run(&r, &dir);
    let f = dir.join("engines.parquet");
    let names = strings(&f, "engine");
    let (tokens, running, kv) = (
        column(&f, "tokens"),
        column(&f, "running"),
        column(&f, "kv_used_blocks"),
    );
    for i in 0..names.len() {
        let e = r.engines.iter().find(|e| e.name == names[i]).unwrap();
        assert!(tokens[i] <= e.limits.max_num_batched_tokens as f64);
        assert!(running[i] <= e.limits.max_num_seqs as f64);
        assert!(kv[i] < e.kv.num_gpu_blocks as f64, "KV blocks in use within capacity");
    }
    // Overload shows up as large batches.
    assert!(tokens.iter().cloned().fold(0.0, f64::max) > 1000.0);
}

#[test]
fn summary_matches_the_rows() {
    let dir = tmpdir("summary");
    run(&default_with(&["workload.workflows=200"]), &dir);
    let s = json(&dir.join("summary.json"));
    let w = dir.join("workflows.parquet");
    let succ = column(&w, "success");
    let models = strings(&w, "model");
    let solved = succ.iter().filter(|x| **x == 1.0).count() as u64;
    assert_eq!(s["accuracy"]["solved"], solved);
    assert_eq!(s["accuracy"]["known"], 200);
    let big: Vec<f64> = succ
        .iter()
        .zip(&models)
        .filter(|(_, m)| *m == "Qwen2.5-7B")
        .map(|(s, _)| *s)
        .collect();
    let small: Vec<f64> = succ
        .iter()
        .zip(&models)
        .filter(|(_, m)| *m == "Qwen2.5-1.5B")
        .map(|(s, _)| *s)
        .collect();
    let rate = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(rate(&big) > rate(&small), "the stronger model solves more");
    let e2e = column(&w, "e2e_ns");
    let mean_s = e2e.iter().sum::<f64>() / e2e.len() as f64 / 1e9;
    let reported = s["workflows"]["e2e_s"]["mean"].as_f64().unwrap();
    assert!((mean_s - reported).abs() / mean_s < 1e-6, "{mean_s} vs {reported}");
    let mut sorted = e2e.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p90 = sorted[(0.9 * sorted.len() as f64).ceil() as usize - 1] / 1e9;
    let rp90 = s["workflows"]["e2e_s"]["p90"].as_f64().unwrap();
    assert!((p90 - rp90).abs() / p90 < 0.0011, "p90 {p90} vs {rp90}");
}

#[test]
fn a_run_that_fails_midway_keeps_what_it_wrote() {
    let dir = tmpdir("midway");
    let r = default_with(&["workload.workflows=2000", "limits.max_events=30000"]);
    let err = chimera::run::run_to_dir(&r, &dir, &[], None, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("max_events"), "{err}");
    assert!(
        err.to_string().contains("--seed 1"),
        "the error says how to rerun: {err}"
    );
    // The tables written so far are complete Parquet files with the rows finished so far.
    let n = column(&dir.join("requests.parquet"), "request_id").len();
    assert!(n > 100, "{n} rows kept");
    assert!(!column(&dir.join("workflows.parquet"), "workflow_id").is_empty());
    let m = json(&dir.join("manifest.json"));
    assert_eq!(m["status"]["state"], "failed");
}

#[test]
fn heavier_load_means_longer_latency_and_bigger_models_are_slower() {
    let lat = |rate: &str, frac_big: f64| {
        let dir = tmpdir(&format!("load-{rate}-{frac_big}"));
        let f = format!(
            "policy.routing.fractions={{Qwen2.5-1.5B: {}, Qwen2.5-7B: {}}}",
            1.0 - frac_big,
            frac_big
        );
        let rep = run(
            &default_with(&[
                "workload.workflows=300",
                &format!("workload.arrivals.rate_per_s={rate}"),
                &f,
            ]),
            &dir,
        );
        rep.summary.workflows.e2e_per_output_token_ms.mean.unwrap()
    };
    assert!(lat("0.2", 0.5) < lat("3", 0.5));
    assert!(lat("0.2", 0.0) < lat("0.2", 1.0));
}

#[test]
fn a_calibration_file_overrides_the_roofline_defaults_and_says_so() {
    let dir = tmpdir("calib");
    let cal = dir.join("a6000-fast.yaml");
    let partial = "format: chimera-calibration/v1\ngpu: RTX-A6000\nmodel: Qwen2.5-7B\ncoefficients: {mbu: 0.95, step_overhead_us: 50}\nprovenance: {kind: derived, source: test fixture}\n";
    std::fs::write(&cal, partial).unwrap();
    let text = chimera::scenario::DEFAULT_SCENARIO.replacen(
        "      model: Qwen2.5-7B\n      gpu: RTX-A6000\n      calibration: auto\n",
        "      model: Qwen2.5-7B\n      gpu: RTX-A6000\n      calibration: a6000-fast.yaml\n",
        1,
    );
    let sets = vec![
        "workload.workflows=200".to_string(),
        "policy.routing.fractions={Qwen2.5-1.5B: 0.0, Qwen2.5-7B: 1.0}".to_string(),
    ];
    // A coefficient left out is refused, not silently given its default.
    let e = chimera::scenario::load_str(&text, &sets, &dir).unwrap_err().to_string();
    assert!(
        e.contains("cluster.engines[1].calibration") && e.contains("coefficients.mfu: missing"),
        "{e}"
    );
    let full = partial.replace(
        "{mbu: 0.95, step_overhead_us: 50}",
        "{mbu: 0.95, step_overhead_us: 50, mfu: 0.5, mfu_attention: 0.4, mbu_attention: 0.75, per_layer_us: 20, per_request_us: 3, allreduce_us: 10, mbu_elementwise: 0.75, matmul_fixed_us: 4, elementwise_fixed_us: 2, attention_fixed_us: 4}",
    );
    std::fs::write(&cal, &full).unwrap();
    let calibrated = chimera::scenario::load_str(&text, &sets, &dir).unwrap();
    assert_eq!(calibrated.engines[1].steptime.coeffs.mbu, 0.95);
    let (a, b) = (tmpdir("calib-a"), tmpdir("calib-b"));
    let fast = run(&calibrated, &a);
    let mut plain_sets = sets.clone();
    plain_sets.push("cluster.engines[*].calibration=null".into());
    let plain = run(
        &chimera::scenario::load_str(chimera::scenario::DEFAULT_SCENARIO, &plain_sets, &dir).unwrap(),
        &b,
    );
    assert_eq!(plain.summary.engines[1].step_time_source, "roofline-default");
    assert!(fast.summary.requests.tpot_ms.mean.unwrap() < plain.summary.requests.tpot_ms.mean.unwrap());
    let m = json(&a.join("manifest.json"));
    assert_eq!(m["inputs"]["engines"][1]["step_time"]["kind"], "calibration");
    assert_eq!(m["inputs"]["engines"][1]["step_time"]["provenance"]["kind"], "derived");
    assert_eq!(fast.summary.engines[1].step_time_source, "calibration (derived)");
    // A calibration for another GPU is refused with both names.
    let e = chimera::scenario::load_str(
        &text
            .replacen(
                "      calibration: a6000-fast.yaml\n      ",
                "      calibration: a6000-fast.yaml\n      ",
                1,
            )
            .replacen(
                "gpu: RTX-A6000\n      calibration: a6000-fast",
                "gpu: A40\n      calibration: a6000-fast",
                1,
            ),
        &sets,
        &dir,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cluster.engines[1].calibration") && e.contains("RTX-A6000") && e.contains("A40"),
        "{e}"
    );
    // A malformed file names itself and the field.
    std::fs::write(&cal, full.replace("mbu: 0.95", "mbu: 1.5")).unwrap();
    let e = chimera::scenario::load_str(&text, &sets, &dir).unwrap_err().to_string();
    assert!(e.contains("a6000-fast.yaml") && e.contains("coefficients.mbu"), "{e}");
}

#[test]
fn trace_arrivals_follow_the_trace_compressed_by_the_rate_scale() {
    let Some(data) = shared_data() else { return };
    let trace = data.join("arrivals/AzureLLMInferenceTrace_code.csv");
    let ts = chimera::workload::azure::read_timestamps(&trace).unwrap();
    let base = repo().join("scenarios/bench");
    let sets = |scale: &str| {
        vec![
            "workload.limit=100".to_string(),
            format!("workload.path={}", trace.display()),
            format!("workload.arrivals={{process: trace, rate_scale: {scale}}}"),
        ]
    };
    for scale in ["1", "4"] {
        let r = chimera::scenario::load(&base.join("vidur-4x-llama2-7b-a100.yaml"), &sets(scale)).unwrap();
        let dir = tmpdir(&format!("trace-arr-{scale}"));
        run(&r, &dir);
        let mut arr = column(&dir.join("workflows.parquet"), "arrival_ns");
        arr.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let k: f64 = scale.parse().unwrap();
        for (i, a) in arr.iter().enumerate() {
            assert!(
                (a - (ts[i] as f64 / k).round()).abs() <= 1.0,
                "row {i}: {a} vs {}",
                ts[i] as f64 / k
            );
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM during `chimera run`: the run stops at its next event, the
/// Parquet files are readable with every row finished so far, the manifest says
/// `interrupted`, and the exit code is 130.
#[test]
fn an_interrupted_run_keeps_readable_tables_and_says_so() {
    let dir = tmpdir("interrupt");
    let out = dir.join("out");
    for sig in ["INT", "TERM"] {
        let _ = std::fs::remove_dir_all(&out);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
            .args([
                "run",
                "-q",
                "--set",
                "workload.workflows=5000000",
                "--set",
                "workload.arrivals.rate_per_s=50",
                "--out",
            ])
            .arg(&out)
            .spawn()
            .unwrap();
        // Wait until rows are being written, then signal.
        let t0 = std::time::Instant::now();
        while std::fs::metadata(out.join("requests.parquet")).map_or(0, |m| m.len()) < 100_000 {
            assert!(t0.elapsed().as_secs() < 60, "the run did not start writing");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "SIG{sig}");
        let m = json(&out.join("manifest.json"));
        assert_eq!(m["status"]["state"], "interrupted", "SIG{sig}: {m}");
        for t in ["requests.parquet", "workflows.parquet", "engines.parquet"] {
            let n = column(&out.join(t), if t == "engines.parquet" { "step" } else { "arrival_ns" }).len();
            assert!(n > 0, "SIG{sig}: {t} has no rows");
        }
        assert!(!out.join("summary.json").exists());
    }
}

/// A run that would pass the simulated-time bound (about 3 years) is refused as bad input,
/// naming the arrival rate, instead of wrapping the clock (issue 15: `rate_per_s: 1e-9` gave
/// negative arrival times and a negative mean E2E with exit 0).
#[test]
fn a_run_past_the_time_bound_is_refused_not_wrapped() {
    let r = default_with(&["workload.arrivals.rate_per_s=1e-6", "workload.workflows=500"]);
    let e = chimera::sim::Simulation::summary_only(&r)
        .unwrap()
        .run(&mut |_, _| {})
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let m = e.to_string();
    assert!(m.contains("about 3 years") && m.contains("workload.arrivals"), "{m}");
}
