//! NVIDIA GPU operator timing with cudarc (feature `cuda`), in bf16.
//!
//! The driver, cuBLAS and NVRTC are loaded at run time (cudarc `dynamic-loading`, with the
//! CUDA 13 bindings, which also look for the .12 and .11 sonames), so this compiles without a
//! CUDA toolkit and fails with a clear message where there is none. Matrix products run on
//! cuBLAS (`cublasGemmEx`, bf16 in and out, f32 accumulation, the TN layout PyTorch uses);
//! norms, activation, rotary embedding, embedding gather and the attention softmax are our own
//! kernels compiled at run time with NVRTC. Attention is two strided-batched cuBLAS products
//! around a causal softmax (the score matrix is materialised, unlike FlashAttention: the
//! profile says so). Every repetition is timed with CUDA events; the L2 cache is flushed before
//! each timed matrix product and attention call, since weights and KV cache stream from memory
//! in a real forward pass, and not before element-wise kernels, whose inputs the previous
//! kernel just wrote.

use super::format::ProfileMeta;
use super::profile::{AttnShape, Elem, OpTimer};
use crate::error::{Error, Result};
use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use half::bf16;
use std::collections::BTreeMap;
use std::sync::Arc;

const KERNELS: &str = r#"
typedef unsigned short bf16;
__device__ __forceinline__ float ld(bf16 x) { return __uint_as_float(((unsigned int)x) << 16); }
__device__ __forceinline__ bf16 st(float f) {
    unsigned int u = __float_as_uint(f);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}
__device__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.0f;
    int warps = (blockDim.x + 31) >> 5;
    for (int i = 0; i < warps; ++i) t += sh[i];
    return t;
}
__device__ float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = -3.0e38f;
    int warps = (blockDim.x + 31) >> 5;
    for (int i = 0; i < warps; ++i) t = fmaxf(t, sh[i]);
    return t;
}
extern "C" __global__ void fill(bf16* x, unsigned long long n, unsigned int seed) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned int h = ((unsigned int)i * 2654435761u) ^ seed ^ (unsigned int)(i >> 32);
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        x[i] = st(((float)(h & 0xFFFFu) / 65536.0f - 0.5f) * 0.2f);
    }
}
extern "C" __global__ void rmsnorm(const bf16* x, const bf16* w, bf16* y, int cols) {
    __shared__ float sh[32];
    const bf16* xr = x + (unsigned long long)blockIdx.x * cols;
    bf16* yr = y + (unsigned long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) { float v = ld(xr[i]); s += v * v; }
    float inv = rsqrtf(block_sum(s, sh) / cols + 1e-6f);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) yr[i] = st(ld(xr[i]) * inv * ld(w[i]));
}
extern "C" __global__ void add(bf16* a, const bf16* b, unsigned long long n) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        a[i] = st(ld(a[i]) + ld(b[i]));
}
extern "C" __global__ void silu_mul(const bf16* g, const bf16* u, bf16* y, unsigned long long n) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = ld(g[i]);
        y[i] = st(v / (1.0f + __expf(-v)) * ld(u[i]));
    }
}
extern "C" __global__ void rope(bf16* x, int heads, int head_dim, unsigned long long pairs) {
    int half = head_dim / 2;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += stride) {
        int j = (int)(p % half);
        unsigned long long th = p / half;
        unsigned long long tok = th / heads;
        unsigned long long base = th * head_dim;
        float ang = (float)tok * __powf(10000.0f, -2.0f * j / head_dim);
        float s, c;
        __sincosf(ang, &s, &c);
        float a = ld(x[base + j]), b = ld(x[base + j + half]);
        x[base + j] = st(a * c - b * s);
        x[base + j + half] = st(b * c + a * s);
    }
}
extern "C" __global__ void embedding(const bf16* table, const int* ids, bf16* y, int cols) {
    const bf16* src = table + (unsigned long long)ids[blockIdx.x] * cols;
    bf16* dst = y + (unsigned long long)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}
extern "C" __global__ void softmax_causal(bf16* s, int kv_len, int q_len, int context_before, float scale) {
    __shared__ float sh[32];
    unsigned long long row = blockIdx.x;
    int limit = context_before + (int)(row % (unsigned long long)q_len);
    bf16* r = s + row * (unsigned long long)kv_len;
    float m = -3.0e38f;
    for (int i = threadIdx.x; i <= limit && i < kv_len; i += blockDim.x) m = fmaxf(m, ld(r[i]) * scale);
    m = block_max(m, sh);
    float z = 0.0f;
    for (int i = threadIdx.x; i <= limit && i < kv_len; i += blockDim.x) z += __expf(ld(r[i]) * scale - m);
    z = block_sum(z, sh);
    float inv = 1.0f / z;
    for (int i = threadIdx.x; i < kv_len; i += blockDim.x)
        r[i] = st(i <= limit ? __expf(ld(r[i]) * scale - m) * inv : 0.0f);
}
"#;

