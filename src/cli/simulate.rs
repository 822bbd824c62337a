//! `chimera run` and the summary table it (and `chimera replay`) prints.

#[allow(unused_imports)]
use super::*;

pub(super) fn run_cmd(
    r: &Resolved,
    out: &Path,
    sets: &[String],
    path: Option<&Path>,
    quiet: bool,
    json: bool,
) -> Result<i32> {
    let bar = if quiet || json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} workflows ({elapsed})")
            .map_err(|e| Error::other(e.to_string()))?
            .progress_chars("=> "),
    );
    bar.set_message(r.scenario.name.clone());
    let t0 = Instant::now();
    let mut progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let rep = crate::run::run_to_dir(r, out, sets, path, &mut progress);
    bar.finish_and_clear();
    let rep = rep?;
    let wall = t0.elapsed().as_secs_f64();
    if json {
        let s = crate::input::read_text(&out.join("summary.json"))?;
        print!("{s}");
    } else if !quiet {
        print_summary(&rep.summary, rep.sim_end_ns, wall, out, false);
    }
    Ok(0)
}

pub(super) fn fmt_opt(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 1000.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    }
}

pub(super) fn stat_row(label: &str, s: &Stats) -> String {
    format!(
        "  {label:<28} {:>8} {:>10} {:>10} {:>10} {:>10}",
        s.count,
        fmt_opt(s.mean),
        fmt_opt(s.p50),
        fmt_opt(s.p90),
        fmt_opt(s.p99)
    )
}

/// The human-readable summary table.
/// `measured`: the summary of a replay (times measured, not simulated; no engine steps).
pub fn print_summary(s: &Summary, sim_end_ns: i64, wall_s: f64, out: &Path, measured: bool) {
    println!(
        "chimera {} · scenario {} · seed {} · {}",
        crate::run::VERSION,
        s.scenario,
        s.seed,
        s.policy
    );
    if measured {
        println!(
            "{} workflows ({} failed), {} request attempts ({} rejected) · measured over {:.1} s",
            s.workflows.count, s.workflows.failed, s.requests.count, s.requests.rejected, wall_s
        );
    } else {
        println!(
            "{} workflows ({} failed), {} requests ({} rejected, {} preemptions) · {:.1} s simulated in {:.2} s wall",
            s.workflows.count,
            s.workflows.failed,
            s.requests.count,
            s.requests.rejected,
            s.requests.preemptions,
            sim_end_ns as f64 / 1e9,
            wall_s
        );
    }
    println!();
    println!(
        "  {:<28} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "latency", "count", "mean", "p50", "p90", "p99"
    );
    println!("{}", stat_row("request TTFT (ms)", &s.requests.ttft_ms));
    println!("{}", stat_row("request TPOT (ms)", &s.requests.tpot_ms));
    println!("{}", stat_row("request E2E (ms)", &s.requests.e2e_ms));
    let queue = if measured {
        "request client queue (ms)"
    } else {
        "request engine queue (ms)"
    };
    println!("{}", stat_row(queue, &s.requests.queue_ms));
    println!("{}", stat_row("workflow E2E (s)", &s.workflows.e2e_s));
    println!(
        "{}",
        stat_row("workflow E2E / out token (ms)", &s.workflows.e2e_per_output_token_ms)
    );
    println!();
    println!(
        "  {:<16} {:>10} {:>7} {:>10} {:>14}",
        "model", "workflows", "share", "accuracy", "mean E2E (s)"
    );
    for m in &s.by_model {
        let acc = m
            .accuracy
            .as_ref()
            .map(|a| format!("{:.1}%", a.accuracy * 100.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} {:>10} {:>6.1}% {:>10} {:>14}",
            m.model,
            m.workflows,
            m.share * 100.0,
            acc,
            fmt_opt(m.e2e_s.mean)
        );
    }
    if let Some(a) = &s.accuracy {
        println!("  {:<16} {:>10} {:>7} {:>9.1}%", "all", a.known, "", a.accuracy * 100.0);
    }
    println!();
    if measured {
        println!("  {:<32} {:<13} timing", "endpoint", "model");
        for e in &s.engines {
            println!("  {:<32} {:<13} {}", e.name, e.model, e.step_time_source);
        }
    } else {
        print_engines(s);
    }
    println!();
    println!(
        "  throughput: {:.2} workflows/s, {:.2} requests/s, {:.0} output tokens/s over {:.1} s",
        s.throughput.workflows_per_s,
        s.throughput.requests_per_s,
        s.throughput.output_tokens_per_s,
        s.throughput.makespan_s
    );
    if measured {
        println!(
            "  results: {}/{{requests,workflows,itl,metrics}}.parquet (+ .jsonl as recorded), decisions.jsonl, summary.json, manifest.json",
            out.display()
        );
        return;
    }
    if s.engines.iter().any(|e| e.step_time_source == "roofline-default") {
        println!("  step times: roofline defaults from datasheets (not measured); give engines a calibration file to change that");
    }
    if s.engines.iter().any(|e| e.step_time_source == "calibration (derived)") {
        println!("  step times: a calibration derived from another GPU's measurements and the datasheets (not measured on this GPU; see manifest.json)");
    }
    let mut said: Vec<&str> = Vec::new();
    for e in &s.engines {
        if !said.contains(&e.step_time_expected_error.as_str()) {
            said.push(&e.step_time_expected_error);
            println!(
                "  step-time error to expect ({}): {}",
                e.name, e.step_time_expected_error
            );
        }
    }
    println!(
        "  results: {}/{{requests,workflows,engines}}.parquet, summary.json, manifest.json",
        out.display()
    );
}

pub(super) fn print_engines(s: &Summary) {
    println!(
        "  {:<18} {:<13} {:<10} {:>8} {:>6} {:>11} {:>8} {:>10}  {}",
        "engine", "model", "gpu", "steps", "busy", "tok/step", "preempt", "KV tokens", "step time"
    );
    for e in &s.engines {
        println!(
            "  {:<18} {:<13} {:<10} {:>8} {:>5.0}% {:>11.1} {:>8} {:>10}  {}",
            e.name,
            e.model,
            e.gpu,
            e.steps,
            e.busy_fraction * 100.0,
            e.mean_step_tokens,
            e.preemptions,
            e.kv_capacity_tokens,
            e.step_time_source
        );
    }
}
