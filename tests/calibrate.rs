//! Calibration: fitting the public operator profiles, blind checks across models and GPUs,
//! the shipped calibrations, derived files, and clear errors for bad profiles and devices.

mod common;

use chimera::calib::{self, FitOptions, Profile};
use chimera::hw::calibration::{Calibration, ProvenanceKind};
use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chimera"))
}

fn profiles(gpu: &str, names: &[&str]) -> Option<Vec<Profile>> {
    let data = common::shared_data()?;
    Some(
        names
            .iter()
            .map(|n| Profile::load(&data.join(format!("gpu-profiles/{gpu}/{n}.mlp.csv"))).unwrap())
            .collect(),
    )
}

#[test]
fn vidur_profiles_read_with_shapes_and_every_operator() {
    let Some(ps) = profiles("a40", &["Llama-2-7b-hf", "phi-2"]) else {
        eprintln!("skipped: ../shared/data absent");
        return;
    };
    let l = &ps[0];
    assert_eq!(
        (l.shape.hidden, l.shape.heads, l.shape.intermediate, l.shape.gated),
        (4096, 32, 11008, true)
    );
    assert_eq!(l.meta.gpu, "A40");
    assert_eq!(l.points.len(), 1044 * 10);
    assert!(!ps[1].shape.gated, "phi-2 has a plain MLP");
}

#[test]
fn fitting_some_a40_models_predicts_the_others_blind() {
    // Fit on two models, check on three the fit never saw. Matrix products dominate a step;
    // they must come within 15 % at the median.
    let (Some(train), Some(test)) = (
        profiles("a40", &["Llama-2-7b-hf", "CodeLlama-34b-Instruct-hf"]),
        profiles("a40", &["internlm-20b", "Llama-2-70b-hf", "Qwen-72B"]),
    ) else {
        eprintln!("skipped: ../shared/data absent");
        return;
    };
    let cal = calib::fit(&train, &FitOptions::default()).unwrap();
    assert_eq!(cal.provenance.kind, ProvenanceKind::Measured);
    assert!(
        cal.provenance.source.contains("Llama-2-7b-hf"),
        "{}",
        cal.provenance.source
    );
    let rep = calib::check(&cal, &test).unwrap();
    let mm = &rep.classes["matmul"];
    assert!(mm.median_rel_err < 0.15, "{mm:?}");
    assert!(rep.overall.median_rel_err < 0.25, "{:?}", rep.overall);
    // Efficiencies land in the ranges hardware.md reports for this class of GPU.
    let c = cal.coefficients;
    assert!((0.45..0.9).contains(&c.mfu) && (0.5..0.95).contains(&c.mbu), "{c:?}");
}

#[test]
fn an_a40_fit_derived_for_the_a100_predicts_a100_points_within_a_stated_bound() {
    let (Some(a40), Some(a100)) = (
        profiles("a40", &["Llama-2-7b-hf"]),
        profiles("a100", &["Llama-2-7b-hf"]),
    ) else {
        eprintln!("skipped: ../shared/data absent");
        return;
    };
    let cal = calib::fit(&a40, &FitOptions::default()).unwrap();
    let d = calib::derive(&cal, "a40.yaml", "A100-80GB").unwrap();
    let rep = calib::check(&d, &a100).unwrap();
    // Another architecture: the datasheet ratio carries the matrix products to within 35 %.
    assert!(
        rep.classes["matmul"].median_rel_err < 0.35,
        "{:?}",
        rep.classes["matmul"]
    );
}

