#!/usr/bin/env python3
"""Benchmark (not a test): CPU time, simulated requests per CPU-second and peak memory of the
whole `chimera run` process (reading the trace, simulating, writing every output) on the
Vidur-style scenarios in scenarios/bench. Needs ../shared/data.

Usage: python3 scripts/bench.py [--runs N] [--binary PATH]
Each case runs twice: with vLLM's prefix caching on (the default) and off
(`--set cluster.engines[*].enable_prefix_caching=false`), same build.
Each run is a fresh process; CPU time (user + system) and peak RSS come from getrusage of that
child alone. Reports the median over N runs (default 5).
"""
import argparse, os, resource, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("vidur-4x-llama2-7b-a100", 4000), ("vidur-40x-llama2-7b-a100", 40000)]


def one(binary, scenario, out, sets=()):
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.execv(binary, [binary, "run", scenario, "--out", out, "-q", *sets])
    os.close(w)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"chimera run {scenario} failed")
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/chimera"))
    a = ap.parse_args()
    if a.binary.endswith("target/release/chimera"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    for name, n in CASES:
        scen = os.path.join(ROOT, "scenarios/bench", name + ".yaml")
        for label, sets in [("caching on", ()), ("caching off", ("--set", "cluster.engines[*].enable_prefix_caching=false"))]:
            with tempfile.TemporaryDirectory() as d:
                # Interleave nothing: each configuration's runs back to back.
                rows = [one(a.binary, scen, os.path.join(d, "run"), sets) for _ in range(a.runs)]
            cpu = statistics.median(r[0] for r in rows)
            mem = statistics.median(r[1] for r in rows)
            wall = statistics.median(r[2] for r in rows)
            print(f"{name:<26} {label:<11} {n:6d} requests  cpu {cpu:.3f} s  wall {wall:.3f} s  "
                  f"{n / cpu:8.0f} requests/cpu-s  peak RSS {mem:.1f} MB  (median of {a.runs})")


if __name__ == "__main__":
    main()
