//! Figures with plotters, each written as PNG and SVG: the latency-accuracy Pareto frontiers,
//! a heatmap of a metric over two grid axes (S x Q), and metric-against-S lines for a few Q.
//! Text is drawn with the embedded DejaVu Sans, so no system fonts are needed.

use super::{means, Frontier, XMetric};
use crate::error::{Error, Result};
use crate::sweep::table::SweepTable;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            assert!(
                plotters::style::register_font("sans-serif", style, FONT).is_ok(),
                "the embedded font parses"
            );
        }
    });
}

fn pe(e: impl std::fmt::Display) -> Error {
    Error::other(format!("plot: {e}"))
}

/// Colours for series, distinguishable in print and for most colour-blind readers.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
];

/// The series legend, boxed, at `pos`.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
    size: u32,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", size))
        .draw()
        .map_err(pe)
}

/// Something that draws itself on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Write `fig` as `<prefix>.png` and `<prefix>.svg`.
fn save(fig: &impl Figure, prefix: &Path, size: (u32, u32)) -> Result<Vec<PathBuf>> {
    fonts();
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // Append (not replace) the extension: prefixes such as `apps-1.5b-r2` contain dots.
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (png, svg) = (with(".png"), with(".svg"));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        fig.draw(&root)?;
        root.present().map_err(pe)?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        fig.draw(&root)?;
        root.present().map_err(pe)?;
    }
    Ok(vec![png, svg])
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let mag = lo.abs().max(hi.abs()).max(1e-12);
    let span = hi - lo;
    if span <= 1e-9 * mag {
        // A flat series still gets a readable range: 5 % of its magnitude either side.
        return (lo - 0.05 * mag, hi + 0.05 * mag);
    }
    (lo - 0.06 * span, hi + 0.06 * span)
}

struct FrontierFig<'a> {
    series: &'a [Frontier],
    x: XMetric,
    title: &'a str,
    log_x: bool,
}

impl Figure for FrontierFig<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let all: Vec<(f64, f64)> = self.series.iter().flat_map(|s| s.points.iter().copied()).collect();
        let lo = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let (y0, y1) = padded(
            all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        );
        if self.log_x && lo > 0.0 {
            self.draw_on(root, (lo / 1.15..hi * 1.15).log_scale(), y0..y1)
        } else {
            let (x0, x1) = padded(lo, hi);
            self.draw_on(root, x0..x1, y0..y1)
        }
    }
}

impl FrontierFig<'_> {
    fn draw_on<DB: DrawingBackend, X>(
        &self,
        root: &DrawingArea<DB, Shift>,
        xr: X,
        yr: std::ops::Range<f64>,
    ) -> Result<()>
    where
        X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
        X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 28))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(xr, yr)
            .map_err(pe)?;
        let log = if self.log_x { " (log scale)" } else { "" };
        chart
            .configure_mesh()
            .x_desc(format!("{}{log}", self.x.axis()))
            .y_desc("Task accuracy (%)")
            .axis_desc_style(("sans-serif", 20))
            .label_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(pe)?;
        for (i, s) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let faint = c.mix(0.28);
            chart
                .draw_series(
                    s.points
                        .iter()
                        .zip(&s.on_frontier)
                        .zip(&s.overloaded)
                        .filter(|((_, f), o)| !**f && !**o)
                        .map(|((p, _), _)| Circle::new(*p, 4, faint.filled())),
                )
                .map_err(pe)?;
            // Overloaded points: a cross, never joined into the frontier.
            chart
                .draw_series(
                    s.points
                        .iter()
                        .zip(&s.overloaded)
                        .filter(|(_, o)| **o)
                        .map(|(p, _)| Cross::new(*p, 5, c.mix(0.6).stroke_width(2))),
                )
                .map_err(pe)?;
            let n_over = s.overloaded.iter().filter(|o| **o).count();
            let mut front: Vec<(f64, f64)> = s
                .points
                .iter()
                .zip(&s.on_frontier)
                .filter(|(_, f)| **f)
                .map(|(p, _)| *p)
                .collect();
            front.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(front.iter().copied(), c.stroke_width(3)))
                .map_err(pe)?
                .label(if n_over > 0 {
                    format!(
                        "{} ({} points, {} on frontier, {} overloaded: x)",
                        s.label,
                        s.points.len(),
                        front.len(),
                        n_over
                    )
                } else {
                    format!("{} ({} points, {} on frontier)", s.label, s.points.len(), front.len())
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
            chart
                .draw_series(front.iter().map(|p| Circle::new(*p, 6, c.filled())))
                .map_err(pe)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight, 18)?;
        Ok(())
    }
}

