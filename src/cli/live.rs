//! `chimera emulate` and `chimera replay` (feature `live`, on by default).

#[allow(unused_imports)]
use super::*;

#[cfg(feature = "live")]
pub(super) fn emulate(
    model: &str,
    gpu: &str,
    calibration: Option<&str>,
    host: &str,
    port: u16,
    sets: &[String],
) -> Result<i32> {
    let e = scenario::single_engine(model, gpu, calibration, sets)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|x| Error::other(format!("emulate: {x}")))?;
    rt.block_on(async {
        let addr = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|x| Error::other(format!("emulate: cannot listen on {addr}: {x}")))?;
        let local = listener.local_addr().map_err(|x| Error::other(x.to_string()))?;
        println!(
            "emulating {} on {} ({} blocks of KV, max {} sequences; step times: {}) at http://{local}",
            e.model,
            e.gpu,
            e.kv.num_gpu_blocks,
            e.limits.max_num_seqs,
            e.step_time_source.label()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        chimera_emulate(listener, &e).await
    })?;
    Ok(0)
}

/// The replay's command-line options.
#[cfg_attr(not(feature = "live"), allow(dead_code))]
pub(super) struct ReplayCli {
    pub(super) resume: bool,
    pub(super) quiet: bool,
    pub(super) json: bool,
    pub(super) sets: Vec<String>,
    pub(super) scenario_path: Option<PathBuf>,
}

#[cfg(feature = "live")]
pub(super) fn replay_cmd(r: &Resolved, endpoints: &Path, out: &Path, o: ReplayCli) -> Result<i32> {
    let (quiet, json) = (o.quiet, o.json);
    let eps = crate::replay::endpoints::Endpoints::load(endpoints)?;
    eps.engines(&r.models).map_err(|e| e.context(endpoints.display()))?;
    let opts = crate::replay::ReplayOptions {
        resume: o.resume,
        quiet: quiet || json,
        sets: o.sets,
        scenario_path: o.scenario_path,
    };
    let rep = crate::replay::replay(r, &eps, out, &opts)?;
    if json {
        let p = out.join("summary.json");
        print!("{}", crate::input::read_text(&p)?);
    } else if !quiet {
        print_summary(&rep.summary, (rep.wall_s * 1e9) as i64, rep.wall_s, out, true);
        println!(
            "  replay: {} workflows replayed, {} skipped (finished before --resume), {} failed attempts; send lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            rep.replayed,
            rep.skipped,
            rep.failed_attempts,
            rep.send_lag_ns.0 as f64 / 1e6,
            rep.send_lag_ns.1 as f64 / 1e6,
            rep.send_lag_ns.2 as f64 / 1e6
        );
    }
    Ok(0)
}

#[cfg(not(feature = "live"))]
pub(super) fn replay_cmd(_: &Resolved, _: &Path, _: &Path, _: ReplayCli) -> Result<i32> {
    Err(Error::bad("replay: this binary was built without the `live` feature (on by default); rebuild with `cargo build --release` (or `--features live` after `--no-default-features`)"))
}

#[cfg(feature = "live")]
pub(super) async fn chimera_emulate(listener: tokio::net::TcpListener, e: &scenario::ResolvedEngine) -> Result<()> {
    crate::emulate::serve(listener, e).await
}

#[cfg(not(feature = "live"))]
pub(super) fn emulate(_: &str, _: &str, _: Option<&str>, _: &str, _: u16, _: &[String]) -> Result<i32> {
    Err(Error::bad("emulate: this binary was built without the `live` feature (on by default); rebuild with `cargo build --release` (or `--features live` after `--no-default-features`)"))
}
