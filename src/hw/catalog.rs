//! The GPU and model catalogue, embedded from `catalog/gpus.yaml` and `catalog/models.yaml`.
//!
//! Lookups accept the canonical name or an alias, case-insensitively; an unknown name is a
//! bad-input error that lists every known name. Derived quantities (parameters, weight bytes,
//! KV bytes per token) are computed from the shapes here and nowhere else.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

const GPUS_YAML: &str = include_str!("../../catalog/gpus.yaml");
const MODELS_YAML: &str = include_str!("../../catalog/models.yaml");

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub memory_gib: f64,
    pub bandwidth_gb_s: f64,
    pub fp16_tflops: f64,
    pub interconnect: String,
    pub interconnect_gb_s: f64,
    pub provenance: String,
}

impl GpuSpec {
    pub fn memory_bytes(&self) -> f64 {
        self.memory_gib * GIB
    }
    pub fn bandwidth_bytes_per_s(&self) -> f64 {
        self.bandwidth_gb_s * 1e9
    }
    pub fn peak_flops(&self) -> f64 {
        self.fp16_tflops * 1e12
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub hidden: u64,
    pub intermediate: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub vocab: u64,
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    pub max_position: u32,
    pub provenance: String,
    #[serde(default = "default_dtype_bytes")]
    pub dtype_bytes: u64,
    /// Mixture of experts: routed experts per MoE layer (0: a dense model). In a MoE model
    /// `intermediate` is the width of one expert (config.json's `moe_intermediate_size`, or
    /// Mixtral's `intermediate_size`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub experts: u64,
    /// Experts each token is routed to (`num_experts_per_tok`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub experts_per_token: u64,
    /// Width of the shared expert(s) every token passes through (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shared_intermediate: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn default_dtype_bytes() -> u64 {
    2
}

impl ModelSpec {
    /// A mixture-of-experts model.
    pub fn is_moe(&self) -> bool {
        self.experts > 0
    }
    /// Attention projections of one layer (q, k, v, o).
    pub fn layer_attention_params(&self) -> u64 {
        let q = self.hidden * self.heads * self.head_dim;
        let kv = 2 * self.hidden * self.kv_heads * self.head_dim;
        let o = self.heads * self.head_dim * self.hidden;
        q + kv + o
    }
    /// One gated MLP of width `intermediate` (gate, up, down): a dense MLP or one expert.
    pub fn expert_params(&self) -> u64 {
        3 * self.hidden * self.intermediate
    }
    /// Matrix-product parameters of one layer that every token passes through: attention, and
    /// in a MoE model the router and the shared expert (a dense model's MLP too).
    pub fn layer_dense_matmul_params(&self) -> u64 {
        if self.is_moe() {
            self.layer_attention_params() + self.hidden * self.experts + 3 * self.hidden * self.shared_intermediate
        } else {
            self.layer_attention_params() + self.expert_params()
        }
    }
    /// Matrix-product parameters of one decoder layer (attention and MLP, every expert; biases
    /// excluded).
    pub fn layer_matmul_params(&self) -> u64 {
        self.layer_dense_matmul_params() + self.experts * self.expert_params()
    }
    /// Matrix-product parameters one token is multiplied by in one layer (a MoE model's
    /// routed experts counted `experts_per_token` times).
    pub fn layer_active_matmul_params(&self) -> u64 {
        self.layer_dense_matmul_params() + self.experts_per_token.min(self.experts) * self.expert_params()
    }
    /// Expected distinct experts of one layer that `tokens` tokens touch, each routed to
    /// `experts_per_token` of `experts` (uniform routing): E (1 - (1 - k/E)^n).
    pub fn experts_touched(&self, tokens: f64) -> f64 {
        if !self.is_moe() || tokens <= 0.0 {
            return 0.0;
        }
        let e = self.experts as f64;
        let k = (self.experts_per_token as f64).min(e);
        e * (1.0 - (1.0 - k / e).powf(tokens))
    }
    /// Parameters per token outside the embedding table (what one forward pass multiplies).
    pub fn active_matmul_params(&self) -> u64 {
        self.layers * self.layer_active_matmul_params()
    }
    /// Parameters of one decoder layer including biases and the two norms.
    pub fn layer_params(&self) -> u64 {
        let bias = if self.qkv_bias {
            (self.heads + 2 * self.kv_heads) * self.head_dim
        } else {
            0
        };
        self.layer_matmul_params() + bias + 2 * self.hidden
    }
    /// Matrix-product parameters outside the embedding table: all layers.
    pub fn non_embedding_matmul_params(&self) -> u64 {
        self.layers * self.layer_matmul_params()
    }
    /// Total parameters: layers, final norm, embedding table and (if untied) the LM head.
    pub fn total_params(&self) -> u64 {
        let emb = self.vocab * self.hidden;
        let head = if self.tied_embeddings { 0 } else { emb };
        self.layers * self.layer_params() + self.hidden + emb + head
    }
    pub fn weight_bytes(&self) -> u64 {
        self.total_params() * self.dtype_bytes
    }
    /// Bytes of weights streamed from memory by one forward step: every layer plus the LM head
    /// (the embedding gather reads only a few rows). In a MoE model this counts every expert;
    /// [`ModelSpec::dense_weight_bytes_read_per_step`] and [`ModelSpec::experts_touched`] give
    /// what a step of a given size reads.
    pub fn weight_bytes_read_per_step(&self) -> u64 {
        (self.layers * self.layer_params() + self.vocab * self.hidden) * self.dtype_bytes
    }
    /// Bytes every step reads whatever its size: all layers' weights but the routed experts,
    /// plus the LM head.
    pub fn dense_weight_bytes_read_per_step(&self) -> u64 {
        self.weight_bytes_read_per_step() - self.layers * self.experts * self.expert_params() * self.dtype_bytes
    }
    /// Bytes of one routed expert of one layer.
    pub fn expert_bytes(&self) -> u64 {
        self.expert_params() * self.dtype_bytes
    }
    /// KV cache bytes per token over all layers: 2 (K and V) * layers * kv_heads * head_dim * dtype.
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuFile {
    gpus: Vec<GpuSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    models: Vec<ModelSpec>,
}

/// The embedded catalogue.
#[derive(Debug)]
pub struct Catalog {
    pub gpus: Vec<GpuSpec>,
    pub models: Vec<ModelSpec>,
}

fn norm(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace([' ', '_'], "-")
}

impl Catalog {
    /// The catalogue shipped in the binary.
    pub fn builtin() -> &'static Catalog {
        static CAT: OnceLock<Catalog> = OnceLock::new();
        CAT.get_or_init(|| {
            let g: GpuFile = serde_saphyr::from_str(GPUS_YAML).expect("embedded catalog/gpus.yaml parses");
            let m: ModelFile = serde_saphyr::from_str(MODELS_YAML).expect("embedded catalog/models.yaml parses");
            Catalog {
                gpus: g.gpus,
                models: m.models,
            }
        })
    }