#[test]
fn shipped_calibrations_load_say_where_they_came_from_and_match_a_refit() {
    let dir = common::repo().join("calibration");
    let a40 = Calibration::load(&dir.join("a40-vidur.yaml")).unwrap();
    assert_eq!(a40.provenance.kind, ProvenanceKind::Measured);
    assert!(a40.provenance.source.contains("Vidur"));
    let a6000 = Calibration::load(&dir.join("rtx-a6000-from-a40.yaml")).unwrap();
    assert_eq!(a6000.gpu, "RTX-A6000");
    assert_eq!(a6000.provenance.kind, ProvenanceKind::Derived);
    assert_eq!(a6000.coefficients, a40.coefficients);
    assert!(a6000.fit.is_none(), "a derived calibration has no fit of its own");
    let Some(data) = common::shared_data() else {
        eprintln!("refit skipped: ../shared/data absent");
        return;
    };
    let files: Vec<PathBuf> = std::fs::read_dir(data.join("gpu-profiles/a40"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut files = files;
    files.sort();
    let ps: Vec<Profile> = files.iter().map(|f| Profile::load(f).unwrap()).collect();
    let refit = calib::fit(&ps, &FitOptions::default()).unwrap();
    let (a, b) = (refit.coefficients, a40.coefficients);
    for (name, x, y) in [
        ("mfu", a.mfu, b.mfu),
        ("mbu", a.mbu, b.mbu),
        ("mbu_elementwise", a.mbu_elementwise, b.mbu_elementwise),
    ] {
        assert!(
            (x - y).abs() < 1e-6,
            "calibration/a40-vidur.yaml is stale: {name} {y} vs refit {x}"
        );
    }
}

#[test]
fn the_h100_calibrations_are_what_refitting_the_committed_profiles_gives() {
    let dir = common::repo().join("calibration");
    let measured = Calibration::load(&dir.join("h100-measured.yaml")).unwrap();
    let kernels = Calibration::load(&dir.join("h100-cudarc-kernels.yaml")).unwrap();
    assert_eq!((measured.gpu.as_str(), kernels.gpu.as_str()), ("H100-SXM", "H100-SXM"));
    assert!(measured.provenance.source.contains("PyTorch") && measured.provenance.source.contains("cudarc"));
    assert!(measured.fitted.contains(&"mfu_attention".to_string()));
    assert!(!kernels.fitted.contains(&"mfu_attention".to_string()));
    assert!(measured.provenance.details["nvidia_driver"].contains("580.159.04"));
    let load = |pred: &dyn Fn(&str) -> bool| -> Vec<Profile> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("profiles"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                n.starts_with("h100-") && n.ends_with(".json") && pred(&n)
            })
            .collect();
        files.sort();
        files.iter().map(|f| Profile::load(f).unwrap()).collect()
    };
    let ours = load(&|n| !n.contains("torch"));
    let attn = load(&|n| n.contains("torch-attn"));
    assert_eq!((ours.len(), attn.len()), (4, 4));
    let k = calib::fit(
        &ours,
        &FitOptions {
            classes: Some(vec![calib::OpClass::Matmul, calib::OpClass::Elementwise]),
            ..FitOptions::default()
        },
    )
    .unwrap();
    let m = calib::fit(
        &attn,
        &FitOptions {
            classes: Some(vec![calib::OpClass::Attention]),
            base: Some((k.clone(), "calibration/h100-cudarc-kernels.yaml".into())),
            ..FitOptions::default()
        },
    )
    .unwrap();
    for (name, a, b) in [
        ("mfu", k.coefficients.mfu, kernels.coefficients.mfu),
        ("mbu", k.coefficients.mbu, kernels.coefficients.mbu),
        (
            "mfu_attention",
            m.coefficients.mfu_attention,
            measured.coefficients.mfu_attention,
        ),
        (
            "mbu_attention",
            m.coefficients.mbu_attention,
            measured.coefficients.mbu_attention,
        ),
    ] {
        assert!(
            (a - b).abs() < 1e-6,
            "shipped H100 calibration is stale: {name} {b} vs refit {a}"
        );
    }
    // `calibration: auto` picks the vLLM serving fit for H100 engines (the operator-profile
    // fit stays available as builtin:h100-measured).
    let r = chimera::scenario::load_str(
        chimera::scenario::DEFAULT_SCENARIO,
        &["cluster.engines[*].gpu=H100".to_string()],
        std::path::Path::new("."),
    )
    .unwrap();
    let src = serde_json::to_value(&r.engines[0].step_time_source).unwrap();
    assert!(src["path"].as_str().unwrap().contains("h100-sxm-vllm-serving"));
}

#[test]
fn the_serving_calibrations_are_one_global_fit_refined_per_gpu() {
    let dir = common::repo().join("calibration");
    let global = Calibration::load(&dir.join("vllm-serving.yaml")).unwrap();
    assert!(global.for_any_gpu());
    assert_eq!(global.provenance.kind, ProvenanceKind::Measured);
    let f = global.fit.as_ref().unwrap();
    let (lomo, logo) = (f.leave_one_model_out.unwrap(), f.leave_one_gpu_out.unwrap());
    assert!(lomo.stages >= 10 && logo.stages >= 10, "{f:?}");
    // The issue's bar, from the fit's own report: an unseen model within 10 % at the median.
    assert!(lomo.median_abs_err_e2e_p50 <= 0.10, "{lomo:?}");
    // Each refined file is the global fit but for its GPU's efficiency factors.
    for (file, gpu, kind) in [
        ("h100-sxm-vllm-serving.yaml", "H100-SXM", ProvenanceKind::Measured),
        (
            "rtx-pro-6000-vllm-serving.yaml",
            "RTX-PRO-6000",
            ProvenanceKind::Measured,
        ),
        ("rtx-a6000-vllm-serving.yaml", "RTX-A6000", ProvenanceKind::Derived),
    ] {
        let c = Calibration::load(&dir.join(file)).unwrap();
        assert_eq!((c.gpu.as_str(), &c.provenance.kind), (gpu, &kind), "{file}");
        let mut a = c.coefficients;
        let b = global.coefficients;
        assert_eq!(a.mbu, a.mbu_attention, "{file}");
        (a.mfu, a.mfu_moe, a.mbu, a.mbu_attention) = (b.mfu, b.mfu_moe, b.mbu, b.mbu_attention);
        if gpu == "RTX-A6000" {
            // Refined on closed-loop TPOT alone (no serving runs of its own in the joint fit):
            // its kernels' compute/memory overlap too, a property of the GPU.
            a.overlap = b.overlap;
        }
        assert_eq!(a, b, "{file} differs from the global fit beyond its efficiency factors");
        assert!(c.model.is_none() && c.tensor_parallel.is_none(), "{file}");
    }
    // Every run says what error to expect of its step times: an unmeasured GPU the
    // cross-validated figures of the global fit.
    let r = chimera::scenario::load_str(
        chimera::scenario::DEFAULT_SCENARIO,
        &["cluster.engines[*].gpu=L40S".to_string()],
        std::path::Path::new("."),
    )
    .unwrap();
    let e = r.engines[0].step_time_source.expected_error();
    assert!(e.contains("unseen model") && e.contains("unseen GPU"), "{e}");
    assert!(r.engines[0].step_time_source.is_derived());
}

