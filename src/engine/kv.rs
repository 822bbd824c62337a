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

/// vLLM's default KV block size on GPUs (its CPU backend needs a multiple of 32).
pub const DEFAULT_BLOCK_SIZE: u32 = 16;

/// The block sizes an engine may have (vLLM's `--block-size` choices).
pub const BLOCK_SIZES: [u32; 5] = [8, 16, 32, 64, 128];

/// Blocks of `bs` tokens needed to hold `tokens` tokens.
#[inline]
pub fn blocks_for(tokens: u32, bs: u32) -> u32 {
    tokens.div_ceil(bs)
}

/// Hashes the content hashes of blocks, which are already uniformly mixed: no rehashing.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A free-queue entry standing for a run of blocks without content (its count in place of
/// the generation).
const ANON: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, Default)]
struct BlockMeta {
    refs: u32,
    qgen: u32,
    hash: u64,
}

type BlockMap = std::collections::HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>;

/// A pool of KV blocks with vLLM v1's prefix cache.
///
/// Blocks have ids and reference counts. A block whose 16 tokens are all computed is
/// registered under the chained hash of its content; when its last holder lets go it stays in
/// the free list (least recently freed first out) with its content, and a later request whose
/// prompt hashes to the same chain takes it back instead of recomputing those tokens. A free
/// block is evicted (its hash forgotten) only when it is handed out again. With caching off,
/// nothing is registered and the pool only counts.
#[derive(Debug, Clone)]
pub struct KvPool {
    usable: u32,
    free: u32,
    caching: bool,
    /// Per block: holders, queue generation and content hash (0: none), side by side so that
    /// one cache line serves a block's whole bookkeeping.
    blocks: Vec<BlockMeta>,
    /// The free queue, least recently freed first, as (block, generation) entries; an entry
    /// whose generation is not its block's current one is stale (the block was taken back by
    /// a hit) and skipped. A deque keeps the hot path sequential in memory.
    /// Each entry also carries the block's content hash as it was freed (a free block's hash
    /// changes only when it is handed out), so taking a block reads no per-block state. Blocks
    /// without content are interchangeable: consecutive ones are one entry, a count, and
    /// their ids wait on `stack`.
    queue: std::collections::VecDeque<(u32, u32, u64)>,
    /// Stale entries in the queue (none: no generation check needed).
    stale: usize,
    /// Blocks never handed out yet (ids `fresh..usable`), taken before the free queue.
    fresh: u32,
    map: BlockMap,
    /// Freed blocks without content, reused last in first out (identity carries nothing): all
    /// free blocks without a cache, the anonymous runs of the queue with one.
    stack: Vec<u32>,
    /// Cached blocks evicted so far.
    pub evictions: u64,
}

impl KvPool {
    pub fn new(usable_blocks: u32) -> Self {
        Self::with_caching(usable_blocks, false)
    }
    pub fn with_caching(usable_blocks: u32, caching: bool) -> Self {
        KvPool {
            usable: usable_blocks,
            free: usable_blocks,
            caching,
            blocks: Vec::new(),
            queue: std::collections::VecDeque::new(),
            stale: 0,
            fresh: 0,
            map: BlockMap::default(),
            stack: Vec::new(),
            evictions: 0,
        }
    }
    #[inline]
    pub fn caching(&self) -> bool {
        self.caching
    }
    #[inline]
    pub fn usable(&self) -> u32 {
        self.usable
    }
    /// Blocks held by at least one request.
    #[inline]
    pub fn used(&self) -> u32 {
        self.usable - self.free
    }
    /// Blocks no request holds (some of them still cached).
    #[inline]
    pub fn free(&self) -> u32 {
        self.free
    }
    /// Holders of block `b`.
    pub fn refs_of(&self, b: u32) -> u32 {
        self.blocks.get(b as usize).map_or(0, |m| m.refs)
    }

    fn new_block(&mut self) -> u32 {
        let b = self.fresh;
        self.fresh += 1;
        self.blocks.push(BlockMeta::default());
        b
    }

