#!/usr/bin/env python3
"""Tables of the paper-reproduction sweeps (scenarios/paper/*.plan.yaml), with 95 % intervals.

For each sweep folder (one setting at one load) it reads sweep.parquet (pyarrow only) and
measures over the steady-state window of every run (warm-up and drain left out: `steady.*`):

  latency  = mean over workflows of end-to-end latency per output token (ms), the paper's metric
  accuracy = share of the window's workflows solved (%)

Chimera's operating point (label "Chimera", slack 1.0, minimum gain 0.1) is compared with each
baseline *jointly*, seed by seed (common random numbers: one seed gives every policy the same
workflows): the baseline's frontier over its split (overloaded points left out) gives

  x lat  = the baseline's latency where its frontier first reaches Chimera's accuracy, over
           Chimera's latency (> 1: Chimera is faster at equal accuracy; '-' where the baseline
           never reaches that accuracy without overloading)
  + acc  = Chimera's accuracy minus the baseline's at Chimera's latency, points ('-' where the
           baseline has no point that fast)
  verdict: 'dominates' when both intervals clear 1 and 0; 'dominated' when some baseline point
           is at least as fast and as accurate in most seeds; 'trade-off' otherwise.

Single-point series (ablations, least outstanding) are compared with the operating point as
paired differences. Every figure is the mean over seeds with a Student-t 95 % half-width.

    python3 scripts/paper-table.py runs/paper/math-1.5b-7b-r1 [more folders...] > table.md
"""
import re
import sys

import pyarrow.parquet as pq

from ci95 import mean_ci

LAT = "steady.e2e_per_output_token_ms.mean"
ACC = "steady.accuracy"
FRONTIER_BASELINES = ["vLLM", "MLFQ", "LTR", "Ablation: no router (STJF + aging; fixed split)"]
SHORT = {"Ablation: no router (STJF + aging; fixed split)": "no router"}
POINT_SERIES = [
    ("Least outstanding", "least outstanding"),
    ("Ablation: Chimera balancer, prior confidences (no router)", "prior confidences, no router"),
    ("Ablation: router without the balancer", "router, no balancer"),
    ("Ablation: Chimera, oracle router", "oracle router"),
    ("Ablation: Chimera, oracle lengths", "oracle lengths"),
    ("Ablation: Chimera, noisy-oracle stand-in (AUC 0.68)", "noisy oracle 0.68"),
]


def fmt(xs, digits=1, suffix=""):
    m, h, n = mean_ci(xs)
    if m is None:
        return "-"
    s = f"{m:.{digits}f}{suffix}"
    return s if h is None else f"{s} ± {h:.{digits}f}"


def pareto(pts):
    """Points not dominated (lower latency, higher accuracy), sorted by latency."""
    pts = sorted(set(pts))
    front, best = [], -1.0
    for lat, acc in pts:
        if acc > best:
            front.append((lat, acc))
            best = acc
    return front


def latency_at_accuracy(front, y):
    if not front:
        return None
    if front[0][1] >= y:
        return front[0][0]
    for a, b in zip(front, front[1:]):
        if b[1] >= y:
            return a[0] + (b[0] - a[0]) * (y - a[1]) / (b[1] - a[1])
    return None


def accuracy_at_latency(front, x):
    if not front or x < front[0][0]:
        return None
    for a, b in zip(front, front[1:]):
        if b[0] >= x:
            return a[1] + (b[1] - a[1]) * (x - a[0]) / max(b[0] - a[0], 1e-12)
    return front[-1][1]


def load(folder):
    t = pq.read_table(f"{folder}/sweep.parquet").to_pydict()
    n = len(t["label"])
    col = lambda c: t.get(c, [None] * n)
    over = [v in (True, "true") for v in col("steady.overloaded")]
    rows = []
    for i in range(n):
        rows.append({
            "label": t["label"][i], "seed": t["seed"][i],
            "slack": col("param.policy.routing.slack.value")[i],
            "gain": col("param.policy.routing.min_confidence_gain")[i],
            "frac": col("param.policy.routing.fractions")[i],
            "lat": col(LAT)[i], "acc": None if col(ACC)[i] is None else 100 * col(ACC)[i],
            "auc": col("confidence.mean_auc")[i], "over": over[i],
        })
    return rows


def is_op(r):
    return r["label"] == "Chimera" and str(r["slack"]) in ("1.0", "1") and str(r["gain"]) == "0.1"


def setting_of(folder):
    m = re.search(r"([a-z]+-[0-9.]+b-[0-9.]+b)-r([0-9.]+)(-[a-z-]+)?/?$", folder)
    if not m:
        return (folder, "?")
    variant = f" ({m.group(3)[1:].replace('-', ' ')})" if m.group(3) else ""
    return (m.group(1), m.group(2) + variant)