fn de(e: impl std::fmt::Debug) -> Error {
    Error::other(format!("cuda: {e:?}"))
}

/// Shared libraries of the CUDA stack this process has loaded (from /proc/self/maps).
fn loaded_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| ["libcuda.", "libcublas", "libnvrtc"].iter().any(|n| p.contains(n)))
        .map(String::from)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// The catalogue GPU a device name stands for.
fn catalog_gpu(device: &str) -> Option<&'static str> {
    let d = device.to_ascii_uppercase();
    if d.contains("H200") {
        Some("H200")
    } else if d.contains("H100") {
        Some("H100-SXM")
    } else if d.contains("A100") {
        Some("A100-80GB")
    } else if d.contains("A40") {
        Some("A40")
    } else if d.contains("A6000") {
        Some("RTX-A6000")
    } else {
        None
    }
}

pub struct CudaTimer {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: BTreeMap<&'static str, CudaFunction>,
    flush: CudaSlice<u8>,
    info: BTreeMap<String, String>,
    device: String,
    seed: u32,
}

/// Compile the kernels with NVRTC (needs only libnvrtc, no GPU): the PTX's size.
pub fn compile_kernels() -> Result<usize> {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::other(
            "NVRTC (libnvrtc.so) could not be loaded: install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and put it on LD_LIBRARY_PATH",
        ));
    }
    let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(de)?;
    Ok(ptx.to_src().len())
}

