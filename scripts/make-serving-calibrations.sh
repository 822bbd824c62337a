#!/usr/bin/env bash
# Re-make the vLLM-serving calibrations (run from the repository root; about 2 minutes on 2 cores):
#  - calibration/h100-vllm-serving.yaml: `calibrate fit-serving` on the real vLLM measurements in
#    ../shared/data/vllm-measured (H100 SXM, Llama-2-7B; vLLM v0.15.1 per the data set's notes);
#  - calibration/rtx-a6000-vllm-serving.yaml: derived from it, mbu refitted to a public A6000
#    measurement (scripts/a6000-serving-calibration.py).
set -euo pipefail
cargo build --release --quiet
DATA=${CHIMERA_DATA:-../shared/data}
./target/release/chimera calibrate fit-serving "$DATA/vllm-measured" --gpu H100-SXM \
  --engine "vLLM v0.15.1 (inference-sim/training design notes)" \
  --out calibration/h100-vllm-serving.yaml --report docs/fit-serving-h100.json \
  --scenarios out/fit-serving-scenarios
cargo build --release --quiet   # the new file is embedded as builtin:h100-vllm-serving
python3 scripts/a6000-serving-calibration.py
cargo build --release --quiet
