//! Analysis of sweep tables: means over seeds, latency-accuracy Pareto frontiers, S x Q grids,
//! and the plots drawn from them (`plot`). Reads `sweep.parquet` files; never runs a
//! simulation, so a figure is redrawn from results without rerunning them.

pub mod compare;
pub mod plot;
#[cfg(feature = "analysis")]
pub mod report;

use crate::error::{Error, Result};
use crate::sweep::table::SweepTable;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Latency metrics a frontier can use on its x axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XMetric {
    /// Mean over workflows of end-to-end latency per output token (the paper's metric).
    PerToken,
    /// Mean workflow end-to-end latency.
    Mean,
    /// p99 workflow end-to-end latency.
    P99,
}

impl XMetric {
    pub fn parse(s: &str) -> Result<XMetric> {
        match s {
            "per-token" => Ok(XMetric::PerToken),
            "mean" => Ok(XMetric::Mean),
            "p99" => Ok(XMetric::P99),
            other => Err(Error::bad(format!(
                "--x: expected per-token, mean or p99, got `{other}`"
            ))),
        }
    }
    pub fn column(self) -> &'static str {
        match self {
            XMetric::PerToken => "workflows.e2e_per_output_token_ms.mean",
            XMetric::Mean => "workflows.e2e_s.mean",
            XMetric::P99 => "workflows.e2e_s.p99",
        }
    }
    pub fn axis(self) -> &'static str {
        match self {
            XMetric::PerToken => "Workflow end-to-end latency per output token (ms/token, mean)",
            XMetric::Mean => "Workflow end-to-end latency (s, mean)",
            XMetric::P99 => "Workflow end-to-end latency (s, p99)",
        }
    }
}

/// One grid point of one series, averaged over its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct PointMean {
    pub label: String,
    /// (path, value) of the point's grid axes.
    pub params: Vec<(String, String)>,
    pub seeds: usize,
    /// Means over seeds, by metric name.
    pub mean: BTreeMap<String, f64>,
    /// Sample standard deviations over seeds (0 with one seed).
    pub sd: BTreeMap<String, f64>,
    /// The table rows (one per seed) averaged here.
    pub rows: Vec<usize>,
}

impl PointMean {
    pub fn get(&self, metric: &str) -> f64 {
        self.mean.get(metric).copied().unwrap_or(f64::NAN)
    }
    pub fn param(&self, path: &str) -> Option<&str> {
        self.params.iter().find(|(p, _)| p == path).map(|(_, v)| v.as_str())
    }
}

/// Group rows by (label, grid values) in first-appearance order and average `metrics` over seeds.
pub fn means(t: &SweepTable, metrics: &[&str]) -> Result<Vec<PointMean>> {
    let labels = t
        .text("label")
        .ok_or_else(|| Error::bad("sweep table without labels"))?;
    let params = t.params();
    let pcols: Vec<&[Option<String>]> = params.iter().map(|p| t.text(&format!("param.{p}")).unwrap()).collect();
    let mcols: Vec<&[Option<f64>]> = metrics.iter().map(|m| t.need_num(m)).collect::<Result<_>>()?;
    let mut order: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for row in 0..t.rows {
        let key = (
            labels[row].clone().unwrap_or_default(),
            params
                .iter()
                .zip(&pcols)
                .filter_map(|(p, c)| c[row].clone().map(|v| (p.clone(), v)))
                .collect::<Vec<_>>(),
        );
        let gi = match order.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                order.push(key);
                order.len() - 1
            }
        };
        groups.entry(gi).or_default().push(row);
    }
    Ok(groups
        .into_iter()
        .map(|(gi, rows)| {
            let (label, params) = order[gi].clone();
            let mut mean = BTreeMap::new();
            let mut sd = BTreeMap::new();
            for (m, col) in metrics.iter().zip(&mcols) {
                let v: Vec<f64> = rows.iter().filter_map(|&r| col[r]).collect();
                let n = v.len() as f64;
                let mu = v.iter().sum::<f64>() / n.max(1.0);
                let var = if v.len() > 1 {
                    v.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0)
                } else {
                    0.0
                };
                mean.insert(m.to_string(), if v.is_empty() { f64::NAN } else { mu });
                sd.insert(m.to_string(), var.sqrt());
            }
            PointMean {
                label,
                params,
                seeds: rows.len(),
                mean,
                sd,
                rows,
            }
        })
        .collect())
}

