//! The paper comparisons from sweep tables, with polars (feature `analysis`): per sweep, the
//! means over seeds of every (series, grid point) by a polars group-by, each series' Pareto
//! frontier, then Chimera's operating point against each baseline's frontier at matched
//! accuracy (latency ratio) and at matched latency (accuracy difference), and the ablations.

use super::{pareto, XMetric};
use crate::error::{Error, Result};
use polars::prelude::*;
use std::path::Path;

fn pl(e: PolarsError) -> Error {
    Error::other(format!("polars: {e}"))
}

/// One (series, grid point) averaged over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Mean {
    pub label: String,
    /// (path, value) of the grid axes the point has.
    pub params: Vec<(String, String)>,
    pub seeds: u32,
    /// Means over seeds of the requested metrics, in request order.
    pub values: Vec<f64>,
}

/// Means over seeds per (label, grid values), in first-appearance order, with polars.
pub fn means(path: &Path, metrics: &[&str]) -> Result<Vec<Mean>> {
    let file = if path.is_dir() {
        path.join("sweep.parquet")
    } else {
        path.to_path_buf()
    };
    let name = file.to_string_lossy().to_string();
    let lf = LazyFrame::scan_parquet(PlRefPath::new(name.as_str()), ScanArgsParquet::default()).map_err(pl)?;
    let schema = lf.clone().collect_schema().map_err(pl)?;
    let params: Vec<String> = schema
        .iter_names()
        .filter(|n| n.starts_with("param."))
        .map(|n| n.to_string())
        .collect();
    for m in metrics {
        if schema.get(m).is_none() {
            return Err(Error::bad(format!("{}: no column `{m}`", file.display())));
        }
    }
    let mut keys: Vec<Expr> = vec![col("label")];
    keys.extend(params.iter().map(|p| col(p.as_str())));
    let mut aggs: Vec<Expr> = vec![col("seed").count().alias("__seeds")];
    aggs.extend(
        metrics
            .iter()
            .enumerate()
            .map(|(i, m)| col(*m).mean().alias(format!("__m{i}"))),
    );
    let df = lf.group_by_stable(keys).agg(aggs).collect().map_err(pl)?;
    let labels = df.column("label").map_err(pl)?.str().map_err(pl)?.clone();
    let seeds = df.column("__seeds").map_err(pl)?.cast(&DataType::UInt32).map_err(pl)?;
    let seeds = seeds.u32().map_err(pl)?.clone();
    let pcols: Vec<StringChunked> = params
        .iter()
        .map(|p| Ok(df.column(p.as_str()).map_err(pl)?.str().map_err(pl)?.clone()))
        .collect::<Result<_>>()?;
    let mcols: Vec<Float64Chunked> = (0..metrics.len())
        .map(|i| Ok(df.column(&format!("__m{i}")).map_err(pl)?.f64().map_err(pl)?.clone()))
        .collect::<Result<_>>()?;
    Ok((0..df.height())
        .map(|r| Mean {
            label: labels.get(r).unwrap_or_default().to_string(),
            params: params
                .iter()
                .zip(&pcols)
                .filter_map(|(p, c)| c.get(r).map(|v| (p["param.".len()..].to_string(), v.to_string())))
                .collect(),
            seeds: seeds.get(r).unwrap_or(0),
            values: mcols.iter().map(|c| c.get(r).unwrap_or(f64::NAN)).collect(),
        })
        .collect())
}

/// A series' frontier as (latency, accuracy %) points sorted by latency.
fn frontier_of(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let on = pareto(pts);
    let mut f: Vec<(f64, f64)> = pts.iter().zip(on).filter(|(_, o)| *o).map(|(p, _)| *p).collect();
    f.sort_by(|a, b| a.0.total_cmp(&b.0));
    f.dedup();
    f
}

/// The latency at which a frontier first reaches accuracy `y` (linear between points), if it does.
pub fn latency_at_accuracy(front: &[(f64, f64)], y: f64) -> Option<f64> {
    let first = front.first()?;
    if first.1 >= y {
        return Some(first.0);
    }
    front.windows(2).find(|w| w[1].1 >= y).map(|w| {
        let (a, b) = (w[0], w[1]);
        a.0 + (b.0 - a.0) * (y - a.1) / (b.1 - a.1)
    })
}

/// The accuracy a frontier reaches within latency `x` (linear between points); None when even
/// its fastest point is slower.
pub fn accuracy_at_latency(front: &[(f64, f64)], x: f64) -> Option<f64> {
    let first = front.first()?;
    if x < first.0 {
        return None;
    }
    match front.windows(2).find(|w| w[1].0 >= x) {
        Some(w) => {
            let (a, b) = (w[0], w[1]);
            Some(a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0).max(1e-12))
        }
        None => front.last().map(|p| p.1),
    }
}

/// Chimera's operating point against one baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Versus {
    pub baseline: String,
    /// Baseline latency at Chimera's accuracy / Chimera's latency (None: never that accurate).
    pub latency_ratio: Option<f64>,
    /// Chimera's accuracy - the baseline's at Chimera's latency, points (None: never that fast).
    pub accuracy_gain: Option<f64>,
    /// The largest latency ratio and accuracy gain over all of the reference's frontier
    /// points (each against the baseline at its own matched accuracy or latency).
    pub best_latency_ratio: Option<f64>,
    pub best_accuracy_gain: Option<f64>,
}

