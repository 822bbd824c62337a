//! Figures from sweep results: frontiers, S x Q heatmaps and sensitivity lines are written as
//! real PNG and SVG files, redrawn from the table alone, with readable labels.

mod common;

use chimera::analysis::{self, plot, XMetric};
use chimera::sweep::{self, table::SweepTable, GridAxis, RunOptions, Series, SweepSpec};
use std::path::{Path, PathBuf};

fn run_sweep(spec: &SweepSpec, out: &Path) {
    let opts = RunOptions {
        jobs: 2,
        shard: None,
        resume: false,
    };
    sweep::run(spec, out, &opts, &mut |_, _| {}).unwrap();
}

fn small_sweep(dir: &Path) -> PathBuf {
    let aging = "cluster.engines[*].scheduling={priority_aging: {starvation_steps: 200, quantum_steps: 20}}";
    let spec = SweepSpec {
        scenario: None,
        sets: vec!["workload.workflows=120".into(), "workload.arrivals.rate_per_s=0.5".into()],
        seeds: 2,
        series: vec![
            Series {
                label: "vLLM".into(),
                sets: vec![],
                grid: vec![GridAxis {
                    path: "policy.routing.fractions".into(),
                    values: ["1.0", "0.7", "0.4", "0.0"]
                        .iter()
                        .map(|a| format!("{{Qwen2.5-1.5B: {a}, Qwen2.5-7B: {}}}", 1.0 - a.parse::<f64>().unwrap()))
                        .collect(),
                }],
            },
            Series {
                label: "Chimera".into(),
                sets: vec![
                    aging.into(),
                    "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.5}, min_confidence_gain: 0.1}".into(),
                    "policy.length={kind: oracle}".into(),
                    "policy.confidence={kind: noisy_oracle, auc: 0.68}".into(),
                    "policy.priority=stjf".into(),
                ],
                grid: vec![
                    GridAxis {
                        path: "cluster.engines[*].scheduling.priority_aging.starvation_steps".into(),
                        values: vec!["5".into(), "50".into(), "500".into()],
                    },
                    GridAxis {
                        path: "cluster.engines[*].scheduling.priority_aging.quantum_steps".into(),
                        values: vec!["2".into(), "20".into()],
                    },
                ],
            },
        ],
    };
    let out = dir.join("sweep");
    run_sweep(&spec, &out);
    out
}

fn check_png(p: &Path) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", p.display());
    assert!(b.len() > 20_000, "{} is only {} bytes", p.display(), b.len());
}

#[test]
fn frontier_plots_are_written_from_the_table_with_labels_and_legend() {
    let d = common::tmpdir("plots-frontier");
    let sw = small_sweep(&d);
    let tables = analysis::read_tables(std::slice::from_ref(&sw)).unwrap();
    let fronts = analysis::frontiers(&tables, XMetric::PerToken).unwrap();
    assert_eq!(fronts.len(), 2);
    let v = &fronts[0];
    assert_eq!(v.points.len(), 4);
    // Sending everything to the small model is the fastest point and always on the frontier.
    let fastest = v
        .points
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
        .unwrap()
        .0;
    assert!(v.on_frontier[fastest]);
    let files = plot::frontier(
        &tables,
        XMetric::PerToken,
        "test frontier",
        None,
        &d.join("fig/frontier"),
    )
    .unwrap();
    check_png(&files[0]);
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    for text in [
        "test frontier",
        "vLLM",
        "Chimera",
        "Task accuracy (%)",
        "latency per output token",
    ] {
        assert!(svg.contains(text), "SVG lacks `{text}`");
    }
    // Mean workflow latency on x instead.
    let files = plot::frontier(&tables, XMetric::Mean, "t", Some(true), &d.join("fig/frontier-mean")).unwrap();
    assert!(std::fs::read_to_string(&files[1])
        .unwrap()
        .contains("Workflow end-to-end latency (s, mean)"));
}

