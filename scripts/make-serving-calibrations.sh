#!/usr/bin/env bash
# Re-make the vLLM-serving calibrations (run from the repository root; a few minutes on 2 cores):
#  - calibration/vllm-serving.yaml: `calibrate fit-serving` over every real vLLM measurement in
#    ../shared/data/vllm-measured (H100 SXM: Llama-2-7B TP1 and Mixtral-8x7B TP2, vLLM v0.15.1
#    per the data set's notes; RTX PRO 6000: Llama-3.1-8B and Qwen3-30B-A3B at DP2 + EP, vLLM
#    0.19.0): one coefficient set for every model, GPU and parallel layout (`gpu: any`), with
#    its leave-one-model-out and leave-one-GPU-out errors (docs/fit-serving.json);
#  - calibration/h100-sxm-vllm-serving.yaml, calibration/rtx-pro-6000-vllm-serving.yaml: the
#    same coefficients with each measured GPU's efficiency factors refined (fitted jointly);
#  - calibration/rtx-a6000-vllm-serving.yaml: the global fit with the A6000's efficiency factors
#    refined on a public A6000 measurement (scripts/a6000-serving-calibration.py).
set -euo pipefail
cargo build --release --quiet
DATA=${CHIMERA_DATA:-../shared/data}
./target/release/chimera calibrate fit-serving "$DATA/vllm-measured" \
  --engine "vLLM v0.15.1 (inference-sim/training design notes)" --stage-seconds 60 --iterations 150 \
  --out calibration/vllm-serving.yaml --gpu-out calibration --report docs/fit-serving.json \
  --scenarios out/fit-serving-scenarios
cargo build --release --quiet   # the new files are embedded as builtin:<name>
python3 scripts/a6000-serving-calibration.py
cargo build --release --quiet