/// Comparisons of one sweep: Chimera's point, and each baseline at matched settings.
#[derive(Debug, Clone)]
pub struct SweepComparison {
    pub chimera: (f64, f64),
    pub versus: Vec<Versus>,
}

/// Compare `reference` at the grid point `operating` (path=value pairs) with every series in
/// `baselines`, on `x` against accuracy.
pub fn compare(
    path: &Path,
    x: XMetric,
    reference: &str,
    operating: &[(String, String)],
    baselines: &[String],
) -> Result<SweepComparison> {
    let ms = means(path, &[x.column(), "accuracy.accuracy"])?;
    let point = |m: &Mean| (m.values[0], 100.0 * m.values[1]);
    let chimera = ms
        .iter()
        .find(|m| {
            m.label == reference
                && operating
                    .iter()
                    .all(|(k, v)| m.params.iter().any(|(pk, pv)| pk == k && pv == v))
        })
        .map(point)
        .ok_or_else(|| {
            Error::bad(format!(
                "{}: no `{reference}` point with {}",
                path.display(),
                operating
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let reference_front = frontier_of(
        &ms.iter()
            .filter(|m| m.label == reference)
            .map(point)
            .collect::<Vec<_>>(),
    );
    let mut versus = Vec::new();
    for b in baselines {
        let pts: Vec<(f64, f64)> = ms.iter().filter(|m| &m.label == b).map(point).collect();
        if pts.is_empty() {
            return Err(Error::bad(format!("{}: no series `{b}`", path.display())));
        }
        let front = frontier_of(&pts);
        let best = |f: &dyn Fn(&(f64, f64)) -> Option<f64>| {
            reference_front
                .iter()
                .filter_map(f)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        versus.push(Versus {
            baseline: b.clone(),
            latency_ratio: latency_at_accuracy(&front, chimera.1).map(|l| l / chimera.0),
            accuracy_gain: accuracy_at_latency(&front, chimera.0).map(|a| chimera.1 - a),
            best_latency_ratio: best(&|p| latency_at_accuracy(&front, p.1).map(|l| l / p.0)),
            best_accuracy_gain: best(&|p| accuracy_at_latency(&front, p.0).map(|a| p.1 - a)),
        });
    }
    Ok(SweepComparison { chimera, versus })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_points_interpolate_along_the_frontier() {
        let f = [(10.0, 20.0), (20.0, 30.0), (40.0, 35.0)];
        assert_eq!(latency_at_accuracy(&f, 25.0), Some(15.0));
        assert_eq!(latency_at_accuracy(&f, 15.0), Some(10.0));
        assert_eq!(latency_at_accuracy(&f, 36.0), None);
        assert_eq!(accuracy_at_latency(&f, 30.0), Some(32.5));
        assert_eq!(accuracy_at_latency(&f, 5.0), None);
        assert_eq!(accuracy_at_latency(&f, 50.0), Some(35.0));
    }
}

/// One row of the all-series table: a series at its chosen point.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    pub label: String,
    pub params: Vec<(String, String)>,
    pub per_token_ms: f64,
    pub e2e_mean_s: f64,
    pub e2e_p99_s: f64,
    pub queue_mean_ms: f64,
    pub queue_p99_ms: f64,
    pub accuracy_pct: f64,
}

/// Every series at one point: the grid point matching `operating` where the series has those
/// axes, else its `baseline_point`-th grid point (in sweep order).
pub fn series_rows(path: &Path, operating: &[(String, String)], baseline_point: usize) -> Result<Vec<SeriesRow>> {
    let cols = [
        "workflows.e2e_per_output_token_ms.mean",
        "workflows.e2e_s.mean",
        "workflows.e2e_s.p99",
        "requests.queue_ms.mean",
        "requests.queue_ms.p99",
        "accuracy.accuracy",
    ];
    let ms = means(path, &cols)?;
    let mut labels: Vec<&str> = Vec::new();
    for m in &ms {
        if !labels.contains(&m.label.as_str()) {
            labels.push(&m.label);
        }
    }
    let mut rows = Vec::new();
    for l in labels {
        let pts: Vec<&Mean> = ms.iter().filter(|m| m.label == l).collect();
        let has_axes = operating
            .iter()
            .all(|(k, _)| pts[0].params.iter().any(|(pk, _)| pk == k));
        let chosen = if has_axes && !operating.is_empty() {
            pts.iter()
                .find(|m| {
                    operating
                        .iter()
                        .all(|(k, v)| m.params.iter().any(|(pk, pv)| pk == k && pv == v))
                })
                .copied()
        } else {
            pts.get(baseline_point).copied()
        };
        if let Some(m) = chosen {
            let v = &m.values;
            rows.push(SeriesRow {
                label: l.to_string(),
                params: m.params.clone(),
                per_token_ms: v[0],
                e2e_mean_s: v[1],
                e2e_p99_s: v[2],
                queue_mean_ms: v[3],
                queue_p99_ms: v[4],
                accuracy_pct: 100.0 * v[5],
            });
        }
    }
    Ok(rows)
}
