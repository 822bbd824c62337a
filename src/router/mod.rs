//! The semantic router's model: per-model confidence that a model solves a task, from its text.
//!
//! Features are hashed word 1-2-grams and character 3-5-grams with sublinear TF-IDF and L2
//! normalisation, plus the log length. Heads share structure because outcomes are correlated
//! across models (a problem hard for one model is hard for the others): the logit of model m is
//! `a_m + s_m * (w . x) + v_m . x`, with `w` a difficulty direction shared by every model and
//! `v_m` a small per-model correction (stronger L2), all trained jointly with binary cross
//! entropy by full-batch Adam. Pure computation: no file I/O here (the CLI saves and loads).

pub mod eval;
pub mod metrics;

use serde::{Deserialize, Serialize};

pub const ROUTER_FORMAT: &str = "chimera-router/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    pub buckets_log2: u32,
    pub word_ngrams: (usize, usize),
    pub char_ngrams: (usize, usize),
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            buckets_log2: 18,
            word_ngrams: (1, 1),
            char_ngrams: (1, 3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Weight of the standardised log length in the kernel, relative to the TF-IDF part.
    pub l2_shared: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { l2_shared: 0.3 }
    }
}

/// Sparse feature vector: (bucket, value), buckets sorted and unique.
pub type Sparse = Vec<(u32, f32)>;

/// Word tokens (runs of alphanumerics and backslashes, lowercased) and single punctuation
/// marks, as spans of one buffer (no allocation per token).
fn tokens(text: &str) -> (String, Vec<(usize, usize)>) {
    let mut buf = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    for c in text.chars() {
        if c.is_alphanumeric() || c == '\\' {
            if start.is_none() {
                start = Some(buf.len());
            }
            buf.extend(c.to_lowercase());
        } else {
            if let Some(s0) = start.take() {
                spans.push((s0, buf.len()));
            }
            if !c.is_whitespace() {
                let s0 = buf.len();
                buf.push(c);
                spans.push((s0, buf.len()));
            }
        }
    }
    if let Some(s0) = start {
        spans.push((s0, buf.len()));
    }
    (buf, spans)
}

/// Raw term counts of a text, hashed.
pub fn term_counts(text: &str, cfg: &FeatureConfig) -> Sparse {
    let mask = (1u64 << cfg.buckets_log2) - 1;
    let mut hits: Vec<u32> = Vec::with_capacity(4 * text.len());
    let (buf, spans) = tokens(text);
    // n = 0 (the range [0, 0] of an encoder router) has no n-grams.
    for n in cfg.word_ngrams.0.max(1)..=cfg.word_ngrams.1 {
        for w in spans.windows(n) {
            // FNV-1a of b'w' then the tokens joined by spaces, without building the string.
            let mut h = Fnv::new();
            h.byte(b'w');
            for (k, &(a, b)) in w.iter().enumerate() {
                if k > 0 {
                    h.byte(b' ');
                }
                h.bytes(&buf.as_bytes()[a..b]);
            }
            hits.push((h.0 & mask) as u32);
        }
    }
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    for n in cfg.char_ngrams.0.max(1)..=cfg.char_ngrams.1 {
        for w in chars.windows(n) {
            let mut h = Fnv::new();
            h.byte(b'c');
            for c in w {
                h.char(*c);
            }
            hits.push((h.0 & mask) as u32);
        }
    }
    hits.sort_unstable();
    let mut out: Sparse = Vec::with_capacity(hits.len());
    for b in hits {
        match out.last_mut() {
            Some(last) if last.0 == b => last.1 += 1.0,
            _ => out.push((b, 1.0)),
        }
    }
    out
}

/// Incremental FNV-1a (the same values as `rng::fnv1a64` over the concatenated bytes).
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    #[inline]
    pub fn byte(&mut self, b: u8) {
        self.0 ^= b as u64;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    #[inline]
    pub fn bytes(&mut self, bs: &[u8]) {
        for &b in bs {
            self.byte(b);
        }
    }
    #[inline]
    pub fn char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.bytes(c.encode_utf8(&mut buf).as_bytes());
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

/// A trained router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterModel {
    pub format: String,
    pub models: Vec<String>,
    pub features: FeatureConfig,
    pub train: TrainConfig,
    /// Inverse document frequency per bucket seen in training (others: `idf_default`).
    pub idf: Vec<(u32, f32)>,
    pub idf_default: f32,
    /// Log-length standardisation (mean, sd of ln characters).
    pub length_norm: (f64, f64),
    pub bias: Vec<f64>,
    pub scale: Vec<f64>,
    pub length_weight: f64,
    pub shared: Vec<(u32, f32)>,
    pub per_model: Vec<Vec<(u32, f32)>>,
    /// Per-model weight of the standardised log length.
    #[serde(default)]
    pub per_model_length: Vec<f64>,
    /// Free-form facts: training data, items, date of training, cross-validated scores.
    pub provenance: serde_json::Value,
    /// Cross-fitting (`router train --cross-fit K`): routers each trained without one part of
    /// the training texts. A text this router was trained on is scored by the one that did not
    /// see it, so a simulation drawing the training problems still meets held-out scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cross_fit: Vec<HeldOutFold>,
}

