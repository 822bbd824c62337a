#!/usr/bin/env python3
"""Make calibration/rtx-a6000-vllm-serving.yaml (run from the repository root, after a release
build): derive the RTX A6000 from the H100 vLLM-serving fit, then refit the weight-streaming
bandwidth efficiency `mbu` on a grid so that simulated closed-loop TPOT matches a public vLLM
measurement at concurrency 8 (memory-bound decode). Concurrency 1, 2, 4, 64 and 128 are held
out and reported.

The measurement (figures quoted, not code): "Inference Benchmark Report", ai-factory-ops-lab
portfolio, RTX A6000 48 GB, Qwen/Qwen2.5-7B-Instruct, vLLM v0.23.0, 2026-06-27,
https://ld-singh.github.io/ai-factory-ops-lab/portfolio-lab/06-validation-reports/inference-benchmark-report/
TPOT p50 at concurrency 1/2/4/8/64/128: 21.9/22.0/22.1/22.3/27.5/36.0 ms, about 52 output
tokens per request. Its prompt lengths are not stated: the scenario assumes 100 tokens.
"""
import json, re, subprocess, sys

BIN = "./target/release/chimera"
SCEN = "scenarios/fidelity/a6000-qwen7b-closed-loop.yaml"
OUT = "calibration/rtx-a6000-vllm-serving.yaml"
MEASURED = {1: 21.9, 2: 22.0, 4: 22.1, 8: 22.3, 64: 27.5, 128: 36.0}
FIT_ON = [8]
URL = "https://ld-singh.github.io/ai-factory-ops-lab/portfolio-lab/06-validation-reports/inference-benchmark-report/"

subprocess.run([BIN, "calibrate", "derive", "--from", "calibration/h100-vllm-serving.yaml",
                "--gpu", "RTX-A6000", "--out", "/tmp/a6000-derived.yaml"], check=True)
base = open("/tmp/a6000-derived.yaml").read()


def with_coeffs(text, mbu, mba):
    text = re.sub(r"\n  mbu: [0-9.e-]+", f"\n  mbu: {mbu}", text)
    return re.sub(r"\n  mbu_attention: [0-9.e-]+", f"\n  mbu_attention: {mba}", text)


def tpot(cal_text, concs):
    open("/tmp/a6000-try.yaml", "w").write(cal_text)
    out = {}
    for c in concs:
        r = subprocess.run([BIN, "run", "-q", SCEN, "--set", "cluster.engines[0].calibration=/tmp/a6000-try.yaml",
                            "--set", f"workload.arrivals.concurrency={c}", "--set", f"workload.arrivals.requests={c * 12}",
                            "--json", "--out", "/tmp/a6000-run"], capture_output=True, text=True, check=True)
        out[c] = json.loads(r.stdout)["requests"]["tpot_ms"]["p50"]
    return out


mba0 = float(re.search(r"\n  mbu_attention: ([0-9.e-]+)", base).group(1))
best = None
for mbu in [0.80 + 0.01 * i for i in range(13)]:
    for mba in [mba0]:
        t = tpot(with_coeffs(base, mbu, mba), FIT_ON)
        loss = sum((t[c] / MEASURED[c] - 1) ** 2 for c in FIT_ON)
        if best is None or loss < best[0]:
            best = (loss, round(mbu, 4), mba)
_, mbu, mba = best
text = with_coeffs(base, mbu, mba)
allc = tpot(text, sorted(MEASURED))
errs = {c: allc[c] / MEASURED[c] - 1 for c in allc}
rows = ", ".join(f"c{c} {allc[c]:.1f} ms vs {MEASURED[c]} ms ({100 * errs[c]:+.1f} %)" for c in sorted(allc))
held = [abs(errs[c]) for c in MEASURED if c not in FIT_ON]
text = text.replace("fit: null", "fit:\n  median_rel_err: %.4f\n  p90_rel_err: %.4f\n  points: %d" % (
    sorted(abs(e) for e in errs.values())[len(errs) // 2], max(abs(e) for e in errs.values()), len(errs)))
text = text.replace("  kind: derived\n", "  kind: derived\n", 1)
text = re.sub(r"  source: >-\n    derived from the H100-SXM calibration.*?\n  details:\n",
              "  source: >-\n    derived from calibration/h100-vllm-serving.yaml (vLLM serving fit on H100 SXM)\n"
              "    and the RTX-A6000 datasheet, with mbu refitted to a public vLLM measurement on an\n"
              "    RTX A6000 (Qwen2.5-7B-Instruct, vLLM v0.23.0, closed-loop TPOT)\n  details:\n",
              text, flags=re.S)
text = text.replace("    from_calibration:", f"    a6000_measurement: \"{URL}\"\n    a6000_fit: \"grid over mbu (0.80-0.92), mbu_attention kept from the H100 fit, on TPOT p50 at concurrency {FIT_ON}; chosen mbu {mbu}, mbu_attention {mba}; {rows}; prompts assumed 100 tokens (not stated by the source)\"\n    from_calibration:", 1)
open(OUT, "w").write(text)
print(f"mbu {mbu}, mbu_attention {mba}: {rows}")
print("held out (concurrency 1, 2, 4, 64, 128): max |error| %.1f %%" % (100 * max(held)))
