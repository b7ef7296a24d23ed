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
