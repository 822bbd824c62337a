#!/usr/bin/env python3
"""Markdown table of a router-quality sweep (scenarios/sweeps/router-auc.yaml).

One row per (series, nominal AUC): the mean over seeds with a 95 % Student-t half-width of
the AUC the confidence model realised in the run, accuracy, workflow E2E p50 and p99, and the
share of workflows on the larger model. Reads DIR/sweep.parquet with pyarrow only.

    python3 scripts/router-auc-table.py runs/router-auc-r0.5
"""
import sys

import pyarrow.parquet as pq

from ci95 import mean_ci as _mean_ci


def mean_ci(xs):
    m, h, _ = _mean_ci(xs)
    return m, h


def fmt(m, h, scale=1.0, digits=3):
    if m is None:
        return "n/a"
    s = f"{m * scale:.{digits}f}"
    return s if h is None else f"{s} ± {h * scale:.{digits}f}"


def main():
    d = sys.argv[1]
    t = pq.read_table(f"{d}/sweep.parquet").to_pydict()
    big = [c for c in t if c.startswith("by_model.") and c.endswith(".share")]
    big = sorted(big)[-1] if big else None
    rows = {}
    order = []
    for i in range(len(t["label"])):
        key = (t["label"][i], t.get("param.policy.confidence.auc", [None] * len(t["label"]))[i])
        if key not in rows:
            rows[key] = []
            order.append(key)
        rows[key].append(i)
    big_model = big[len("by_model."):-len(".share")] if big else "?"
    print(f"| series | nominal AUC | realised AUC | accuracy % | workflow E2E p50 s | p99 s | share on {big_model} % |")
    print("|---|---|---|---|---|---|---|")
    for key in order:
        idx = rows[key]
        col = lambda c: [t[c][i] for i in idx] if c in t else []
        print("| {} | {} | {} | {} | {} | {} | {} |".format(
            key[0],
            key[1] if key[1] is not None else "-",
            fmt(*mean_ci(col("confidence.mean_auc"))),
            fmt(*mean_ci(col("accuracy.accuracy")), scale=100, digits=1),
            fmt(*mean_ci(col("workflows.e2e_s.p50")), digits=2),
            fmt(*mean_ci(col("workflows.e2e_s.p99")), digits=1),
            fmt(*mean_ci(col(big)), scale=100, digits=1) if big else "n/a",
        ))
    print(f"\n{len(t['label'])} runs; ± is the 95 % Student-t half-width over seeds.")


if __name__ == "__main__":
    main()