/// Draw the latency-accuracy frontiers of every series in `tables`.
/// `log_x`: None picks a log axis when the latencies span more than a factor of 20.
pub fn frontier(
    tables: &[SweepTable],
    x: XMetric,
    title: &str,
    log_x: Option<bool>,
    prefix: &Path,
) -> Result<Vec<PathBuf>> {
    let series = super::frontiers(tables, x)?;
    if series.is_empty() {
        return Err(Error::bad("plot frontier: the sweep tables hold no finished points"));
    }
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    save(
        &FrontierFig {
            series: &series,
            x,
            title,
            log_x: log_x.unwrap_or(lo > 0.0 && hi / lo > 20.0),
        },
        prefix,
        (1200, 800),
    )
}

/// Numeric order for grid values that are numbers, text order otherwise.
fn sorted_values(mut v: Vec<String>) -> Vec<String> {
    v.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    });
    v.dedup();
    v
}

struct HeatmapFig {
    xs: Vec<String>,
    ys: Vec<String>,
    cells: Vec<Vec<Option<f64>>>,
    x_desc: String,
    y_desc: String,
    title: String,
    /// The colour bar's caption: the metric's unit.
    unit: String,
}

fn heat(t: f64) -> RGBColor {
    // Pale yellow (low) through orange to dark red (high).
    let stops = [
        (255.0, 247.0, 188.0),
        (254.0, 153.0, 41.0),
        (204.0, 76.0, 2.0),
        (102.0, 37.0, 6.0),
    ];
    let t = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let i = (t.floor() as usize).min(stops.len() - 2);
    let f = t - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

impl Figure for HeatmapFig {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (nx, ny) = (self.xs.len(), self.ys.len());
        let vals: Vec<f64> = self.cells.iter().flatten().flatten().copied().collect();
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let root = root.titled(&self.title, ("sans-serif", 26)).map_err(pe)?;
        let (w, _) = root.dim_in_pixel();
        let (root, bar) = root.split_horizontally(w.saturating_sub(170));
        self.colour_bar(&bar, lo, hi)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d((0..nx - 1).into_segmented(), (0..ny - 1).into_segmented())
            .map_err(pe)?;
        let (xs, ys) = (self.xs.clone(), self.ys.clone());
        let name = |v: &[String], s: &SegmentValue<usize>| match s {
            SegmentValue::CenterOf(i) => v.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nx + 1)
            .y_labels(ny + 1)
            .x_label_formatter(&|i| name(&xs, i))
            .y_label_formatter(&|i| name(&ys, i))
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .axis_desc_style(("sans-serif", 20))
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(pe)?;
        for (yi, row) in self.cells.iter().enumerate() {
            for (xi, v) in row.iter().enumerate() {
                let (fill, text) = match v {
                    Some(v) => (heat((v - lo) / (hi - lo).max(1e-12)), format_value(*v)),
                    None => (RGBColor(230, 230, 230), "n/a".to_string()),
                };
                let (a, b) = (
                    (SegmentValue::Exact(xi), SegmentValue::Exact(yi)),
                    (SegmentValue::Exact(xi + 1), SegmentValue::Exact(yi + 1)),
                );
                chart
                    .draw_series(std::iter::once(Rectangle::new([a.clone(), b.clone()], fill.filled())))
                    .map_err(pe)?;
                let dark = v.is_some_and(|v| (v - lo) / (hi - lo).max(1e-12) > 0.55);
                let style = TextStyle::from(("sans-serif", 16).into_font())
                    .color(if dark { &WHITE } else { &BLACK })
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ));
                let (px, py) = chart.backend_coord(&a);
                let (qx, qy) = chart.backend_coord(&b);
                root.draw(&Text::new(text, ((px + qx) / 2, (py + qy) / 2), style))
                    .map_err(pe)?;
            }
        }
        Ok(())
    }
}

