//! Scalar distributions used by scenarios (lengths, delays, stage counts).
//!
//! Written in YAML as a tagged map, for example `{dist: lognormal, mean: 300, cv: 0.8}`.
//! A lognormal is given by its mean and coefficient of variation, not by mu and sigma,
//! because those are what one reads off data.

use crate::error::{Error, Result};
use rand::RngExt;
use rand_distr::{Distribution, Exp, LogNormal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    Constant {
        value: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    Exponential {
        mean: f64,
    },
    Lognormal {
        mean: f64,
        cv: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// `values[i]` with probability `weights[i] / sum(weights)` (equal weights if absent).
    Empirical {
        values: Vec<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<Vec<f64>>,
    },
}

/// A distribution checked and ready to sample.
#[derive(Debug, Clone)]
pub enum Sampler {
    Constant(f64),
    Uniform(f64, f64),
    Exp(Exp<f64>),
    LogNormal(LogNormal<f64>, f64, f64),
    Empirical(Vec<f64>, Vec<f64>),
}

impl Dist {
    /// Check parameters; `path` names the field in error messages.
    pub fn sampler(&self, path: &str) -> Result<Sampler> {
        let bad = |m: String| Err(Error::bad(format!("{path}: {m}")));
        let big = crate::time::MAX_DIST_VALUE;
        let too_big = match self {
            Dist::Constant { value } => *value > big,
            Dist::Uniform { max, .. } => *max > big,
            Dist::Exponential { mean } => *mean > big,
            Dist::Lognormal { mean, cv, .. } => *mean > big || *cv > 100.0,
            Dist::Empirical { values, .. } => values.iter().any(|v| *v > big),
        };
        if too_big {
            return bad(format!(
                "values above {big:e} (and a lognormal cv above 100) cannot be simulated; got {}",
                serde_json::to_string(self).unwrap_or_default()
            ));
        }
        match self {
            Dist::Constant { value } => {
                if !value.is_finite() || *value < 0.0 {
                    return bad(format!("value must be a non-negative number, got {value}"));
                }
                Ok(Sampler::Constant(*value))
            }
            Dist::Uniform { min, max } => {
                if !(min.is_finite() && max.is_finite() && *min >= 0.0 && min <= max) {
                    return bad(format!("expected 0 <= min <= max, got min {min}, max {max}"));
                }
                Ok(Sampler::Uniform(*min, *max))
            }
            Dist::Exponential { mean } => {
                if !(*mean > 0.0 && mean.is_finite()) {
                    return bad(format!("mean must be > 0, got {mean}"));
                }
                Ok(Sampler::Exp(Exp::new(1.0 / mean).expect("checked")))
            }
            Dist::Lognormal { mean, cv, min, max } => {
                if !(*mean > 0.0 && mean.is_finite()) {
                    return bad(format!("mean must be > 0, got {mean}"));
                }
                if !(*cv > 0.0 && cv.is_finite()) {
                    return bad(format!("cv must be > 0, got {cv}"));
                }
                let lo = min.unwrap_or(0.0);
                let hi = max.unwrap_or(f64::INFINITY);
                if lo > hi || lo < 0.0 {
                    return bad(format!("expected 0 <= min <= max, got min {lo}, max {hi}"));
                }
                let sigma2 = (1.0 + cv * cv).ln();
                let mu = mean.ln() - sigma2 / 2.0;
                Ok(Sampler::LogNormal(
                    LogNormal::new(mu, sigma2.sqrt()).expect("checked"),
                    lo,
                    hi,
                ))
            }
            Dist::Empirical { values, weights } => {
                if values.is_empty() {
                    return bad("values must not be empty".into());
                }
                if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
                    return bad("values must be non-negative numbers".into());
                }
                let w = weights.clone().unwrap_or_else(|| vec![1.0; values.len()]);
                if w.len() != values.len() {
                    return bad(format!(
                        "weights has {} entries but values has {}",
                        w.len(),
                        values.len()
                    ));
                }
                if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                    return bad("weights must be non-negative with a positive sum".into());
                }
                let total: f64 = w.iter().sum();
                let mut acc = 0.0;
                let cdf = w.iter().map(|x| {
                    acc += x / total;
                    acc
                });
                Ok(Sampler::Empirical(values.clone(), cdf.collect()))
            }
        }
    }
}

