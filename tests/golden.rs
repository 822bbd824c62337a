//! Golden files: the summary of a small default run, byte for byte. A change in engine
//! behaviour, step times, workload generation or summary format shows up here. When the change
//! is intended, regenerate with `UPDATE_GOLDEN=1 cargo test --test golden` and commit the diff.

mod common;
use common::*;

#[test]
fn default_scenario_summary_is_unchanged() {
    let dir = tmpdir("golden");
    run(&default_with(&["workload.workflows=300"]), &dir);
    let got = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let path = repo().join("tests/golden/default-300-summary.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).expect("golden file present (UPDATE_GOLDEN=1 to create)");
    if got != want {
        let first = got.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "summary.json differs from {} at line {}:\n  got:  {}\n  want: {}\nIf intended: UPDATE_GOLDEN=1 cargo test --test golden",
            path.display(),
            first + 1,
            got.lines().nth(first).unwrap_or(""),
            want.lines().nth(first).unwrap_or("")
        );
    }
}
