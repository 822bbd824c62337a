//! Architecture Invariant checks on the source itself: the policy core and the engine model are
//! sans-IO (no clock, no threads, no files, no sockets, no async runtime).

mod common;
use common::repo;

fn sources(dir: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for e in std::fs::read_dir(repo().join(dir)).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") {
            out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
        }
    }
    assert!(!out.is_empty(), "{dir} has sources");
    out
}

#[test]
fn the_policy_core_and_engine_touch_no_clock_file_socket_or_thread() {
    let forbidden = [
        "std::time",
        "Instant",
        "SystemTime",
        "std::fs",
        "std::net",
        "std::thread",
        "tokio",
        "std::io",
        "thread_rng",
        "rand::rng",
    ];
    let runtime = repo().join("src/runtime.rs");
    let runtime = vec![(
        runtime.display().to_string(),
        std::fs::read_to_string(&runtime).unwrap(),
    )];
    for files in ["src/policy", "src/engine", "src/router", "src/predictor"]
        .map(sources)
        .into_iter()
        .chain([runtime])
    {
        for (path, text) in files {
            // Module docs may name what the module must not do; check code lines only.
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for f in forbidden {
                    assert!(!code.contains(f), "{path}:{}: `{f}` in a sans-IO module: {line}", n + 1);
                }
            }
        }
    }
}

#[test]
fn every_module_says_what_it_is_for() {
    for dir in [
        "src",
        "src/engine",
        "src/hw",
        "src/output",
        "src/policy",
        "src/scenario",
        "src/sim",
        "src/workload",
        "src/trace",
        "src/router",
        "src/predictor",
        "src/calib",
        "src/cli",
        "src/fidelity",
    ] {
        for (path, text) in sources(dir) {
            if path.ends_with("main.rs") || path.ends_with("tests.rs") {
                continue;
            }
            assert!(
                text.trim_start().starts_with("//!"),
                "{path} starts without a //! module doc"
            );
        }
    }
}

/// One workflow lifecycle: only the runtime feeds the policy core; the simulator and the replay
/// go through `runtime::Runtime` and never call the core's handlers or keep a workflow map.
#[test]
fn the_drivers_share_one_workflow_runtime() {
    let mut files = sources("src/sim");
    files.extend(sources("src/replay"));
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for f in [
                ".handle_request(",
                ".handle_finished(",
                ".handle_failed(",
                ".handle_probe(",
                ".handle_engine_report(",
                ".handle_workflow_done(",
                "poll_decision(",
                "journal::feed",
                "feed(&mut",
                "HashMap<u64, Wf",
            ] {
                assert!(
                    !code.contains(f),
                    "{path}:{}: `{f}`: a driver must go through runtime::Runtime: {line}",
                    n + 1
                );
            }
        }
    }
}
