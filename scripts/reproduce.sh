#!/usr/bin/env bash
# Regenerate every figure and number of REPRODUCING.md (about 15 minutes on 2 cores; needs
# ../shared/data: the paper scenarios draw the real problems from it).
#   scripts/reproduce.sh [JOBS]
# Results go to runs/ (not committed); figures to plots/; the comparison tables to
# runs/paper/report.md (pasted into REPRODUCING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-$(nproc)}
cargo build --release --quiet --features analysis
C=target/release/chimera
mkdir -p runs plots
sweep() { # plan out [sets...]
  local plan=$1 out=$2; shift 2
  if [ -f "$out/sweep.parquet" ]; then return; fi
  local sets=() x; for x in "$@"; do sets+=(--set "$x"); done
  $C sweep --plan "$plan" --jobs "$JOBS" --resume --out "$out" "${sets[@]}" -q
}

# 1. The frontier on the default scenario (5 policies x 10 points x 3 seeds).
sweep scenarios/sweeps/frontier-default.yaml runs/frontier-default
$C plot frontier runs/frontier-default --out plots/frontier-default \
  --title "Default scenario (Qwen2.5-1.5B + 7B, RTX A6000, APPS + MATH, 2 workflows/s)"
$C plot frontier runs/frontier-default --x mean --out plots/frontier-default-mean \
  --title "Default scenario: mean workflow latency"
mkdir -p runs/paper
$C report runs/frontier-default --operating policy.routing.slack.value=1.0 --operating policy.routing.min_confidence_gain=0.1 \
  --baselines "vLLM (FCFS),MLFQ,LTR (SJF + aging),vLLM (STJF; oracle lengths)" > runs/frontier-default/report.md

# 2. S/Q sensitivity of Chimera.
S='cluster.engines[*].scheduling.priority_aging.starvation_steps'
Q='cluster.engines[*].scheduling.priority_aging.quantum_steps'
sweep scenarios/sweeps/sq-chimera.yaml runs/sq-chimera
$C plot heatmap runs/sq-chimera --x "$S" --y "$Q" --metric workflows.e2e_s.p99 --out plots/sq-heatmap-p99
$C plot heatmap runs/sq-chimera --x "$S" --y "$Q" --metric requests.queue_ms.p99 --out plots/sq-heatmap-queue-p99
$C plot lines runs/sq-chimera --x "$S" --series "$Q" --out plots/sq-lines

# 3. The paper's settings at light, medium and saturated load (11 series, 102 points, 5 seeds).
declare -A LOADS=([apps-1.5b-7b]="1 2 4" [apps-1.5b-14b]="0.5 1 2" [math-1.5b-7b]="0.5 1 2" [math-1.5b-14b]="0.125 0.25 0.5" [math-3b-7b]="0.5 1 2")
DIRS=()
for s in math-1.5b-7b apps-1.5b-7b math-1.5b-14b apps-1.5b-14b math-3b-7b; do
  for r in ${LOADS[$s]}; do
    out=runs/paper/$s-r$r
    sweep scenarios/paper/$s.plan.yaml "$out" "workload.arrivals.rate_per_s=$r"
    $C plot frontier "$out" --out "plots/paper-$s-r$r" --title "$s at $r workflows/s"
    DIRS+=("$out")
  done
done
python3 scripts/paper-table.py "${DIRS[@]}" > runs/paper/table.md

# 4. Attribution: the same sweeps at the medium load without tool delays, and without prefix
# caching.
ADIRS=()
for sr in math-1.5b-7b:1 apps-1.5b-7b:2; do
  s=${sr%:*}; r=${sr#*:}
  ADIRS+=("runs/paper/$s-r$r")
  sweep scenarios/paper/$s.plan.yaml "runs/attribution/$s-r$r-no-tool-delay" workload.arrivals.rate_per_s=$r workload.tool_delay_scale=0
  ADIRS+=("runs/attribution/$s-r$r-no-tool-delay")
  sweep scenarios/paper/$s.plan.yaml "runs/attribution/$s-r$r-no-prefix-caching" workload.arrivals.rate_per_s=$r 'cluster.engines[*].enable_prefix_caching=false'
  ADIRS+=("runs/attribution/$s-r$r-no-prefix-caching")
done
python3 scripts/paper-table.py "${ADIRS[@]}" > runs/attribution/table.md

# 5. Router quality: a noisy oracle swept over its AUC beside the trained router.
for r in 0.5 1.0; do
  sweep scenarios/sweeps/router-auc.yaml "runs/router-auc-r$r" "workload.arrivals.rate_per_s=$r"
  python3 scripts/router-auc-table.py "runs/router-auc-r$r" > "runs/router-auc-r$r/table.md"
done
echo "tables in runs/paper/table.md, runs/attribution/table.md, runs/router-auc-r*/table.md"
