#!/usr/bin/env python3
"""Render `chimera calibrate fit-serving --report` JSON as Markdown (for docs/FIDELITY.md):
the in-sample stages and, for each held-out model and GPU, the stages predicted by
coefficients fitted without it, with the pooled median and max errors.
Usage: python3 scripts/fit-report-md.py docs/fit-serving.json"""
import json, sys

r = json.load(open(sys.argv[1]))


def pct(x):
    return "n/a" if x is None else f"{100 * x:+.1f} %"


def table(stages):
    out = ["| experiment | stage | rate | E2E p50 measured | simulated | error | TTFT p50 error | TPOT p50 error | overloaded (measured / simulated) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for s in stages:
        tp = s.get("tpot_err")
        out.append("| %s | %d | %s | %.3f s | %.3f s | %s | %s | %s | %s / %s |" % (
            s["experiment"], s["stage"], "trace" if s["rate"] is None else s["rate"],
            s["measured"]["e2e"]["p50"], s["simulated"]["e2e"]["p50"], pct(s["e2e_err"]["p50"]),
            pct(s["ttft_err"]["p50"]), pct(tp["p50"]) if tp else "-",
            "yes" if s["measured"]["overloaded"] else "no", "yes" if s["simulated"]["overloaded"] else "no"))
    return "\n".join(out)


def line(s):
    if s is None:
        return "n/a (one group)"
    return ("E2E p50 error median %.1f %%, max %.1f %%; TTFT p50 error median %.1f %%, max %.1f %%; "
            "%d of %d stages served within their rate predicted overloaded") % (
        100 * s["median_abs_err_e2e_p50"], 100 * s["max_abs_err_e2e_p50"],
        100 * s["median_abs_err_ttft_p50"], 100 * s["max_abs_err_ttft_p50"],
        s["served_but_predicted_overloaded"], s["stages_compared"])


keys = ["mfu", "mfu_moe", "mbu", "overlap", "step_overhead_us", "per_request_us", "layer_us",
        "per_layer_us", "allreduce_us", "expert_us", "frontend_us"]
print("Models: %s. GPUs: %s. Experiments: %d." % (", ".join(r["models"]), ", ".join(r["gpus"]), len(r["experiments"])))
print()
print("| | " + " | ".join(f"`{k}`" for k in keys) + " |")
print("|---|" + "---|" * len(keys))
rows = [("global (`gpu: any`)", r["coefficients"])] + [(g, c) for g, c in r["gpu_coefficients"].items()]
for name, c in rows:
    print("| %s | %s |" % (name, " | ".join(f"{c[k]:.3g}" for k in keys)))
print()
print("| check | over the stages vLLM served within its rate |")
print("|---|---|")
print("| in sample | %s |" % line(r["in_sample"]))
print("| leave one model out | %s |" % line(r.get("leave_one_model_out_summary")))
print("| leave one GPU out | %s |" % line(r.get("leave_one_gpu_out_summary")))
for by in ["leave_one_model_out", "leave_one_gpu_out"]:
    for h in r[by]:
        print()
        print("#### %s: %s held out (fitted on the rest)" % ("Model" if by.endswith("model_out") else "GPU", h["held_out"]))
        print()
        print(table(h["stages"]))
print()
print("#### In sample (every experiment, the shipped coefficients)")
print()
print(table(r["stages"]))
