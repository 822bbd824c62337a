//! Paged KV cache accounting: a pool of fixed-size blocks and vLLM's sizing rule.
//!
//! Only counts are kept (no block ids): without prefix caching, which block a request holds
//! does not change any timing. Block 0 is reserved, as in vLLM, so a pool of `num_gpu_blocks`
//! has `num_gpu_blocks - 1` usable blocks. This module never decides who gets memory; the
//! scheduler does.

use crate::error::{Error, Result};
use crate::hw::catalog::GIB;
use crate::hw::{GpuSpec, ModelSpec};
use serde::Serialize;

pub const BLOCK_SIZE: u32 = 16;

/// Blocks needed to hold `tokens` tokens.
#[inline]
pub fn blocks_for(tokens: u32) -> u32 {
    tokens.div_ceil(BLOCK_SIZE)
}

/// A pool of KV blocks.
#[derive(Debug, Clone)]
pub struct KvPool {
    usable: u32,
    free: u32,
}

impl KvPool {
    pub fn new(usable_blocks: u32) -> Self {
        KvPool {
            usable: usable_blocks,
            free: usable_blocks,
        }
    }
    #[inline]
    pub fn usable(&self) -> u32 {
        self.usable
    }
    #[inline]
    pub fn used(&self) -> u32 {
        self.usable - self.free
    }
    #[inline]
    pub fn free(&self) -> u32 {
        self.free
    }
    /// Take `n` blocks if that many are free; otherwise take none and return false.
    #[inline]
    pub fn try_take(&mut self, n: u32) -> bool {
        if n <= self.free {
            self.free -= n;
            true
        } else {
            false
        }
    }
    /// Give back `n` blocks.
    #[inline]
    pub fn give_back(&mut self, n: u32) {
        assert!(
            self.free + n <= self.usable,
            "KV pool: freeing more blocks than were taken"
        );
        self.free += n;
    }
    /// Fraction of usable blocks in use, as `vllm:kv_cache_usage_perc` reports it (0..1).
    pub fn usage(&self) -> f64 {
        if self.usable == 0 {
            0.0
        } else {
            self.used() as f64 / self.usable as f64
        }
    }
}

/// How an engine's memory is split, as vLLM's startup profiling would find it.
#[derive(Debug, Clone, Serialize)]
pub struct KvPlan {
    pub total_memory_gib: f64,
    pub gpu_memory_utilization: f64,
    pub weights_gib: f64,
    pub activation_peak_gib: f64,
    pub non_torch_gib: f64,
    pub kv_cache_gib: f64,
    pub kv_bytes_per_token: u64,
    pub num_gpu_blocks: u32,
    /// Tokens the KV cache holds (usable blocks * 16).
    pub kv_capacity_tokens: u64,
}

/// Inputs to the KV sizing rule.
pub struct KvSizing<'a> {
    pub model: &'a ModelSpec,
    pub gpu: &'a GpuSpec,
    pub tensor_parallel: u32,
    pub gpu_memory_utilization: f64,
    pub max_num_batched_tokens: u32,
    pub max_model_len: u32,
    pub non_torch_gib: f64,
}