/// Which of `pts` are on the Pareto frontier of (lower x, higher y): no other point is at
/// least as good in both and better in one.
pub fn pareto(pts: &[(f64, f64)]) -> Vec<bool> {
    pts.iter()
        .map(|&(x, y)| !pts.iter().any(|&(ox, oy)| ox <= x && oy >= y && (ox < x || oy > y)))
        .collect()
}

/// Read and concatenate the sweep tables of several folders (or files).
pub fn read_tables(inputs: &[PathBuf]) -> Result<Vec<SweepTable>> {
    inputs
        .iter()
        .map(|p| {
            let f = if p.is_dir() { p.join("sweep.parquet") } else { p.clone() };
            SweepTable::read(&f)
        })
        .collect()
}

/// A series' frontier: its averaged points and which are on its Pareto frontier.
#[derive(Debug, Clone)]
pub struct Frontier {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub on_frontier: Vec<bool>,
    pub params: Vec<Vec<(String, String)>>,
    /// Points where some seed's run was overloaded (`steady.overloaded`): their latency is not
    /// a steady state, so they are never on the frontier.
    pub overloaded: Vec<bool>,
}

/// Whether any of `rows` was marked overloaded in the table's steady-state summary (false
/// for tables written before that column existed).
fn any_overloaded(t: &SweepTable, rows: &[usize]) -> bool {
    match t.text("steady.overloaded") {
        Some(col) => rows.iter().any(|&r| col[r].as_deref() == Some("true")),
        None => rows
            .iter()
            .any(|&r| t.num("steady.overloaded").is_some_and(|c| c[r] == Some(1.0))),
    }
}

/// Frontiers per series label over all tables, x from `x`, y = task accuracy in percent.
pub fn frontiers(tables: &[SweepTable], x: XMetric) -> Result<Vec<Frontier>> {
    let mut out: Vec<Frontier> = Vec::new();
    for t in tables {
        for p in means(t, &[x.column(), "accuracy.accuracy"])? {
            let xy = (p.get(x.column()), 100.0 * p.get("accuracy.accuracy"));
            if !(xy.0.is_finite() && xy.1.is_finite()) {
                continue;
            }
            let over = any_overloaded(t, &p.rows);
            match out.iter_mut().find(|f| f.label == p.label) {
                Some(f) => {
                    f.points.push(xy);
                    f.params.push(p.params);
                    f.overloaded.push(over);
                }
                None => out.push(Frontier {
                    label: p.label,
                    points: vec![xy],
                    on_frontier: vec![],
                    params: vec![p.params],
                    overloaded: vec![over],
                }),
            }
        }
    }
    for f in &mut out {
        let steady: Vec<(f64, f64)> = f
            .points
            .iter()
            .zip(&f.overloaded)
            .map(|(p, o)| if *o { (f64::INFINITY, f64::NEG_INFINITY) } else { *p })
            .collect();
        f.on_frontier = pareto(&steady)
            .into_iter()
            .zip(&f.overloaded)
            .map(|(on, o)| on && !o)
            .collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_keeps_points_nothing_beats_in_both() {
        let pts = [
            (1.0, 50.0),
            (2.0, 60.0),
            (2.5, 55.0),
            (3.0, 60.0),
            (0.5, 40.0),
            (1.0, 50.0),
        ];
        assert_eq!(pareto(&pts), vec![true, true, false, false, true, true]);
    }

    #[test]
    fn x_metrics_parse_and_name_their_columns() {
        assert_eq!(
            XMetric::parse("per-token").unwrap().column(),
            "workflows.e2e_per_output_token_ms.mean"
        );
        assert!(XMetric::parse("median").unwrap_err().to_string().contains("per-token"));
    }
}