#[test]
fn a_scenario_engine_uses_a_calibration_and_the_manifest_says_so() {
    let dir = common::tmpdir("calibrated-run");
    let scen = dir.join("s.yaml");
    let cal = common::repo().join("calibration/rtx-a6000-vllm-serving.yaml");
    let text =
        chimera::scenario::DEFAULT_SCENARIO.replace("calibration: auto", &format!("calibration: {}", cal.display()));
    assert_ne!(
        text,
        chimera::scenario::DEFAULT_SCENARIO,
        "default scenario layout changed"
    );
    std::fs::write(&scen, text).unwrap();
    let out = bin()
        .args(["run", "-q", "--set", "workload.workflows=50"])
        .arg(&scen)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = std::fs::read_to_string(dir.join("out/manifest.json")).unwrap();
    assert!(
        manifest.contains("rtx-a6000-vllm-serving.yaml") && manifest.contains("derived"),
        "{manifest}"
    );
    // The embedded default uses the same calibration, built in, and gives the same results.
    let out2 = bin()
        .args(["run", "-q", "--set", "workload.workflows=50", "--out"])
        .arg(dir.join("builtin"))
        .output()
        .unwrap();
    assert!(out2.status.success(), "{}", String::from_utf8_lossy(&out2.stderr));
    let m2 = std::fs::read_to_string(dir.join("builtin/manifest.json")).unwrap();
    assert!(
        m2.contains("builtin:rtx-a6000-vllm-serving") && m2.contains("derived"),
        "{m2}"
    );
    // On a GPU with no shipped calibration, `auto` carries the H100 serving fit over by
    // datasheet and says it is derived, not measured there.
    let r = chimera::scenario::load_str(
        chimera::scenario::DEFAULT_SCENARIO,
        &["cluster.engines[*].gpu=A100".to_string()],
        std::path::Path::new("."),
    )
    .unwrap();
    assert!(r.engines[0].step_time_source.is_derived());
    assert_eq!(r.engines[0].step_time_source.label(), "calibration (derived)");
    let src = serde_json::to_value(&r.engines[0].step_time_source).unwrap();
    assert!(src["provenance"]["source"]
        .as_str()
        .unwrap()
        .contains("not measured on A100-80GB"));
    let (a, b) = (
        std::fs::read(dir.join("out/requests.parquet")).unwrap(),
        std::fs::read(dir.join("builtin/requests.parquet")).unwrap(),
    );
    assert_eq!(a, b, "file and built-in calibrations disagree");
    let summary = std::fs::read_to_string(dir.join("builtin/summary.json")).unwrap();
    assert!(summary.contains("calibration (derived)"), "{summary}");
    // An unknown built-in lists the known ones.
    let out3 = bin()
        .args([
            "run",
            "-q",
            "--set",
            "cluster.engines[0].calibration=builtin:nope",
            "--out",
        ])
        .arg(dir.join("bad"))
        .output()
        .unwrap();
    assert_eq!(out3.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out3.stderr);
    assert!(
        e.contains("cluster.engines[0].calibration") && e.contains("builtin:rtx-a6000-from-a40"),
        "{e}"
    );
}