impl CudaTimer {
    /// Open GPU `ordinal` and record what was found (driver, libraries, device) in `meta()`.
    pub fn new(ordinal: usize) -> Result<CudaTimer> {
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::other(
                "no NVIDIA driver: libcuda.so could not be loaded (is there a GPU and its driver on this machine?)",
            ));
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::other(
                "cuBLAS (libcublas.so.13/.12/.11) could not be loaded: put the CUDA libraries on LD_LIBRARY_PATH",
            ));
        }
        let count = CudaContext::device_count().map_err(de)?;
        if ordinal as i32 >= count {
            return Err(Error::bad(format!(
                "--device cuda:{ordinal}: this machine has {count} CUDA device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(de)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(de)?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(de)?;
        let module = ctx.load_module(ptx).map_err(de)?;
        let mut funcs = BTreeMap::new();
        for name in [
            "fill",
            "rmsnorm",
            "add",
            "silu_mul",
            "rope",
            "embedding",
            "softmax_causal",
        ] {
            funcs.insert(name, module.load_function(name).map_err(de)?);
        }
        let device = ctx.name().map_err(de)?;
        let mut info = BTreeMap::new();
        let mut v: i32 = 0;
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
            .result()
            .map_err(de)?;
        info.insert(
            "cuda_driver_api".to_string(),
            format!("{}.{}", v / 1000, (v % 1000) / 10),
        );
        let (mut ma, mut mi) = (0i32, 0i32);
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut ma, &mut mi) };
        info.insert("nvrtc".to_string(), format!("{ma}.{mi}"));
        let mut bv: i32 = 0;
        unsafe { blas_sys::cublasGetVersion_v2(*blas.handle(), &mut bv) };
        info.insert(
            "cublas".to_string(),
            format!("{}.{}.{}", bv / 10000, (bv % 10000) / 100, bv % 100),
        );
        let (cc_ma, cc_mi) = ctx.compute_capability().map_err(de)?;
        info.insert("compute_capability".to_string(), format!("{cc_ma}.{cc_mi}"));
        info.insert(
            "memory_gib".to_string(),
            format!("{:.1}", ctx.total_mem().map_err(de)? as f64 / (1u64 << 30) as f64),
        );
        if let Ok(s) = std::fs::read_to_string("/proc/driver/nvidia/version") {
            if let Some(l) = s.lines().next() {
                info.insert("nvidia_driver".to_string(), l.trim().to_string());
            }
        }
        info.insert("libraries".to_string(), loaded_libraries().join(" "));
        let flush = stream.alloc_zeros::<u8>(256 << 20).map_err(de)?;
        Ok(CudaTimer {
            ctx,
            stream,
            blas,
            funcs,
            flush,
            info,
            device,
            seed: 1,
        })
    }

    fn random(&mut self, n: u64) -> Result<CudaSlice<bf16>> {
        let mut x = unsafe { self.stream.alloc::<bf16>(n.max(1) as usize) }.map_err(de)?;
        self.seed = self.seed.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
        let f = &self.funcs["fill"];
        let cfg = LaunchConfig {
            grid_dim: (1024, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let seed = self.seed;
        unsafe { self.stream.launch_builder(f).arg(&mut x).arg(&n).arg(&seed).launch(cfg) }.map_err(de)?;
        Ok(x)
    }

    /// Time `op` over repetitions with CUDA events, flushing L2 first when `cold`.
    fn time(
        &mut self,
        warmup: u32,
        reps: u32,
        cold: bool,
        mut op: impl FnMut(&mut CudaTimer) -> Result<()>,
    ) -> Result<Vec<f64>> {
        for _ in 0..warmup {
            op(self)?;
        }
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut events = Vec::with_capacity(reps as usize);
        for _ in 0..reps.max(1) {
            if cold {
                self.stream.memset_zeros(&mut self.flush).map_err(de)?;
            }
            let a = self.stream.record_event(flags).map_err(de)?;
            op(self)?;
            let b = self.stream.record_event(flags).map_err(de)?;
            events.push((a, b));
        }
        self.stream.synchronize().map_err(de)?;
        events
            .iter()
            .map(|(a, b)| a.elapsed_ms(b).map(f64::from).map_err(de))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_tn(
        &self,
        m: u64,
        n: u64,
        k: u64,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: m as i32,
        };
        unsafe { self.blas.gemm(cfg, a, b, c) }.map_err(de)
    }

    fn launch_rows(&self, name: &str, rows: u64) -> (CudaFunction, LaunchConfig) {
        (
            self.funcs[name].clone(),
            LaunchConfig {
                grid_dim: (rows.max(1) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            },
        )
    }

    fn launch_flat(&self, name: &str, n: u64) -> (CudaFunction, LaunchConfig) {
        let blocks = n.div_ceil(256).clamp(1, 65_535 * 4) as u32;
        (
            self.funcs[name].clone(),
            LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            },
        )
    }
}

impl OpTimer for CudaTimer {
    fn meta(&self) -> ProfileMeta {
        let cat = crate::hw::Catalog::builtin();
        let gpu = catalog_gpu(&self.device).and_then(|g| cat.gpu(g).ok());
        ProfileMeta {
            device: self.device.clone(),
            gpu: gpu.map(|g| g.name.clone()).unwrap_or_default(),
            backend: "chimera cudarc 0.19 backend: cuBLAS GemmEx (bf16, f32 accumulate), NVRTC kernels, unfused attention (two batched GEMMs + causal softmax)".into(),
            dtype: "bf16".into(),
            date: super::profile::utc_now(),
            peak_tflops: gpu.map(|g| g.fp16_tflops).unwrap_or(0.0),
            bandwidth_gb_s: gpu.map(|g| g.bandwidth_gb_s).unwrap_or(0.0),
            peak_source: gpu.map(|g| g.provenance.clone()).unwrap_or_else(|| "unknown device: pass --gpu to fit".into()),
            details: self.info.clone(),
        }
    }

    fn dtype_bytes(&self) -> u64 {
        2
    }

    fn matmul(&mut self, m: u64, k: u64, n: u64, warmup: u32, reps: u32) -> Result<Vec<f64>> {
        let x = self.random(m * k)?;
        let w = self.random(n * k)?;
        let mut y = self.random(m * n)?;
        // Y^T (n x m, column-major) = W (n x k, row-major) . X^T
        self.time(warmup, reps, true, |t| t.gemm_tn(n, m, k, &w, &x, &mut y))
    }

    fn elementwise(&mut self, e: Elem, rows: u64, cols: u64, warmup: u32, reps: u32) -> Result<Vec<f64>> {
        let n = rows * cols;
        match e {
            Elem::RmsNorm => {
                let x = self.random(n)?;
                let w = self.random(cols)?;
                let mut y = self.random(n)?;
                let (f, cfg) = self.launch_rows("rmsnorm", rows);
                let c = cols as i32;
                self.time(warmup, reps, false, |t| {
                    unsafe {
                        t.stream
                            .launch_builder(&f)
                            .arg(&x)
                            .arg(&w)
                            .arg(&mut y)
                            .arg(&c)
                            .launch(cfg)
                    }
                    .map(|_| ())
                    .map_err(de)
                })
            }
            Elem::Add => {
                let mut a = self.random(n)?;
                let b = self.random(n)?;
                let (f, cfg) = self.launch_flat("add", n);
                self.time(warmup, reps, false, |t| {
                    unsafe { t.stream.launch_builder(&f).arg(&mut a).arg(&b).arg(&n).launch(cfg) }
                        .map(|_| ())
                        .map_err(de)
                })
            }
            Elem::SiluMul => {
                let g = self.random(n)?;
                let u = self.random(n)?;
                let mut y = self.random(n)?;
                let (f, cfg) = self.launch_flat("silu_mul", n);
                self.time(warmup, reps, false, |t| {
                    unsafe {
                        t.stream
                            .launch_builder(&f)
                            .arg(&g)
                            .arg(&u)
                            .arg(&mut y)
                            .arg(&n)
                            .launch(cfg)
                    }
                    .map(|_| ())
                    .map_err(de)
                })
            }
            Elem::Rope { head_dim } => {
                let mut x = self.random(n)?;
                let heads = (cols / head_dim) as i32;
                let hd = head_dim as i32;
                let pairs = n / 2;
                let (f, cfg) = self.launch_flat("rope", pairs);
                self.time(warmup, reps, false, |t| {
                    unsafe {
                        t.stream
                            .launch_builder(&f)
                            .arg(&mut x)
                            .arg(&heads)
                            .arg(&hd)
                            .arg(&pairs)
                            .launch(cfg)
                    }
                    .map(|_| ())
                    .map_err(de)
                })
            }
            Elem::Embedding { vocab } => {
                let table = self.random(vocab * cols)?;
                let ids: Vec<i32> = (0..rows).map(|i| ((i * 2_654_435_761) % vocab) as i32).collect();
                let ids = self.stream.clone_htod(&ids).map_err(de)?;
                let mut y = self.random(n)?;
                let (f, cfg) = self.launch_rows("embedding", rows);
                let c = cols as i32;
                self.time(warmup, reps, false, |t| {
                    unsafe {
                        t.stream
                            .launch_builder(&f)
                            .arg(&table)
                            .arg(&ids)
                            .arg(&mut y)
                            .arg(&c)
                            .launch(cfg)
                    }
                    .map(|_| ())
                    .map_err(de)
                })
            }
        }
    }

    fn attention(&mut self, a: AttnShape, warmup: u32, reps: u32) -> Result<Vec<f64>> {
        let group = (a.heads / a.kv_heads).max(1);
        let bk = a.batch * a.kv_heads;
        let rows = group * a.q_len; // query rows per (request, kv head)
        let (kv, d) = (a.kv_len(), a.head_dim);
        let q = self.random(bk * rows * d)?;
        let k = self.random(bk * kv * d)?;
        let v = self.random(bk * kv * d)?;
        let mut s = self.random(bk * rows * kv)?;
        let mut o = self.random(bk * rows * d)?;
        let (f, cfg) = self.launch_rows("softmax_causal", bk * rows);
        let (kv_i, q_i, ctx_i) = (kv as i32, a.q_len as i32, a.context_before as i32);
        let scale = 1.0f32 / (d as f32).sqrt();
        let scores = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
                transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m: kv as i32,
                n: rows as i32,
                k: d as i32,
                alpha: bf16::ONE,
                lda: d as i32,
                ldb: d as i32,
                beta: bf16::ZERO,
                ldc: kv as i32,
            },
            batch_size: bk as i32,
            stride_a: (kv * d) as i64,
            stride_b: (rows * d) as i64,
            stride_c: (rows * kv) as i64,
        };
        let values = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m: d as i32,
                n: rows as i32,
                k: kv as i32,
                alpha: bf16::ONE,
                lda: d as i32,
                ldb: kv as i32,
                beta: bf16::ZERO,
                ldc: d as i32,
            },
            batch_size: bk as i32,
            stride_a: (kv * d) as i64,
            stride_b: (rows * kv) as i64,
            stride_c: (rows * d) as i64,
        };
        self.time(warmup, reps, true, |t| {
            unsafe { t.blas.gemm_strided_batched(scores, &k, &q, &mut s) }.map_err(de)?;
            unsafe {
                t.stream
                    .launch_builder(&f)
                    .arg(&mut s)
                    .arg(&kv_i)
                    .arg(&q_i)
                    .arg(&ctx_i)
                    .arg(&scale)
                    .launch(cfg)
            }
            .map_err(de)?;
            unsafe { t.blas.gemm_strided_batched(values, &v, &s, &mut o) }.map_err(de)
        })
    }
}

impl Drop for CudaTimer {
    fn drop(&mut self) {
        let _ = self.ctx.synchronize();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernels_compile_with_nvrtc_where_it_is_installed() {
        // NVRTC compiles on the CPU; CI has no CUDA, so this runs where libnvrtc is on the
        // loader path (LD_LIBRARY_PATH to the nvidia-cuda-nvrtc wheel's lib folder will do).
        match super::compile_kernels() {
            Ok(n) => assert!(n > 1000, "PTX of {n} bytes"),
            Err(e) => eprintln!("NVRTC not installed here, kernel compilation not checked: {e}"),
        }
    }

    #[test]
    fn device_names_map_to_catalogue_gpus() {
        assert_eq!(super::catalog_gpu("NVIDIA H100 80GB HBM3"), Some("H100-SXM"));
        assert_eq!(super::catalog_gpu("NVIDIA RTX A6000"), Some("RTX-A6000"));
        assert_eq!(super::catalog_gpu("NVIDIA GeForce RTX 4090"), None);
    }
}