impl Sampler {
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            Sampler::Constant(v) => *v,
            Sampler::Uniform(a, b) => {
                if a == b {
                    *a
                } else {
                    rng.random_range(*a..=*b)
                }
            }
            // Tails stop at the largest value a distribution may be given.
            Sampler::Exp(e) => e.sample(rng).min(crate::time::MAX_DIST_VALUE),
            Sampler::LogNormal(d, lo, hi) => d.sample(rng).clamp(*lo, hi.min(crate::time::MAX_DIST_VALUE)),
            Sampler::Empirical(v, cdf) => {
                let u: f64 = rng.random();
                let i = cdf.partition_point(|&c| c <= u).min(v.len() - 1);
                v[i]
            }
        }
    }

    /// The smallest and largest value a draw can take (infinite when unbounded).
    pub fn support(&self) -> (f64, f64) {
        match self {
            Sampler::Constant(v) => (*v, *v),
            Sampler::Uniform(a, b) => (*a, *b),
            Sampler::Exp(_) => (0.0, f64::INFINITY),
            Sampler::LogNormal(_, lo, hi) => (*lo, *hi),
            Sampler::Empirical(v, _) => v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x))),
        }
    }

    /// A token count: rounded, at least `min`.
    pub fn sample_tokens<R: rand::Rng + ?Sized>(&self, rng: &mut R, min: u32) -> u32 {
        (self.sample(rng).round().min(u32::MAX as f64) as u32).max(min)
    }

    /// The distribution's mean (exact for every kind but clamped lognormals).
    pub fn mean(&self) -> f64 {
        match self {
            Sampler::Constant(v) => *v,
            Sampler::Uniform(a, b) => (a + b) / 2.0,
            Sampler::Exp(_) | Sampler::LogNormal(..) => f64::NAN,
            Sampler::Empirical(v, cdf) => {
                let mut prev = 0.0;
                v.iter()
                    .zip(cdf)
                    .map(|(x, c)| {
                        let p = c - prev;
                        prev = *c;
                        x * p
                    })
                    .sum()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    fn mean_of(d: &Dist, n: usize) -> (f64, f64) {
        let s = d.sampler("t").unwrap();
        let mut r = stream(1, "t");
        let xs: Vec<f64> = (0..n).map(|_| s.sample(&mut r)).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        (m, v.sqrt() / m)
    }

    #[test]
    fn lognormal_has_the_mean_and_cv_asked_for() {
        let (m, cv) = mean_of(
            &Dist::Lognormal {
                mean: 300.0,
                cv: 0.8,
                min: None,
                max: None,
            },
            200_000,
        );
        assert!((m - 300.0).abs() < 3.0, "mean {m}");
        assert!((cv - 0.8).abs() < 0.03, "cv {cv}");
    }

    #[test]
    fn empirical_follows_its_weights() {
        let d = Dist::Empirical {
            values: vec![1.0, 2.0, 3.0, 4.0],
            weights: Some(vec![1.0, 0.0, 1.0, 2.0]),
        };
        let s = d.sampler("t").unwrap();
        let mut r = stream(1, "t");
        let mut counts = [0usize; 5];
        for _ in 0..40_000 {
            counts[s.sample(&mut r) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((counts[4] as f64 / 40_000.0 - 0.5).abs() < 0.01, "{counts:?}");
        assert!((s.mean() - 3.0).abs() < 1e-12);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let cases = [
            (
                Dist::Lognormal {
                    mean: -1.0,
                    cv: 1.0,
                    min: None,
                    max: None,
                },
                "mean must be > 0",
            ),
            (Dist::Uniform { min: 5.0, max: 1.0 }, "min <= max"),
            (
                Dist::Empirical {
                    values: vec![1.0],
                    weights: Some(vec![1.0, 2.0]),
                },
                "weights has 2",
            ),
            (
                Dist::Empirical {
                    values: vec![],
                    weights: None,
                },
                "must not be empty",
            ),
        ];
        for (d, want) in cases {
            let e = d.sampler("workload.output_tokens").unwrap_err().to_string();
            assert!(e.starts_with("workload.output_tokens: ") && e.contains(want), "{e}");
        }
    }
}
