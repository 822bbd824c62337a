#!/usr/bin/env bash
# Profile operator times on an NVIDIA GPU with a chimera binary built elsewhere with
# `cargo build --release --features cuda` (no Rust or internet needed here).
#
#   scripts/profile-gpu.sh BINARY OUTDIR [MODEL...]
#
# Writes OUTDIR/<gpu>-<model>.json (chimera-profile/v1), OUTDIR/env.txt (nvidia-smi, nvcc,
# library paths) and OUTDIR/log.txt. CUDA libraries are looked up under /usr/local and /opt
# and in the Python nvidia-* wheels, since the binary loads them at run time.
set -u
BIN=${1:?binary}; OUT=${2:?outdir}; shift 2
MODELS=${*:-Llama-2-7B Qwen2.5-7B}
mkdir -p "$OUT"
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  nvcc --version 2>/dev/null | tail -2
} > "$OUT/env.txt" 2>&1
LIBDIRS=$(find /usr/local /opt -maxdepth 10 \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' \) 2>/dev/null \
          | grep -v /stubs/ | xargs -r -n1 dirname | sort -u -r | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$OUT/env.txt"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' )
for m in $MODELS; do
  echo "== $m" | tee -a "$OUT/log.txt"
  timeout 120 "$BIN" calibrate profile --model "$m" --device cuda --out "$OUT/$GPU-$m.json" -q 2>&1 | tee -a "$OUT/log.txt"
done
