//! The profiling driver: which operators of a layer to time, over which grid, and how the
//! timings become a `chimera-profile/v1` file. Backends (candle on the CPU, cudarc on an NVIDIA
//! GPU) implement [`OpTimer`]; this module is the same for both.

use super::format::{LayerShape, OpPoint, Profile, ProfileMeta, PROFILE_FORMAT};
use crate::error::Result;
use crate::hw::ModelSpec;
use std::path::Path;

/// An element-wise kernel of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elem {
    /// RMSNorm over rows of `cols` values (with a weight vector).
    RmsNorm,
    /// Residual add of two `rows x cols` tensors.
    Add,
    /// SiLU(gate) * up over `rows x cols`.
    SiluMul,
    /// Rotary embedding of `rows` tokens, `cols / head_dim` heads of `head_dim`.
    Rope { head_dim: u64 },
    /// Gather `rows` rows of a `vocab x cols` table.
    Embedding { vocab: u64 },
}

/// One attention call: `batch` requests each computing `q_len` new tokens after
/// `context_before` cached ones (so each attends over `context_before + q_len` keys, causally).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub batch: u64,
    pub q_len: u64,
    pub context_before: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
}

impl AttnShape {
    pub fn kv_len(&self) -> u64 {
        self.context_before + self.q_len
    }
    /// Bytes of K and V this call reads, at `dtype_bytes` per element.
    pub fn kv_bytes(&self, dtype_bytes: u64) -> u64 {
        2 * self.batch * self.kv_heads * self.kv_len() * self.head_dim * dtype_bytes
    }
    /// Bytes of the materialised score matrix (backends without fused attention).
    pub fn score_bytes(&self, dtype_bytes: u64) -> u64 {
        self.batch * self.heads * self.q_len * self.kv_len() * dtype_bytes
    }
}

/// A device that can time operators. Each method returns one time per repetition, in
/// milliseconds, after `warmup` untimed runs.
pub trait OpTimer {
    /// What the device is; peaks filled in by the backend (datasheet or measured).
    fn meta(&self) -> ProfileMeta;
    fn dtype_bytes(&self) -> u64;
    /// `Y = X W^T` with X of `m x k` and W of `n x k`.
    fn matmul(&mut self, m: u64, k: u64, n: u64, warmup: u32, reps: u32) -> Result<Vec<f64>>;
    fn elementwise(&mut self, e: Elem, rows: u64, cols: u64, warmup: u32, reps: u32) -> Result<Vec<f64>>;
    fn attention(&mut self, a: AttnShape, warmup: u32, reps: u32) -> Result<Vec<f64>>;
}

/// The grid of a profiling run.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub tokens: Vec<u64>,
    pub tensor_parallel: Vec<u32>,
    pub decode_batches: Vec<u64>,
    pub decode_contexts: Vec<u64>,
    pub prefill_chunks: Vec<u64>,
    pub prefill_contexts: Vec<u64>,
    pub warmup: u32,
    pub reps: u32,
    /// Skip attention points whose K/V plus scores exceed this many bytes.
    pub max_attention_bytes: u64,
}

impl Grid {
    /// A small grid a CPU finishes in seconds (f32; used by the tests too).
    pub fn cpu() -> Grid {
        Grid {
            tokens: vec![1, 4, 16, 64, 128],
            tensor_parallel: vec![1],
            decode_batches: vec![1, 4],
            decode_contexts: vec![64, 256],
            prefill_chunks: vec![16, 64],
            prefill_contexts: vec![0, 128],
            warmup: 1,
            reps: 3,
            max_attention_bytes: 256 << 20,
        }
    }

