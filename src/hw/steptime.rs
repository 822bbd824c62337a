//! Step time of one engine iteration from its batch shape (hardware.md's roofline form).
//!
//! `T = max(linear FLOPs / (mfu * peak), weight bytes / (mbu * bw))
//!    + max(attention FLOPs / (mfu_attention * peak), KV bytes / (mbu_attention * bw))
//!    + element-wise bytes / (mbu_elementwise * bw)
//!    + tensor-parallel all-reduces + step overhead + layers * per-layer + requests * per-request`.
//! Constants are folded once per engine so that the per-step cost is a handful of float
//! operations. This module knows nothing of queues or requests; it prices a [`StepShape`].

use super::calibration::Coefficients;
use super::catalog::{GpuSpec, ModelSpec};
use crate::time::Nanos;

/// The aggregate shape of one step's batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    /// Tokens computed in the step (prefill chunk tokens plus one per decode).
    pub tokens: u64,
    /// Requests in the batch.
    pub requests: u64,
    /// Requests that sample a token at the end of the step (prompt complete).
    pub sampled: u64,
    /// Sum over prefill chunks of c * (a + c / 2), with a the tokens already computed.
    pub prefill_attn_work: f64,
    /// Sum over decodes of the attended context length.
    pub decode_context: u64,
    /// KV tokens read: context before this step, over all requests in the batch.
    pub kv_read_tokens: u64,
    /// Every request in the batch decodes one token (no prefill chunk): the step can replay
    /// a captured CUDA graph.
    pub decode_only: bool,
}

impl StepShape {
    /// Add one request that computes `n` new tokens after `computed` already in its KV cache.
    #[inline]
    pub fn add(&mut self, computed: u64, n: u64, samples: bool) {
        self.tokens += n;
        self.requests += 1;
        if samples {
            self.sampled += 1;
        }
        if self.requests == 1 {
            self.decode_only = true;
        }
        if n == 1 && samples {
            self.decode_context += computed + 1;
        } else {
            self.decode_only = false;
            let c = n as f64;
            self.prefill_attn_work += c * (computed as f64 + c / 2.0);
        }
        self.kv_read_tokens += computed;
    }
}

/// What an engine needs of a step-time model: how long a step of a given batch shape takes.
/// The engine knows nothing else of timing, so another model (a learned one, a measured table)
/// plugs in by implementing this. [`StepTimeModel`] is the physical one the scenario builds.
pub trait StepModel: std::fmt::Debug + Send + Sync {
    /// Step time in integer nanoseconds (at least 1).
    fn step_ns(&self, s: &StepShape) -> Nanos;

    /// Decode throughput in tokens per second at a nominal batch (`batch` decodes, each over
    /// `context` tokens): the engine's capacity figure handed to routing policies.
    fn decode_tokens_per_s(&self, batch: u64, context: u64) -> f64 {
        let mut s = StepShape::default();
        for _ in 0..batch {
            s.add(context, 1, true);
        }
        batch as f64 / (self.step_ns(&s) as f64 * 1e-9)
    }
}

impl StepModel for StepTimeModel {
    #[inline]
    fn step_ns(&self, s: &StepShape) -> Nanos {
        StepTimeModel::step_ns(self, s)
    }
}

/// A step-time model for one (model, GPU, tensor-parallel degree, coefficients).
#[derive(Debug, Clone)]
pub struct StepTimeModel {
    pub coeffs: Coefficients,
    /// Matrix-product FLOPs per token outside the routed experts (all of them in a dense model).
    lin_flops_per_token: f64,
    head_flops_per_row: f64,
    /// Weights every step reads on one GPU (all but the routed experts).
    weight_bytes: f64,
    attn_flop_factor: f64,
    kv_bytes_per_token: f64,
    elementwise_bytes_per_token: f64,
    bw_elementwise: f64,
    flops_lin: f64,
    flops_attn: f64,
    bw_lin: f64,
    bw_attn: f64,
    layers: f64,
    comm_bytes_per_token: f64,
    link_bw: f64,
    tp: f64,
    /// Largest batch replayed from a captured CUDA graph (0: eager engine, no graphs).
    max_capture: u32,
    /// The smooth roofline's exponent, `1 / (1 - overlap)` (infinite: the plain max).
    roof_p: f64,
    moe: Option<Moe>,
}