impl HeatmapFig {
    /// The colour scale, with the metric's unit, beside the map.
    fn colour_bar<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, lo: f64, hi: f64) -> Result<()> {
        let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) };
        let mut cb = ChartBuilder::on(area)
            .margin_top(40)
            .margin_bottom(80)
            .margin_right(10)
            .y_label_area_size(100)
            .build_cartesian_2d(0.0..1.0, lo..hi)
            .map_err(pe)?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .y_label_formatter(&|v| format_value(*v))
            .y_desc(&self.unit)
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(pe)?;
        let n = 120;
        cb.draw_series((0..n).map(|k| {
            let (a, b) = (k as f64 / n as f64, (k + 1) as f64 / n as f64);
            Rectangle::new([(0.0, lo + (hi - lo) * a), (1.0, lo + (hi - lo) * b)], heat(a).filled())
        }))
        .map_err(pe)?;
        Ok(())
    }
}

/// A cell value: three significant decimals at most, no trailing noise.
fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A summary metric's dotted name in words, its unit, and the factor to that unit
/// (`workflows.e2e_s.p99` -> "workflow E2E p99", "s", 1; accuracy in percent).
pub fn metric_words(metric: &str) -> (String, String, f64) {
    let parts: Vec<&str> = metric.split('.').collect();
    if parts.last() == Some(&"accuracy") || parts.last() == Some(&"share") {
        let who = if parts.len() >= 3 && parts[0] == "by_model" {
            format!("{} ", parts[1..parts.len() - 1].join("."))
        } else {
            String::new()
        };
        return (format!("{who}{}", parts.last().unwrap()), "%".into(), 100.0);
    }
    let (subject, rest) = match parts.first() {
        Some(&"workflows") => ("workflow ".to_string(), &parts[1..]),
        Some(&"requests") => ("request ".to_string(), &parts[1..]),
        Some(&"by_model") if parts.len() > 2 => (format!("{} workflow ", parts[1]), &parts[2..]),
        _ => (String::new(), &parts[..]),
    };
    let (what, unit) = match rest.first().copied() {
        Some("e2e_s") => ("E2E", "s"),
        Some("e2e_ms") => ("E2E", "ms"),
        Some("ttft_ms") => ("TTFT", "ms"),
        Some("tpot_ms") => ("TPOT", "ms"),
        Some("queue_ms") => ("queue time", "ms"),
        Some("e2e_per_output_token_ms") => ("E2E per output token", "ms"),
        _ => return (metric.to_string(), String::new(), 1.0),
    };
    let stat = rest.get(1).copied().unwrap_or("");
    (
        format!("{subject}{what} {stat}").trim_end().to_string(),
        unit.into(),
        1.0,
    )
}