    /// The GPU grid: Vidur's token range with tensor-parallel shards, decode batches to 256
    /// and contexts to 8K, prefill chunks to 4K.
    pub fn gpu() -> Grid {
        Grid {
            tokens: vec![
                1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
            ],
            tensor_parallel: vec![1, 2, 4],
            decode_batches: vec![1, 2, 4, 8, 16, 32, 64, 128, 256],
            decode_contexts: vec![128, 512, 1024, 2048, 4096, 8192],
            prefill_chunks: vec![16, 64, 128, 256, 512, 1024, 2048, 4096],
            prefill_contexts: vec![0, 512, 2048, 8192],
            warmup: 3,
            reps: 15,
            max_attention_bytes: 24 << 30,
        }
    }

    /// The points this grid profiles for `shape`, in order.
    pub fn points(&self, s: &LayerShape, dtype_bytes: u64) -> Vec<OpPoint> {
        let mut out = Vec::new();
        for &tp in &self.tensor_parallel {
            if !s.heads.is_multiple_of(tp as u64) || !s.intermediate.is_multiple_of(tp as u64) {
                continue;
            }
            for &n in &self.tokens {
                for op in super::format::LAYER_OPS {
                    out.push(OpPoint::new(op, n, 1, 0, tp));
                }
            }
        }
        for &b in &self.decode_batches {
            for &l in &self.decode_contexts {
                let p = OpPoint::new("attn_decode", b, b, l, 1);
                if self.fits(&attn_shape(s, &p), dtype_bytes) {
                    out.push(p);
                }
            }
        }
        for &c in &self.prefill_chunks {
            for &a in &self.prefill_contexts {
                let p = OpPoint::new("attn_prefill", c, 1, a, 1);
                if self.fits(&attn_shape(s, &p), dtype_bytes) {
                    out.push(p);
                }
            }
        }
        out
    }

    fn fits(&self, a: &AttnShape, dtype_bytes: u64) -> bool {
        a.kv_bytes(dtype_bytes) + a.score_bytes(dtype_bytes) <= self.max_attention_bytes
    }
}

/// The attention call a point stands for.
pub fn attn_shape(s: &LayerShape, p: &OpPoint) -> AttnShape {
    let tp = p.tp.max(1) as u64;
    let batch = p.batch.max(1);
    let (q_len, context_before) = if p.op == "attn_decode" {
        (1, p.context.saturating_sub(1))
    } else {
        (p.tokens / batch, p.context)
    };
    AttnShape {
        batch,
        q_len,
        context_before,
        heads: s.heads / tp,
        kv_heads: (s.kv_heads / tp).max(1),
        head_dim: s.head_dim,
    }
}

/// Time one point on `t`.
pub fn time_point(t: &mut dyn OpTimer, s: &LayerShape, p: &OpPoint, g: &Grid) -> Result<Vec<f64>> {
    let tp = p.tp.max(1) as u64;
    let (n, h, d) = (p.tokens, s.hidden, s.head_dim);
    let (qh, kvh, i) = (s.heads / tp, (s.kv_heads / tp).max(1), s.intermediate / tp);
    let (w, r) = (g.warmup, g.reps);
    match p.op.as_str() {
        "attn_pre_proj" => t.matmul(n, h, (qh + 2 * kvh) * d, w, r),
        "attn_post_proj" => t.matmul(n, qh * d, h, w, r),
        "mlp_up_proj" => t.matmul(n, h, if s.gated { 2 * i } else { i }, w, r),
        "mlp_down_proj" => t.matmul(n, i, h, w, r),
        "input_layernorm" | "post_attention_layernorm" => t.elementwise(Elem::RmsNorm, n, h, w, r),
        "add" => t.elementwise(Elem::Add, n, h, w, r),
        "mlp_act" => t.elementwise(Elem::SiluMul, n, i, w, r),
        "attn_rope" => t.elementwise(Elem::Rope { head_dim: d }, n, (qh + kvh) * d, w, r),
        "emb" => t.elementwise(Elem::Embedding { vocab: s.vocab / tp }, n, h, w, r),
        "attn_decode" | "attn_prefill" => t.attention(attn_shape(s, p), w, r),
        other => Err(crate::Error::bad(format!("profile: unknown operator `{other}`"))),
    }
}