/// The routed experts of a mixture-of-experts model as one GPU of the engine holds them.
#[derive(Debug, Clone, Copy)]
struct Moe {
    /// Routed experts in the model, and per token.
    experts: f64,
    per_token: f64,
    /// Experts whose weights this GPU holds (all of them, sharded, under tensor parallelism;
    /// `experts / ep` whole ones under expert parallelism).
    local: f64,
    /// Bytes of one expert of one layer on this GPU.
    expert_bytes: f64,
    /// Routed-expert FLOPs per token on this GPU (all layers, `per_token` experts each).
    flops_per_token: f64,
    /// Their achieved rate (`mfu_moe` of peak).
    flops_rate: f64,
    /// Expert-parallel ranks (1: none). Ranks step together; each step's MoE layers see the
    /// tokens of every rank (assumed as many as this engine's).
    ep: f64,
}

/// vLLM's default CUDA-graph capture sizes (CompilationConfig, v0.11 and later): 1, 2, 4, then
/// every multiple of 8 below 256, then every multiple of 16, up to
/// `min(2 * max_num_seqs, 512)`. A decode batch runs the graph of the next size up, padded.
pub fn capture_size(batch: u32, max_capture: u32) -> Option<u32> {
    if batch == 0 || batch > max_capture {
        return None;
    }
    let size = match batch {
        1 | 2 => batch,
        3 | 4 => 4,
        b if b < 256 => b.div_ceil(8) * 8,
        b => b.div_ceil(16) * 16,
    };
    Some(size.min(max_capture))
}

/// The largest capture size vLLM picks for an engine with `max_num_seqs`.
pub fn default_max_capture(max_num_seqs: u32) -> u32 {
    (2 * max_num_seqs).min(512)
}

impl StepTimeModel {
    pub fn new(model: &ModelSpec, gpu: &GpuSpec, tp: u32, coeffs: Coefficients) -> Self {
        let t = tp.max(1) as f64;
        let peak = gpu.peak_flops();
        let bw = gpu.bandwidth_bytes_per_s();
        StepTimeModel {
            lin_flops_per_token: 2.0 * (model.layers * model.layer_dense_matmul_params()) as f64 / t,
            head_flops_per_row: 2.0 * (model.vocab * model.hidden) as f64 / t,
            weight_bytes: model.dense_weight_bytes_read_per_step() as f64 / t,
            attn_flop_factor: 4.0 * (model.layers * model.heads * model.head_dim) as f64 / t,
            kv_bytes_per_token: model.kv_bytes_per_token() as f64 / t,
            elementwise_bytes_per_token: model.layers as f64 * crate::calib::elementwise_bytes_per_token(model, tp),
            bw_elementwise: coeffs.mbu_elementwise * bw,
            flops_lin: coeffs.mfu * peak,
            flops_attn: coeffs.mfu_attention * peak,
            bw_lin: coeffs.mbu * bw,
            bw_attn: coeffs.mbu_attention * bw,
            layers: model.layers as f64,
            comm_bytes_per_token: (model.hidden * model.dtype_bytes) as f64,
            link_bw: gpu.interconnect_gb_s * 1e9,
            tp: t,
            coeffs,
            max_capture: 0,
            roof_p: if coeffs.overlap >= 1.0 {
                f64::INFINITY
            } else {
                1.0 / (1.0 - coeffs.overlap).max(1e-6)
            },
            moe: model.is_moe().then(|| Moe {
                experts: model.experts as f64,
                per_token: (model.experts_per_token.min(model.experts)) as f64,
                local: model.experts as f64,
                expert_bytes: model.expert_bytes() as f64 / t,
                flops_per_token: 2.0
                    * (model.layers * model.experts_per_token.min(model.experts) * model.expert_params()) as f64
                    / t,
                flops_rate: coeffs.mfu_moe * peak,
                ep: 1.0,
            }),
        }
    }

