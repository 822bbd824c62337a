//! Sweeps: parallel equals serial, resume skips finished points, shards merge into the
//! unsharded table, and bad grids fail before anything runs.

mod common;

use chimera::sweep::{self, table::SweepTable, GridAxis, RunOptions, Series, Shard, SweepSpec};
use std::path::Path;

fn spec() -> SweepSpec {
    SweepSpec {
        scenario: None,
        sets: vec!["workload.workflows=150".into()],
        seeds: 2,
        series: vec![
            Series {
                label: "fcfs".into(),
                sets: vec!["policy.priority=fcfs".into()],
                grid: vec![GridAxis {
                    path: "policy.routing.fractions".into(),
                    values: vec![
                        "{Qwen2.5-1.5B: 1.0, Qwen2.5-7B: 0.0}".into(),
                        "{Qwen2.5-1.5B: 0.5, Qwen2.5-7B: 0.5}".into(),
                        "{Qwen2.5-1.5B: 0.0, Qwen2.5-7B: 1.0}".into(),
                    ],
                }],
            },
            Series {
                label: "mlfq".into(),
                sets: vec![],
                grid: vec![GridAxis {
                    path: "cluster.engines[*].scheduling".into(),
                    values: vec![
                        "{mlfq: {base_quantum_ms: 20, growth: 2, starvation_ms: 5000}}".into(),
                        "{mlfq: {base_quantum_ms: 80, growth: 2, starvation_ms: 5000}}".into(),
                    ],
                }],
            },
        ],
    }
}