def analyse(folder):
    rows = load(folder)
    seeds = sorted({r["seed"] for r in rows})
    op = {r["seed"]: r for r in rows if is_op(r)}
    out = {"setting": setting_of(folder), "op": op, "vs": {}, "points": {}, "rows": rows}
    for b in FRONTIER_BASELINES:
        ratios, gains, dominated, overloaded_pts = [], [], 0, 0
        for s in seeds:
            pts = [(r["lat"], r["acc"]) for r in rows if r["label"] == b and r["seed"] == s and not r["over"]]
            overloaded_pts += sum(1 for r in rows if r["label"] == b and r["seed"] == s and r["over"])
            c = op.get(s)
            if c is None or not pts:
                continue
            front = pareto(pts)
            la = latency_at_accuracy(front, c["acc"])
            ac = accuracy_at_latency(front, c["lat"])
            ratios.append(None if la is None else la / c["lat"])
            gains.append(None if ac is None else c["acc"] - ac)
            if any(l <= c["lat"] and a >= c["acc"] and (l, a) != (c["lat"], c["acc"]) for l, a in pts):
                dominated += 1
        out["vs"][b] = {"ratio": ratios, "gain": gains, "dominated": dominated, "seeds": len(seeds),
                        "overloaded_points": overloaded_pts}
    for label, _ in POINT_SERIES:
        d = {}
        for s in seeds:
            # Single-point series, or the series' point at the operating configuration.
            cand = [r for r in rows if r["label"] == label and r["seed"] == s
                    and (r["slack"] is None or str(r["slack"]) in ("1.0", "1"))
                    and (r["gain"] is None or str(r["gain"]) == "0.1")]
            if cand and s in op:
                d[s] = cand[0]
        out["points"][label] = d
    return out


def verdict(v):
    rm, rh, rn = mean_ci(v["ratio"])
    gm, gh, gn = mean_ci(v["gain"])
    if v["dominated"] * 2 > v["seeds"]:
        return "dominated"
    if rn == v["seeds"] and gn == v["seeds"] and rh is not None and gh is not None \
            and rm - rh > 1 and gm - gh > 0:
        return "dominates"
    if rn < v["seeds"] and gn == v["seeds"] and gh is not None and gm - gh > 0:
        return "more accurate than any unsaturated split"
    return "trade-off"


def main():
    res = [analyse(f) for f in sys.argv[1:]]
    print("### Chimera's operating point against each baseline's frontier (joint, per seed)\n")
    print("| setting | load /s | Chimera: latency ms/token, accuracy %, router AUC | "
          + " | ".join(f"vs {SHORT.get(b, b)}: x lat, + acc pt (verdict)" for b in FRONTIER_BASELINES) + " |")
    print("|---|---|---|" + "---|" * len(FRONTIER_BASELINES))
    for r in res:
        op = r["op"]
        over = sum(1 for c in op.values() if c["over"])
        head = (f"{fmt([c['lat'] for c in op.values()])}, {fmt([c['acc'] for c in op.values()])}, "
                f"{fmt([c['auc'] for c in op.values()], 3)}" + (f" **overloaded in {over} seeds**" if over else ""))
        cells = []
        for b in FRONTIER_BASELINES:
            v = r["vs"][b]
            ratio = fmt(v["ratio"], 2, "x") if all(x is not None for x in v["ratio"]) else \
                f"- ({sum(1 for x in v['ratio'] if x is None)}/{len(v['ratio'])} seeds never that accurate)"
            gain = fmt(v["gain"], 1) if all(x is not None for x in v["gain"]) else \
                f"- ({sum(1 for x in v['gain'] if x is None)}/{len(v['gain'])} never that fast)"
            cells.append(f"{ratio}, {gain} ({verdict(v)})")
        print(f"| {r['setting'][0]} | {r['setting'][1]} | {head} | " + " | ".join(cells) + " |")
    print()
    print("### Ablations and other baselines at the operating point (paired by seed: difference from Chimera)\n")
    print("| setting | load /s | " + " | ".join(f"{name}: latency x, accuracy pt" for _, name in POINT_SERIES) + " |")
    print("|---|---|" + "---|" * len(POINT_SERIES))
    for r in res:
        cells = []
        for label, _ in POINT_SERIES:
            d = r["points"][label]
            if not d:
                cells.append("-")
                continue
            ratio = [d[s]["lat"] / r["op"][s]["lat"] for s in d]
            dacc = [d[s]["acc"] - r["op"][s]["acc"] for s in d]
            over = sum(1 for s in d if d[s]["over"])
            cells.append(f"{fmt(ratio, 2, 'x')}, {fmt(dacc, 1)}" + (f" (overloaded {over})" if over else ""))
        print(f"| {r['setting'][0]} | {r['setting'][1]} | " + " | ".join(cells) + " |")
    print()
    print("### Overloaded points (steady-state check), per series\n")
    print("| setting | load /s | overloaded runs / runs |")
    print("|---|---|---|")
    for r in res:
        by = {}
        for row in r["rows"]:
            k = row["label"]
            a, b = by.get(k, (0, 0))
            by[k] = (a + row["over"], b + 1)
        cells = ", ".join(f"{SHORT.get(k, k)} {a}/{b}" for k, (a, b) in by.items() if a)
        print(f"| {r['setting'][0]} | {r['setting'][1]} | {cells or 'none'} |")


if __name__ == "__main__":
    main()