#[test]
fn bad_profiles_and_devices_get_clear_errors() {
    let dir = common::tmpdir("bad-profiles");
    // A Vidur CSV with a broken number names the file, line and column.
    let csv = dir.join("broken.mlp.csv");
    let mut text = String::from("n_head,n_kv_head,n_embd,n_expanded_embd,vocab_size,use_gated_mlp,num_tokens,num_tensor_parallel_workers,time_stats.add.min,time_stats.add.max,time_stats.add.mean,time_stats.add.median,time_stats.add.std\n");
    text += "32,32,4096,11008,32000,True,16,1,0.1,0.1,0.1,0.1,0\n";
    text += "32,32,4096,11008,32000,True,sixteen,1,0.1,0.1,0.1,0.1,0\n";
    std::fs::write(&csv, text).unwrap();
    let e = Profile::load(&csv).unwrap_err().to_string();
    assert!(
        e.contains("broken.mlp.csv") && e.contains("line 3") && e.contains("num_tokens"),
        "{e}"
    );
    // An unknown operator in our format names the point and the allowed names.
    let json = dir.join("p.json");
    std::fs::write(
        &json,
        r#"{"format":"chimera-profile/v1","meta":{"device":"x","gpu":"A40","backend":"b","dtype":"bf16","date":"d","peak_tflops":1,"bandwidth_gb_s":1,"peak_source":"s"},
           "shape":{"name":"m","hidden":8,"intermediate":16,"heads":2,"kv_heads":2,"head_dim":4,"vocab":10,"gated":true,"dtype_bytes":2},
           "points":[{"op":"attn_pre_proj","tokens":1,"batch":1,"context":0,"tp":1,"median_ms":0.1},
                     {"op":"flash_attn","tokens":1,"batch":1,"context":0,"tp":1,"median_ms":0.1}]}"#,
    )
    .unwrap();
    let e = Profile::load(&json).unwrap_err().to_string();
    assert!(
        e.contains("points[1].op") && e.contains("flash_attn") && e.contains("attn_decode"),
        "{e}"
    );
    // Devices: unknown kind, and a build or machine without the backend.
    let out = bin()
        .args(["calibrate", "profile", "--model", "Qwen2.5-0.5B", "--device", "tpu"])
        .arg("--out")
        .arg(dir.join("x.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu or cuda"));
    let out = bin()
        .args(["calibrate", "profile", "--model", "Qwen2.5-0.5B", "--device", "cuda"])
        .arg("--out")
        .arg(dir.join("x.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "cuda") {
        // Built with the GPU backend on a machine without a GPU (CI): the driver is missing.
        if !std::path::Path::new("/proc/driver/nvidia").exists() {
            assert!(err.contains("no NVIDIA driver"), "{err}");
        }
    } else {
        assert!(err.contains("--features cuda"), "{err}");
    }
    // A derive to a GPU that is not in the catalogue lists the known ones.
    let out = bin()
        .args(["calibrate", "derive", "--gpu", "RTX-9090", "--from"])
        .arg(common::repo().join("calibration/a40-vidur.yaml"))
        .arg("--out")
        .arg(dir.join("d.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RTX-A6000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(feature = "profile")]
#[test]
fn cpu_profile_fit_and_check_run_end_to_end() {
    let dir = common::tmpdir("cpu-profile");
    let prof = dir.join("cpu.json");
    let out = bin()
        .args([
            "calibrate",
            "profile",
            "--model",
            "Qwen2.5-0.5B",
            "--device",
            "cpu",
            "-q",
            "--tokens",
            "1,16,64",
            "--reps",
            "2",
        ])
        .arg("--out")
        .arg(&prof)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = Profile::load(&prof).unwrap();
    assert_eq!(p.meta.gpu, "cpu");
    assert_eq!(p.shape.dtype_bytes, 4);
    for &(op, _) in calib::OPS {
        assert!(p.points.iter().any(|x| x.op == op), "{op} not profiled");
    }
    assert!(p.points.iter().all(|x| x.median_ms > 0.0 && x.reps == 2));
    // Bigger matrix products take longer.
    let t = |n: u64| {
        p.points
            .iter()
            .find(|x| x.op == "mlp_up_proj" && x.tokens == n)
            .unwrap()
            .median_ms
    };
    assert!(t(64) > t(1), "{} {}", t(64), t(1));
    let cal = dir.join("cpu.yaml");
    let out = bin()
        .args(["calibrate", "fit", "--profile"])
        .arg(&prof)
        .arg("--out")
        .arg(&cal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = Calibration::load(&cal).unwrap();
    assert!(c.fitted.contains(&"mfu_attention".to_string()), "{:?}", c.fitted);
    assert!(c.datasheet.as_ref().unwrap().source.contains("measured on this CPU"));
    let out = bin()
        .args(["calibrate", "check", "--json", "--calibration"])
        .arg(&cal)
        .arg("--profile")
        .arg(&prof)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["overall"]["points"].as_u64(), Some(p.points.len() as u64));
    assert!(v["ops"]["attn_decode"]["median_rel_err"].as_f64().unwrap() >= 0.0);
}
