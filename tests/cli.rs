//! The `chimera` binary as a user meets it: commands, outputs, exit codes, error messages.

mod common;
use common::*;
use std::process::Command;

fn chimera(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn run_default_prints_a_table_and_writes_every_file() {
    let dir = tmpdir("cli-run");
    let d = dir.to_str().unwrap();
    let (code, out, err) = chimera(&["run", "--out", d, "--set", "workload.workflows=150"]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "scenario default",
        "request TTFT (ms)",
        "workflow E2E (s)",
        "Qwen2.5-7B",
        "throughput",
        "not measured",
    ] {
        assert!(out.contains(want), "summary table lacks `{want}`:\n{out}");
    }
    for f in [
        "requests.parquet",
        "workflows.parquet",
        "engines.parquet",
        "summary.json",
        "manifest.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let m = json(&dir.join("manifest.json"));
    assert_eq!(m["status"]["state"], "complete");
    assert_eq!(m["seed"], 1);
    assert_eq!(m["scenario"]["workload"]["workflows"], 150);
    assert!(m["git_commit"].as_str().unwrap().len() >= 7);
    assert!(m["inputs"]["engines"][1]["gpu_provenance"]
        .as_str()
        .unwrap()
        .contains("datasheet"));
    assert_eq!(m["inputs"]["engines"][1]["step_time"]["kind"], "calibration");
    assert_eq!(m["inputs"]["engines"][1]["step_time"]["provenance"]["kind"], "derived");
}

#[test]
fn seed_flag_and_json_output() {
    let dir = tmpdir("cli-json");
    let (code, out, _) = chimera(&[
        "run",
        "--out",
        dir.to_str().unwrap(),
        "--seed",
        "7",
        "--json",
        "--set",
        "workload.workflows=50",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["seed"], 7);
    assert_eq!(v["workflows"]["count"], 50);
}

#[test]
fn scenario_default_prints_yaml_that_validates_and_runs() {
    let (code, yaml, _) = chimera(&["scenario", "default"]);
    assert_eq!(code, 0);
    assert!(yaml.contains("kind: generated"));
    let dir = tmpdir("cli-default-yaml");
    let p = dir.join("mine.yaml");
    std::fs::write(&p, yaml).unwrap();
    let (code, out, _) = chimera(&["validate", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok"));
}

#[test]
fn every_shipped_scenario_validates() {
    let mut files = vec![];
    for d in ["scenarios", "scenarios/bench"] {
        for e in std::fs::read_dir(repo().join(d)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 3);
    if shared_data().is_none() {
        files.retain(|p| !p.to_string_lossy().contains("bench"));
    }
    let args: Vec<&str> = std::iter::once("validate")
        .chain(files.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let (code, out, _) = chimera(&args);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn bad_input_exits_2_with_the_field_path() {
    let dir = tmpdir("cli-bad");
    let bad = dir.join("bad.yaml");
    let v100 = chimera::scenario::DEFAULT_SCENARIO.replacen("gpu: RTX-A6000", "gpu: V100", 1);
    let extra = format!("{}extra: 1\n", chimera::scenario::DEFAULT_SCENARIO);
    let cases: &[(&str, &[&str])] = &[
        (
            &v100,
            &["bad.yaml", "cluster.engines[0].gpu", "unknown GPU `V100`", "H100-SXM"],
        ),
        ("name: x\nname: y\n", &["bad.yaml", "duplicate"]),
        (&extra, &["unknown field `extra`", "expected one of", "cluster"]),
    ];
    for (text, wants) in cases {
        std::fs::write(&bad, text).unwrap();
        let (code, _, err) = chimera(&["run", bad.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        for w in *wants {
            assert!(err.contains(w), "`{err}` should mention `{w}`");
        }
        let (code, out, _) = chimera(&["validate", bad.to_str().unwrap()]);
        assert_eq!(code, 2);
        assert!(out.contains("error"), "{out}");
    }
    let (code, _, err) = chimera(&["run", "no/such/file.yaml"]);
    // A missing input file is bad input too (issue 15: it used to exit 1).
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no/such/file.yaml"));
    let (code, _, _) = chimera(&["run", "--bogus-flag"]);
    assert_eq!(code, 2);
    let (code, _, err) = chimera(&["run", "--set", "policy.routing.fractions={Qwen2.5-7B: 2}"]);
    assert_eq!(code, 2);
    assert!(err.contains("policy.routing.fractions.Qwen2.5-7B"), "{err}");
}

#[test]
fn the_azure_trace_bench_scenario_runs_on_the_shared_trace() {
    let Some(_) = shared_data() else {
        eprintln!("skipping: ../shared/data not present");
        return;
    };
    let dir = tmpdir("cli-azure");
    let (code, _, err) = chimera(&[
        "run",
        "scenarios/bench/vidur-4x-llama2-7b-a100.yaml",
        "--out",
        dir.to_str().unwrap(),
        "-q",
        "--set",
        "workload.limit=300",
    ]);
    assert_eq!(code, 0, "{err}");
    let r = dir.join("requests.parquet");
    let prompts = column(&r, "prompt_tokens");
    let outs = column(&r, "output_tokens");
    assert_eq!(prompts.len(), 300);
    // The first trace row is 374 context tokens and 44 generated.
    let ids = column(&r, "request_id");
    let first = ids.iter().position(|&x| x == 0.0).unwrap();
    assert_eq!((prompts[first], outs[first]), (374.0, 44.0));
    assert!(prompts.iter().zip(&outs).all(|(p, o)| p + o <= 4096.0));
    let engines = strings(&r, "engine");
    for k in 0..4 {
        assert!(
            engines.iter().any(|e| e == &format!("llama2-7b-r{k}")),
            "least outstanding uses every replica"
        );
    }
    let m = json(&dir.join("manifest.json"));
    assert_eq!(m["inputs"]["files"][0]["bytes"], 719_188);
}

/// `validate` checks scenarios, sweep plans and endpoint files alike, and names the bad field.
#[test]
fn validate_checks_scenarios_plans_and_endpoints() {
    let r = common::repo();
    let out = common::chimera_ok(&[
        "validate",
        r.join("scenarios/default.yaml").to_str().unwrap(),
        r.join("scenarios/sweeps/sq-chimera.yaml").to_str().unwrap(),
        r.join("scenarios/endpoints/emulators-local.yaml").to_str().unwrap(),
    ]);
    assert!(out.contains("sweep plan: 1 series, 84 points"), "{out}");
    assert!(out.contains("endpoints: 2 models"), "{out}");
    let d = common::tmpdir("validate-kinds");
    let plan = d.join("p.yaml");
    std::fs::write(
        &plan,
        format!(
            "scenario: {}\nseries:\n  - label: x\n    grid: {{policy.priority: [fcfs, sideways]}}\n",
            r.join("scenarios/default.yaml").display()
        ),
    )
    .unwrap();
    let eps = d.join("e.yaml");
    std::fs::write(
        &eps,
        "models:\n  Qwen2.5-1.5B: {urls: ['http://127.0.0.1:1'], kind: tgi}\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["validate", plan.to_str().unwrap(), eps.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("policy.priority"), "{text}");
    assert!(text.contains("kind"), "{text}");
}

/// `chimera scenario reference` covers every field of every shipped scenario (defaults filled
/// in), and prints them.
#[test]
fn the_scenario_reference_covers_every_shipped_field() {
    fn walk<'a>(v: &'a serde_json::Value, keys: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    keys.push(k.clone());
                    walk(x, keys, out);
                    keys.pop();
                }
            }
            serde_json::Value::Array(a) => {
                let last = keys.pop().unwrap();
                keys.push(format!("{last}[]"));
                if a.iter().all(|x| !x.is_object()) {
                    out.push(keys.clone());
                }
                for x in a {
                    walk(x, keys, out);
                }
                keys.pop();
                keys.push(last);
            }
            _ => out.push(keys.clone()),
        }
    }
    let repo = common::repo();
    let mut files = Vec::new();
    for d in [
        "scenarios",
        "scenarios/bench",
        "scenarios/replay",
        "scenarios/fidelity",
        "scenarios/paper",
    ] {
        for e in std::fs::read_dir(repo.join(d)).unwrap() {
            let p = e.unwrap().path();
            let n = p.to_string_lossy().to_string();
            if n.ends_with(".yaml") && !n.ends_with(".plan.yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 12, "{files:?}");
    let (mut missing, mut seen) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for f in &files {
        let r = chimera::scenario::load(f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let v = serde_json::to_value(&r.scenario).unwrap();
        let mut paths = Vec::new();
        walk(&v, &mut Vec::new(), &mut paths);
        for p in paths {
            let keys: Vec<&str> = p.iter().map(String::as_str).collect();
            if !chimera::scenario::reference::covers(&keys) {
                missing.insert(p.join("."));
            }
            seen.insert(p.join("."));
        }
    }
    assert!(missing.is_empty(), "fields not in the scenario reference: {missing:?}");
    assert!(seen.len() > 60, "{seen:?}");
    let out = common::chimera_ok(&["scenario", "reference"]);
    assert!(
        out.contains("faults[].kind\n    down | slow | fail; default: down"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&common::chimera_ok(&["scenario", "reference", "--json"])).unwrap();
    assert!(json.as_array().unwrap().len() >= 90);
    // The default scenario shows the optional engine fields, commented, with their defaults.
    let d = common::chimera_ok(&["scenario", "default"]);
    for f in [
        "# tensor_parallel: 1",
        "# max_num_seqs:",
        "# scheduling: fcfs",
        "# block_size: 16",
    ] {
        assert!(d.contains(f), "`chimera scenario default` lacks `{f}`");
    }
}

/// Hostile inputs from issue 15 get exit 2 and a message naming what is wrong.
#[test]
fn hostile_inputs_exit_2_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "/nonexistent/scenario.yaml"], "/nonexistent/scenario.yaml"),
        (
            &["run", "-q", "--set", "policy.routing={kind: round_robin, extra: 1}"],
            "unknown field `extra`",
        ),
        (
            &["run", "-q", "--set", "workload.arrivals.rate_per_s=1e-9"],
            "workload.arrivals.rate_per_s",
        ),
        (&["sweep", "-q", "--jobs", "0", "--grid", "seed=1"], "--jobs"),
        (
            &[
                "sweep",
                "-q",
                "--grid",
                "seed=1,2",
                "--out",
                "/tmp/chimera-hostile-sweep",
            ],
            "--seeds",
        ),
        (&["validate", "/nonexistent/plan.yaml"], "/nonexistent/plan.yaml"),
        // Reading a device or a FIFO would never end: refused before a byte is read.
        (&["run", "/dev/zero"], "not a regular file"),
        (
            &[
                "predictor",
                "train",
                "--trace",
                "traces/math-qwen2.5-1.5b-3b-7b-14b.parquet",
                "--out",
                "/tmp/chimera-hostile-p.json",
                "--trees",
                "100000000",
            ],
            "--trees: expected 1 to 2000",
        ),
        (
            &["run", "-q", "--set", "cluster.engines[*].calibration=/dev/zero"],
            "cluster.engines[0].calibration: /dev/zero: is not a regular file",
        ),
        (
            &["run", "-q", "--set", "cluster.engines[*].calibration=none"],
            "cluster.engines[0].calibration",
        ),
        (
            &[
                "run",
                "-q",
                "scenarios/bench/vidur-4x-llama2-7b-a100.yaml",
                "--set",
                "workload.limit=0",
            ],
            "workload.limit",
        ),
        (&["summary", "/dev/null"], "/dev/null"),
        (
            &[
                "sweep",
                "-q",
                "--seeds",
                "1001",
                "--grid",
                "policy.max_retries=1,2,3,4,5,6,7,8,9,10",
                "--grid",
                "workload.workflows=1,2,3,4,5,6,7,8,9,10",
                "--grid",
                "policy.decision_delay_us=1,2,3,4,5,6,7,8,9,10",
                "--out",
                "/tmp/chimera-hostile-big",
            ],
            "at most 1000000",
        ),
        (
            &[
                "trace",
                "gen",
                "--task",
                "math",
                "--models",
                "Qwen2.5-1.5B",
                "--workflows",
                "18446744073709551615",
                "--out",
                "/tmp/chimera-hostile.parquet",
            ],
            "--workflows: expected 1 to 2000000",
        ),
        (
            &[
                "trace",
                "gen",
                "--task",
                "math",
                "--models",
                "Qwen2.5-1.5B,Qwen2.5-1.5B",
                "--workflows",
                "5",
                "--out",
                "/tmp/chimera-hostile.parquet",
            ],
            "listed twice",
        ),
    ];
    for (args, want) in cases {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
            .args(*args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(want), "{args:?}: `{text}` lacks `{want}`");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}