/// One cross-fitting part: the texts left out (FNV-1a 64 of their bytes) and the router
/// trained on the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOutFold {
    pub held_out: Vec<u64>,
    pub router: Box<RouterModel>,
}

/// The key a cross-fitted router knows a training text by.
pub fn text_key(text: &str) -> u64 {
    let mut h = Fnv::new();
    h.bytes(text.as_bytes());
    h.0
}

impl RouterModel {
    /// Largest feature space a router file may ask for (2^24 buckets: 64 MiB per dense vector).
    pub const MAX_BUCKETS_LOG2: u32 = 24;

    /// Read a router file's text and check it whole (see [`RouterModel::check`]).
    pub fn from_json(text: &str) -> Result<RouterModel, String> {
        let m: RouterModel =
            serde_json::from_str(text).map_err(|e| crate::error::plain_words(&format!("not a router file: {e}")))?;
        m.check()?;
        Ok(m)
    }

    /// A router trained on encoder embeddings (no text features of its own).
    pub fn is_encoder(&self) -> bool {
        self.features.word_ngrams == (0, 0) && self.features.char_ngrams == (0, 0)
    }

    /// Everything [`Router::new`] and prediction rely on: the format, one head per model,
    /// indices inside the feature space, finite numbers. Errors name the field.
    pub fn check(&self) -> Result<(), String> {
        if self.format != ROUTER_FORMAT {
            return Err(format!("format: expected `{ROUTER_FORMAT}`, got `{}`", self.format));
        }
        let nm = self.models.len();
        if nm == 0 || nm > 64 {
            return Err(format!("models: expected 1 to 64 model names, got {nm}"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.trim().is_empty() {
                return Err(format!("models[{i}]: empty name"));
            }
            if self.models[..i].contains(m) {
                return Err(format!("models[{i}]: `{m}` listed twice"));
            }
        }
        let f = &self.features;
        if !(1..=Self::MAX_BUCKETS_LOG2).contains(&f.buckets_log2) {
            return Err(format!(
                "features.buckets_log2: expected 1 to {}, got {}",
                Self::MAX_BUCKETS_LOG2,
                f.buckets_log2
            ));
        }
        for (name, (a, b)) in [("word_ngrams", f.word_ngrams), ("char_ngrams", f.char_ngrams)] {
            // (0, 0) means none; otherwise 1 <= a <= b <= 8.
            if (a, b) != (0, 0) && !(a >= 1 && a <= b && b <= 8) {
                return Err(format!(
                    "features.{name}: expected [lo, hi] with 1 <= lo <= hi <= 8 (or [0, 0] for none), got [{a}, {b}]"
                ));
            }
        }
        let n = 1u64 << f.buckets_log2;
        // Trained weights are small; a huge one (still finite) overflows a logit to NaN.
        let finite = |name: &str, v: f64| {
            if v.abs() <= 1e6 {
                Ok(())
            } else {
                Err(format!(
                    "{name}: expected a number within ±1e6, got {}",
                    crate::error::num(v)
                ))
            }
        };
        let entries = |name: &str, v: &[(u32, f32)]| -> Result<(), String> {
            for (k, &(i, x)) in v.iter().enumerate() {
                if u64::from(i) >= n {
                    return Err(format!(
                        "{name}[{k}]: index {i} outside the {n} feature buckets (features.buckets_log2)"
                    ));
                }
                finite(&format!("{name}[{k}]"), f64::from(x))?;
            }
            Ok(())
        };
        entries("idf", &self.idf)?;
        entries("shared", &self.shared)?;
        finite("idf_default", f64::from(self.idf_default))?;
        finite("length_norm[0]", self.length_norm.0)?;
        finite("length_norm[1]", self.length_norm.1)?;
        if self.length_norm.1 <= 0.0 {
            return Err(format!(
                "length_norm[1]: expected a positive spread, got {}",
                self.length_norm.1
            ));
        }
        finite("length_weight", self.length_weight)?;
        for (name, v) in [("bias", &self.bias), ("scale", &self.scale)] {
            if v.len() != nm {
                return Err(format!("{name}: expected one number per model ({nm}), got {}", v.len()));
            }
            for (k, x) in v.iter().enumerate() {
                finite(&format!("{name}[{k}]"), *x)?;
            }
        }
        if self.per_model.len() != nm {
            return Err(format!(
                "per_model: expected one list per model ({nm}), got {}",
                self.per_model.len()
            ));
        }
        for (m, w) in self.per_model.iter().enumerate() {
            entries(&format!("per_model[{m}]"), w)?;
        }
        if !self.per_model_length.is_empty() && self.per_model_length.len() != nm {
            return Err(format!(
                "per_model_length: expected one number per model ({nm}), got {}",
                self.per_model_length.len()
            ));
        }
        for (k, x) in self.per_model_length.iter().enumerate() {
            finite(&format!("per_model_length[{k}]"), *x)?;
        }
        let mut seen = std::collections::HashSet::new();
        for (k, f) in self.cross_fit.iter().enumerate() {
            let r = &f.router;
            r.check().map_err(|e| format!("cross_fit[{k}].router.{e}"))?;
            if r.models != self.models {
                return Err(format!(
                    "cross_fit[{k}].router.models: expected the main router's models ({}), got {}",
                    self.models.join(", "),
                    r.models.join(", ")
                ));
            }
            if !r.cross_fit.is_empty() {
                return Err(format!(
                    "cross_fit[{k}].router.cross_fit: a part may not be cross-fitted itself"
                ));
            }
            if r.is_encoder() != self.is_encoder() {
                return Err(format!(
                    "cross_fit[{k}].router.features: a part must read the same features"
                ));
            }
            for (j, h) in f.held_out.iter().enumerate() {
                if !seen.insert(*h) {
                    return Err(format!(
                        "cross_fit[{k}].held_out[{j}]: text key {h} is held out by two parts"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Text to embedding, for routers trained on encoder embeddings (None: the encoder failed).
pub type Embedder = std::sync::Arc<dyn Fn(&str) -> Option<Vec<f32>> + Send + Sync>;

/// A router ready to predict (dense weights).
pub struct Router {
    pub model: RouterModel,
    idf: Vec<f32>,
    shared: Vec<f32>,
    per_model: Vec<Vec<f32>>,
    /// Cross-fitting parts, and which part holds out each training text.
    parts: Vec<Router>,
    part_of: std::collections::HashMap<u64, usize>,
    /// The encoder an encoder router reads texts through ([`Router::with_embedder`]).
    embed: Option<Embedder>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("models", &self.model.models)
            .field("parts", &self.parts.len())
            .field("encoder", &self.embed.is_some())
            .finish()
    }
}

fn dense(n: usize, sparse: &[(u32, f32)], default: f32) -> Vec<f32> {
    let mut v = vec![default; n];
    for &(i, x) in sparse {
        v[i as usize] = x;
    }
    v
}

fn sparse(v: &[f32]) -> Vec<(u32, f32)> {
    v.iter()
        .enumerate()
        .filter(|(_, x)| **x != 0.0)
        .map(|(i, x)| (i as u32, *x))
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Router {
    pub fn new(mut model: RouterModel) -> Router {
        let n = 1usize << model.features.buckets_log2;
        let mut part_of = std::collections::HashMap::new();
        let parts = std::mem::take(&mut model.cross_fit)
            .into_iter()
            .enumerate()
            .map(|(k, f)| {
                for h in &f.held_out {
                    part_of.insert(*h, k);
                }
                Router::new(*f.router)
            })
            .collect();
        Router {
            parts,
            part_of,
            embed: None,
            idf: dense(n, &model.idf, model.idf_default),
            shared: dense(n, &model.shared, 0.0),
            per_model: model
                .per_model
                .iter()
                .map(|w| if w.is_empty() { Vec::new() } else { dense(n, w, 0.0) })
                .collect(),
            model,
        }
    }

    /// TF-IDF features of a text (sublinear tf, L2-normalised) and its standardised log length.
    pub fn featurize(&self, text: &str) -> (Sparse, f64) {
        featurize(text, &self.model.features, &self.idf, self.model.length_norm)
    }

    /// Confidence per model from a dense feature vector (an encoder embedding).
    pub fn predict_dense(&self, x: &[f32]) -> Vec<f64> {
        let d: f64 = x.iter().enumerate().map(|(i, v)| (self.shared[i] * v) as f64).sum();
        (0..self.model.models.len())
            .map(|m| sigmoid(self.model.bias[m] + self.model.scale[m] * d))
            .collect()
    }

    /// Read texts through this encoder (for a router trained on its embeddings).
    pub fn with_embedder(mut self, embed: Embedder) -> Router {
        self.embed = Some(embed);
        self
    }

    /// Confidence per model for a text, whatever the router reads: TF-IDF features, or the
    /// embedding of its encoder (an encoder router without one, or whose encoder fails on
    /// the text, gives each model's base rate).
    pub fn score(&self, text: &str) -> Vec<f64> {
        if !self.model.is_encoder() {
            return self.predict(text);
        }
        match self.embed.as_ref().and_then(|e| e(text)) {
            Some(x) if x.len() <= self.shared.len() => self.predict_dense(&x),
            _ => self.model.bias.iter().map(|b| sigmoid(*b)).collect(),
        }
    }

    /// Cross-fitting parts (0 when the router is not cross-fitted).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Confidence per model (in `self.model.models` order). A text the router was trained on
    /// is scored by the cross-fitting part that held it out, when there are parts.
    pub fn predict(&self, text: &str) -> Vec<f64> {
        if !self.part_of.is_empty() {
            if let Some(&k) = self.part_of.get(&text_key(text)) {
                return self.parts[k].predict(text);
            }
        }
        let (x, len) = self.featurize(text);
        let d: f64 = x
            .iter()
            .map(|&(i, v)| (self.shared[i as usize] * v) as f64)
            .sum::<f64>()
            + self.model.length_weight * len;
        (0..self.model.models.len())
            .map(|m| {
                let r: f64 = if self.per_model[m].is_empty() {
                    0.0
                } else {
                    x.iter().map(|&(i, v)| (self.per_model[m][i as usize] * v) as f64).sum()
                } + self.model.per_model_length.get(m).copied().unwrap_or(0.0) * len;
                sigmoid(self.model.bias[m] + self.model.scale[m] * d + r)
            })
            .collect()
    }
}

fn featurize(text: &str, cfg: &FeatureConfig, idf: &[f32], norm: (f64, f64)) -> (Sparse, f64) {
    let mut x: Sparse = term_counts(text, cfg)
        .into_iter()
        .map(|(i, c)| (i, (1.0 + c.ln()) * idf[i as usize]))
        .collect();
    let l2 = x.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
    if l2 > 0.0 {
        for e in &mut x {
            e.1 /= l2;
        }
    }
    let len = ((text.chars().count().max(1) as f64).ln() - norm.0) / norm.1.max(1e-9);
    (x, len)
}

/// Cholesky factor of a symmetric positive-definite matrix (row-major n x n), lower triangle.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i * n + j];
            for k in 0..j {
                sum -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if sum <= 0.0 {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solve L L^T x = b.
fn chol_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= l[i * n + k] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= l[k * n + i] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    y
}

/// Diagonal of (L L^T)^{-1}.
fn chol_inv_diag(l: &[f64], n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let mut e = vec![0.0; n];
            e[i] = 1.0;
            chol_solve(l, n, &e)[i]
        })
        .collect()
}

/// One-feature logistic regression by Newton's method: returns (intercept, slope).
fn logistic_1d(x: &[f64], y: &[f64]) -> (f64, f64) {
    let (mut a, mut b) = (0.0, 0.0);
    for _ in 0..50 {
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, 0.0, 1e-6, 0.0, 1e-6);
        for (xi, &yi) in x.iter().zip(y) {
            let p = sigmoid(a + b * xi);
            let e = p - yi;
            let w = p * (1.0 - p);
            g0 += e;
            g1 += e * xi;
            h00 += w;
            h01 += w * xi;
            h11 += w * xi * xi;
        }
        let det = h00 * h11 - h01 * h01;
        if det.abs() < 1e-12 {
            break;
        }
        let da = (h11 * g0 - h01 * g1) / det;
        let db = (h00 * g1 - h01 * g0) / det;
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

/// The trained heads: per-model calibration of one shared ridge score.
struct Heads {
    bias: Vec<f64>,
    scale: Vec<f64>,
    w: Vec<f32>,
    lw: f64,
    lam: f64,
    loo_mse: f64,
}

/// Kernel ridge on the share of models solving each item (ridge strength by exact leave-one-out
/// error), then a logistic calibration per model on the leave-one-out scores.
fn fit_heads(xs: &[(Sparse, f64)], labels: &[Vec<f64>], nm: usize, nb: usize, len_scale: f64) -> Heads {
    let n = xs.len();
    // Target: share of models that solve the item, centred.
    let y: Vec<f64> = labels
        .iter()
        .map(|l| l.iter().sum::<f64>() / nm.max(1) as f64)
        .collect();
    let ybar = y.iter().sum::<f64>() / n.max(1) as f64;
    let yc: Vec<f64> = y.iter().map(|v| v - ybar).collect();
    // Linear kernel over TF-IDF plus the scaled length feature.
    let mut k = vec![0.0f64; n * n];
    let mut postings: Vec<Vec<(u32, f32)>> = vec![Vec::new(); nb];
    for (d, (x, _)) in xs.iter().enumerate() {
        for &(i, v) in x {
            postings[i as usize].push((d as u32, v));
        }
    }
    for p in &postings {
        for a in 0..p.len() {
            for b in a..p.len() {
                let v = (p[a].1 * p[b].1) as f64;
                let (i, j) = (p[a].0 as usize, p[b].0 as usize);
                k[i * n + j] += v;
                if i != j {
                    k[j * n + i] += v;
                }
            }
        }
    }
    for i in 0..n {
        for j in 0..n {
            k[i * n + j] += len_scale * xs[i].1 * xs[j].1;
        }
    }
    // Ridge strength by exact leave-one-out error.
    let grid = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0];
    let mut best: Option<(f64, f64, Vec<f64>, Vec<f64>)> = None;
    for &lam in &grid {
        let mut a = k.clone();
        for i in 0..n {
            a[i * n + i] += lam;
        }
        let Some(l) = cholesky(&a, n) else { continue };
        let alpha = chol_solve(&l, n, &yc);
        let inv_diag = chol_inv_diag(&l, n);
        // LOO residual of item i: alpha_i / inv_diag_i.
        let loo: Vec<f64> = (0..n).map(|i| yc[i] - alpha[i] / inv_diag[i]).collect();
        let err: f64 = (0..n).map(|i| (alpha[i] / inv_diag[i]).powi(2)).sum::<f64>() / n as f64;
        if best.as_ref().is_none_or(|b| err < b.1) {
            best = Some((lam, err, alpha, loo));
        }
    }
    let (lam, loo_mse, alpha, loo) = best.expect("a ridge strength works");
    // Primal weights: w = sum_i alpha_i x_i; length weight likewise.
    let mut w = vec![0.0f32; nb];
    let mut lw = 0.0;
    for (i, (x, len)) in xs.iter().enumerate() {
        for &(b, v) in x {
            w[b as usize] += (alpha[i] * v as f64) as f32;
        }
        lw += alpha[i] * len_scale * len;
    }
    // Per model: a logistic calibration of the shared leave-one-out score. (A second,
    // model-specific ridge score was tried and lowered cross-validated AUC: the per-model
    // labels are too few to add signal beyond the shared difficulty.)
    let (mut bias, mut scale) = (vec![0.0; nm], vec![0.0; nm]);
    for m in 0..nm {
        let ym: Vec<f64> = labels.iter().map(|l| l[m]).collect();
        let (a, b) = logistic_1d(&loo, &ym);
        bias[m] = a;
        scale[m] = b;
    }
    Heads {
        bias,
        scale,
        w,
        lw,
        lam,
        loo_mse,
    }
}

fn as_shares(labels: &[Vec<bool>]) -> Vec<Vec<f64>> {
    labels
        .iter()
        .map(|l| l.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect())
        .collect()
}

/// Merge rows with the same text (a problem drawn several times, as generated traces draw
/// them): one item whose label per model is the share of its rows that model solves.
fn merge_repeats<'t>(texts: &[&'t str], labels: &[Vec<bool>]) -> (Vec<&'t str>, Vec<Vec<f64>>) {
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut uniq: Vec<&str> = Vec::new();
    let mut sums: Vec<(Vec<f64>, f64)> = Vec::new();
    for (t, l) in texts.iter().zip(labels) {
        let k = *index.entry(t).or_insert_with(|| {
            uniq.push(t);
            sums.push((vec![0.0; l.len()], 0.0));
            uniq.len() - 1
        });
        for (s, &b) in sums[k].0.iter_mut().zip(l) {
            *s += if b { 1.0 } else { 0.0 };
        }
        sums[k].1 += 1.0;
    }
    let shares = sums
        .into_iter()
        .map(|(s, n)| s.into_iter().map(|v| v / n).collect())
        .collect();
    (uniq, shares)
}

/// Record the backend and the fitted ridge strength and leave-one-out error in a provenance
/// object (left alone when it is not an object).
fn with_fit_facts(mut provenance: serde_json::Value, backend: &str, lam: f64, loo_mse: f64) -> serde_json::Value {
    if let serde_json::Value::Object(o) = &mut provenance {
        o.insert("backend".into(), serde_json::json!(backend));
        o.insert("ridge_lambda".into(), serde_json::json!(lam));
        o.insert("loo_mse".into(), serde_json::json!(loo_mse));
    }
    provenance
}

/// Train router heads on dense features (text embeddings from an encoder) instead of TF-IDF;
/// predict with [`Router::predict_dense`].
pub fn train_dense(
    embeddings: &[Vec<f32>],
    labels: &[Vec<bool>],
    models: &[String],
    provenance: serde_json::Value,
) -> RouterModel {
    let dims = embeddings.first().map(|e| e.len()).unwrap_or(0);
    let xs: Vec<(Sparse, f64)> = embeddings
        .iter()
        .map(|e| (e.iter().enumerate().map(|(i, v)| (i as u32, *v)).collect(), 0.0))
        .collect();
    let nb = dims.max(1).next_power_of_two();
    let Heads {
        bias,
        scale,
        w,
        lw,
        lam,
        loo_mse,
    } = fit_heads(&xs, &as_shares(labels), models.len(), nb, 0.0);
    let provenance = with_fit_facts(provenance, "encoder", lam, loo_mse);
    RouterModel {
        format: ROUTER_FORMAT.into(),
        models: models.to_vec(),
        features: FeatureConfig {
            buckets_log2: nb.trailing_zeros(),
            word_ngrams: (0, 0),
            char_ngrams: (0, 0),
        },
        train: TrainConfig { l2_shared: 0.0 },
        idf: Vec::new(),
        idf_default: 1.0,
        length_norm: (0.0, 1.0),
        bias,
        scale,
        length_weight: lw,
        shared: sparse(&w),
        per_model: vec![Vec::new(); models.len()],
        per_model_length: vec![0.0; models.len()],
        provenance,
        cross_fit: Vec::new(),
    }
}

/// Train a router on texts and per-model labels (`labels[i][m]`).
///
/// Outcomes are correlated across models, so the text model predicts one thing all labels
/// inform: the share of models that solve the item (a difficulty score), by ridge regression on
/// the features, solved in the dual (kernel) form with the ridge strength chosen by exact
/// leave-one-out error. Each model then maps the score to its own probability with a logistic
/// calibration fitted on the leave-one-out scores (so calibration never sees in-sample fits).
pub fn train(
    texts: &[&str],
    labels: &[Vec<bool>],
    models: &[String],
    fcfg: &FeatureConfig,
    tcfg: &TrainConfig,
    provenance: serde_json::Value,
) -> RouterModel {
    let (texts, shares) = merge_repeats(texts, labels);
    let n = texts.len();
    let nm = models.len();
    let nb = 1usize << fcfg.buckets_log2;
    let counts: Vec<Sparse> = texts.iter().map(|t| term_counts(t, fcfg)).collect();
    let mut df = vec![0u32; nb];
    for c in &counts {
        for &(i, _) in c {
            df[i as usize] += 1;
        }
    }
    let idf_of = |d: u32| ((1.0 + n as f64) / (1.0 + d as f64)).ln() as f32 + 1.0;
    let idf_dense: Vec<f32> = df.iter().map(|&d| idf_of(d)).collect();
    let lens: Vec<f64> = texts.iter().map(|t| (t.chars().count().max(1) as f64).ln()).collect();
    let mu = lens.iter().sum::<f64>() / n.max(1) as f64;
    let sd = (lens.iter().map(|l| (l - mu).powi(2)).sum::<f64>() / n.max(1) as f64)
        .sqrt()
        .max(1e-9);
    let xs: Vec<(Sparse, f64)> = texts.iter().map(|t| featurize(t, fcfg, &idf_dense, (mu, sd))).collect();
    let len_scale = tcfg.l2_shared.max(0.0);
    let Heads {
        bias,
        scale,
        w,
        lw,
        lam,
        loo_mse,
    } = fit_heads(&xs, &shares, nm, nb, len_scale);
    let provenance = with_fit_facts(provenance, "tfidf", lam, loo_mse);
    RouterModel {
        format: ROUTER_FORMAT.into(),
        models: models.to_vec(),
        features: fcfg.clone(),
        train: tcfg.clone(),
        idf: df
            .iter()
            .enumerate()
            .filter(|(_, d)| **d > 0)
            .map(|(i, &d)| (i as u32, idf_of(d)))
            .collect(),
        idf_default: idf_of(0),
        length_norm: (mu, sd),
        bias,
        scale,
        length_weight: lw,
        shared: sparse(&w),
        per_model: vec![Vec::new(); nm],
        per_model_length: vec![0.0; nm],
        provenance,
        cross_fit: Vec::new(),
    }
}

/// [`train`] on all texts, plus `k` cross-fitting parts, each trained without one k-th of the
/// distinct texts (a seeded random partition) and holding those out (`k` < 2: none).
#[allow(clippy::too_many_arguments)]
pub fn train_cross_fit(
    texts: &[&str],
    labels: &[Vec<bool>],
    models: &[String],
    fcfg: &FeatureConfig,
    tcfg: &TrainConfig,
    provenance: serde_json::Value,
    k: usize,
    seed: u64,
) -> RouterModel {
    let mut main = train(texts, labels, models, fcfg, tcfg, provenance);
    if k < 2 {
        return main;
    }
    let data = eval::Dataset {
        texts: texts.to_vec(),
        labels: labels.to_vec(),
        models: models.to_vec(),
    };
    let groups = data.groups(seed);
    for part in 0..k {
        let in_part = |j: usize| j % k == part;
        let rows: Vec<usize> = groups
            .iter()
            .enumerate()
            .filter(|(j, _)| !in_part(*j))
            .flat_map(|(_, g)| g.iter().copied())
            .collect();
        let t: Vec<&str> = rows.iter().map(|&i| texts[i]).collect();
        let l: Vec<Vec<bool>> = rows.iter().map(|&i| labels[i].clone()).collect();
        let sub = train(
            &t,
            &l,
            models,
            fcfg,
            tcfg,
            serde_json::json!({"cross_fit_part": part, "parts": k, "seed": seed, "items": groups.len() - groups.iter().enumerate().filter(|(j, _)| in_part(*j)).count()}),
        );
        main.cross_fit.push(HeldOutFold {
            held_out: groups
                .iter()
                .enumerate()
                .filter(|(j, _)| in_part(*j))
                .map(|(_, g)| text_key(texts[g[0]]))
                .collect(),
            router: Box::new(sub),
        });
    }
    main
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_hash_matches_the_byte_hash() {
        let mut h = Fnv::new();
        h.byte(b'c');
        for c in "éa\\".chars() {
            h.char(c);
        }
        assert_eq!(h.0, crate::rng::fnv1a64("céa\\".as_bytes()));
    }

    #[test]
    fn term_counts_count_repeats() {
        let cfg = FeatureConfig {
            buckets_log2: 18,
            word_ngrams: (1, 1),
            char_ngrams: (1, 1),
        };
        let c = term_counts("a a", &cfg);
        // words: "a" twice; chars: 'a' twice and ' ' once.
        let total: f32 = c.iter().map(|x| x.1).sum();
        assert_eq!(total, 5.0);
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique buckets");
    }

    fn tiny() -> RouterModel {
        let texts = [
            "add two numbers",
            "prove the theorem about primes",
            "sum a list",
            "integrate by parts",
        ];
        let labels = vec![
            vec![true, true],
            vec![false, true],
            vec![true, true],
            vec![false, false],
        ];
        let models = vec!["small".to_string(), "big".to_string()];
        let cfg = FeatureConfig {
            buckets_log2: 10,
            ..FeatureConfig::default()
        };
        train(
            &texts,
            &labels,
            &models,
            &cfg,
            &TrainConfig::default(),
            serde_json::Value::Null,
        )
    }

    #[test]
    fn a_cross_fitted_router_scores_each_training_text_with_the_part_that_held_it_out() {
        let texts: Vec<String> = (0..24)
            .map(|i| format!("problem {i} about {}", ["primes", "sums", "graphs"][i % 3]))
            .collect();
        let t: Vec<&str> = texts.iter().chain(texts.iter()).map(|s| s.as_str()).collect();
        let labels: Vec<Vec<bool>> = (0..48).map(|i| vec![i % 3 == 0, i % 3 != 2]).collect();
        let models = vec!["small".to_string(), "big".to_string()];
        let cfg = FeatureConfig {
            buckets_log2: 10,
            ..FeatureConfig::default()
        };
        let m = train_cross_fit(
            &t,
            &labels,
            &models,
            &cfg,
            &TrainConfig::default(),
            serde_json::Value::Null,
            3,
            7,
        );
        m.check().unwrap();
        assert_eq!(m.cross_fit.len(), 3);
        // Every distinct text held out exactly once (repeats are one text).
        let held: usize = m.cross_fit.iter().map(|f| f.held_out.len()).sum();
        assert_eq!(held, 24);
        let back = RouterModel::from_json(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let r = Router::new(back);
        assert_eq!(r.parts(), 3);
        for f in &m.cross_fit {
            let part = Router::new((*f.router).clone());
            for s in &texts {
                if f.held_out.contains(&text_key(s)) {
                    assert_eq!(r.predict(s), part.predict(s), "{s}");
                }
            }
        }
        // A text no part held out gets the main router's score.
        let main = Router::new(RouterModel {
            cross_fit: Vec::new(),
            ..m.clone()
        });
        assert_eq!(r.predict("an unseen problem"), main.predict("an unseen problem"));
        assert_ne!(r.predict(&texts[0]), main.predict(&texts[0]));
        // A part with other models, or a text held out twice, is refused naming the field.
        let mut bad = m.clone();
        bad.cross_fit[1].router.models.reverse();
        assert!(bad.check().unwrap_err().starts_with("cross_fit[1].router.models"));
        let mut bad = m.clone();
        let h = bad.cross_fit[0].held_out[0];
        bad.cross_fit[2].held_out.push(h);
        assert!(bad.check().unwrap_err().contains("held out by two parts"));
    }

    #[test]
    fn a_trained_router_passes_its_own_check_and_survives_a_round_trip() {
        let m = tiny();
        m.check().unwrap();
        let back = RouterModel::from_json(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let enc = train_dense(
            &[vec![0.1, 0.2], vec![0.3, -0.1]],
            &[vec![true], vec![false]],
            &["m".into()],
            serde_json::Value::Null,
        );
        enc.check().unwrap();
        assert!(enc.is_encoder() && !m.is_encoder());
        // Text through an encoder router's (empty) text features: no panic.
        assert_eq!(Router::new(enc).predict("some text").len(), 1);
    }

    #[test]
    fn broken_router_files_are_refused_naming_the_field() {
        type Edit = fn(&mut RouterModel);
        let cases: Vec<(Edit, &str)> = vec![
            (|m| m.format = "chimera-router/v0".into(), "format"),
            (|m| m.models.clear(), "models"),
            (|m| m.models[1] = m.models[0].clone(), "models[1]"),
            (|m| m.features.buckets_log2 = 40, "features.buckets_log2"),
            (|m| m.features.buckets_log2 = 0, "features.buckets_log2"),
            (|m| m.features.word_ngrams = (0, 2), "features.word_ngrams"),
            (|m| m.features.char_ngrams = (3, 1), "features.char_ngrams"),
            (|m| m.idf.push((1 << 10, 1.0)), "idf["),
            (|m| m.shared.push((u32::MAX, 1.0)), "shared["),
            (|m| m.shared.push((1, f32::NAN)), "shared["),
            (|m| m.idf_default = f32::INFINITY, "idf_default"),
            (|m| m.length_norm.1 = 0.0, "length_norm[1]"),
            (|m| m.bias.pop().map(|_| ()).unwrap_or(()), "bias"),
            (|m| m.scale[0] = f64::NAN, "scale[0]"),
            (|m| m.per_model.push(Vec::new()), "per_model"),
            (|m| m.per_model[0].push((5000, 1.0)), "per_model[0]["),
            (|m| m.per_model_length = vec![0.0; 3], "per_model_length"),
            (|m| m.length_weight = f64::INFINITY, "length_weight"),
        ];
        for (edit, want) in cases {
            let mut m = tiny();
            edit(&mut m);
            let e = m.check().expect_err(want);
            assert!(e.starts_with(want), "{want}: {e}");
        }
        assert!(RouterModel::from_json("{\"format\": 1}")
            .unwrap_err()
            .starts_with("not a router file"));
    }
}
