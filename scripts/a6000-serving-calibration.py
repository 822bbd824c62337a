#!/usr/bin/env python3
"""Make calibration/rtx-a6000-vllm-serving.yaml (run from the repository root, after a release
build and after calibration/vllm-serving.yaml): the global vLLM-serving fit (one coefficient set
for every GPU, fitted on ../shared/data/vllm-measured) with the RTX A6000's efficiency
factors, `mfu` and `mbu` (with `mbu_attention` equal to it), and how well its kernels overlap
compute and memory (`overlap`), refined on a grid so that simulated
closed-loop TPOT matches a public vLLM measurement on that GPU. Every other coefficient (fixed
costs, overlap, collectives, front end) stays the global fit's: a GPU refines its efficiency
factors only, never the structure.

The measurement (figures quoted, not code): "Inference Benchmark Report", ai-factory-ops-lab
portfolio, RTX A6000 48 GB, Qwen/Qwen2.5-7B-Instruct, vLLM v0.23.0, 2026-06-27,
https://ld-singh.github.io/ai-factory-ops-lab/portfolio-lab/06-validation-reports/inference-benchmark-report/
TPOT p50 at concurrency 1/2/4/8/64/128/256/512: 21.9/22.0/22.1/22.3/27.5/36.0/53.1/56.4 ms. The
source's harness sends one short chat message as every request (about 34 prompt tokens, all but
the first a prefix-cache hit) and the answers stop at 51-53 tokens: the scenario
scenarios/fidelity/a6000-qwen7b-closed-loop.yaml recreates that. All eight points are fitted
(the refinement is in-sample); the report says so.
"""
import json, re, subprocess, sys

BIN = "./target/release/chimera"
SCEN = "scenarios/fidelity/a6000-qwen7b-closed-loop.yaml"
GLOBAL = "calibration/vllm-serving.yaml"
OUT = "calibration/rtx-a6000-vllm-serving.yaml"
MEASURED = {1: 21.9, 2: 22.0, 4: 22.1, 8: 22.3, 64: 27.5, 128: 36.0, 256: 53.1, 512: 56.4}
URL = "https://ld-singh.github.io/ai-factory-ops-lab/portfolio-lab/06-validation-reports/inference-benchmark-report/"

base = open(GLOBAL).read()


MFU0 = float(re.search(r"\n  mfu: ([0-9.e-]+)", base).group(1))
MOE0 = float(re.search(r"\n  mfu_moe: ([0-9.e-]+)", base).group(1))


def with_coeffs(text, mfu, mbu, overlap):
    # mfu_moe moves with mfu (one compute efficiency ratio for the GPU), as in the joint fit.
    text = re.sub(r"\n  mfu_moe: [0-9.e-]+", f"\n  mfu_moe: {round(MOE0 * mfu / MFU0, 6)}", text)
    text = re.sub(r"\n  mfu: [0-9.e-]+", f"\n  mfu: {mfu}", text)
    text = re.sub(r"\n  mbu: [0-9.e-]+", f"\n  mbu: {mbu}", text)
    text = re.sub(r"\n  overlap: [0-9.e-]+", f"\n  overlap: {overlap}", text)
    return re.sub(r"\n  mbu_attention: [0-9.e-]+", f"\n  mbu_attention: {mbu}", text)


