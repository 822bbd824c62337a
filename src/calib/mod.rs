//! Calibration: operator profiles, the operator-level time model, fitting, checking and
//! deriving step-time calibrations.
//!
//! A profile is a list of timed operator calls of one transformer layer (matrix products,
//! element-wise kernels, attention) at known shapes. Each call's work is priced with the same
//! roofline terms the step-time model uses (`hw::steptime`): a matrix product costs
//! `max(FLOPs / (mfu * peak), bytes / (mbu * bw)) + matmul_fixed`, an element-wise kernel
//! `bytes / (mbu_elementwise * bw) + elementwise_fixed`, attention
//! `max(FLOPs / (mfu_attention * peak), KV bytes / (mbu_attention * bw)) + attention_fixed`.
//! Fitting those coefficients to measured points gives a calibration whose efficiencies carry
//! straight into the engine's step time.
//!
//! Nothing here touches a GPU: profiling backends live in `profile` (candle on the CPU, feature
//! `profile`) and `cuda` (cudarc, feature `cuda`).

#[cfg(feature = "profile")]
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod fit;
pub mod format;
pub mod profile;

pub use fit::{check, derive, fit, CheckReport, FitOptions};
pub use format::{LayerShape, OpPoint, Profile, ProfileMeta, PROFILE_FORMAT};

use crate::hw::calibration::Coefficients;
use crate::hw::ModelSpec;

/// What kind of kernel an operator is, which decides the coefficients that price it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpClass {
    Matmul,
    Elementwise,
    Attention,
}

impl OpClass {
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Matmul => "matmul",
            OpClass::Elementwise => "elementwise",
            OpClass::Attention => "attention",
        }
    }
}

/// The operators a profile may hold (Vidur's names for the per-layer operators, ours for
/// attention).
pub const OPS: &[(&str, OpClass)] = &[
    ("attn_pre_proj", OpClass::Matmul),
    ("attn_post_proj", OpClass::Matmul),
    ("mlp_up_proj", OpClass::Matmul),
    ("mlp_down_proj", OpClass::Matmul),
    ("input_layernorm", OpClass::Elementwise),
    ("post_attention_layernorm", OpClass::Elementwise),
    ("attn_rope", OpClass::Elementwise),
    ("mlp_act", OpClass::Elementwise),
    ("add", OpClass::Elementwise),
    ("emb", OpClass::Elementwise),
    ("attn_prefill", OpClass::Attention),
    ("attn_decode", OpClass::Attention),
];

pub fn op_class(op: &str) -> Option<OpClass> {
    OPS.iter().find(|(n, _)| *n == op).map(|(_, c)| *c)
}

/// The work of one operator call: FLOPs and bytes moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    pub class: OpClass,
    pub flops: f64,
    pub bytes: f64,
}

/// Work of the operator in `p` for a layer of shape `s` (None for an operator we do not model).
pub fn work(s: &LayerShape, p: &OpPoint) -> Option<Work> {
    let class = op_class(&p.op)?;
    let dt = s.dtype_bytes as f64;
    let tp = p.tp.max(1) as f64;
    let n = p.tokens as f64;
    let h = s.hidden as f64;
    let i = s.intermediate as f64 / tp;
    let d = s.head_dim as f64;
    let q_heads = s.heads as f64 / tp;
    let kv_heads = (s.kv_heads as f64 / tp).max(1.0);
    let matmul = |k: f64, out: f64| Work {
        class,
        flops: 2.0 * n * k * out,
        bytes: dt * (k * out + n * k + n * out),
    };
    let elementwise = |bytes: f64| Work {
        class,
        flops: 0.0,
        bytes,
    };
    let w = match p.op.as_str() {
        "attn_pre_proj" => matmul(h, (q_heads + 2.0 * kv_heads) * d),
        "attn_post_proj" => matmul(q_heads * d, h),
        "mlp_up_proj" => matmul(h, if s.gated { 2.0 * i } else { i }),
        "mlp_down_proj" => matmul(i, h),
        "input_layernorm" | "post_attention_layernorm" => elementwise(dt * (2.0 * n * h + h)),
        "add" => elementwise(dt * 3.0 * n * h),
        "mlp_act" => elementwise(dt * n * i * if s.gated { 3.0 } else { 2.0 }),
        "attn_rope" => elementwise(dt * 2.0 * n * (q_heads + kv_heads) * d),
        "emb" => elementwise(dt * 2.0 * n * h),
        "attn_decode" => {
            let b = p.batch.max(1) as f64;
            let ctx = p.context as f64;
            Work {
                class,
                flops: 4.0 * b * q_heads * d * ctx,
                bytes: dt * b * (2.0 * kv_heads * d * ctx + 2.0 * q_heads * d),
            }
        }
        "attn_prefill" => {
            let b = p.batch.max(1) as f64;
            let c = n / b;
            let a = p.context as f64;
            Work {
                class,
                flops: 4.0 * b * q_heads * d * c * (a + c / 2.0),
                bytes: dt * b * (2.0 * kv_heads * d * (a + c) + 2.0 * q_heads * d * c),
            }
        }
        _ => return None,
    };
    Some(w)
}

