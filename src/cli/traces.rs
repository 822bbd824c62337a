//! `chimera trace`: generate, import, inspect and fit workflow traces.

#[allow(unused_imports)]
use super::*;

pub(super) fn trace_cmd(what: TraceCmd) -> Result<i32> {
    use crate::trace::{self, FittedParams, Task};
    match what {
        TraceCmd::Gen {
            task,
            models,
            workflows,
            seed,
            out,
            data,
            items,
        } => {
            let task = Task::parse(&task).map_err(|e| e.context("--task"))?;
            let part = items
                .as_deref()
                .map(|s| {
                    let (keep, body) = match s.strip_prefix('!') {
                        Some(b) => (false, b),
                        None => (true, s),
                    };
                    body.split_once('/')
                        .and_then(|(k, n)| Some((k.trim().parse::<u64>().ok()?, n.trim().parse::<u64>().ok()?)))
                        .filter(|(k, n)| *n >= 2 && k < n)
                        .map(|p| (p, keep))
                        .ok_or_else(|| {
                            Error::bad(format!(
                                "--items: expected K/N or !K/N with 0 <= K < N and N >= 2, got `{s}`"
                            ))
                        })
                })
                .transpose()?;
            // A trace is generated and read whole, in memory: a bound keeps both possible.
            const MAX_TRACE_WORKFLOWS: u64 = 2_000_000;
            if !(1..=MAX_TRACE_WORKFLOWS).contains(&workflows) {
                return Err(Error::bad(format!(
                    "--workflows: expected 1 to {MAX_TRACE_WORKFLOWS} (a trace is held in memory; for longer runs use a `generated` workload, which draws workflows as they arrive), got {workflows}"
                )));
            }
            for (i, m) in models.iter().enumerate() {
                if models[..i].contains(m) {
                    return Err(Error::bad(format!("--models: `{m}` is listed twice")));
                }
            }
            let t = trace::gen::generate_part(
                FittedParams::embedded(),
                task,
                &models,
                workflows,
                seed,
                data.as_deref(),
                part,
            )
            .map_err(|e| if data.is_some() { e.context("--data") } else { e })?;
            trace::write_trace(&out, &t)?;
            println!(
                "wrote {} ({} workflows of {} for {}; {})",
                out.display(),
                t.workflows.len(),
                task.name(),
                t.models.join(", "),
                if data.is_some() {
                    "real problems with their text"
                } else {
                    "latent difficulties, no problem text (give --data ../shared/data for real problems)"
                }
            );
        }
        TraceCmd::Import {
            what:
                ImportCmd::MathL5 {
                    outcomes,
                    problems,
                    models,
                    seed,
                    out,
                },
        } => {
            let t = trace::import::import_math_l5(&outcomes, &problems, &models, seed, FittedParams::embedded())?;
            trace::write_trace(&out, &t)?;
            println!(
                "wrote {} ({} workflows with real problem text and outcomes for {})",
                out.display(),
                t.workflows.len(),
                t.models.join(", ")
            );
        }
        TraceCmd::Stats {
            file,
            compare_data,
            json,
        } => {
            let t = trace::read_trace(&file)?;
            let rows = trace::stats::stats(&t, compare_data.as_deref(), FittedParams::embedded())?;
            if json {
                print_json(&rows)?;
            } else {
                println!(
                    "{}: {} workflows, models {}",
                    file.display(),
                    t.workflows.len(),
                    t.models.join(", ")
                );
                print!("{}", trace::stats::table(&rows));
            }
        }
        TraceCmd::Fit { data, out } => {
            let p = trace::fit::fit(&data)?;
            let mut text = String::from("# Generator parameters fitted by `chimera trace fit --data ../shared/data`.\n# Do not edit by hand: refit. Each note says which file and columns a part came from.\n");
            text += &serde_saphyr::to_string(&p).map_err(|e| Error::other(e.to_string()))?;
            std::fs::write(&out, text).map_err(|e| Error::io(&out, e))?;
            println!("wrote {}", out.display());
        }
    }
    Ok(0)
}
