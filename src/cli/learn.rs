//! `chimera router`, `chimera predictor` and `chimera bench policy`: training and evaluating the
//! semantic router and the length predictor, and timing the policy's decisions.

#[allow(unused_imports)]
use super::*;

pub(super) fn bench_policy(
    predictor: &Path,
    router: &Path,
    text_trace: Option<&Path>,
    requests: u64,
    json: bool,
) -> Result<i32> {
    use crate::policy::{Decision, RequestInfo};
    use std::sync::Arc;
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(|e| Error::io(p, e));
    let sets = vec![
        "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 0.5}, min_confidence_gain: 0.1}"
            .to_string(),
        format!("policy.length={{kind: qrf, path: {}}}", abs(predictor)?.display()),
        format!("policy.confidence={{kind: router, path: {}}}", abs(router)?.display()),
        "policy.priority=stjf".to_string(),
    ];
    // The default cluster, with the router's first two models in place of its two.
    let text = crate::input::read_text(&router)?;
    let rm =
        crate::router::RouterModel::from_json(&text).map_err(|e| Error::bad(format!("{}: {e}", router.display())))?;
    if rm.models.len() < 2 {
        return Err(Error::bad(format!(
            "{}: the benchmark needs a router with two models",
            router.display()
        )));
    }
    let mut sets = sets;
    for k in 0..2 {
        sets.push(format!("cluster.engines[{k}].model={}", rm.models[k]));
        sets.push(format!(
            "cluster.engines[{k}].name={}",
            rm.models[k].to_ascii_lowercase()
        ));
    }
    let r = scenario::load_str(DEFAULT_SCENARIO, &sets, Path::new("."))?;
    let mut core = crate::factory::build_policy(&r, 1);
    let texts: Vec<Arc<str>> = match text_trace {
        Some(p) => crate::trace::read_trace(p)?.workflows.iter().filter_map(|w| w.text.clone()).collect(),
        None => vec![Arc::from("Let $f(x) = x^3 - 3x + 1$. Find the number of real solutions of $f(f(x)) = 0$, and compute the sum of the squares of all real solutions. Express your answer as a common fraction if it is not an integer. Recall that the composition of two cubic polynomials has degree nine; count carefully, using the intermediate value theorem on suitable intervals, and justify why no solution is repeated.")],
    };
    if texts.is_empty() {
        return Err(Error::bad("--text-trace: the trace has no problem text"));
    }
    let mut src = crate::trace::source::GeneratedWorkload::new(
        &[(crate::trace::Task::Apps, 0.5), (crate::trace::Task::Math, 0.5)],
        &r.models,
        requests,
        crate::workload::arrivals::InterArrival::from_spec(&crate::workload::arrivals::ArrivalSpec::Poisson {
            rate_per_s: 1.0,
            rate_scale: 1.0,
        })
        .expect("poisson"),
        1,
        None,
        1.0,
    )?;
    use crate::workload::WorkloadSource;
    let mut costs_ns: Vec<f64> = Vec::with_capacity(requests as usize);
    let mut id = 0u64;
    while let Some(w) = src.next_workflow()? {
        let plan = &w.plans[0];
        let mut so_far = 0u64;
        for (k, st) in plan.stages.iter().enumerate() {
            let info = RequestInfo {
                request: id,
                workflow: w.id,
                stage: k as u32,
                prompt_tokens: st.prompt_tokens,
                context_tokens: st.context_tokens,
                workflow_output_so_far: so_far,
                text: Some(texts[(w.id as usize) % texts.len()].clone()),
                task: w.task.clone(),
                oracle: None,
            };
            let t0 = Instant::now();
            core.handle_request(0, info);
            while let Some(d) = core.poll_decision() {
                std::hint::black_box(&d);
                if let Decision::Abandon { .. } = d {
                    return Err(Error::other("the policy abandoned a request"));
                }
            }
            costs_ns.push(t0.elapsed().as_nanos() as f64);
            core.handle_finished(0, id, st.output_tokens);
            so_far += st.output_tokens as u64;
            id += 1;
            if id >= requests {
                break;
            }
        }
        core.handle_workflow_done(0, w.id);
        if id >= requests {
            break;
        }
    }
    costs_ns.sort_by(f64::total_cmp);
    let q = |p: f64| crate::stats::quantile_sorted(&costs_ns, p) / 1e3;
    let mean_us = costs_ns.iter().sum::<f64>() / costs_ns.len() as f64 / 1e3;
    // Share of workflow latency: the same policy on the default scenario.
    let out = std::env::temp_dir().join(format!("chimera-bench-policy-{}", std::process::id()));
    let rep = crate::run::run_to_dir(&r, &out, &sets, None, &mut |_, _| {})?;
    let _ = std::fs::remove_dir_all(&out);
    let per_wf = rep.summary.requests.count as f64 / rep.summary.workflows.count.max(1) as f64;
    let e2e_s = rep.summary.workflows.e2e_s.mean.unwrap_or(f64::NAN);
    let share = mean_us * 1e-6 * per_wf / e2e_s;
    let v = serde_json::json!({
        "requests": costs_ns.len(), "decision_us_p50": q(0.5), "decision_us_p99": q(0.99), "decision_us_mean": mean_us,
        "requests_per_workflow": per_wf, "workflow_e2e_s_mean": e2e_s, "share_of_workflow_latency": share,
    });
    if json {
        print_json(&v)?;
    } else {
        println!(
            "chimera decision (router + predictor + balancer + STJF), {} requests: p50 {:.1} us, p99 {:.1} us, mean {:.1} us",
            costs_ns.len(),
            q(0.5),
            q(0.99),
            mean_us
        );
        println!(
            "default scenario with this policy: {per_wf:.2} requests per workflow, mean workflow E2E {e2e_s:.2} s: decisions are {:.4} % of workflow latency",
            share * 100.0
        );
    }
    Ok(0)
}

