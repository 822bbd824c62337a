//! The README's worked tasks, run as written: every ```sh block of its "Worked tasks" section
//! goes to bash (`set -euo pipefail`) in a fresh folder that sees the repository's scenarios,
//! calibrations, models and traces, with this build's `chimera` first on PATH. A task that
//! stops working fails here, so the README cannot drift from the tool.

mod common;

/// The ```sh blocks of the section headed `## Worked tasks`, with the heading above each.
fn worked_tasks(readme: &str) -> Vec<(String, String)> {
    let start = readme
        .find("\n## Worked tasks")
        .expect("README has a `## Worked tasks` section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let (mut out, mut heading, mut block): (Vec<(String, String)>, String, Option<String>) =
        (Vec::new(), String::new(), None);
    for line in section.lines() {
        match &mut block {
            Some(b) if line.trim_start() == "```" => {
                out.push((heading.clone(), std::mem::take(b)));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.starts_with("### ") => heading = line[4..].to_string(),
            None if line.trim_start() == "```sh" => block = Some(String::new()),
            None => {}
        }
    }
    out
}

#[test]
fn the_readme_is_short_and_its_worked_tasks_run_as_written() {
    let repo = common::repo();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    assert!(
        readme.len() < 12_000,
        "README.md is {} bytes; keep it under 12 KB",
        readme.len()
    );
    let tasks = worked_tasks(&readme);
    let headings: Vec<&str> = tasks.iter().map(|(h, _)| h.as_str()).collect();
    for want in [
        "A what-if on your own cluster",
        "Compare policies",
        "An S/Q sweep and its heatmap",
        "Replay against your vLLM",
        "Read the results",
    ] {
        assert!(headings.contains(&want), "no worked task `{want}` in {headings:?}");
    }
    // A checkout's layout: the repository beside `shared` (the README's `../shared/data`).
    let top = common::tmpdir("readme");
    let dir = top.join("chimera");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(repo.join("../shared"), top.join("shared")).unwrap();
    for d in ["scenarios", "calibration", "models", "traces", "catalog"] {
        std::os::unix::fs::symlink(repo.join(d), dir.join(d)).unwrap();
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_chimera"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    for (heading, script) in &tasks {
        // Background servers a block starts are stopped however the block ends.
        let full = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
        let t = std::time::Instant::now();
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(&full)
            .current_dir(&dir)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "worked task `{heading}` failed:\n{script}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("`{heading}`: {:.1} s", t.elapsed().as_secs_f64());
    }
    // What the tasks say they make is there.
    for f in [
        "out/h100/summary.json",
        "out/loss/summary.json",
        "out/frontier/sweep.parquet",
        "out/frontier/frontier.png",
        "out/sq/p99.png",
        "out/replay/requests.parquet",
        "out/replay/decisions.jsonl",
        "out/replay/vs-sim.png",
        "out/small.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing after the worked tasks");
    }
    // The replica-loss what-if shows what it promises: a worse p99 and retried attempts.
    let s = |d: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(d).join("summary.json")).unwrap()).unwrap()
    };
    let (loss, base) = (s("out/loss"), s("out/no-loss"));
    assert!(
        loss["workflows"]["e2e_s"]["p99"].as_f64().unwrap() > 1.5 * base["workflows"]["e2e_s"]["p99"].as_f64().unwrap()
    );
    assert!(loss["requests"]["failed_attempts"].as_u64().unwrap() > 0);
    // Every top-level part of a scenario is described in docs/SCENARIO.md.
    let doc = std::fs::read_to_string(repo.join("docs/SCENARIO.md")).unwrap();
    for part in [
        "`cluster.engines[]`",
        "`workload`",
        "`policy`",
        "`faults`",
        "`seed`",
        "`output.journal`",
        "`limits.max_events`",
    ] {
        assert!(doc.contains(part), "docs/SCENARIO.md does not describe {part}");
    }
}