/// Profile one layer of `model` on `t` over grid `g`, writing `out` as it goes (so that an
/// interrupted run keeps what it measured).
pub fn run(t: &mut dyn OpTimer, model: &ModelSpec, g: &Grid, out: &Path, progress: bool) -> Result<Profile> {
    let mut shape = LayerShape::of_model(model);
    shape.dtype_bytes = t.dtype_bytes();
    let mut meta = t.meta();
    meta.details.insert("grid".into(), format!("{g:?}"));
    let mut prof = Profile {
        format: PROFILE_FORMAT.into(),
        meta,
        shape: shape.clone(),
        points: Vec::new(),
    };
    let todo = g.points(&shape, t.dtype_bytes());
    let bar = if progress {
        indicatif::ProgressBar::new(todo.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message(format!("profiling {}", model.name));
    let started = std::time::Instant::now();
    let mut last_save = std::time::Instant::now();
    let mut errors: Vec<String> = Vec::new();
    for p in todo {
        match time_point(t, &shape, &p, g) {
            Ok(samples) => prof.points.push(p.with_samples(&samples)),
            Err(e) => {
                // One failing configuration (out of memory, a library refusing a shape) does
                // not cost the rest of the run; too many means something is broken.
                errors.push(format!(
                    "{} tokens={} batch={} context={} tp={}: {e}",
                    p.op, p.tokens, p.batch, p.context, p.tp
                ));
                prof.meta.details.insert("errors".into(), errors.join("; "));
                if errors.len() > 20 {
                    prof.save(out)?;
                    return Err(crate::Error::other(format!(
                        "profiling stopped after {} failed points: {}",
                        errors.len(),
                        errors[0]
                    )));
                }
            }
        }
        bar.inc(1);
        if last_save.elapsed().as_secs_f64() > 2.0 {
            prof.save(out)?;
            last_save = std::time::Instant::now();
        }
    }
    bar.finish_and_clear();
    prof.meta.details.insert(
        "profile_seconds".into(),
        format!("{:.1}", started.elapsed().as_secs_f64()),
    );
    prof.save(out)?;
    Ok(prof)
}

/// UTC now as RFC 3339 (the one place calibration reads the clock: to date a measurement).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Catalog;

    #[test]
    fn grid_covers_every_operator_and_respects_the_attention_memory_cap() {
        let cat = Catalog::builtin();
        let s = LayerShape::of_model(cat.model("Llama-2-7B").unwrap());
        let g = Grid::gpu();
        let pts = g.points(&s, 2);
        for &(op, _) in crate::calib::OPS {
            assert!(pts.iter().any(|p| p.op == op), "{op} missing");
        }
        for p in pts
            .iter()
            .filter(|p| p.op.starts_with("attn_") && p.op != "attn_pre_proj")
        {
            if p.op == "attn_decode" || p.op == "attn_prefill" {
                let a = attn_shape(&s, p);
                assert!(a.kv_bytes(2) + a.score_bytes(2) <= g.max_attention_bytes, "{p:?}");
            }
        }
        // Llama-2-7B has no grouped-query attention: 256 x 8192 decodes need 34 GB of KV.
        assert!(!pts
            .iter()
            .any(|p| p.op == "attn_decode" && p.batch == 256 && p.context == 8192));
    }

    #[test]
    fn decode_points_attend_over_their_context() {
        let cat = Catalog::builtin();
        let s = LayerShape::of_model(cat.model("Qwen2.5-7B").unwrap());
        let a = attn_shape(&s, &OpPoint::new("attn_decode", 8, 8, 1024, 1));
        assert_eq!((a.batch, a.q_len, a.kv_len(), a.heads, a.kv_heads), (8, 1, 1024, 28, 4));
        let p = attn_shape(&s, &OpPoint::new("attn_prefill", 512, 1, 2048, 1));
        assert_eq!((p.q_len, p.kv_len()), (512, 2560));
    }

    #[test]
    fn utc_now_is_rfc3339() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
