#!/usr/bin/env python3
"""Measured GPU matrix-product times against a public profile of another GPU scaled by the
datasheets: for each operator and token count present in both, the ratio

    measured_here / (measured_there * roofline_here / roofline_there)

where roofline = max(FLOPs / peak, bytes / bandwidth) from the two datasheets. A ratio of 1
means the datasheets predict the measured speed-up exactly; below 1, this GPU does better than
its datasheet ratio suggests.

    scripts/gpu-ratio-table.py OURS.json VIDUR.csv --here H100-SXM --there A100-80GB
"""
import argparse, csv, json, statistics

SHEETS = {  # catalog/gpus.yaml (datasheets)
    "H100-SXM": (989e12, 3350e9), "A100-80GB": (312e12, 2039e9), "A40": (149.7e12, 696e9),
    "RTX-A6000": (154.8e12, 768e9), "H200": (989e12, 4800e9),
}
OPS = ["attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj"]

def work(op, n, s, tp=1):
    h, i, nh, nkv = s["hidden"], s["intermediate"] // tp, s["heads"] // tp, max(1, s["kv_heads"] // tp)
    d = s["hidden"] // s["heads"]
    k, out = {"attn_pre_proj": (h, (nh + 2 * nkv) * d), "attn_post_proj": (nh * d, h),
              "mlp_up_proj": (h, 2 * i if s.get("gated", True) else i), "mlp_down_proj": (i, h)}[op]
    return 2.0 * n * k * out, 2.0 * (k * out + n * k + n * out)

def roof(sheet, f, b):
    return max(f / sheet[0], b / sheet[1])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours"); ap.add_argument("theirs")
    ap.add_argument("--here", default="H100-SXM"); ap.add_argument("--there", default="A100-80GB")
    a = ap.parse_args()
    prof = json.load(open(a.ours))
    s = prof["shape"]
    mine = {(p["op"], p["tokens"]): p["median_ms"] for p in prof["points"] if p["tp"] == 1 and p["op"] in OPS}
    theirs = {}
    for r in csv.DictReader(open(a.theirs)):
        if r["num_tensor_parallel_workers"] != "1":
            continue
        for op in OPS:
            theirs[(op, int(r["num_tokens"]))] = float(r[f"time_stats.{op}.median"])
    here, there = SHEETS[a.here], SHEETS[a.there]
    buckets = [(1, 16), (17, 128), (129, 1024), (1025, 4096)]
    print(f"| operator | tokens | points | measured {a.here} / ({a.there} x datasheet ratio), median | min | max |")
    print("|---|---|---|---|---|---|")
    allr = []
    for op in OPS:
        for lo, hi in buckets:
            rs = []
            for (o, n), t in sorted(mine.items()):
                if o != op or not lo <= n <= hi or (o, n) not in theirs:
                    continue
                f, b = work(op, n, s)
                pred = theirs[(o, n)] * roof(here, f, b) / roof(there, f, b)
                rs.append(t / pred)
            if rs:
                allr += rs
                print(f"| {op} | {lo}-{hi} | {len(rs)} | {statistics.median(rs):.2f} | {min(rs):.2f} | {max(rs):.2f} |")
    if allr:
        print(f"| all | 1-4096 | {len(allr)} | {statistics.median(allr):.2f} | {min(allr):.2f} | {max(allr):.2f} |")

if __name__ == "__main__":
    main()
