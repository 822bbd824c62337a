//! A quantile regression forest (Meinshausen 2006): bootstrap regression trees with random
//! feature subsets, whose leaves keep their training targets, so any quantile of the
//! conditional distribution is read at prediction time by pooling the leaves a point falls in.
//! Deterministic under a seed. Pure computation.

use crate::rng::stream;
use rand::RngExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForestConfig {
    pub trees: usize,
    /// Features tried at each split (0: a third of them, at least one).
    pub max_features: usize,
    pub min_leaf: usize,
    pub max_depth: usize,
    /// Rows drawn (with replacement) for each tree; 0: as many as the training set.
    #[serde(default)]
    pub sample_size: usize,
    pub seed: u64,
}

impl Default for ForestConfig {
    fn default() -> Self {
        ForestConfig {
            trees: 40,
            max_features: 0,
            min_leaf: 8,
            max_depth: 24,
            sample_size: 4096,
            seed: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Node {
    Split {
        feature: u32,
        threshold: f64,
        left: u32,
        right: u32,
    },
    /// Training targets that reached this leaf (with bootstrap multiplicity), sorted.
    Leaf { targets: Vec<f32> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub config: ForestConfig,
    pub features: usize,
    trees: Vec<Tree>,
}

struct Builder<'a> {
    x: &'a [Vec<f64>],
    y: &'a [f64],
    cfg: &'a ForestConfig,
    mtry: usize,
    nodes: Vec<Node>,
}

impl Builder<'_> {
    fn leaf(&mut self, idx: &[usize]) -> u32 {
        let mut t: Vec<f32> = idx.iter().map(|&i| self.y[i] as f32).collect();
        t.sort_by(|a, b| a.partial_cmp(b).expect("finite targets"));
        self.nodes.push(Node::Leaf { targets: t });
        (self.nodes.len() - 1) as u32
    }

    fn build(&mut self, idx: &mut [usize], depth: usize, rng: &mut crate::rng::StreamRng) -> u32 {
        if idx.len() < 2 * self.cfg.min_leaf || depth >= self.cfg.max_depth {
            return self.leaf(idx);
        }
        let p = self.x[0].len();
        // Random feature subset (partial Fisher-Yates).
        // Features in random order; like common implementations, features constant in this
        // node do not count towards the `mtry` tried (else constant features starve splits).
        let mut feats: Vec<usize> = (0..p).collect();
        for k in 0..p {
            let j = rng.random_range(k..p);
            feats.swap(k, j);
        }
        let mut tried = 0;
        let n = idx.len() as f64;
        let total: f64 = idx.iter().map(|&i| self.y[i]).sum();
        let total_sq: f64 = idx.iter().map(|&i| self.y[i] * self.y[i]).sum();
        let parent_sse = total_sq - total * total / n;
        let mut best: Option<(f64, usize, f64)> = None; // (sse, feature, threshold)
        let mut order: Vec<usize> = idx.to_vec();
        for &f in &feats {
            if tried >= self.mtry {
                break;
            }
            let first = self.x[idx[0]][f];
            if idx.iter().all(|&i| self.x[i][f] == first) {
                continue;
            }
            tried += 1;
            order.sort_by(|&a, &b| self.x[a][f].partial_cmp(&self.x[b][f]).expect("finite features"));
            let (mut s, mut sq) = (0.0, 0.0);
            for k in 0..order.len() - 1 {
                let v = self.y[order[k]];
                s += v;
                sq += v * v;
                let nl = (k + 1) as f64;
                if k + 1 < self.cfg.min_leaf || order.len() - (k + 1) < self.cfg.min_leaf {
                    continue;
                }
                let (a, b) = (self.x[order[k]][f], self.x[order[k + 1]][f]);
                if a == b {
                    continue;
                }
                let nr = n - nl;
                let sse = (sq - s * s / nl) + ((total_sq - sq) - (total - s).powi(2) / nr);
                if best.is_none_or(|bb| sse < bb.0 - 1e-12) {
                    best = Some((sse, f, (a + b) / 2.0));
                }
            }
        }
        let Some((sse, f, thr)) = best else {
            return self.leaf(idx);
        };
        if sse >= parent_sse - 1e-12 {
            return self.leaf(idx);
        }
        let mid = itertools_partition(idx, |&i| self.x[i][f] <= thr);
        let slot = self.nodes.len();
        self.nodes.push(Node::Leaf { targets: vec![] });
        let (l, r) = idx.split_at_mut(mid);
        let left = self.build(l, depth + 1, rng);
        let right = self.build(r, depth + 1, rng);
        self.nodes[slot] = Node::Split {
            feature: f as u32,
            threshold: thr,
            left,
            right,
        };
        slot as u32
    }
}

/// In-place partition; returns the number of elements satisfying `pred` (moved to the front).
fn itertools_partition(v: &mut [usize], pred: impl Fn(&usize) -> bool) -> usize {
    let mut k = 0;
    for i in 0..v.len() {
        if pred(&v[i]) {
            v.swap(i, k);
            k += 1;
        }
    }
    k
}

impl Forest {
    /// Fit on rows `x` (all the same length) and targets `y`.
    pub fn fit(x: &[Vec<f64>], y: &[f64], cfg: &ForestConfig) -> Forest {
        assert!(!x.is_empty() && x.len() == y.len(), "a forest needs rows with targets");
        let p = x[0].len();
        let mtry = if cfg.max_features == 0 {
            (p / 3).max(1)
        } else {
            cfg.max_features.min(p)
        };
        let mut trees = Vec::with_capacity(cfg.trees);
        for t in 0..cfg.trees {
            let mut rng = stream(cfg.seed, &format!("qrf.tree.{t}"));
            let m = if cfg.sample_size == 0 { x.len() } else { cfg.sample_size };
            let mut idx: Vec<usize> = (0..m).map(|_| rng.random_range(0..x.len())).collect();
            let mut b = Builder {
                x,
                y,
                cfg,
                mtry,
                nodes: Vec::new(),
            };
            b.build(&mut idx, 0, &mut rng);
            trees.push(Tree { nodes: b.nodes });
        }
        Forest {
            config: cfg.clone(),
            features: p,
            trees,
        }
    }

    /// Check a forest read from a file before it is used: at least one tree, every tree
    /// non-empty, every split's feature below `features` with a finite threshold and both
    /// children after it (so every walk ends, with no cycle), every leaf's targets finite and
    /// sorted. The first problem, in words.
    pub fn check(&self, features: usize) -> std::result::Result<(), String> {
        if self.features != features {
            return Err(format!("{} features, this build computes {features}", self.features));
        }
        if self.trees.is_empty() {
            return Err("no trees".into());
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let n = tree.nodes.len();
            if n == 0 {
                return Err(format!("tree {t} has no nodes"));
            }
            for (k, node) in tree.nodes.iter().enumerate() {
                match node {
                    Node::Split {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        if *feature as usize >= features {
                            return Err(format!("tree {t}, node {k}: feature {feature} of {features}"));
                        }
                        if !threshold.is_finite() {
                            return Err(format!("tree {t}, node {k}: threshold {threshold}"));
                        }
                        for c in [*left, *right] {
                            if c as usize <= k || c as usize >= n {
                                return Err(format!(
                                    "tree {t}, node {k}: child {c} is not a later node of the {n} (a cycle or out of range)"
                                ));
                            }
                        }
                    }
                    Node::Leaf { targets } => {
                        if targets.iter().any(|x| !x.is_finite()) || targets.windows(2).any(|w| w[0] > w[1]) {
                            return Err(format!("tree {t}, node {k}: leaf targets not finite and sorted"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn leaves<'a>(&'a self, row: &'a [f64]) -> impl Iterator<Item = &'a [f32]> + 'a {
        self.trees.iter().map(move |t| {
            let mut k = 0usize;
            loop {
                match &t.nodes[k] {
                    Node::Split {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        k = if row[*feature as usize] <= *threshold {
                            *left as usize
                        } else {
                            *right as usize
                        };
                    }
                    Node::Leaf { targets } => return targets.as_slice(),
                }
            }
        })
    }

    /// Quantiles `qs` (each in [0, 1]) of the conditional distribution at `row`: every tree's
    /// leaf contributes its targets with weight 1 / (trees * leaf size).
    pub fn quantiles(&self, row: &[f64], qs: &[f64]) -> Vec<f64> {
        // Each leaf is sorted, so the pooled CDF F(v) = sum over trees of (targets <= v) /
        // (trees * leaf size) is cheap to evaluate; the q-quantile is the smallest v with
        // F(v) >= q, found by bisection over the order-preserving integer image of f32 (32
        // steps) instead of sorting every pooled target.
        let leaves: Vec<&[f32]> = self.leaves(row).filter(|l| !l.is_empty()).collect();
        if leaves.is_empty() {
            return vec![f64::NAN; qs.len()];
        }
        let t = leaves.len() as f64;
        let key = |v: f32| -> u32 {
            let b = v.to_bits();
            if b >> 31 == 1 {
                !b
            } else {
                b | 0x8000_0000
            }
        };
        let unkey = |k: u32| -> f32 {
            if k >> 31 == 1 {
                f32::from_bits(k & 0x7fff_ffff)
            } else {
                f32::from_bits(!k)
            }
        };
        let cdf = |v: f32| -> f64 {
            leaves
                .iter()
                .map(|l| l.partition_point(|&x| x <= v) as f64 / l.len() as f64)
                .sum::<f64>()
                / t
        };
        let lo_v = leaves.iter().map(|l| l[0]).fold(f32::INFINITY, f32::min);
        let hi_v = leaves.iter().map(|l| l[l.len() - 1]).fold(f32::NEG_INFINITY, f32::max);
        qs.iter()
            .map(|&q| {
                let (mut lo, mut hi) = (key(lo_v), key(hi_v));
                if cdf(lo_v) >= q - 1e-12 {
                    return lo_v as f64;
                }
                // Invariant: F(unkey(lo)) < q <= F(unkey(hi)).
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if cdf(unkey(mid)) >= q - 1e-12 {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                unkey(hi) as f64
            })
            .collect()
    }

    pub fn quantile(&self, row: &[f64], q: f64) -> f64 {
        self.quantiles(row, &[q])[0]
    }

    /// Mean of the conditional distribution (the random-forest prediction).
    pub fn mean(&self, row: &[f64]) -> f64 {
        self.leaves(row)
            .map(|l| l.iter().map(|&v| v as f64).sum::<f64>() / l.len().max(1) as f64)
            .sum::<f64>()
            / self.trees.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn two_groups(n: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
        // x < 0.5: y uniform over 0..100; x >= 0.5: y uniform over 1000..1100.
        let x: Vec<Vec<f64>> = (0..n)
            .map(|i| vec![(i % 2) as f64 * 0.9 + 0.05, (i % 7) as f64])
            .collect();
        let y: Vec<f64> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    (i % 101) as f64
                } else {
                    1000.0 + (i % 101) as f64
                }
            })
            .collect();
        (x, y)
    }

    /// A forest file is checked whole before use: a child pointing back (a walk that never
    /// ends), an out-of-range child or feature, no nodes, no trees, a NaN target are refused.
    #[test]
    fn broken_forests_are_refused_before_use() {
        let (x, y) = two_groups(400);
        let good = Forest::fit(
            &x,
            &y,
            &ForestConfig {
                trees: 3,
                ..ForestConfig::default()
            },
        );
        assert_eq!(good.check(2), Ok(()));
        assert!(good.check(3).unwrap_err().contains("2 features"));
        let split_at = |f: &Forest| {
            f.trees[0]
                .nodes
                .iter()
                .position(|n| matches!(n, Node::Split { .. }))
                .unwrap()
        };
        type Breaker = fn(&mut Forest, usize);
        let cases: [(Breaker, &str); 6] = [
            (
                |f, k| {
                    if let Node::Split { left, .. } = &mut f.trees[0].nodes[k] {
                        *left = k as u32;
                    }
                },
                "a cycle or out of range",
            ),
            (
                |f, k| {
                    if let Node::Split { right, .. } = &mut f.trees[0].nodes[k] {
                        *right = 1_000_000;
                    }
                },
                "a cycle or out of range",
            ),
            (
                |f, k| {
                    if let Node::Split { feature, .. } = &mut f.trees[0].nodes[k] {
                        *feature = 9;
                    }
                },
                "feature 9 of 2",
            ),
            (|f, _| f.trees[1].nodes.clear(), "tree 1 has no nodes"),
            (|f, _| f.trees.clear(), "no trees"),
            (
                |f, _| {
                    for n in &mut f.trees[0].nodes {
                        if let Node::Leaf { targets } = n {
                            if let Some(t) = targets.first_mut() {
                                *t = f32::NAN;
                            }
                        }
                    }
                },
                "not finite and sorted",
            ),
        ];
        for (k, (brk, want)) in cases.iter().enumerate() {
            let mut f = good.clone();
            let at = split_at(&f);
            brk(&mut f, at);
            let e = f.check(2).unwrap_err();
            assert!(e.contains(want), "case {k}: `{e}` lacks `{want}`");
        }
    }

    #[test]
    fn known_answer_separates_groups_and_reads_their_quantiles() {
        let (x, y) = two_groups(2000);
        let f = Forest::fit(
            &x,
            &y,
            &ForestConfig {
                trees: 30,
                sample_size: 0,
                ..ForestConfig::default()
            },
        );
        let lo = f.quantiles(&[0.05, 3.0], &[0.1, 0.5, 0.9]);
        let hi = f.quantiles(&[0.95, 3.0], &[0.1, 0.5, 0.9]);
        assert!(lo[2] < 100.5 && hi[0] >= 1000.0, "{lo:?} {hi:?}");
        assert!((lo[1] - 50.0).abs() < 12.0, "median of 0..100: {lo:?}");
        assert!((hi[1] - 1050.0).abs() < 12.0, "median of 1000..1100: {hi:?}");
    }

    #[test]
    fn constant_targets_give_that_constant() {
        let x: Vec<Vec<f64>> = (0..100).map(|i| vec![i as f64]).collect();
        let y = vec![7.0; 100];
        let f = Forest::fit(
            &x,
            &y,
            &ForestConfig {
                trees: 5,
                ..ForestConfig::default()
            },
        );
        assert_eq!(f.quantiles(&[42.0], &[0.0, 0.5, 1.0]), vec![7.0, 7.0, 7.0]);
    }

    #[test]
    fn same_seed_same_forest_other_seed_other_forest() {
        let (x, y) = two_groups(300);
        let cfg = ForestConfig {
            trees: 8,
            ..ForestConfig::default()
        };
        assert_eq!(Forest::fit(&x, &y, &cfg), Forest::fit(&x, &y, &cfg));
        assert_ne!(
            Forest::fit(&x, &y, &cfg),
            Forest::fit(&x, &y, &ForestConfig { seed: 2, ..cfg.clone() })
        );
    }

    /// The pooled-CDF bisection gives exactly what sorting every pooled target gives.
    fn sorted_reference(f: &Forest, row: &[f64], q: f64) -> f64 {
        let mut pts: Vec<(f32, f64)> = Vec::new();
        for leaf in f.leaves(row) {
            let w = 1.0 / (f.trees.len() as f64 * leaf.len() as f64);
            pts.extend(leaf.iter().map(|&v| (v, w)));
        }
        pts.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let mut acc = 0.0;
        for &(v, w) in &pts {
            acc += w;
            if acc >= q - 1e-9 {
                return v as f64;
            }
        }
        pts.last().unwrap().0 as f64
    }

    #[test]
    fn bisection_matches_sorting() {
        let (x, y) = two_groups(500);
        let f = Forest::fit(
            &x,
            &y,
            &ForestConfig {
                trees: 7,
                min_leaf: 3,
                ..ForestConfig::default()
            },
        );
        for probe in [[0.05, 1.0], [0.95, 4.0], [0.5, 6.0]] {
            for q in [0.0, 0.1, 0.33, 0.5, 0.9, 1.0] {
                assert_eq!(
                    f.quantile(&probe, q),
                    sorted_reference(&f, &probe, q),
                    "{probe:?} q {q}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Quantiles are monotone in q and lie within the training targets' range.
        #[test]
        fn quantiles_are_monotone_and_bounded(
            rows in proptest::collection::vec((0.0f64..10.0, 0.0f64..10.0, 0.0f64..500.0), 20..120),
            probe in (0.0f64..10.0, 0.0f64..10.0),
        ) {
            let x: Vec<Vec<f64>> = rows.iter().map(|r| vec![r.0, r.1]).collect();
            let y: Vec<f64> = rows.iter().map(|r| r.2.round()).collect();
            let f = Forest::fit(&x, &y, &ForestConfig { trees: 6, min_leaf: 3, ..ForestConfig::default() });
            let qs: Vec<f64> = (0..=10).map(|k| k as f64 / 10.0).collect();
            let v = f.quantiles(&[probe.0, probe.1], &qs);
            let (lo, hi) = (y.iter().cloned().fold(f64::MAX, f64::min), y.iter().cloned().fold(f64::MIN, f64::max));
            for w in v.windows(2) {
                prop_assert!(w[0] <= w[1]);
            }
            prop_assert!(v[0] >= lo && v[10] <= hi);
        }
    }
}