def tpot(cal_text, concs):
    open("/tmp/a6000-try.yaml", "w").write(cal_text.replace("\ngpu: any\n", "\ngpu: RTX-A6000\n"))
    out = {}
    for c in concs:
        r = subprocess.run([BIN, "run", "-q", SCEN, "--set", "cluster.engines[0].calibration=/tmp/a6000-try.yaml",
                            "--set", f"workload.arrivals.concurrency={c}", "--set", f"workload.arrivals.requests={c * 12}",
                            "--json", "--out", "/tmp/a6000-run"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        out[c] = json.loads(r.stdout)["requests"]["tpot_ms"]["p50"]
    return out


# Each point's squared log error in units of the tolerance the issue sets for it (10 % up to
# concurrency 128, 15 % at 256 and 512, where the engine's 256 sequences fill).
TOL = {c: (0.10 if c <= 128 else 0.15) for c in MEASURED}


def loss(t):
    import math
    return sum((math.log(t[c] / MEASURED[c]) / TOL[c]) ** 2 for c in MEASURED)


best = None


def search(mfus, mbus, overlaps):
    global best
    for ov in overlaps:
        for mfu in mfus:
            for mbu in mbus:
                if not (0.05 <= mfu <= 0.9 and 0.05 <= mbu <= 0.99 and 0.0 < ov <= 0.95):
                    continue
                t = tpot(with_coeffs(base, round(mfu, 4), round(mbu, 4), round(ov, 4)), sorted(MEASURED))
                l = loss(t)
                if best is None or l < best[0]:
                    best = (l, round(mfu, 4), round(mbu, 4), t, round(ov, 4))


# A coarse grid, then a fine one around its best point.
search([0.30 + 0.1 * i for i in range(6)], [0.70 + 0.05 * i for i in range(6)], [0.5 + 0.05 * i for i in range(7)])
search([best[1] + 0.01 * i for i in range(-5, 6)], [best[2] + 0.01 * i for i in range(-3, 4)],
       [best[4] + 0.025 * i for i in range(-2, 3)])
_, mfu, mbu, allc, ov = best
g = (re.search(r"\n  mfu: ([0-9.e-]+)", base).group(1), re.search(r"\n  mbu: ([0-9.e-]+)", base).group(1),
     re.search(r"\n  overlap: ([0-9.e-]+)", base).group(1))
errs = {c: allc[c] / MEASURED[c] - 1 for c in allc}
rows = ", ".join(f"c{c} {allc[c]:.1f} ms vs {MEASURED[c]} ms ({100 * errs[c]:+.1f} %)" for c in sorted(allc))
text = with_coeffs(base, mfu, mbu, ov).replace("\ngpu: any\n", "\ngpu: RTX-A6000\n")
med = sorted(abs(e) for e in errs.values())[len(errs) // 2]
text = re.sub(r"\nfit:\n  median_rel_err: [0-9.e-]+\n  p90_rel_err: [0-9.e-]+\n  points: [0-9]+\n",
              "\nfit:\n  median_rel_err: %.4f\n  p90_rel_err: %.4f\n  points: %d\n" % (med, max(abs(e) for e in errs.values()), len(errs)),
              text)
text = text.replace("provenance:\n  kind: measured\n", "provenance:\n  kind: derived\n", 1)
text = re.sub(r"  source: >-\n    request latencies of real vLLM servers measured under load\n    \([^)]*\)\n",
              "  source: >-\n    derived from calibration/vllm-serving.yaml (the global vLLM serving fit, measured on\n"
              "    other GPUs) on the RTX-A6000 datasheet, its efficiency factors mfu, mbu and overlap\n"
              "    refined to a public vLLM measurement on an RTX A6000 (Qwen2.5-7B-Instruct, vLLM v0.23.0,\n"
              "    closed-loop TPOT)\n", text)
text = text.replace("  details:\n", f"  details:\n    a6000_measurement: \"{URL}\"\n"
                    f"    a6000_refinement: \"grid over mfu (0.3-0.8, then 0.01 steps), mbu = mbu_attention (0.70-0.95, then 0.01 steps) and overlap (0.5-0.8, then 0.025 steps) on TPOT p50 at concurrency {sorted(MEASURED)}, squared log errors in units of 10 % (up to 128) and 15 % (256, 512) (all eight points: in sample); global mfu {float(g[0]):.4f} -> {mfu} (mfu_moe by the same ratio), mbu {float(g[1]):.4f} -> {mbu}, overlap {float(g[2]):.4f} -> {ov}; {rows}\"\n", 1)
open(OUT, "w").write(text)
print(f"mfu {mfu}, mbu {mbu}, overlap {ov}: {rows}")