    /// Run the routed experts of a MoE model expert-parallel over `ep` ranks (vLLM's
    /// `enable_expert_parallel` with `data_parallel_size` ep): each rank holds `experts / ep`
    /// whole experts, and every MoE layer sends each token to its experts' ranks and back
    /// (two all-to-alls). No effect on a dense model or with `ep` 1.
    pub fn with_expert_parallel(mut self, ep: u32) -> Self {
        if let Some(m) = &mut self.moe {
            let ep = ep.max(1) as f64;
            m.ep = ep;
            m.local = m.experts / ep;
        }
        self
    }

    /// Run decode-only steps of up to `max_capture` requests as CUDA graphs (vLLM's default
    /// mode); 0 turns graphs off (`--enforce-eager`).
    pub fn with_cuda_graphs(mut self, max_capture: u32) -> Self {
        self.max_capture = max_capture;
        self
    }

    pub fn max_capture(&self) -> u32 {
        self.max_capture
    }

    /// Seconds for a step of this shape, split into its terms (for profiling and tests):
    /// matrix products (compute or weight reads), attention (compute or KV reads) and
    /// element-wise kernels, tensor- and expert-parallel communication, fixed costs.
    ///
    /// A decode-only step that fits a captured CUDA graph computes the padded batch and pays no
    /// per-layer launch cost; any other step (eager, or a mixed prefill step run piecewise)
    /// pays `per_layer_us` per layer. Every step pays `layer_us` per layer on the GPU (the
    /// fixed cost of the layer's kernels, graph or not). A MoE step reads the weights of the
    /// experts its tokens touch.
    pub fn terms(&self, s: &StepShape) -> [f64; 4] {
        let graph = if s.decode_only {
            capture_size(s.requests as u32, self.max_capture)
        } else {
            None
        };
        let lin_tokens = graph.map_or(s.tokens, |g| g as u64);
        let lin_flops = self.lin_flops_per_token * lin_tokens as f64 + self.head_flops_per_row * s.sampled as f64;
        let mut compute = lin_flops / self.flops_lin;
        let mut weight_bytes = self.weight_bytes;
        let mut comm = 0.0;
        let mut experts_run = 0.0;
        if let Some(m) = &self.moe {
            let routed = s.tokens as f64 * m.ep;
            let touched = if routed > 0.0 {
                m.local * (1.0 - (1.0 - m.per_token / m.experts).powf(routed))
            } else {
                0.0
            };
            weight_bytes += self.layers * touched * m.expert_bytes;
            experts_run = self.layers * touched;
            compute += m.flops_per_token * lin_tokens as f64 / m.flops_rate;
            if m.ep > 1.0 {
                // Dispatch and combine: each token's hidden state to and from its experts'
                // ranks, (ep - 1) / ep of them remote.
                let bytes = s.tokens as f64 * m.per_token * self.comm_bytes_per_token * (m.ep - 1.0) / m.ep;
                comm += 2.0 * self.layers * (self.coeffs.allreduce_us * 1e-6 + bytes / self.link_bw);
            }
        }
        let t_lin = self.roof(compute, weight_bytes / self.bw_lin);
        let attn_flops = self.attn_flop_factor * (s.prefill_attn_work + s.decode_context as f64);
        let kv_bytes = self.kv_bytes_per_token * (s.kv_read_tokens + s.tokens) as f64;
        let t_attn = self.roof(attn_flops / self.flops_attn, kv_bytes / self.bw_attn)
            + self.elementwise_bytes_per_token * s.tokens as f64 / self.bw_elementwise;
        if self.tp > 1.0 {
            let ring = 2.0 * (self.tp - 1.0) / self.tp * self.comm_bytes_per_token * s.tokens as f64 / self.link_bw;
            comm += 2.0 * self.layers * (self.coeffs.allreduce_us * 1e-6 + ring);
        }
        let per_layer = if graph.is_some() {
            self.coeffs.layer_us
        } else {
            self.coeffs.layer_us + self.coeffs.per_layer_us
        };
        let t_fixed = 1e-6
            * (self.coeffs.step_overhead_us
                + self.layers * per_layer
                + s.requests as f64 * self.coeffs.per_request_us
                + experts_run * self.coeffs.expert_us);
        [t_lin, t_attn, comm, t_fixed]
    }

