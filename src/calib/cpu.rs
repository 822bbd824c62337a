//! CPU operator timing with candle (feature `profile`), in f32.
//!
//! Random inputs of the right shapes; each repetition is timed with the monotonic clock. The
//! "peak" figures a CPU profile is fitted against are measured here (the best matrix-product
//! rate and copy bandwidth seen on this machine), because a CPU has no datasheet entry in the
//! catalogue; the profile says so.

use super::format::ProfileMeta;
use super::profile::{AttnShape, Elem, OpTimer};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use std::collections::BTreeMap;
use std::time::Instant;

fn ce(e: candle_core::Error) -> Error {
    Error::other(format!("candle: {e}"))
}

pub struct CpuTimer {
    dev: Device,
    peak_tflops: f64,
    bandwidth_gb_s: f64,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn time_reps(warmup: u32, reps: u32, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut out = Vec::with_capacity(reps as usize);
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

impl CpuTimer {
    /// A CPU timer; measures this machine's nominal matrix-product rate and copy bandwidth.
    pub fn new() -> Result<CpuTimer> {
        let mut t = CpuTimer {
            dev: Device::Cpu,
            peak_tflops: 0.0,
            bandwidth_gb_s: 0.0,
        };
        let n = 768u64;
        let mm = best(&t.matmul(n, n, n, 1, 3)?);
        t.peak_tflops = 2.0 * (n * n * n) as f64 / (mm * 1e-3) / 1e12;
        let rows = 4096u64;
        let cols = 4096u64;
        let add = best(&t.elementwise(Elem::Add, rows, cols, 1, 3)?);
        t.bandwidth_gb_s = 3.0 * 4.0 * (rows * cols) as f64 / (add * 1e-3) / 1e9;
        Ok(t)
    }

    fn randn(&self, shape: &[usize]) -> Result<Tensor> {
        Tensor::randn(0f32, 1f32, shape, &self.dev).map_err(ce)
    }
}

impl OpTimer for CpuTimer {
    fn meta(&self) -> ProfileMeta {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ProfileMeta {
            device: format!("cpu: {}", cpu_name()),
            gpu: "cpu".into(),
            backend: "candle-core 0.11 (CPU, gemm)".into(),
            dtype: "f32".into(),
            date: super::profile::utc_now(),
            peak_tflops: self.peak_tflops,
            bandwidth_gb_s: self.bandwidth_gb_s,
            peak_source: "measured on this CPU at profile time (best 768^3 f32 matrix product; 4096x4096 f32 add), not a datasheet".into(),
            details: BTreeMap::from([
                ("threads".to_string(), threads.to_string()),
                ("arch".to_string(), std::env::consts::ARCH.to_string()),
            ]),
        }
    }

    fn dtype_bytes(&self) -> u64 {
        4
    }

    fn matmul(&mut self, m: u64, k: u64, n: u64, warmup: u32, reps: u32) -> Result<Vec<f64>> {
        let x = self.randn(&[m as usize, k as usize])?;
        let w = self.randn(&[n as usize, k as usize])?;
        let wt = w.t().map_err(ce)?;
        time_reps(warmup, reps, || {
            let y = x.matmul(&wt).map_err(ce)?;
            std::hint::black_box(y);
            Ok(())
        })
    }

    fn elementwise(&mut self, e: Elem, rows: u64, cols: u64, warmup: u32, reps: u32) -> Result<Vec<f64>> {
        let (r, c) = (rows as usize, cols as usize);
        match e {
            Elem::RmsNorm => {
                let x = self.randn(&[r, c])?;
                let w = self.randn(&[c])?;
                time_reps(warmup, reps, || {
                    let ms = x.sqr().and_then(|v| v.mean_keepdim(D::Minus1)).map_err(ce)?;
                    let inv = (ms + 1e-6).and_then(|v| v.sqrt()).and_then(|v| v.recip()).map_err(ce)?;
                    let y = x.broadcast_mul(&inv).and_then(|v| v.broadcast_mul(&w)).map_err(ce)?;
                    std::hint::black_box(y);
                    Ok(())
                })
            }
            Elem::Add => {
                let a = self.randn(&[r, c])?;
                let b = self.randn(&[r, c])?;
                time_reps(warmup, reps, || {
                    std::hint::black_box((&a + &b).map_err(ce)?);
                    Ok(())
                })
            }
            Elem::SiluMul => {
                let g = self.randn(&[r, c])?;
                let u = self.randn(&[r, c])?;
                time_reps(warmup, reps, || {
                    std::hint::black_box(g.silu().and_then(|s| s * &u).map_err(ce)?);
                    Ok(())
                })
            }
            Elem::Rope { head_dim } => {
                let d = head_dim as usize;
                let heads = c / d;
                let x = self.randn(&[r, heads, d])?;
                let cos = self.randn(&[r, 1, d / 2])?;
                let sin = self.randn(&[r, 1, d / 2])?;
                time_reps(warmup, reps, || {
                    let x1 = x.narrow(2, 0, d / 2).map_err(ce)?;
                    let x2 = x.narrow(2, d / 2, d / 2).map_err(ce)?;
                    let a = (x1.broadcast_mul(&cos).map_err(ce)? - x2.broadcast_mul(&sin).map_err(ce)?).map_err(ce)?;
                    let b = (x2.broadcast_mul(&cos).map_err(ce)? + x1.broadcast_mul(&sin).map_err(ce)?).map_err(ce)?;
                    std::hint::black_box(Tensor::cat(&[a, b], 2).map_err(ce)?);
                    Ok(())
                })
            }
            Elem::Embedding { vocab } => {
                let table = self.randn(&[vocab as usize, c])?;
                let ids: Vec<u32> = (0..r as u32)
                    .map(|i| i.wrapping_mul(2_654_435_761) % vocab as u32)
                    .collect();
                let ids = Tensor::new(ids.as_slice(), &self.dev).map_err(ce)?;
                time_reps(warmup, reps, || {
                    std::hint::black_box(table.index_select(&ids, 0).map_err(ce)?);
                    Ok(())
                })
            }
        }
    }

    fn attention(&mut self, a: AttnShape, warmup: u32, reps: u32) -> Result<Vec<f64>> {
        let group = (a.heads / a.kv_heads).max(1) as usize;
        let bk = (a.batch * a.kv_heads) as usize;
        let (q_len, kv_len, d) = (a.q_len as usize, a.kv_len() as usize, a.head_dim as usize);
        let q = self.randn(&[bk, group * q_len, d])?;
        let k = self.randn(&[bk, kv_len, d])?;
        let v = self.randn(&[bk, kv_len, d])?;
        let kt = k.t().map_err(ce)?;
        // Causal mask: query row i (position context_before + i % q_len) sees keys up to it.
        let mut mask = vec![0f32; group * q_len * kv_len];
        for row in 0..group * q_len {
            let pos = a.context_before as usize + row % q_len;
            for col in pos + 1..kv_len {
                mask[row * kv_len + col] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (group * q_len, kv_len), &self.dev).map_err(ce)?;
        let scale = 1.0 / (d as f64).sqrt();
        time_reps(warmup, reps, || {
            let s = q
                .matmul(&kt)
                .and_then(|s| s * scale)
                .and_then(|s| s.broadcast_add(&mask))
                .map_err(ce)?;
            let m = s.max_keepdim(D::Minus1).map_err(ce)?;
            let e = s.broadcast_sub(&m).and_then(|x| x.exp()).map_err(ce)?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).map_err(ce)?).map_err(ce)?;
            std::hint::black_box(p.to_dtype(DType::F32).and_then(|p| p.matmul(&v)).map_err(ce)?);
            Ok(())
        })
    }
}
