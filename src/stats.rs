//! One percentile rule for every figure the tool computes from a finite sample (trace stats,
//! replay send lags, probe medians, fit errors, fidelity distributions, benchmarks): linear
//! interpolation between order statistics, the rule of numpy's default and R's type 7, so the
//! median of an even sample is the mean of its middle two. (Run summaries use the fixed-memory
//! sketch in `output::sketch` instead; fitted trace parameters keep observed values.)

/// The `q`-quantile (0..=1) of an ascending sample; NaN when it is empty.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let r = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (r.floor() as usize, r.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (r - lo as f64)
}

/// The `q`-quantile of a sample, sorting it in place (NaNs last).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile_sorted(v, q)
}

/// The median of a sample, sorting it in place; NaN when it is empty.
pub fn median(v: &mut [f64]) -> f64 {
    quantile(v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_between_order_statistics() {
        for (v, q, want) in [
            (vec![3.0, 1.0, 2.0], 0.5, 2.0),
            (vec![4.0, 1.0, 2.0, 3.0], 0.5, 2.5),
            (vec![1.0, 2.0, 3.0, 4.0, 5.0], 0.9, 4.6),
            (vec![7.0], 0.99, 7.0),
            (vec![1.0, 2.0], 0.0, 1.0),
            (vec![1.0, 2.0], 1.0, 2.0),
        ] {
            let mut v = v;
            assert!((quantile(&mut v, q) - want).abs() < 1e-12, "{v:?} {q}");
        }
        assert!(median(&mut []).is_nan());
    }
}
