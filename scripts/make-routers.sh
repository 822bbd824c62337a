#!/usr/bin/env bash
# Regenerate the shipped semantic router (models/router-qwen2.5-math-apps.json) from
# ../shared/data. It is trained on generated traces of the real problems (their text, and
# outcomes drawn from the item-level model fitted in traces/fitted-params.yaml), each problem
# drawn many times so the difficulty target is the fitted solve rate rather than one noisy
# draw; five cross-fitting parts score every training problem with a router that did not see
# it, so simulations that draw these problems meet held-out scores. A test (tests/traces.rs)
# retrains it and fails if the shipped file is stale.
#   scripts/make-routers.sh [DATA] [CHIMERA] [OUT]
set -euo pipefail
DATA=${1:-../shared/data}
C=${2:-./target/release/chimera}
OUT=${3:-models/router-qwen2.5-math-apps.json}
M=Qwen2.5-1.5B,Qwen2.5-3B,Qwen2.5-7B,Qwen2.5-14B,Qwen2.5-32B,Qwen2.5-72B
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$C" trace gen --task math --models $M --workflows 30000 --seed 101 --data "$DATA" --out "$T/math.parquet"
"$C" trace gen --task apps --models $M --workflows 15000 --seed 102 --data "$DATA" --out "$T/apps.parquet"
"$C" router train --trace "$T/math.parquet" --trace "$T/apps.parquet" --cross-fit 5 --seed 1 \
  --out "$OUT" | head -12