#[test]
fn sq_heatmap_and_lines_come_from_the_grid_axes() {
    let d = common::tmpdir("plots-sq");
    let sw = small_sweep(&d);
    let t = SweepTable::read(&sw.join("sweep.parquet")).unwrap();
    let s = "cluster.engines[*].scheduling.priority_aging.starvation_steps";
    let q = "cluster.engines[*].scheduling.priority_aging.quantum_steps";
    let files = plot::heatmap(&t, s, q, "workflows.e2e_s.p99", &d.join("heat")).unwrap();
    check_png(&files[0]);
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    // Axis names, values, a readable title with the unit and the seeds, and a colour bar
    // captioned with the metric and its unit.
    for text in [
        "starvation_steps",
        "quantum_steps",
        "500",
        "workflow E2E p99 (s), mean over",
        ">\nworkflow E2E p99 (s)\n<",
    ] {
        assert!(svg.contains(text), "heatmap SVG lacks `{text}`");
    }
    let files = plot::lines(
        &t,
        s,
        q,
        &["workflows.e2e_s.p99", "accuracy.accuracy"],
        &d.join("lines"),
    )
    .unwrap();
    check_png(&files[0]);
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    // Accuracy in percent, latency with its unit; intervals over seeds when there are several.
    for text in [
        "quantum_steps = 20",
        "accuracy (%)",
        "workflow E2E p99 (s)",
        "mean over",
    ] {
        assert!(svg.contains(text), "lines SVG lacks `{text}`");
    }
    // A missing axis or metric is named.
    let e = plot::heatmap(&t, "policy.nope", q, "workflows.e2e_s.p99", &d.join("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("policy.nope") && e.contains("starvation_steps"), "{e}");
    let e = plot::heatmap(&t, s, q, "workflows.nope", &d.join("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("workflows.nope") && e.contains("accuracy.accuracy"), "{e}");
}

#[test]
fn the_plot_cli_redraws_without_rerunning() {
    let d = common::tmpdir("plots-cli");
    let sw = small_sweep(&d);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["plot", "frontier", "--print", "--x", "mean", "--out"])
        .arg(d.join("f"))
        .arg(&sw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("frontier") && text.contains("wrote") && text.contains("f.svg"),
        "{text}"
    );
    // Prefixes with dots keep them (the extension is appended).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["plot", "frontier", "--out"])
        .arg(d.join("apps-1.5b-r2"))
        .arg(&sw)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(d.join("apps-1.5b-r2.png").exists() && d.join("apps-1.5b-r2.svg").exists());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
        .args(["plot", "frontier", "--x", "median", "--out"])
        .arg(d.join("g"))
        .arg(&sw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[cfg(feature = "analysis")]
#[test]
fn polars_group_by_agrees_with_the_plain_means_and_the_report_compares_at_matched_points() {
    use chimera::analysis::report;
    let d = common::tmpdir("plots-polars");
    let sw = small_sweep(&d);
    let metrics = ["workflows.e2e_per_output_token_ms.mean", "accuracy.accuracy"];
    let pl = report::means(&sw, &metrics).unwrap();
    let t = SweepTable::read(&sw.join("sweep.parquet")).unwrap();
    let plain = analysis::means(&t, &metrics).unwrap();
    assert_eq!(pl.len(), plain.len());
    for (a, b) in pl.iter().zip(&plain) {
        assert_eq!((&a.label, &a.params, a.seeds as usize), (&b.label, &b.params, b.seeds));
        for (i, m) in metrics.iter().enumerate() {
            assert!(
                (a.values[i] - b.get(m)).abs() < 1e-9,
                "{m}: {} vs {}",
                a.values[i],
                b.get(m)
            );
        }
    }
    let op = vec![
        (
            "cluster.engines[*].scheduling.priority_aging.starvation_steps".to_string(),
            "50".to_string(),
        ),
        (
            "cluster.engines[*].scheduling.priority_aging.quantum_steps".to_string(),
            "20".to_string(),
        ),
    ];
    let c = report::compare(&sw, XMetric::PerToken, "Chimera", &op, &["vLLM".to_string()]).unwrap();
    assert_eq!(c.versus.len(), 1);
    assert!(c.chimera.1 > 0.0 && c.chimera.0 > 0.0);
    let e = report::compare(&sw, XMetric::PerToken, "Chimera", &op, &["MLFQ".to_string()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no series `MLFQ`"), "{e}");
}

/// Overloaded points (`steady.overloaded` in some seed) are drawn but never on a frontier: a
/// latency that grows with the run's length is not a steady state to trade against.
#[test]
fn overloaded_points_are_marked_and_kept_off_the_frontier() {
    let dir = common::tmpdir("plots-overload");
    let spec = SweepSpec {
        scenario: None,
        sets: vec!["workload.workflows=200".into()],
        seeds: 1,
        series: vec![Series {
            label: "vLLM".into(),
            sets: vec!["policy.routing.fractions={Qwen2.5-1.5B: 0.0, Qwen2.5-7B: 1.0}".into()],
            grid: vec![GridAxis {
                path: "workload.arrivals.rate_per_s".into(),
                values: vec!["0.2".into(), "30".into()],
            }],
        }],
    };
    let out = dir.join("sweep");
    run_sweep(&spec, &out);
    let t = SweepTable::read(&out.join("sweep.parquet")).unwrap();
    let f = &analysis::frontiers(&[t], XMetric::PerToken).unwrap()[0];
    assert_eq!(f.overloaded, vec![false, true], "{f:?}");
    assert_eq!(f.on_frontier, vec![true, false]);
    let files = plot::frontier(
        &[SweepTable::read(&out.join("sweep.parquet")).unwrap()],
        XMetric::PerToken,
        "overload",
        None,
        &dir.join("f"),
    )
    .unwrap();
    let svg = std::fs::read_to_string(files.iter().find(|p| p.extension().unwrap() == "svg").unwrap()).unwrap();
    assert!(svg.contains("1 overloaded"), "the legend says so");
}