    /// Compute and memory time of one kernel group on a smooth roofline: `(c^p + m^p)^(1/p)`
    /// with `p = 1 / (1 - overlap)`. Far from the ridge point it is the longer of the two (the
    /// other hides under it); at the ridge neither hides fully. `overlap` 1 is the ideal
    /// roofline (`max`), 0 runs them one after the other (sum).
    #[inline]
    fn roof(&self, compute: f64, memory: f64) -> f64 {
        let (hi, lo) = if compute >= memory {
            (compute, memory)
        } else {
            (memory, compute)
        };
        if self.roof_p.is_infinite() || lo <= 0.0 {
            return hi;
        }
        hi * (1.0 + (lo / hi).powf(self.roof_p)).powf(1.0 / self.roof_p)
    }

    /// Step time in integer nanoseconds (at least 1).
    #[inline]
    pub fn step_ns(&self, s: &StepShape) -> Nanos {
        let t: f64 = self.terms(s).iter().sum();
        ((t * 1e9).round() as Nanos).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Catalog;

    fn model(m: &str, g: &str, tp: u32) -> StepTimeModel {
        let c = Catalog::builtin();
        StepTimeModel::new(c.model(m).unwrap(), c.gpu(g).unwrap(), tp, Coefficients::default())
    }

    fn decode(batch: u64, ctx: u64) -> StepShape {
        let mut s = StepShape::default();
        for _ in 0..batch {
            s.add(ctx, 1, true);
        }
        s
    }

    #[test]
    fn small_decode_is_memory_bound_and_near_weight_read_time() {
        let m = model("Qwen2.5-7B", "RTX-A6000", 1);
        let t = m.terms(&decode(1, 100));
        // 14.1 GB of weights streamed (all but the embedding table) at 0.75 * 768 GB/s: 24.5 ms.
        assert!((t[0] - 14.14e9 / (0.75 * 768e9)).abs() / t[0] < 0.01, "{t:?}");
    }

    #[test]
    fn large_prefill_is_compute_bound() {
        let m = model("Qwen2.5-7B", "RTX-A6000", 1);
        let mut s = StepShape::default();
        s.add(0, 2048, true);
        let t = m.terms(&s);
        let flops = 2.0 * 2048.0 * m.lin_flops_per_token / 2.0;
        assert!(t[0] > 14.14e9 / (0.75 * 768e9), "{t:?}");
        assert!((t[0] - flops / (0.5 * 154.8e12)).abs() / t[0] < 0.05, "{t:?}");
    }

    #[test]
    fn step_time_grows_with_batch_and_context_and_shrinks_with_faster_gpus() {
        let a6000 = model("Qwen2.5-7B", "RTX-A6000", 1);
        let h100 = model("Qwen2.5-7B", "H100-SXM", 1);
        assert!(a6000.step_ns(&decode(64, 1000)) > a6000.step_ns(&decode(8, 1000)));
        assert!(a6000.step_ns(&decode(64, 8000)) > a6000.step_ns(&decode(64, 1000)));
        assert!(h100.step_ns(&decode(64, 1000)) < a6000.step_ns(&decode(64, 1000)));
        // Bigger model, slower step.
        let small = model("Qwen2.5-1.5B", "RTX-A6000", 1);
        assert!(small.step_ns(&decode(16, 500)) < a6000.step_ns(&decode(16, 500)));
    }

    #[test]
    fn captured_decode_pads_to_the_graph_size_and_skips_layer_launches() {
        // Table: batch -> capture size with max 512 (vLLM's list).
        for (b, g) in [
            (1, 1),
            (2, 2),
            (3, 4),
            (5, 8),
            (9, 16),
            (255, 256),
            (257, 272),
            (512, 512),
        ] {
            assert_eq!(capture_size(b, 512), Some(g), "batch {b}");
        }
        assert_eq!(capture_size(513, 512), None);
        assert_eq!(capture_size(3, 0), None);
        let eager = model("Llama-2-7B", "H100-SXM", 1);
        let graphs = model("Llama-2-7B", "H100-SXM", 1).with_cuda_graphs(256);
        let d = decode(9, 500);
        let (te, tg) = (eager.terms(&d), graphs.terms(&d));
        assert!((te[3] - tg[3] - 32.0 * eager.coeffs.per_layer_us * 1e-6).abs() < 1e-12);
        // A mixed step is not captured.
        let mut m = decode(8, 500);
        m.add(0, 300, true);
        assert_eq!(eager.terms(&m), graphs.terms(&m));
    }

    #[test]
    fn a_moe_step_reads_the_experts_its_tokens_touch() {
        // Mixtral-8x7B at TP2 on H100s: one decode touches 2 of 8 experts per layer, a batch
        // of 64 all of them; the step then reads nearly every weight, unlike a dense model
        // of the same active size.
        let m = model("Mixtral-8x7B", "H100-SXM", 2);
        let (one, many) = (m.terms(&decode(1, 500)), m.terms(&decode(64, 500)));
        let cat = Catalog::builtin();
        let spec = cat.model("Mixtral-8x7B").unwrap();
        let bw = 0.75 * 3350e9;
        let all = spec.weight_bytes_read_per_step() as f64 / 2.0 / bw;
        assert!((many[0] - all).abs() / all < 0.01, "{many:?} vs {all}");
        let two = (spec.dense_weight_bytes_read_per_step() as f64 + 32.0 * 2.0 * spec.expert_bytes() as f64) / 2.0 / bw;
        assert!((one[0] - two).abs() / two < 0.01, "{one:?} vs {two}");
        assert!(one[0] < 0.35 * many[0]);
        // Expert parallelism over two ranks: half the experts on each, an all-to-all per layer.
        let q = model("Qwen3-30B-A3B", "RTX-PRO-6000", 1);
        let qe = model("Qwen3-30B-A3B", "RTX-PRO-6000", 1).with_expert_parallel(2);
        let big = decode(128, 500);
        assert!(
            qe.terms(&big)[0] < 0.6 * q.terms(&big)[0],
            "{:?} {:?}",
            qe.terms(&big),
            q.terms(&big)
        );
        assert!(qe.terms(&big)[2] > 0.0 && q.terms(&big)[2] == 0.0);
        // A dense model ignores expert parallelism.
        let d = model("Llama-2-7B", "H100-SXM", 1);
        assert_eq!(
            d.terms(&big),
            model("Llama-2-7B", "H100-SXM", 1).with_expert_parallel(4).terms(&big)
        );
    }

    #[test]
    fn tensor_parallel_splits_work_and_adds_communication() {
        let tp1 = model("Qwen2.5-14B", "A100-80GB", 1);
        let tp2 = model("Qwen2.5-14B", "A100-80GB", 2);
        let s = decode(32, 1000);
        let (a, b) = (tp1.step_ns(&s), tp2.step_ns(&s));
        assert!(b < a && b > a / 2, "tp1 {a} tp2 {b}");
        assert!(tp2.terms(&s)[2] > 0.0 && tp1.terms(&s)[2] == 0.0);
    }
}