/// A heatmap of `metric` (mean over seeds) over grid axes `x_param` x `y_param`.
pub fn heatmap(t: &SweepTable, x_param: &str, y_param: &str, metric: &str, prefix: &Path) -> Result<Vec<PathBuf>> {
    let pts = means(t, &[metric])?;
    let (words, unit, scale) = metric_words(metric);
    let seeds = t.seeds();
    let xs = sorted_values(pts.iter().filter_map(|p| p.param(x_param).map(String::from)).collect());
    let ys = sorted_values(pts.iter().filter_map(|p| p.param(y_param).map(String::from)).collect());
    if xs.is_empty() || ys.is_empty() {
        return Err(Error::bad(format!(
            "plot heatmap: the sweep has no grid axis `{}` (axes: {})",
            if xs.is_empty() { x_param } else { y_param },
            t.params().join(", ")
        )));
    }
    let cells = ys
        .iter()
        .map(|y| {
            xs.iter()
                .map(|x| {
                    let v: Vec<f64> = pts
                        .iter()
                        .filter(|p| p.param(x_param) == Some(x) && p.param(y_param) == Some(y))
                        .map(|p| p.get(metric) * scale)
                        .filter(|v| v.is_finite())
                        .collect();
                    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect()
        })
        .collect();
    let fig = HeatmapFig {
        xs,
        ys,
        cells,
        x_desc: short(x_param),
        y_desc: short(y_param),
        title: format!(
            "{}{}, mean over {seeds} seed{}",
            words,
            if unit.is_empty() {
                String::new()
            } else {
                format!(" ({unit})")
            },
            if seeds == 1 { "" } else { "s" }
        ),
        unit: if unit.is_empty() {
            words.clone()
        } else {
            format!("{words} ({unit})")
        },
    };
    save(&fig, prefix, (1000, 800))
}

/// The last path segment, for axis titles (`...priority_aging.starvation_steps` -> `starvation_steps`).
fn short(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).to_string()
}

/// A named line of (x, y, half-width of y's 95 % interval over seeds) points.
type Line = (String, Vec<(f64, f64, f64)>);

struct LinesFig {
    /// (metric, its lines) per panel.
    panels: Vec<(String, Vec<Line>)>,
    x_desc: String,
    title: String,
}

impl Figure for LinesFig {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root.titled(&self.title, ("sans-serif", 26)).map_err(pe)?;
        let areas = root.split_evenly((1, self.panels.len()));
        for (area, (metric, lines)) in areas.iter().zip(&self.panels) {
            let pts: Vec<(f64, f64, f64)> = lines.iter().flat_map(|(_, l)| l.iter().copied()).collect();
            let lo = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let hi = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
            let yr = padded(
                pts.iter().map(|p| p.1 - p.2).fold(f64::INFINITY, f64::min),
                pts.iter().map(|p| p.1 + p.2).fold(f64::NEG_INFINITY, f64::max),
            );
            if lo > 0.0 && hi / lo > 20.0 {
                self.panel(
                    area,
                    (lo / 1.3..hi * 1.3).log_scale(),
                    yr.0..yr.1,
                    metric,
                    lines,
                    " (log scale)",
                )?;
            } else {
                let xr = padded(lo, hi);
                self.panel(area, xr.0..xr.1, yr.0..yr.1, metric, lines, "")?;
            }
        }
        Ok(())
    }
}

impl LinesFig {
    #[allow(clippy::too_many_arguments)]
    fn panel<DB: DrawingBackend, X>(
        &self,
        area: &DrawingArea<DB, Shift>,
        xr: X,
        yr: std::ops::Range<f64>,
        metric: &str,
        lines: &[Line],
        scale: &str,
    ) -> Result<()>
    where
        X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
        X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(area)
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d(xr, yr)
            .map_err(pe)?;
        let (words, unit, _) = metric_words(metric);
        chart
            .configure_mesh()
            .x_desc(format!("{}{scale}", self.x_desc))
            .y_desc(if unit.is_empty() {
                words
            } else {
                format!("{words} ({unit})")
            })
            // Few, compact tick labels: on a log axis plotters' default ones run into each other.
            .x_labels(7)
            .x_label_formatter(&|v| compact(*v))
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(pe)?;
        for (i, (name, l)) in lines.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(l.iter().map(|p| (p.0, p.1)), c.stroke_width(3)))
                .map_err(pe)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
            chart
                .draw_series(l.iter().map(|p| Circle::new((p.0, p.1), 5, c.filled())))
                .map_err(pe)?;
            chart
                .draw_series(
                    l.iter()
                        .filter(|p| p.2 > 0.0)
                        .map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, c.stroke_width(2), 10)),
                )
                .map_err(pe)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight, 16)?;
        Ok(())
    }
}

/// A tick label: at most three significant digits, thousands as k.
fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Half-width of the 95 % interval of a mean of `n` seeds with sample deviation `sd`
/// (Student's t); 0 with one seed.
pub fn ci95(sd: f64, n: usize) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if n < 2 || !sd.is_finite() {
        return 0.0;
    }
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).map_or(1.96, |d| d.inverse_cdf(0.975));
    t * sd / (n as f64).sqrt()
}