    /// Take `n` blocks (appended to `out`) if that many are free; otherwise take none and
    /// return false. Fresh blocks go first, then the least recently freed ones, whose cached
    /// content is evicted.
    pub fn try_take(&mut self, n: u32, out: &mut Vec<u32>) -> bool {
        if n > self.free {
            return false;
        }
        self.free -= n;
        for _ in 0..n {
            let b = if self.caching {
                if self.fresh < self.usable {
                    self.new_block()
                } else {
                    let (b, h) = loop {
                        let front = self.queue.front_mut().expect("free count says a block is queued");
                        if front.0 == ANON {
                            // A run of blocks without content: any of them will do, and the
                            // most recently freed is the one still in the CPU's cache.
                            front.1 -= 1;
                            if front.1 == 0 {
                                self.queue.pop_front();
                            }
                            break (self.stack.pop().expect("anonymous blocks are stacked"), 0);
                        }
                        let (b, g, h) = self.queue.pop_front().expect("non-empty");
                        if self.stale > 0 && self.blocks[b as usize].qgen != g {
                            self.stale -= 1;
                            continue;
                        }
                        break (b, h);
                    };
                    if h != 0 {
                        self.blocks[b as usize].hash = 0;
                        if self.map.get(&h) == Some(&b) {
                            self.map.remove(&h);
                        }
                        self.evictions += 1;
                    }
                    b
                }
            } else {
                match self.stack.pop() {
                    Some(b) => b,
                    None => self.new_block(),
                }
            };
            self.blocks[b as usize].refs = 1;
            out.push(b);
        }
        true
    }

    /// Without a cache: take `n` blocks by count if that many are free.
    #[inline]
    pub fn take_count(&mut self, n: u32) -> bool {
        debug_assert!(!self.caching, "block ids are needed with the prefix cache on");
        if n > self.free {
            return false;
        }
        self.free -= n;
        true
    }

    /// Without a cache: give back `n` blocks by count.
    #[inline]
    pub fn give_back(&mut self, n: u32) {
        assert!(
            self.free + n <= self.usable,
            "KV pool: freeing more blocks than were taken"
        );
        self.free += n;
    }

    /// Let go of `blocks` (one reference each). Blocks are queued for reuse last block first,
    /// so a request's tail is evicted before its (more shareable) head, as vLLM does.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let r = &mut self.blocks[b as usize].refs;
            assert!(*r > 0, "KV pool: block {b} released more often than taken");
            *r -= 1;
            if *r == 0 {
                self.free += 1;
                if self.caching {
                    let m = &mut self.blocks[b as usize];
                    if m.hash == 0 {
                        // No content to find: queued as one more of an anonymous run.
                        self.stack.push(b);
                        match self.queue.back_mut() {
                            Some(e) if e.0 == ANON => e.1 += 1,
                            _ => self.queue.push_back((ANON, 1, 0)),
                        }
                    } else {
                        m.qgen = m.qgen.wrapping_add(1);
                        self.queue.push_back((b, m.qgen, m.hash));
                    }
                } else {
                    self.stack.push(b);
                }
            }
        }
        // Hits leave stale entries behind; drop them before they outnumber the blocks.
        if self.queue.len() > 2 * self.usable as usize + 1024 {
            let blocks = &self.blocks;
            self.queue
                .retain(|&(b, g, _)| b == ANON || (blocks[b as usize].qgen == g && blocks[b as usize].refs == 0));
            self.stale = 0;
        }
    }

    /// The cached block holding content `hash`, if any.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        if self.caching {
            self.map.get(&hash).copied()
        } else {
            None
        }
    }

    /// Take one more reference to cached block `b` (a prefix-cache hit).
    pub fn touch(&mut self, b: u32) {
        debug_assert!(self.caching, "a hit without a cache");
        if self.blocks[b as usize].refs == 0 {
            // Out of the free queue: its queued entry goes stale.
            let g = &mut self.blocks[b as usize].qgen;
            *g = g.wrapping_add(1);
            self.free -= 1;
            self.stale += 1;
        }
        self.blocks[b as usize].refs += 1;
    }

    /// Register block `b`, now full, under content hash `h` (first writer wins, as in vLLM).
    pub fn register(&mut self, b: u32, h: u64) {
        if !self.caching || self.blocks[b as usize].hash != 0 {
            return;
        }
        debug_assert!(h != 0, "content hashes are never 0");
        if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(h) {
            v.insert(b);
            self.blocks[b as usize].hash = h;
        }
    }

    /// Fraction of usable blocks in use, as `vllm:kv_cache_usage_perc` reports it (0..1).
    pub fn usage(&self) -> f64 {
        if self.usable == 0 {
            0.0
        } else {
            self.used() as f64 / self.usable as f64
        }
    }

    /// Check the pool's own bookkeeping (free count, list, map); returns the first violation.
    pub fn check(&self) -> Result<(), String> {
        if !self.caching && self.blocks.is_empty() {
            // Counted without ids (the engine's way with the cache off): nothing more to check.
            return Ok(());
        }
        let zero = self.blocks.iter().filter(|m| m.refs == 0).count() as u32 + (self.usable - self.fresh);
        if zero != self.free {
            return Err(format!(
                "KV pool: {zero} blocks unreferenced, free count says {}",
                self.free
            ));
        }
        if self.caching {
            let anon: u32 = self.queue.iter().filter(|e| e.0 == ANON).map(|e| e.1).sum();
            if anon as usize != self.stack.len() {
                return Err(format!(
                    "KV pool: {anon} anonymous blocks queued, {} stacked",
                    self.stack.len()
                ));
            }
            let queued = anon
                + self
                    .queue
                    .iter()
                    .filter(|&&(b, g, _)| b != ANON && self.blocks[b as usize].qgen == g)
                    .count() as u32;
            if queued + (self.usable - self.fresh) != self.free {
                return Err(format!(
                    "KV pool: {queued} blocks queued and {} fresh, free count says {}",
                    self.usable - self.fresh,
                    self.free
                ));
            }
        }
        for (&h, &b) in &self.map {
            if self.blocks[b as usize].hash != h {
                return Err(format!(
                    "KV pool: cache maps {h:x} to block {b}, which holds {:x}",
                    self.blocks[b as usize].hash
                ));
            }
        }
        Ok(())
    }
}