    pub fn gpu(&self, name: &str) -> Result<&GpuSpec> {
        let n = norm(name);
        self.gpus
            .iter()
            .find(|g| norm(&g.name) == n || g.aliases.iter().any(|a| norm(a) == n))
            .ok_or_else(|| {
                let known: Vec<&str> = self.gpus.iter().map(|g| g.name.as_str()).collect();
                Error::bad(format!("unknown GPU `{name}`; known GPUs: {}", known.join(", ")))
            })
    }

    pub fn model(&self, name: &str) -> Result<&ModelSpec> {
        let n = norm(name);
        // Hub names work too: `meta-llama/Llama-2-7b-hf` is Llama-2-7B.
        let strip = |s: &str| {
            let s = norm(s);
            let s = s.rsplit('/').next().unwrap_or("").to_string();
            // Suffixes that name a release, not an architecture: `-hf`, `-instruct`, `-chat`,
            // a version (`-v0.1`) or a date code (`-2507`), in any order.
            let mut s = s.as_str();
            loop {
                let before = s.len();
                for suf in ["-hf", "-instruct", "-chat"] {
                    s = s.strip_suffix(suf).unwrap_or(s);
                }
                if let Some((head, tail)) = s.rsplit_once('-') {
                    let version = tail
                        .strip_prefix('v')
                        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'));
                    let date = tail.len() == 4 && tail.chars().all(|c| c.is_ascii_digit());
                    if version || date {
                        s = head;
                    }
                }
                if s.len() == before {
                    break;
                }
            }
            s.to_string()
        };
        let ns = strip(name);
        self.models
            .iter()
            .find(|m| norm(&m.name) == n || strip(&m.name) == ns)
            .ok_or_else(|| {
                let known: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                Error::bad(format!("unknown model `{name}`; known models: {}", known.join(", ")))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_published_sizes() {
        // (model, published parameter count in billions, tolerance)
        let cases = [
            ("Qwen2.5-7B", 7.62, 0.01),
            ("Qwen1.5-7B", 7.72, 0.01),
            ("Qwen2.5-1.5B", 1.54, 0.01),
            ("Qwen2.5-14B", 14.77, 0.02),
            ("Llama-2-13B", 13.02, 0.01),
            ("Llama-2-70B", 68.98, 0.01),
            ("CodeLlama-34B", 33.74, 0.01),
            ("Llama-3.1-8B", 8.03, 0.01),
            ("Llama-3.1-70B", 70.55, 0.01),
            ("Mistral-7B", 7.25, 0.01),
            ("Qwen3-0.6B", 0.60, 0.02),
            ("Qwen3-8B", 8.19, 0.01),
            ("Qwen3-14B", 14.77, 0.02),
            ("Qwen3-32B", 32.76, 0.01),
            ("Qwen2.5-72B", 72.7, 0.1),
            ("Llama-2-7B", 6.74, 0.01),
            ("Mixtral-8x7B", 46.70, 0.05),
            ("Mixtral-8x22B", 140.6, 0.2),
            ("Qwen3-30B-A3B", 30.53, 0.05),
            ("Qwen3-235B-A22B", 235.1, 0.3),
        ];
        let cat = Catalog::builtin();
        for (name, billions, tol) in cases {
            let p = cat.model(name).unwrap().total_params() as f64 / 1e9;
            assert!((p - billions).abs() <= tol, "{name}: {p:.3} B, expected {billions} B");
        }
    }

    #[test]
    fn moe_active_parameters_match_published_sizes_and_touched_experts_grow_with_tokens() {
        // (model, published active parameters in billions, embedding and head included)
        let cat = Catalog::builtin();
        for (name, billions, tol) in [
            ("Mixtral-8x7B", 12.9, 0.1),
            ("Mixtral-8x22B", 39.1, 0.2),
            ("Qwen3-30B-A3B", 3.3, 0.1),
            ("Qwen3-235B-A22B", 22.0, 0.3),
        ] {
            let m = cat.model(name).unwrap();
            let emb = m.vocab * m.hidden * if m.tied_embeddings { 1 } else { 2 };
            let p = (m.active_matmul_params() + emb) as f64 / 1e9;
            assert!(
                (p - billions).abs() <= tol,
                "{name}: {p:.2} B active, expected {billions}"
            );
        }
        let q = cat.model("Qwen3-30B-A3B").unwrap();
        // One token touches exactly its 8 experts; 16 tokens about 81 of 128; 2048 all of them.
        assert!((q.experts_touched(1.0) - 8.0).abs() < 1e-9);
        let t16 = q.experts_touched(16.0);
        assert!(t16 > 75.0 && t16 < 85.0, "{t16}");
        assert!((q.experts_touched(2048.0) - 128.0).abs() < 1e-6);
        let dense = cat.model("Llama-2-7B").unwrap();
        assert_eq!(dense.experts_touched(100.0), 0.0);
        assert_eq!(
            dense.dense_weight_bytes_read_per_step(),
            dense.weight_bytes_read_per_step()
        );
        assert_eq!(dense.active_matmul_params(), dense.non_embedding_matmul_params());
    }

    #[test]
    fn lookups_accept_aliases_and_list_known_names() {
        let cat = Catalog::builtin();
        assert_eq!(cat.gpu("rtx a6000").unwrap().name, "RTX-A6000");
        assert_eq!(cat.gpu("H100").unwrap().name, "H100-SXM");
        assert_eq!(cat.model("Qwen2.5-7B-Instruct").unwrap().name, "Qwen2.5-7B");
        let err = cat.gpu("V100").unwrap_err().to_string();
        assert!(
            err.contains("V100") && err.contains("RTX-A6000") && err.contains("H200"),
            "{err}"
        );
        assert_eq!(cat.model("meta-llama/Llama-2-7b-hf").unwrap().name, "Llama-2-7B");
        assert_eq!(cat.model("meta-llama/Llama-3.1-8B").unwrap().name, "Llama-3.1-8B");
        assert_eq!(cat.gpu("RTXPRO6000").unwrap().name, "RTX-PRO-6000");
        assert_eq!(cat.model("mistralai/Mixtral-8x7B-v0.1").unwrap().name, "Mixtral-8x7B");
        assert_eq!(
            cat.model("Qwen/Qwen3-30B-A3B-Instruct-2507").unwrap().name,
            "Qwen3-30B-A3B"
        );
        let err = cat.model("Falcon-7B").unwrap_err().to_string();
        assert!(err.contains("Qwen2.5-72B") && err.contains("Llama-2-7B"), "{err}");
    }

    #[test]
    fn catalogue_has_what_the_issue_requires() {
        let cat = Catalog::builtin();
        for g in ["RTX-A6000", "A40", "A100-80GB", "H100-SXM", "H200"] {
            assert!(!cat.gpu(g).unwrap().provenance.is_empty());
        }
        for m in [
            "Qwen2.5-0.5B",
            "Qwen2.5-1.5B",
            "Qwen2.5-3B",
            "Qwen2.5-7B",
            "Qwen2.5-14B",
            "Qwen2.5-32B",
            "Qwen2.5-72B",
            "Qwen1.5-1.8B",
            "Qwen1.5-4B",
            "Qwen1.5-7B",
            "Qwen1.5-14B",
            "Llama-2-7B",
        ] {
            assert!(!cat.model(m).unwrap().provenance.is_empty());
        }
    }

    #[test]
    fn qwen15_kv_is_much_larger_than_qwen25() {
        let cat = Catalog::builtin();
        let a = cat.model("Qwen1.5-7B").unwrap().kv_bytes_per_token();
        let b = cat.model("Qwen2.5-7B").unwrap().kv_bytes_per_token();
        assert_eq!(b, 2 * 28 * 4 * 128 * 2);
        assert!(a >= 4 * b);
    }
}