pub(super) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| Error::other(e.to_string()))?
    );
    Ok(())
}

pub(super) fn predictor_cmd(what: PredictorCmd) -> Result<i32> {
    use crate::predictor::{evaluate, qrf::ForestConfig, LengthPredictor};
    let print = |r: &crate::predictor::PredictorReport, json: bool| -> Result<()> {
        if json {
            print_json(&r)?;
        } else {
            println!("{} calls, quantile {}", r.rows, r.quantile);
            println!(
                "  {:<34} {:>12} {:>10} {:>9}",
                "predictor", "pinball", "MAE", "Spearman"
            );
            for s in &r.scores {
                println!(
                    "  {:<34} {:>12.1} {:>10.1} {:>9.3}",
                    s.predictor, s.pinball_loss, s.mae, s.spearman
                );
            }
        }
        Ok(())
    };
    match what {
        PredictorCmd::Train {
            traces,
            out,
            quantile,
            trees,
            seed,
            json,
        } => {
            if !(0.0..=1.0).contains(&quantile) {
                return Err(Error::bad(format!("--quantile: expected 0..=1, got {quantile}")));
            }
            if !(1..=2000).contains(&trees) {
                return Err(Error::bad(format!(
                    "--trees: expected 1 to 2000 (training time grows with the count; 40 is the default), got {trees}"
                )));
            }
            let all = crate::trace::read_traces(&traces, false)?;
            let prov = serde_json::json!({
                "trained_on": traces.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "workflows": all.workflows.len(),
                "trainer": format!("chimera {} predictor train", env!("CARGO_PKG_VERSION")),
            });
            let p = LengthPredictor::train(
                &all,
                quantile,
                &ForestConfig {
                    trees,
                    seed,
                    ..ForestConfig::default()
                },
                prov,
            );
            let text = serde_json::to_string(&p).map_err(|e| Error::other(e.to_string()))?;
            std::fs::write(&out, text).map_err(|e| Error::io(&out, e))?;
            if !json {
                println!(
                    "wrote {} (figures below are in-sample; evaluate on a held-out trace)",
                    out.display()
                );
            }
            print(&evaluate(&p, &all), json)?;
        }
        PredictorCmd::Eval { predictor, trace, json } => {
            let text = crate::input::read_text(&predictor)?;
            let p =
                LengthPredictor::from_json(&text).map_err(|e| Error::bad(format!("{}: {e}", predictor.display())))?;
            let t = crate::trace::read_trace(&trace)?;
            print(&evaluate(&p, &t), json)?;
        }
    }
    Ok(0)
}