/// One run of tokens of a prompt with one content identity: positions `[previous end, end)`
/// carry content `id` (token p of the run is "token p of content id"). Two requests whose
/// prompts list the same runs hold the same tokens there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seg {
    pub id: u64,
    pub end: u32,
}

pub use crate::rng::mix;

/// Chained hash of full block `b` (tokens `bs*b..bs*(b+1)`) of a sequence whose runs are `segs`
/// followed by `tail_id` up to any length, given the hash of block `b - 1` (`prev`, 0 for the
/// first block). Never 0.
pub fn block_hash(prev: u64, b: u32, bs: u32, segs: &[Seg], tail_id: u64) -> u64 {
    let (lo, hi) = (b * bs, (b + 1) * bs);
    let mut h = mix(prev, 0x5EED_B10C ^ b as u64);
    let mut start = 0;
    for s in segs {
        if s.end > lo && start < hi {
            h = mix(h, mix(s.id, ((start.max(lo) as u64) << 32) | s.end.min(hi) as u64));
        }
        start = s.end;
        if start >= hi {
            break;
        }
    }
    if start < hi {
        h = mix(h, mix(tail_id, ((start.max(lo) as u64) << 32) | hi as u64));
    }
    h | 1
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
    /// Tokens the KV cache holds (usable blocks * block size).
    pub kv_capacity_tokens: u64,
}

/// Inputs to the KV sizing rule.
pub struct KvSizing<'a> {
    pub model: &'a ModelSpec,
    pub gpu: &'a GpuSpec,
    pub tensor_parallel: u32,
    /// Expert-parallel ranks sharing a MoE model's routed experts (1: none).
    pub expert_parallel: u32,
    pub gpu_memory_utilization: f64,
    pub max_num_batched_tokens: u32,
    pub max_model_len: u32,
    pub non_torch_gib: f64,
    /// Tokens per KV block.
    pub block_size: u32,
}

