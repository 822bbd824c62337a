//! A fixed-memory quantile sketch with bounded relative error (log-spaced buckets, in the
//! manner of DDSketch). Deterministic: the same values in the same order give the same bytes.

/// Relative accuracy of reported quantiles.
pub const RELATIVE_ACCURACY: f64 = 0.001;

#[derive(Debug, Clone)]
pub struct Sketch {
    ln_gamma: f64,
    gamma: f64,
    counts: Vec<u64>,
    offset: i64,
    zeros: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new()
    }
}

impl Sketch {
    pub fn new() -> Self {
        let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
        Sketch {
            ln_gamma: gamma.ln(),
            gamma,
            counts: Vec::new(),
            offset: 0,
            zeros: 0,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Add a non-negative value (negative values count as zero).
    pub fn add(&mut self, x: f64) {
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if x <= 1e-9 {
            self.zeros += 1;
            return;
        }
        let i = (x.ln() / self.ln_gamma).ceil() as i64;
        if self.counts.is_empty() {
            self.offset = i;
            self.counts.push(0);
        }
        if i < self.offset {
            let grow = (self.offset - i) as usize;
            let mut v = vec![0; grow];
            v.extend_from_slice(&self.counts);
            self.counts = v;
            self.offset = i;
        }
        let k = (i - self.offset) as usize;
        if k >= self.counts.len() {
            self.counts.resize(k + 1, 0);
        }
        self.counts[k] += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The q-quantile (0..=1) by the nearest-rank rule, within RELATIVE_ACCURACY.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        if rank <= self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (k, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let i = self.offset + k as i64;
                let v = 2.0 * self.gamma.powi(i as i32) / (self.gamma + 1.0);
                return Some(v.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;
    use rand::RngExt;

    #[test]
    fn quantiles_are_within_the_stated_relative_error() {
        let mut r = stream(5, "sketch");
        let mut xs: Vec<f64> = (0..50_000).map(|_| (r.random::<f64>() * 20.0).exp()).collect();
        let mut s = Sketch::new();
        for &x in &xs {
            s.add(x);
        }
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for q in [0.01, 0.5, 0.9, 0.99, 1.0] {
            let exact = xs[((q * xs.len() as f64).ceil() as usize).max(1) - 1];
            let got = s.quantile(q).unwrap();
            assert!(
                (got - exact).abs() / exact <= RELATIVE_ACCURACY * 1.01,
                "q{q}: {got} vs {exact}"
            );
        }
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((s.mean().unwrap() - mean).abs() / mean < 1e-9);
    }

    #[test]
    fn empty_and_zero_cases() {
        let mut s = Sketch::new();
        assert_eq!(s.quantile(0.5), None);
        s.add(0.0);
        s.add(0.0);
        s.add(10.0);
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert!((s.quantile(1.0).unwrap() - 10.0).abs() < 0.01);
    }
}