/// Size the KV cache the way vLLM does at startup, or refuse as vLLM would.
///
/// Per GPU: `usable = memory * utilisation - weights / tp - activation peak - non-torch`.
/// The activation peak of the profiling run is modelled as fp32 logits over the whole token
/// budget plus the widest MLP intermediate in the model dtype.
pub fn plan_kv(s: &KvSizing) -> Result<KvPlan> {
    let tp = s.tensor_parallel.max(1) as f64;
    let mem = s.gpu.memory_bytes();
    let weights = s.model.weight_bytes() as f64 / tp;
    let budget = s.max_num_batched_tokens as f64;
    let act = budget * (s.model.vocab as f64 * 4.0 + 2.0 * s.model.intermediate as f64 * 2.0 / tp);
    let non_torch = s.non_torch_gib * GIB;
    let available = mem * s.gpu_memory_utilization - weights - act - non_torch;
    let kv_per_token_per_gpu = s.model.kv_bytes_per_token() as f64 / tp;
    let g = |b: f64| b / GIB;
    if available <= 0.0 {
        return Err(Error::bad(format!(
            "{} does not fit on {} x {} (tensor_parallel {}): no memory left for the KV cache. \
             Per GPU: {:.2} GiB * gpu_memory_utilization {} = {:.2} GiB, but weights take {:.2} GiB, \
             the profiling run's activations {:.2} GiB and non-torch memory {:.2} GiB. \
             Increase gpu_memory_utilization, use a bigger GPU or a higher tensor_parallel.",
            s.model.name,
            s.tensor_parallel,
            s.gpu.name,
            s.tensor_parallel,
            g(mem),
            s.gpu_memory_utilization,
            g(mem * s.gpu_memory_utilization),
            g(weights),
            g(act),
            g(non_torch)
        )));
    }
    let num_blocks = (available / (BLOCK_SIZE as f64 * kv_per_token_per_gpu)).floor() as u64;
    let num_blocks = num_blocks.min(u32::MAX as u64) as u32;
    let usable = num_blocks.saturating_sub(1);
    let capacity_tokens = usable as u64 * BLOCK_SIZE as u64;
    let need_blocks = blocks_for(s.max_model_len) as u64;
    if need_blocks > usable as u64 {
        let need_gib = g(need_blocks as f64 * BLOCK_SIZE as f64 * kv_per_token_per_gpu);
        return Err(Error::bad(format!(
            "{} on {} x {}: one request at max_model_len {} needs {:.2} GiB of KV cache per GPU, \
             more than the {:.2} GiB left after weights ({:.2} GiB), activations and non-torch memory; \
             the cache holds at most {} tokens. Increase gpu_memory_utilization or decrease max_model_len \
             (at most {}).",
            s.model.name,
            s.tensor_parallel,
            s.gpu.name,
            s.max_model_len,
            need_gib,
            g(available),
            g(weights),
            capacity_tokens,
            capacity_tokens
        )));
    }
    Ok(KvPlan {
        total_memory_gib: g(mem),
        gpu_memory_utilization: s.gpu_memory_utilization,
        weights_gib: g(weights),
        activation_peak_gib: g(act),
        non_torch_gib: s.non_torch_gib,
        kv_cache_gib: g(available),
        kv_bytes_per_token: s.model.kv_bytes_per_token(),
        num_gpu_blocks: num_blocks,
        kv_capacity_tokens: capacity_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Catalog;
    use proptest::prelude::*;

    fn sizing<'a>(m: &'a ModelSpec, g: &'a GpuSpec, tp: u32, len: u32) -> KvSizing<'a> {
        KvSizing {
            model: m,
            gpu: g,
            tensor_parallel: tp,
            gpu_memory_utilization: 0.9,
            max_num_batched_tokens: 2048,
            max_model_len: len,
            non_torch_gib: 0.5,
        }
    }

    #[test]
    fn qwen25_7b_on_a6000_leaves_about_25_gib_of_kv() {
        let c = Catalog::builtin();
        let (m, g) = (c.model("Qwen2.5-7B").unwrap(), c.gpu("RTX-A6000").unwrap());
        let p = plan_kv(&sizing(m, g, 1, 32768)).unwrap();
        // 43.2 GiB usable - 14.2 GiB weights - ~1.3 GiB activations - 0.5 GiB.
        assert!(p.kv_cache_gib > 26.0 && p.kv_cache_gib < 28.0, "{p:?}");
        // 57,344 bytes per token.
        assert_eq!(p.kv_bytes_per_token, 57_344);
        assert!(p.kv_capacity_tokens > 480_000, "{p:?}");
    }

    #[test]
    fn refusals_explain_with_numbers() {
        let c = Catalog::builtin();
        // 72B weights do not fit one 48 GB card.
        let e = plan_kv(&sizing(
            c.model("Qwen2.5-72B").unwrap(),
            c.gpu("RTX-A6000").unwrap(),
            1,
            4096,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not fit") && e.contains("weights take"), "{e}");
        // Qwen1.5-14B at 32K has no GQA: its max-length request does not fit beside the weights.
        let e = plan_kv(&sizing(
            c.model("Qwen1.5-14B").unwrap(),
            c.gpu("RTX-A6000").unwrap(),
            1,
            32768,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_model_len 32768") && e.contains("GiB"), "{e}");
        // ... but at 4K it does.
        plan_kv(&sizing(
            c.model("Qwen1.5-14B").unwrap(),
            c.gpu("RTX-A6000").unwrap(),
            1,
            4096,
        ))
        .unwrap();
        // And 72B on 2 x H200 does.
        plan_kv(&sizing(
            c.model("Qwen2.5-72B").unwrap(),
            c.gpu("H200").unwrap(),
            2,
            32768,
        ))
        .unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take(u32),
        GiveBack(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0u32..40).prop_map(Op::Take), (0usize..64).prop_map(Op::GiveBack)]
    }

    proptest! {
        /// Blocks are conserved: free + held = usable, never more in use than exist, and a
        /// refused request takes nothing.
        #[test]
        fn pool_conserves_blocks(usable in 0u32..200, ops in proptest::collection::vec(op(), 0..200)) {
            let mut pool = KvPool::new(usable);
            let mut held: Vec<u32> = Vec::new();
            for o in ops {
                match o {
                    Op::Take(n) => {
                        let before = pool.free();
                        if pool.try_take(n) { held.push(n); } else {
                            prop_assert!(n > before);
                            prop_assert_eq!(pool.free(), before);
                        }
                    }
                    Op::GiveBack(i) => if !held.is_empty() {
                        let n = held.swap_remove(i % held.len());
                        pool.give_back(n);
                    }
                }
                prop_assert_eq!(pool.used(), held.iter().sum::<u32>());
                prop_assert!(pool.used() <= pool.usable());
                prop_assert!(pool.usage() >= 0.0 && pool.usage() <= 1.0);
            }
        }
    }
}