/// Size the KV cache the way vLLM does at startup, or refuse as vLLM would.
///
/// Per GPU: `usable = memory * utilisation - weights / tp - activation peak - non-torch`.
/// The activation peak of the profiling run is modelled as fp32 logits over the whole token
/// budget plus the widest MLP intermediate in the model dtype.
pub fn plan_kv(s: &KvSizing) -> Result<KvPlan> {
    let tp = s.tensor_parallel.max(1) as f64;
    let mem = s.gpu.memory_bytes();
    // Under expert parallelism each rank holds all the other weights (over its tensor-parallel
    // group) and 1/ep of the routed experts whole.
    let experts = (s.model.layers * s.model.experts * s.model.expert_bytes()) as f64;
    let weights = (s.model.weight_bytes() as f64 - experts) / tp + experts / (tp * s.expert_parallel.max(1) as f64);
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
    let bs = s.block_size;
    let num_blocks = (available / (bs as f64 * kv_per_token_per_gpu)).floor() as u64;
    let num_blocks = num_blocks.min(u32::MAX as u64) as u32;
    let usable = num_blocks.saturating_sub(1);
    let capacity_tokens = usable as u64 * bs as u64;
    let need_blocks = blocks_for(s.max_model_len, bs) as u64;
    if need_blocks > usable as u64 {
        let need_gib = g(need_blocks as f64 * bs as f64 * kv_per_token_per_gpu);
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
            expert_parallel: 1,
            gpu_memory_utilization: 0.9,
            max_num_batched_tokens: 2048,
            max_model_len: len,
            non_torch_gib: 0.5,
            block_size: DEFAULT_BLOCK_SIZE,
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
        Release(usize),
        /// Register the first block of holder i under one of a few content hashes.
        Register(usize, u64),
        /// A prefix hit on one of those hashes.
        Hit(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..40).prop_map(Op::Take),
            (0usize..64).prop_map(Op::Release),
            (0usize..64, 1u64..6).prop_map(|(i, h)| Op::Register(i, h)),
            (1u64..6).prop_map(Op::Hit),
        ]
    }

    proptest! {
        /// Blocks are conserved with the prefix cache on or off: free + held = usable, never
        /// more in use than exist, a refused take takes nothing, a cache hit returns a block
        /// holding that content, and reference counts match the holders.
        #[test]
        fn pool_conserves_blocks(usable in 0u32..200, caching: bool, ops in proptest::collection::vec(op(), 0..300)) {
            let mut pool = KvPool::with_caching(usable, caching);
            let mut held: Vec<Vec<u32>> = Vec::new();
            let mut content: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
            for o in ops {
                match o {
                    Op::Take(n) => {
                        let before = pool.free();
                        let mut got = Vec::new();
                        if pool.try_take(n, &mut got) {
                            prop_assert_eq!(got.len() as u32, n);
                            for b in &got { content.remove(b); }
                            held.push(got);
                        } else {
                            prop_assert!(n > before);
                            prop_assert_eq!(pool.free(), before);
                            prop_assert!(got.is_empty());
                        }
                    }
                    Op::Release(i) => if !held.is_empty() {
                        let blocks = held.swap_remove(i % held.len());
                        pool.release(&blocks);
                    }
                    Op::Register(i, h) => if !held.is_empty() {
                        let k = i % held.len();
                        if let Some(&b) = held[k].first() {
                            let had = pool.lookup(h).is_some();
                            pool.register(b, h);
                            if caching && !had && !content.contains_key(&b) { content.insert(b, h); }
                        }
                    }
                    Op::Hit(h) => {
                        if let Some(b) = pool.lookup(h) {
                            prop_assert!(caching);
                            prop_assert_eq!(content.get(&b), Some(&h));
                            pool.touch(b);
                            held.push(vec![b]);
                        }
                    }
                }
                let mut refs: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
                for h in &held { for &b in h { *refs.entry(b).or_default() += 1; } }
                prop_assert_eq!(pool.used() as usize, refs.len());
                for (&b, &n) in &refs { prop_assert_eq!(pool.refs_of(b), n); }
                prop_assert!(pool.used() <= pool.usable());
                prop_assert!(pool.usage() >= 0.0 && pool.usage() <= 1.0);
                prop_assert!(pool.check().is_ok(), "{:?}", pool.check());
            }
        }
    }
}
