//! Scores of probabilistic predictions: ROC AUC, Brier score, Spearman correlation, and a
//! calibration table. Pure functions over slices.

use serde::Serialize;

/// Area under the ROC curve (ties count one half); None when one class is absent.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    // Average ranks (1-based) over ties, then the Mann-Whitney statistic.
    let ranks: Vec<f64> = ranks(scores).iter().map(|r| r + 1.0).collect();
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let sum_pos: f64 = ranks.iter().zip(labels).filter(|(_, &l)| l).map(|(r, _)| r).sum();
    Some((sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

pub fn brier(p: &[f64], labels: &[bool]) -> f64 {
    p.iter()
        .zip(labels)
        .map(|(p, &l)| (p - if l { 1.0 } else { 0.0 }).powi(2))
        .sum::<f64>()
        / p.len().max(1) as f64
}

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].partial_cmp(&x[b]).unwrap_or(std::cmp::Ordering::Equal));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            r[idx[k]] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson on average ranks).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// One row of a calibration table: predictions in [lo, hi).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub count: u64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// Predictions grouped into `bins` equal-width bins.
pub fn calibration(p: &[f64], labels: &[bool], bins: usize) -> Vec<CalibrationBin> {
    (0..bins)
        .map(|b| {
            let (lo, hi) = (b as f64 / bins as f64, (b + 1) as f64 / bins as f64);
            let sel: Vec<(f64, bool)> = p
                .iter()
                .zip(labels)
                .filter(|(x, _)| **x >= lo && (**x < hi || (b + 1 == bins && **x <= hi)))
                .map(|(x, l)| (*x, *l))
                .collect();
            let n = sel.len() as f64;
            CalibrationBin {
                lo,
                hi,
                count: sel.len() as u64,
                mean_predicted: if n > 0.0 {
                    sel.iter().map(|s| s.0).sum::<f64>() / n
                } else {
                    f64::NAN
                },
                observed_rate: if n > 0.0 {
                    sel.iter().filter(|s| s.1).count() as f64 / n
                } else {
                    f64::NAN
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
        assert!((brier(&[1.0, 0.0, 0.5], &[true, false, true]) - 0.25 / 3.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        let c = calibration(&[0.05, 0.15, 0.95, 1.0], &[false, true, true, true], 10);
        assert_eq!((c[0].count, c[1].count, c[9].count), (1, 1, 2));
        assert_eq!(c[9].observed_rate, 1.0);
    }
}
