//! Arrival processes: Poisson, Gamma with a chosen coefficient of variation, or a trace's own
//! timestamps; each with a rate scale (2.0 = twice as many arrivals per second).

use crate::error::{Error, Result};
use crate::rng::StreamRng;
use crate::time::{secs_to_ns, Nanos};
use rand_distr::{Distribution, Exp, Gamma};
use serde::{Deserialize, Serialize};

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "process", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArrivalSpec {
    /// Exponential inter-arrival times at `rate_per_s * rate_scale`.
    Poisson {
        rate_per_s: f64,
        #[serde(default = "one")]
        rate_scale: f64,
    },
    /// Gamma inter-arrival times with mean 1 / rate and coefficient of variation `cv`
    /// (cv 1 is Poisson; above 1 is burstier).
    Gamma {
        rate_per_s: f64,
        cv: f64,
        #[serde(default = "one")]
        rate_scale: f64,
    },
    /// The timestamps of a trace, compressed by `rate_scale`. For a trace workload, its own
    /// file; for a synthetic workload, `path` names an Azure-format CSV to take them from.
    Trace {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default = "one")]
        rate_scale: f64,
    },
}

impl ArrivalSpec {
    pub fn rate_scale(&self) -> f64 {
        match self {
            ArrivalSpec::Poisson { rate_scale, .. }
            | ArrivalSpec::Gamma { rate_scale, .. }
            | ArrivalSpec::Trace { rate_scale, .. } => *rate_scale,
        }
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        let s = self.rate_scale();
        if !(s > 0.0 && s <= 1e6) {
            return Err(Error::bad(format!(
                "{path}.rate_scale: expected a number in (0, 1e6], got {}",
                num(s)
            )));
        }
        match self {
            ArrivalSpec::Poisson { rate_per_s, .. } | ArrivalSpec::Gamma { rate_per_s, .. }
                if !((1e-6..=1e7).contains(rate_per_s) && (1e-6..=1e7).contains(&(rate_per_s * s))) =>
            {
                Err(Error::bad(format!(
                    "{path}.rate_per_s: expected between 1e-6 and 1e7 per second (times rate_scale {} too), got {}",
                    num(s),
                    num(*rate_per_s)
                )))
            }
            ArrivalSpec::Gamma { cv, .. } if !(0.01..=100.0).contains(cv) => Err(Error::bad(format!(
                "{path}.cv: expected a coefficient of variation between 0.01 and 100, got {}",
                num(*cv)
            ))),
            _ => Ok(()),
        }
    }
}

/// A number for a message: plain when ordinary, in scientific notation when huge or tiny.
fn num(x: f64) -> String {
    if x != 0.0 && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// Draws successive arrival times for the renewal processes.
#[derive(Debug, Clone)]
pub enum InterArrival {
    Poisson(Exp<f64>),
    Gamma(Gamma<f64>),
}

impl InterArrival {
    /// The sampler for a Poisson or Gamma spec (None for traces).
    pub fn from_spec(spec: &ArrivalSpec) -> Option<InterArrival> {
        match spec {
            ArrivalSpec::Poisson { rate_per_s, rate_scale } => Some(InterArrival::Poisson(
                Exp::new(rate_per_s * rate_scale).expect("validated"),
            )),
            ArrivalSpec::Gamma {
                rate_per_s,
                cv,
                rate_scale,
            } => {
                let shape = 1.0 / (cv * cv);
                let mean = 1.0 / (rate_per_s * rate_scale);
                Some(InterArrival::Gamma(Gamma::new(shape, mean / shape).expect("validated")))
            }
            ArrivalSpec::Trace { .. } => None,
        }
    }

    /// Next gap in nanoseconds.
    pub fn gap_ns(&self, rng: &mut StreamRng) -> Nanos {
        let s = match self {
            InterArrival::Poisson(e) => e.sample(rng),
            InterArrival::Gamma(g) => g.sample(rng),
        };
        secs_to_ns(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;
    use statrs::distribution::{ContinuousCDF, Exp as SExp, Gamma as SGamma};

    /// One-sample Kolmogorov-Smirnov statistic of `xs` against `cdf`.
    fn ks(mut xs: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = xs.len() as f64;
        xs.iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf(x);
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max)
    }

    fn gaps(spec: &ArrivalSpec, n: usize) -> Vec<f64> {
        let ia = InterArrival::from_spec(spec).unwrap();
        let mut r = stream(3, "arrivals");
        (0..n).map(|_| ia.gap_ns(&mut r) as f64 / 1e9).collect()
    }

    #[test]
    fn poisson_gaps_are_exponential_at_the_scaled_rate() {
        let xs = gaps(
            &ArrivalSpec::Poisson {
                rate_per_s: 4.0,
                rate_scale: 2.5,
            },
            20_000,
        );
        let d = ks(xs, |x| SExp::new(10.0).unwrap().cdf(x));
        assert!(d < 1.36 / (20_000f64).sqrt(), "KS {d}");
    }

    #[test]
    fn gamma_gaps_have_the_asked_cv() {
        // (Very bursty settings, cv > 2, put a visible share of gaps below the 1 ns resolution.)
        let xs = gaps(
            &ArrivalSpec::Gamma {
                rate_per_s: 2.0,
                cv: 1.5,
                rate_scale: 1.0,
            },
            20_000,
        );
        let shape = 1.0 / 2.25;
        let d = ks(xs, |x| SGamma::new(shape, shape * 2.0).unwrap().cdf(x));
        assert!(d < 1.36 / (20_000f64).sqrt(), "KS {d}");
    }

    #[test]
    fn bad_rates_are_named() {
        let e = ArrivalSpec::Gamma {
            rate_per_s: 1.0,
            cv: 0.0,
            rate_scale: 1.0,
        }
        .validate("workload.arrivals")
        .unwrap_err()
        .to_string();
        assert!(e.contains("workload.arrivals.cv"), "{e}");
        let e = ArrivalSpec::Poisson {
            rate_per_s: 1.0,
            rate_scale: -2.0,
        }
        .validate("a")
        .unwrap_err()
        .to_string();
        assert!(e.contains("a.rate_scale"), "{e}");
    }
}
