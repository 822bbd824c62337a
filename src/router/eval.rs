//! Evaluating routers: held-out splits, k-fold cross-validation, and the two baselines the
//! issue names (each model's mean accuracy, and prompt length alone).

use super::metrics::{auc, brier, calibration, CalibrationBin};
use super::{train, FeatureConfig, Router, TrainConfig};
use crate::rng::stream;
use rand::RngExt;
use serde::Serialize;

/// Items with text and per-model labels.
pub struct Dataset<'a> {
    pub texts: Vec<&'a str>,
    pub labels: Vec<Vec<bool>>,
    pub models: Vec<String>,
}

impl Dataset<'_> {
    /// The rows grouped by text (a problem drawn several times is one group), groups in a
    /// seeded random order: splits and folds never put one text on both sides.
    pub fn groups(&self, seed: u64) -> Vec<Vec<usize>> {
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, t) in self.texts.iter().enumerate() {
            let g = *index.entry(t).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let mut r = stream(seed, "router.split");
        for i in (1..groups.len()).rev() {
            let j = r.random_range(0..=i);
            groups.swap(i, j);
        }
        groups
    }

    /// A seeded split: (train indices, test indices) with `test_fraction` of the distinct
    /// texts in test.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let groups = self.groups(seed);
        let n_test = ((groups.len() as f64) * test_fraction).round() as usize;
        let test = groups[..n_test].concat();
        let train = groups[n_test..].concat();
        (train, test)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelScore {
    pub model: String,
    pub count: u64,
    pub positives: u64,
    pub auc: Option<f64>,
    pub brier: f64,
    pub auc_length_only: Option<f64>,
    pub auc_mean_accuracy: f64,
    pub calibration: Vec<CalibrationBin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub items: u64,
    pub mean_auc: Option<f64>,
    pub mean_auc_length_only: Option<f64>,
    pub models: Vec<ModelScore>,
}

/// Score predictions `p[i][m]` against labels; `len_scores[i][m]` are the length-only
/// baseline's predictions, fitted on items other than these (absent: no baseline is reported,
/// never the router's own scores under the baseline's name).
pub fn score(p: &[Vec<f64>], len_scores: Option<&[Vec<f64>]>, labels: &[Vec<bool>], models: &[String]) -> EvalReport {
    let scores: Vec<ModelScore> = models
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let pm: Vec<f64> = p.iter().map(|x| x[m]).collect();
            let lm: Option<Vec<f64>> = len_scores.map(|l| l.iter().map(|x| x[m]).collect());
            let y: Vec<bool> = labels.iter().map(|l| l[m]).collect();
            ModelScore {
                model: name.clone(),
                count: y.len() as u64,
                positives: y.iter().filter(|b| **b).count() as u64,
                auc: auc(&pm, &y),
                brier: brier(&pm, &y),
                auc_length_only: lm.and_then(|lm| auc(&lm, &y)),
                auc_mean_accuracy: 0.5,
                calibration: calibration(&pm, &y, 10),
            }
        })
        .collect();
    let mean = |f: &dyn Fn(&ModelScore) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = scores.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    EvalReport {
        items: p.len() as u64,
        mean_auc: mean(&|s| s.auc),
        mean_auc_length_only: mean(&|s| s.auc_length_only),
        models: scores,
    }
}

/// The length-only baseline: per model, a one-feature logistic regression on ln(characters)
/// fitted to `train` and applied to `test`.
pub fn length_baseline(data: &Dataset, train: &[usize], test: &[usize]) -> Vec<Vec<f64>> {
    let len = |i: usize| (data.texts[i].chars().count().max(1) as f64).ln();
    let nm = data.models.len();
    let mut coef = vec![(0.0f64, 0.0f64); nm];
    for (m, c) in coef.iter_mut().enumerate() {
        for _ in 0..500 {
            let (mut g0, mut g1) = (0.0, 0.0);
            for &i in train {
                let p = 1.0 / (1.0 + (-(c.0 + c.1 * len(i))).exp());
                let e = p - if data.labels[i][m] { 1.0 } else { 0.0 };
                g0 += e;
                g1 += e * len(i);
            }
            c.0 -= 0.5 * g0 / train.len() as f64;
            c.1 -= 0.5 * g1 / train.len() as f64;
        }
    }
    test.iter()
        .map(|&i| {
            coef.iter()
                .map(|c| 1.0 / (1.0 + (-(c.0 + c.1 * len(i))).exp()))
                .collect()
        })
        .collect()
}

/// Train on `train`, predict `test`.
pub fn fit_predict(
    data: &Dataset,
    train_idx: &[usize],
    test_idx: &[usize],
    fcfg: &FeatureConfig,
    tcfg: &TrainConfig,
) -> Vec<Vec<f64>> {
    let texts: Vec<&str> = train_idx.iter().map(|&i| data.texts[i]).collect();
    let labels: Vec<Vec<bool>> = train_idx.iter().map(|&i| data.labels[i].clone()).collect();
    let r = Router::new(train(
        &texts,
        &labels,
        &data.models,
        fcfg,
        tcfg,
        serde_json::Value::Null,
    ));
    test_idx.iter().map(|&i| r.predict(data.texts[i])).collect()
}

/// K-fold cross-validation (seeded folds): out-of-fold predictions scored together.
pub fn cross_validate(data: &Dataset, k: usize, seed: u64, fcfg: &FeatureConfig, tcfg: &TrainConfig) -> EvalReport {
    cross_validate_with(data, k, seed, |train, test| fit_predict(data, train, test, fcfg, tcfg))
}

/// K-fold cross-validation of any training procedure `fit_predict(train, test)`.
pub fn cross_validate_with(
    data: &Dataset,
    k: usize,
    seed: u64,
    fit_predict: impl Fn(&[usize], &[usize]) -> Vec<Vec<f64>>,
) -> EvalReport {
    let groups = data.groups(seed);
    let n = data.texts.len();
    let mut preds = vec![vec![]; n];
    let mut lens = vec![vec![]; n];
    for f in 0..k {
        let fold = |keep: bool| -> Vec<usize> {
            groups
                .iter()
                .enumerate()
                .filter(|(j, _)| (j % k == f) == keep)
                .flat_map(|(_, g)| g.iter().copied())
                .collect()
        };
        let (test, train) = (fold(true), fold(false));
        for (t, p) in test.iter().zip(fit_predict(&train, &test)) {
            preds[*t] = p;
        }
        for (t, p) in test.iter().zip(length_baseline(data, &train, &test)) {
            lens[*t] = p;
        }
    }
    score(&preds, Some(&lens), &data.labels, &data.models)
}