/// Element-wise bytes per token of one decoder layer (both norms, two residual adds, the
/// activation and the rotary embedding), as `work` prices them; used by the step-time model.
pub fn elementwise_bytes_per_token(m: &ModelSpec, tp: u32) -> f64 {
    let s = LayerShape::of_model(m);
    [
        "input_layernorm",
        "post_attention_layernorm",
        "add",
        "add",
        "mlp_act",
        "attn_rope",
    ]
    .iter()
    .map(|op| {
        let p = OpPoint::new(op, 1, 1, 0, tp);
        let w0 = work(&s, &OpPoint { tokens: 0, ..p.clone() }).unwrap().bytes;
        work(&s, &p).unwrap().bytes - w0
    })
    .sum()
}

/// Peak figures the efficiencies refer to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peaks {
    pub flops: f64,
    pub bytes_per_s: f64,
}

/// Predicted seconds of one operator call.
pub fn predict(c: &Coefficients, peaks: Peaks, w: &Work) -> f64 {
    match w.class {
        OpClass::Matmul => {
            (w.flops / (c.mfu * peaks.flops)).max(w.bytes / (c.mbu * peaks.bytes_per_s)) + c.matmul_fixed_us * 1e-6
        }
        OpClass::Elementwise => w.bytes / (c.mbu_elementwise * peaks.bytes_per_s) + c.elementwise_fixed_us * 1e-6,
        OpClass::Attention => {
            (w.flops / (c.mfu_attention * peaks.flops)).max(w.bytes / (c.mbu_attention * peaks.bytes_per_s))
                + c.attention_fixed_us * 1e-6
        }
    }
}

/// Fixed per-layer cost implied by the operator fixed costs: four matrix products, six
/// element-wise kernels and one attention call per decoder layer.
pub fn per_layer_us(c: &Coefficients) -> f64 {
    4.0 * c.matmul_fixed_us + 6.0 * c.elementwise_fixed_us + c.attention_fixed_us
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Catalog;

    #[test]
    fn matmul_work_matches_the_step_models_parameter_count() {
        // The four projections of one layer at one token cost 2 FLOPs per matmul parameter.
        let cat = Catalog::builtin();
        let m = cat.model("Qwen2.5-7B").unwrap();
        let s = LayerShape::of_model(m);
        let flops: f64 = ["attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj"]
            .iter()
            .map(|op| work(&s, &OpPoint::new(op, 1, 1, 0, 1)).unwrap().flops)
            .sum();
        assert_eq!(flops, 2.0 * m.layer_matmul_params() as f64);
    }

    #[test]
    fn tensor_parallel_splits_projections_but_not_norms() {
        let cat = Catalog::builtin();
        let s = LayerShape::of_model(cat.model("Llama-2-7B").unwrap());
        for (op, split) in [
            ("attn_pre_proj", true),
            ("mlp_down_proj", true),
            ("input_layernorm", false),
        ] {
            let one = work(&s, &OpPoint::new(op, 512, 1, 0, 1)).unwrap();
            let two = work(&s, &OpPoint::new(op, 512, 1, 0, 2)).unwrap();
            if split {
                assert_eq!(two.flops * 2.0, one.flops, "{op}");
            } else {
                assert_eq!(two.bytes, one.bytes, "{op}");
            }
        }
    }

    #[test]
    fn attention_work_agrees_with_the_step_model_terms() {
        // A decode over context L: 4 * heads * head_dim * L FLOPs per layer, the same factor
        // StepShape uses; a prefill chunk c after a tokens: c * (a + c/2).
        let cat = Catalog::builtin();
        let m = cat.model("Qwen2.5-1.5B").unwrap();
        let s = LayerShape::of_model(m);
        let d = work(&s, &OpPoint::new("attn_decode", 8, 8, 1000, 1)).unwrap();
        assert_eq!(d.flops, 4.0 * 8.0 * (m.heads * m.head_dim) as f64 * 1000.0);
        let p = work(&s, &OpPoint::new("attn_prefill", 256, 1, 512, 1)).unwrap();
        assert_eq!(p.flops, 4.0 * (m.heads * m.head_dim) as f64 * 256.0 * (512.0 + 128.0));
    }

    #[test]
    fn elementwise_bytes_per_token_is_positive_and_splits_with_tp() {
        let cat = Catalog::builtin();
        let m = cat.model("Qwen2.5-14B").unwrap();
        let one = elementwise_bytes_per_token(m, 1);
        let two = elementwise_bytes_per_token(m, 2);
        assert!(one > 0.0 && two < one && two > one / 2.0, "{one} {two}");
    }
}
