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
# 3. H100 profiles measured with scripts/profile-gpu.sh, if present.
if ls calibration/profiles/h100-*.json >/dev/null 2>&1; then
  $C calibrate fit $(args calibration/profiles/h100-*.json) --engine "chimera cudarc operator backend (not vLLM)" --out calibration/h100-measured.yaml
fi