/// Panels of `metrics` against grid axis `x_param`, one line per value of `series_param`.
pub fn lines(
    t: &SweepTable,
    x_param: &str,
    series_param: &str,
    metrics: &[&str],
    prefix: &Path,
) -> Result<Vec<PathBuf>> {
    let pts = means(t, metrics)?;
    let series = sorted_values(
        pts.iter()
            .filter_map(|p| p.param(series_param).map(String::from))
            .collect(),
    );
    if series.is_empty() || pts.iter().all(|p| p.param(x_param).is_none()) {
        return Err(Error::bad(format!(
            "plot lines: the sweep needs grid axes `{x_param}` and `{series_param}` (axes: {})",
            t.params().join(", ")
        )));
    }
    let mut panels = Vec::new();
    for m in metrics {
        let (_, _, scale) = metric_words(m);
        let mut ls = Vec::new();
        for s in &series {
            let mut l: Vec<(f64, f64, f64)> = pts
                .iter()
                .filter(|p| p.param(series_param) == Some(s))
                .filter_map(|p| {
                    let x = p.param(x_param)?.parse::<f64>().ok()?;
                    let sd = p.sd.get(*m).copied().unwrap_or(0.0);
                    Some((x, p.get(m) * scale, ci95(sd, p.seeds) * scale))
                })
                .filter(|p| p.1.is_finite())
                .collect();
            if l.is_empty() {
                return Err(Error::bad(format!("plot lines: `{x_param}` values are not numbers")));
            }
            l.sort_by(|a, b| a.0.total_cmp(&b.0));
            ls.push((format!("{} = {s}", short(series_param)), l));
        }
        panels.push((m.to_string(), ls));
    }
    let fig = LinesFig {
        panels,
        x_desc: short(x_param),
        title: format!(
            "Sensitivity to {} for several {} (mean over {} seed{}{})",
            short(x_param),
            short(series_param),
            t.seeds(),
            if t.seeds() == 1 { "" } else { "s" },
            if t.seeds() > 1 { ", 95 % intervals" } else { "" }
        ),
    };
    save(&fig, prefix, (1400, 650))
}

struct ScatterFig<'a> {
    metrics: &'a [super::compare::MetricComparison],
}

impl Figure for ScatterFig<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root
            .titled(
                "Simulated against measured (log axes; the diagonal is agreement)",
                ("sans-serif", 24),
            )
            .map_err(pe)?;
        let areas = root.split_evenly((1, self.metrics.len()));
        for (area, m) in areas.iter().zip(self.metrics) {
            let vals = m.pairs.iter().flat_map(|(s, r)| [*s, *r]).filter(|v| *v > 0.0);
            let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
            if !lo.is_finite() {
                continue;
            }
            let (lo, hi) = (lo / 1.2, hi * 1.2);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{}: median {:.1} %, p90 {:.1} %",
                        m.name,
                        100.0 * m.error.median_rel_err,
                        100.0 * m.error.p90_rel_err
                    ),
                    ("sans-serif", 16),
                )
                .margin(15)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d((lo..hi).log_scale(), (lo..hi).log_scale())
                .map_err(pe)?;
            chart
                .configure_mesh()
                .x_desc(format!("measured ({})", m.unit))
                .y_desc(format!("simulated ({})", m.unit))
                .axis_desc_style(("sans-serif", 16))
                .label_style(("sans-serif", 13))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(pe)?;
            chart
                .draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.5).stroke_width(1)))
                .map_err(pe)?;
            let c = PALETTE[0].mix(0.35);
            chart
                .draw_series(
                    m.pairs
                        .iter()
                        .filter(|(s, r)| *s > 0.0 && *r > 0.0)
                        .map(|(s, r)| Circle::new((*r, *s), 3, c.filled())),
                )
                .map_err(pe)?;
        }
        Ok(())
    }
}

/// Scatter plots of simulated against measured latencies (one panel per metric).
pub fn scatter(c: &super::compare::Comparison, prefix: &Path) -> Result<Vec<PathBuf>> {
    save(&ScatterFig { metrics: &c.metrics }, prefix, (1800, 520))
}
