#!/usr/bin/env bash
# Installs, once, what building llamagate needs beside Rust: cmake and a C++ compiler
# (llama-cpp-2 builds llama.cpp from source) and libclang (bindgen reads llama.h).
set -euo pipefail

packages=()
command -v cmake >/dev/null 2>&1 || packages+=(cmake)
command -v g++ >/dev/null 2>&1 || packages+=(g++)
if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null; then
    packages+=(libclang-dev)
fi
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" ${packages[@]+"${packages[@]}"}

# llama.cpp is built without its AMX kernels (.cargo/config.toml says why). llama-cpp-sys-2
# never configures CMake twice in one build directory, so a llama.cpp configured before
# those flags would keep its AMX kernels after the flags changed: such a build is cleaned
# (rebuilt on the next cargo command).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [[ "$(uname -m)" == x86_64 ]]; then
    for cache in "$CARGO_TARGET_DIR"/*/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt; do
        if [[ -f "$cache" ]] && ! grep -q '^CMAKE_CXX_FLAGS:.*-mno-amx-int8' "$cache"; then
            echo "llama.cpp was configured with AMX kernels: rebuilding it without" >&2
            (cd "$LLAMAGATE_ROOT" && cargo clean -p llama-cpp-sys-2)
            break
        fi
    done
fi