/// Embeddings of `texts` with the encoder in `dir` (the `encoder` build feature).
#[cfg(feature = "encoder")]
pub(super) fn embed_all(dir: &Path, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    let enc = crate::encoder::TextEncoder::load(dir)?;
    texts.iter().map(|t| enc.embed(t)).collect()
}

#[cfg(not(feature = "encoder"))]
pub(super) fn embed_all(_dir: &Path, _texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    Err(Error::bad("--encoder: this chimera was built without the `encoder` feature; rebuild with `cargo build --release --features encoder`"))
}

/// Where each of `want` sits in `have`; a missing one is an error saying what `have` holds.
fn columns_of(want: &[String], have: &[String], missing: impl Fn(&str) -> String) -> Result<Vec<usize>> {
    want.iter()
        .map(|w| {
            have.iter()
                .position(|x| x == w)
                .ok_or_else(|| Error::bad(format!("{} (it has {})", missing(w), have.join(", "))))
        })
        .collect()
}

pub(super) fn router_dataset(t: &crate::trace::Trace) -> Result<crate::router::eval::Dataset<'_>> {
    let ws: Vec<_> = t.workflows.iter().filter(|w| w.text.is_some()).collect();
    if ws.is_empty() {
        return Err(Error::bad(
            "the trace has no problem text; a router trains on text (import one with `chimera trace import math-l5`)",
        ));
    }
    Ok(crate::router::eval::Dataset {
        texts: ws.iter().map(|w| w.text.as_deref().expect("filtered")).collect(),
        labels: ws
            .iter()
            .map(|w| w.plans.iter().map(|p| p.success == Some(true)).collect())
            .collect(),
        models: t.models.clone(),
    })
}

pub(super) fn print_router_report(r: &crate::router::eval::EvalReport, json: bool) -> Result<()> {
    if json {
        print_json(&r)?;
        return Ok(());
    }
    println!("{} items", r.items);
    println!(
        "  {:<14} {:>6} {:>6} {:>8} {:>8} {:>12}",
        "model", "items", "solved", "AUC", "Brier", "AUC length"
    );
    let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    for m in &r.models {
        println!(
            "  {:<14} {:>6} {:>6} {:>8} {:>8.3} {:>12}",
            m.model,
            m.count,
            m.positives,
            f(m.auc),
            m.brier,
            f(m.auc_length_only)
        );
    }
    println!(
        "  {:<14} {:>6} {:>6} {:>8} {:>8} {:>12}",
        "mean",
        "",
        "",
        f(r.mean_auc),
        "",
        f(r.mean_auc_length_only)
    );
    println!("  (mean-accuracy baseline: AUC 0.5 for every model)");
    println!("  calibration (predicted -> observed solve rate, items):");
    for m in &r.models {
        let bins: Vec<String> = m
            .calibration
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| format!("{:.2}->{:.2} ({})", b.mean_predicted, b.observed_rate, b.count))
            .collect();
        println!("  {:<14} {}", m.model, bins.join("  "));
    }
    Ok(())
}