fn opts(jobs: usize, shard: Option<Shard>, resume: bool) -> RunOptions {
    RunOptions { jobs, shard, resume }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn parallel_runs_give_the_serial_table_byte_for_byte() {
    let d = common::tmpdir("sweep-par");
    let s = spec();
    let serial = sweep::run(&s, &d.join("serial"), &opts(1, None, false), &mut |_, _| {}).unwrap();
    let par = sweep::run(&s, &d.join("par"), &opts(4, None, false), &mut |_, _| {}).unwrap();
    assert_eq!(serial.total, 10);
    assert_eq!(bytes(&serial.table), bytes(&par.table));
    let t = SweepTable::read(&par.table).unwrap();
    assert_eq!(t.rows, 10);
    let labels: Vec<&str> = t.text("label").unwrap().iter().map(|l| l.as_deref().unwrap()).collect();
    assert_eq!(&labels[..6], &["fcfs"; 6]);
    assert_eq!(
        t.params(),
        vec!["policy.routing.fractions", "cluster.engines[*].scheduling"]
    );
    // Each series has only its own axis.
    assert!(t.text("param.cluster.engines[*].scheduling").unwrap()[0].is_none());
    // More work on the big model: higher accuracy (same seed, common random numbers).
    let acc = t.need_num("accuracy.accuracy").unwrap();
    let seed = t.need_num("seed").unwrap();
    assert_eq!(seed[0], seed[4]);
    assert!(acc[4].unwrap() > acc[0].unwrap(), "{acc:?}");
    // Seeds differ within a point.
    let hashes = t.text("event_log_hash").unwrap();
    assert_ne!(hashes[0], hashes[1]);
}

#[test]
fn an_interrupted_sweep_resumes_without_redoing_finished_points() {
    let d = common::tmpdir("sweep-resume");
    let s = spec();
    let full = sweep::run(&s, &d.join("full"), &opts(2, None, false), &mut |_, _| {}).unwrap();
    // Keep 4 finished points and a line torn by the kill; no table.
    let part = d.join("part");
    let _ = sweep::run(&s, &part, &opts(2, None, false), &mut |_, _| {}).unwrap();
    let jsonl = std::fs::read_to_string(part.join("points.jsonl")).unwrap();
    let mut kept: String = jsonl.lines().take(4).map(|l| format!("{l}\n")).collect();
    kept += &jsonl.lines().nth(5).unwrap()[..40];
    std::fs::write(part.join("points.jsonl"), kept).unwrap();
    std::fs::remove_file(part.join("sweep.parquet")).unwrap();
    // Without --resume the folder is refused; with it, only the missing points run.
    let e = sweep::run(&s, &part, &opts(2, None, false), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let rep = sweep::run(&s, &part, &opts(2, None, true), &mut |_, _| {}).unwrap();
    assert_eq!((rep.skipped, rep.ran), (4, 6));
    assert_eq!(bytes(&rep.table), bytes(&full.table));
    // Resuming with another sweep in the folder is refused.
    let mut other = spec();
    other.seeds = 3;
    let e = sweep::run(&other, &part, &opts(2, None, true), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("another sweep"), "{e}");
}

#[test]
fn an_edited_points_file_is_refused_on_resume_and_merge() {
    let d = common::tmpdir("sweep-edited");
    let s = spec();
    let part = d.join("part");
    sweep::run(&s, &part, &opts(2, None, false), &mut |_, _| {}).unwrap();
    std::fs::remove_file(part.join("sweep.parquet")).unwrap();
    let jsonl = part.join("points.jsonl");
    let original = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let mut rec: sweep::Record = serde_json::from_str(lines[2]).unwrap();
    // (a) A metric changed by hand: the record's check no longer matches.
    let edited = lines[2].replacen("\"workflows.count\",", "\"workflows.count\",1", 1);
    assert_ne!(edited, lines[2], "the edit must change the line");
    // (b) A record re-sealed by someone who knows the check, but with another point's
    // parameters: the plan does not match.
    let p = rec.params.keys().next().unwrap().clone();
    rec.params.insert(p, "{Qwen2.5-1.5B: 0.9, Qwen2.5-7B: 0.1}".into());
    let resealed = serde_json::to_string(&rec.seal()).unwrap();
    for (name, line, want) in [
        ("metric", edited.as_str(), "line 3"),
        ("params", resealed.as_str(), "does not match the plan"),
    ] {
        let mut text: Vec<&str> = lines.clone();
        text[2] = line;
        std::fs::write(&jsonl, text.join("\n") + "\n").unwrap();
        let e = sweep::run(&s, &part, &opts(2, None, true), &mut |_, _| {}).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{name}: {e}");
        let m = e.to_string();
        assert!(
            m.contains("points.jsonl") && m.contains(want) && m.contains("remove"),
            "{name}: {m}"
        );
        let e = sweep::merge(&[part.clone()], &d.join(format!("merged-{name}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{name}: merge: {e}");
    }
    // The untouched file resumes (nothing left to run).
    std::fs::write(&jsonl, &original).unwrap();
    let rep = sweep::run(&s, &part, &opts(2, None, true), &mut |_, _| {}).unwrap();
    assert_eq!((rep.skipped, rep.ran), (10, 0));
}

/// Ctrl-C (SIGINT) or SIGTERM during `chimera sweep`: the workers stop between points, the
/// finished points stay in points.jsonl, the process exits 130, and `--resume` runs only the
/// points that were missing.
#[test]
fn a_signalled_sweep_stops_between_points_and_resumes() {
    let d = common::tmpdir("sweep-signal");
    for sig in ["INT", "TERM"] {
        let out = d.join(sig);
        let args = |resume: bool| {
            let mut a: Vec<String> = [
                "sweep",
                "-q",
                "--jobs",
                "1",
                "--set",
                "workload.workflows=3000",
                "--grid",
                "policy.max_retries=1,2,3,4,5,6,7,8,9,10,11,12",
                "--out",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            a.push(out.display().to_string());
            if resume {
                a.push("--resume".into());
            }
            a
        };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
            .args(args(false))
            .spawn()
            .unwrap();
        let jsonl = out.join("points.jsonl");
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(&jsonl).map_or(0, |t| t.lines().count()) < 1 {
            assert!(t0.elapsed().as_secs() < 120, "no point finished");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(child.wait().unwrap().code(), Some(130), "SIG{sig}");
        let kept = sweep::read_records(&out).unwrap().len();
        assert!((1..12).contains(&kept), "SIG{sig}: {kept} points kept");
        assert!(!out.join("sweep.parquet").exists());
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
            .args(args(true))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(SweepTable::read(&out.join("sweep.parquet")).unwrap().rows, 12);
    }
}

#[test]
fn shards_merge_into_the_unsharded_table() {
    let d = common::tmpdir("sweep-shards");
    let s = spec();
    let full = sweep::run(&s, &d.join("full"), &opts(2, None, false), &mut |_, _| {}).unwrap();
    let mut dirs = Vec::new();
    for i in 0..3 {
        let dir = d.join(format!("shard-{i}"));
        let rep = sweep::run(
            &s,
            &dir,
            &opts(1, Some(Shard { index: i, count: 3 }), false),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(rep.total, [4, 3, 3][i as usize]);
        dirs.push(dir);
    }
    let e = sweep::merge(&dirs[..2], &d.join("merged-short"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("7 of 10") && e.contains("missing points 2, 5, 8"), "{e}");
    let merged = sweep::merge(&dirs, &d.join("merged")).unwrap();
    assert_eq!(bytes(&merged), bytes(&full.table));
}

#[test]
fn a_bad_grid_value_fails_before_anything_runs() {
    let d = common::tmpdir("sweep-bad");
    let mut s = spec();
    s.series[0].grid[0]
        .values
        .push("{Qwen2.5-1.5B: 0.9, Qwen2.5-7B: 0.9}".into());
    let e = sweep::run(&s, &d.join("x"), &opts(2, None, false), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sweep point 6") && e.contains("fcfs") && e.contains("sum to"),
        "{e}"
    );
    assert!(!d.join("x/points.jsonl").exists());
}

#[test]
fn the_sweep_cli_runs_a_grid_and_merges_shards() {
    let d = common::tmpdir("sweep-cli");
    let bin = env!("CARGO_BIN_EXE_chimera");
    for i in 0..2 {
        let out = std::process::Command::new(bin)
            .args([
                "sweep",
                "--grid",
                "policy.priority=fcfs,workflow_order",
                "--set",
                "workload.workflows=100",
                "--seeds",
                "2",
                "-q",
            ])
            .args(["--shard", &format!("{i}/2"), "--out"])
            .arg(d.join(format!("s{i}")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = std::process::Command::new(bin)
        .args(["sweep", "merge"])
        .arg(d.join("s0"))
        .arg(d.join("s1"))
        .arg("--out")
        .arg(d.join("m"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 runs"));
    let out = std::process::Command::new(bin)
        .args(["sweep", "--grid", "policy.priority=fcfs", "--shard", "2/2", "--out"])
        .arg(d.join("bad"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shard 2/2"));
}

#[test]
fn the_slurm_array_script_runs_shards_that_merge_into_the_unsharded_table() {
    let d = common::tmpdir("sweep-slurm");
    let bin = env!("CARGO_BIN_EXE_chimera");
    let plan = d.join("plan.yaml");
    std::fs::write(
        &plan,
        "seeds: 2\nsets: [workload.workflows=80]\nseries:\n  - label: a\n    grid:\n      policy.priority: [fcfs, workflow_order]\n  - label: b\n    sets: [policy.priority=fcfs]\n    grid:\n      workload.arrivals.rate_per_s: [1, 3]\n",
    )
    .unwrap();
    let script = common::repo().join("scripts/sweep-slurm.sh");
    for i in 0..3 {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .env("SLURM_ARRAY_TASK_ID", i.to_string())
            .env("N", "3")
            .env("PLAN", &plan)
            .env("OUT", d.join("arr"))
            .env("CHIMERA", bin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "task {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shards: Vec<_> = (0..3).map(|i| d.join(format!("arr/shard-{i}"))).collect();
    let merged = sweep::merge(&shards, &d.join("merged")).unwrap();
    let out = std::process::Command::new(bin)
        .args(["sweep", "-q", "--plan"])
        .arg(&plan)
        .arg("--out")
        .arg(d.join("whole"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bytes(&merged), bytes(&d.join("whole/sweep.parquet")));
}

#[test]
fn every_shipped_sweep_plan_resolves_at_every_point() {
    let mut plans: Vec<std::path::PathBuf> = Vec::new();
    for dir in ["scenarios/sweeps", "scenarios/paper"] {
        for e in std::fs::read_dir(common::repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if dir.ends_with("sweeps") || name.ends_with(".plan.yaml") {
                plans.push(p);
            }
        }
    }
    plans.sort();
    assert!(plans.len() >= 6, "{plans:?}");
    for p in plans {
        let spec = SweepSpec::load_plan(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let pts = spec.points().unwrap();
        assert!(!pts.is_empty());
        spec.check_points(&pts)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}
