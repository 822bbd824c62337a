#!/usr/bin/env python3
"""Re-time the matrix products and attention points of a chimera GPU profile with PyTorch.

    python3 scripts/torch-profile.py PROFILE.json OUTDIR

PROFILE.json is a `chimera calibrate profile --device cuda` output (chimera-profile/v1): its
layer shape and its points are re-timed on this GPU with PyTorch's own kernels, and written as
two chimera-profile/v1 files in OUTDIR:

- torch-matmul-<model>.json: the four projections with torch.nn.functional.linear (cuBLAS /
  cuBLASLt through PyTorch), tensor parallel 1 only: a cross-check of chimera's cudarc backend;
- torch-attn-<model>.json: prefill and decode attention with
  torch.nn.functional.scaled_dot_product_attention, the fused kernels vLLM-class engines use
  (FlashAttention-2 backend where the shape allows, else memory-efficient attention): what
  `calibrate fit --ops attention --base ...` fits attention efficiencies on.

Timing as chimera's backend does: bf16, random inputs, CUDA events around every repetition,
3 warm-ups and 15 timed repetitions, the L2 cache flushed (256 MB written) before each timed
call. Needs only PyTorch with CUDA.
"""
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

WARMUP, REPS = 3, 15


def stats(samples):
    v = sorted(samples)
    n = len(v)
    mean = sum(v) / n
    med = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
    std = (sum((x - mean) ** 2 for x in v) / n) ** 0.5
    return {"median_ms": med, "mean_ms": mean, "min_ms": v[0], "max_ms": v[-1], "std_ms": std, "reps": n}


FLUSH = None


def timed(fn, cold=True):
    global FLUSH
    if FLUSH is None:
        FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(WARMUP):
        fn()
    events = []
    for _ in range(REPS):
        if cold:
            FLUSH.zero_()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        events.append((a, b))
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in events]


def rnd(*shape):
    return (torch.rand(*shape, device="cuda", dtype=torch.bfloat16) - 0.5) * 0.2


def matmul_point(s, p):
    n, h, d = p["tokens"], s["hidden"], s["head_dim"]
    qh, kvh, i = s["heads"], max(1, s["kv_heads"]), s["intermediate"]
    k, out = {
        "attn_pre_proj": (h, (qh + 2 * kvh) * d),
        "attn_post_proj": (qh * d, h),
        "mlp_up_proj": (h, 2 * i if s["gated"] else i),
        "mlp_down_proj": (i, h),
    }[p["op"]]
    x, w = rnd(n, k), rnd(out, k)
    return timed(lambda: F.linear(x, w))


def attention_point(s, p):
    heads, kvh, d = s["heads"], max(1, s["kv_heads"]), s["head_dim"]
    b = max(1, p["batch"])
    if p["op"] == "attn_decode":
        q_len, before = 1, max(0, p["context"] - 1)
    else:
        q_len, before = p["tokens"] // b, p["context"]
    kv = before + q_len
    q = rnd(b, heads, q_len, d)
    k = rnd(b, kvh, kv, d)
    v = rnd(b, kvh, kv, d)
    gqa = heads != kvh
    if q_len == 1:
        fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    elif before == 0:
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        # Causal with an offset (the queries are the last q_len positions): a lower-right
        # causal bias, which the fused kernels take without a materialised mask; an explicit
        # boolean mask where this PyTorch refuses that.
        try:
            from torch.nn.attention.bias import causal_lower_right
            bias = causal_lower_right(q_len, kv)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)
            fn()
        except Exception:
            mask = torch.ones(q_len, kv, dtype=torch.bool, device="cuda").tril(diagonal=before)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return timed(fn)


def main():
    src, outdir = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    prof = json.load(open(src))
    s = prof["shape"]
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        smi = "?"
    meta = dict(prof["meta"])
    meta["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["device"] = torch.cuda.get_device_name(0)
    meta["details"] = {
        "torch": torch.__version__,
        "cuda_runtime": str(torch.version.cuda),
        "nvidia_driver": smi,
        "from_grid_of": os.path.basename(src),
        "timing": f"CUDA events, {WARMUP} warm-ups, {REPS} repetitions, L2 flushed before each",
    }
    base = "PyTorch %s bf16" % torch.__version__
    todo = {
        "matmul": [p for p in prof["points"] if p["tp"] == 1 and p["op"] in
                   ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")],
        "attn": [p for p in prof["points"] if p["op"] in ("attn_decode", "attn_prefill")],
    }
    for kind, pts in todo.items():
        out = []
        t0 = time.time()
        for p in pts:
            try:
                samples = matmul_point(s, p) if kind == "matmul" else attention_point(s, p)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                continue
            q = {k: p[k] for k in ("op", "tokens", "batch", "context", "tp")}
            q.update(stats(samples))
            out.append(q)
        m = dict(meta)
        m["backend"] = base + (": torch.nn.functional.linear (cuBLAS)" if kind == "matmul" else
                               ": scaled_dot_product_attention (fused kernels; lower-right causal bias for cached context)")
        m["details"] = dict(meta["details"], profile_seconds="%.1f" % (time.time() - t0))
        doc = {"format": "chimera-profile/v1", "meta": m, "shape": s, "points": out}
        path = os.path.join(outdir, "torch-%s-%s.json" % (kind, s["name"]))
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print("wrote", path, len(out), "points in %.1f s" % (time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