pub(super) fn router_cmd(what: RouterCmd) -> Result<i32> {
    use crate::router::{self, eval, FeatureConfig, RouterModel, TrainConfig};
    let frac_ok = |f: f64| {
        if (0.0..1.0).contains(&f) {
            Ok(())
        } else {
            Err(Error::bad(format!("--test-fraction: expected 0 <= f < 1, got {f}")))
        }
    };
    match what {
        RouterCmd::Train {
            traces,
            out,
            test_fraction,
            seed,
            json,
            encoder: Some(dir),
            cross_fit: _,
        } => {
            frac_ok(test_fraction)?;
            let t = crate::trace::read_traces(&traces, true)?;
            let data = router_dataset(&t)?;
            let (train_idx, _) = data.split(test_fraction, seed);
            let embs = embed_all(&dir, &train_idx.iter().map(|&i| data.texts[i]).collect::<Vec<_>>())?;
            let labels: Vec<Vec<bool>> = train_idx.iter().map(|&i| data.labels[i].clone()).collect();
            let prov = serde_json::json!({
                "trained_on": traces.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "encoder": dir.display().to_string(),
                "items": embs.len(), "held_out_fraction": test_fraction, "split_seed": seed,
            });
            let m = router::train_dense(&embs, &labels, &data.models, prov);
            std::fs::write(
                &out,
                serde_json::to_string(&m).map_err(|e| Error::other(e.to_string()))?,
            )
            .map_err(|e| Error::io(&out, e))?;
            let r = router::Router::new(m);
            let p: Vec<Vec<f64>> = embs.iter().map(|x| r.predict_dense(x)).collect();
            if !json {
                println!("wrote {} (encoder heads; figures below are in-sample)", out.display());
            }
            print_router_report(&eval::score(&p, None, &labels, &data.models), json)?;
        }
        RouterCmd::Train {
            traces,
            out,
            test_fraction,
            seed,
            json,
            encoder: None,
            cross_fit,
        } => {
            frac_ok(test_fraction)?;
            if cross_fit == 1 || cross_fit > 20 {
                return Err(Error::bad(format!(
                    "--cross-fit: expected 0 (none) or 2 to 20 parts, got {cross_fit}"
                )));
            }
            let t = crate::trace::read_traces(&traces, true)?;
            let data = router_dataset(&t)?;
            let (train_idx, _) = data.split(test_fraction, seed);
            let texts: Vec<&str> = train_idx.iter().map(|&i| data.texts[i]).collect();
            let labels: Vec<Vec<bool>> = train_idx.iter().map(|&i| data.labels[i].clone()).collect();
            let prov = serde_json::json!({
                "trained_on": traces.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "trace_provenance": t.provenance,
                "items": texts.len(),
                "held_out_fraction": test_fraction,
                "split_seed": seed,
                "trainer": format!("chimera {} router train", env!("CARGO_PKG_VERSION")),
                "distinct_texts": texts.iter().collect::<std::collections::HashSet<_>>().len(),
                "cross_fit_parts": cross_fit,
            });
            let m = router::train_cross_fit(
                &texts,
                &labels,
                &data.models,
                &FeatureConfig::default(),
                &TrainConfig::default(),
                prov,
                cross_fit,
                seed,
            );
            let text = serde_json::to_string(&m).map_err(|e| Error::other(e.to_string()))?;
            std::fs::write(&out, text).map_err(|e| Error::io(&out, e))?;
            let r = router::Router::new(m);
            let p: Vec<Vec<f64>> = texts.iter().map(|x| r.predict(x)).collect();
            let report = eval::score(&p, None, &labels, &data.models);
            if json {
                print_router_report(&report, true)?;
            } else {
                println!(
                    "wrote {} (trained on {} rows; figures below are {})",
                    out.display(),
                    texts.len(),
                    if r.parts() > 0 {
                        "out-of-part: each text scored by the cross-fitting part that held it out"
                    } else {
                        "in-sample"
                    }
                );
                print_router_report(&report, false)?;
            }
        }
        RouterCmd::Eval {
            router: path,
            trace,
            test_fraction,
            seed,
            json,
            encoder,
        } => {
            frac_ok(test_fraction)?;
            let text = crate::input::read_text(&path)?;
            let m = RouterModel::from_json(&text).map_err(|e| Error::bad(format!("{}: {e}", path.display())))?;
            // An encoder router reads embeddings: from --encoder, else the encoder it was
            // trained with.
            let encoder = if m.is_encoder() {
                let dir = encoder
                    .or_else(|| m.provenance.get("encoder").and_then(|v| v.as_str()).map(PathBuf::from))
                    .ok_or_else(|| {
                        Error::bad(format!(
                            "{}: an encoder router whose provenance names no encoder; pass --encoder DIR",
                            path.display()
                        ))
                    })?;
                Some(dir)
            } else {
                if encoder.is_some() {
                    return Err(Error::bad(format!(
                        "--encoder: {} is a text-feature router; it reads no embeddings",
                        path.display()
                    )));
                }
                None
            };
            let t = crate::trace::read_trace(&trace)?;
            let data = router_dataset(&t)?;
            // Score the trace's models; the router may have heads for more.
            let cols = columns_of(&data.models, &m.models, |tm| {
                format!("router {} has no head for the trace's model {tm}", path.display())
            })?;
            let (train_idx, test_idx) = if test_fraction > 0.0 {
                data.split(test_fraction, seed)
            } else {
                (vec![], (0..data.texts.len()).collect())
            };
            let r = router::Router::new(m);
            let p: Vec<Vec<f64>> = match &encoder {
                None => test_idx.iter().map(|&i| r.predict(data.texts[i])).collect(),
                Some(dir) => {
                    let texts: Vec<&str> = test_idx.iter().map(|&i| data.texts[i]).collect();
                    let embs = embed_all(dir, &texts)?;
                    let dims = 1usize << r.model.features.buckets_log2;
                    if let Some(e) = embs.iter().find(|e| e.len() > dims) {
                        return Err(Error::bad(format!(
                            "--encoder {}: embeddings of {} dimensions, but the router's heads take at most {dims}; evaluate with the encoder the router was trained with",
                            dir.display(),
                            e.len()
                        )));
                    }
                    embs.iter().map(|e| r.predict_dense(e)).collect()
                }
            };
            let p: Vec<Vec<f64>> = p.iter().map(|row| cols.iter().map(|&c| row[c]).collect()).collect();
            // The length-only baseline needs items to fit on that it is not scored on; with
            // no split (a separate trace) there are none, and it is left out.
            let lens = (!train_idx.is_empty()).then(|| eval::length_baseline(&data, &train_idx, &test_idx));
            let labels: Vec<Vec<bool>> = test_idx.iter().map(|&i| data.labels[i].clone()).collect();
            print_router_report(&eval::score(&p, lens.as_deref(), &labels, &data.models), json)?;
        }
        RouterCmd::Cv {
            trace,
            folds,
            seed,
            json,
            encoder,
            train_trace,
        } => {
            if folds < 2 {
                return Err(Error::bad("--folds: expected at least 2"));
            }
            let t = crate::trace::read_trace(&trace)?;
            let data = router_dataset(&t)?;
            let r = match (encoder, train_trace) {
                (None, Some(gpath)) => {
                    let g = crate::trace::read_trace(&gpath)?;
                    let gdata = router_dataset(&g)?;
                    let cols = columns_of(&data.models, &gdata.models, |m| {
                        format!("--train-trace: {} has no outcomes of {m}", gpath.display())
                    })?;
                    eval::cross_validate_with(&data, folds, seed, |train, test| {
                        let keep: std::collections::HashSet<&str> = train.iter().map(|&i| data.texts[i]).collect();
                        let rows: Vec<usize> = (0..gdata.texts.len())
                            .filter(|&i| keep.contains(gdata.texts[i]))
                            .collect();
                        let texts: Vec<&str> = rows.iter().map(|&i| gdata.texts[i]).collect();
                        let labels: Vec<Vec<bool>> = rows
                            .iter()
                            .map(|&i| cols.iter().map(|&c| gdata.labels[i][c]).collect())
                            .collect();
                        let r = router::Router::new(router::train(
                            &texts,
                            &labels,
                            &data.models,
                            &FeatureConfig::default(),
                            &TrainConfig::default(),
                            serde_json::Value::Null,
                        ));
                        test.iter().map(|&i| r.predict(data.texts[i])).collect()
                    })
                }
                (None, None) => {
                    eval::cross_validate(&data, folds, seed, &FeatureConfig::default(), &TrainConfig::default())
                }
                (Some(dir), _) => {
                    let embs = embed_all(&dir, &data.texts)?;
                    eval::cross_validate_with(&data, folds, seed, |train, test| {
                        let e: Vec<Vec<f32>> = train.iter().map(|&i| embs[i].clone()).collect();
                        let l: Vec<Vec<bool>> = train.iter().map(|&i| data.labels[i].clone()).collect();
                        let r = router::Router::new(router::train_dense(&e, &l, &data.models, serde_json::Value::Null));
                        test.iter().map(|&i| r.predict_dense(&embs[i])).collect()
                    })
                }
            };
            print_router_report(&r, json)?;
        }
    }
    Ok(0)
}
