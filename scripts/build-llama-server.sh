#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (the speed peer of `llamagate bench`) from the
# llama-cpp-python 0.3.36 sdist on PyPI, which vendors the whole llama.cpp, server
# included (the llama-cpp-sys-2 crate's copy lacks tools/server). CPU build, native
# SIMD, as llama-cpp-2 builds it. Prints the binary's path; skips the build when it is
# there. Takes ~10 minutes on 2 cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
DIR="${LLAMA_SERVER_DIR:-$HOME/.cache/llamagate/llama-server}"
BIN="$DIR/build/bin/llama-server"
# Without llama.cpp's AMX kernels, as .cargo/config.toml builds llama-cpp-2: on CPUs with
# AMX they crash the server with SIGSEGV in ggml_backend_amx_mul_mat at its first
# requests (ggml-org/llama.cpp#20824). A build made with other flags is rebuilt.
FLAGS=""
[[ "$(uname -m)" != x86_64 ]] || FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
if [[ -x "$BIN" && "$(cat "$DIR/build/flags" 2>/dev/null)" == "$FLAGS" ]]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$DIR"
if [[ ! -d "$DIR/src/vendor/llama.cpp" ]]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
        -d "$DIR" "llama-cpp-python==0.3.36" >&2
    rm -rf "$DIR/src" && mkdir -p "$DIR/src"
    tar xzf "$DIR"/llama_cpp_python-0.3.36.tar.gz -C "$DIR/src" --strip-components=1
fi
cmake -S "$DIR/src/vendor/llama.cpp" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" >&2
cmake --build "$DIR/build" --target llama-server -j "$(nproc)" >&2
printf '%s' "$FLAGS" >"$DIR/build/flags"
echo "$BIN"
