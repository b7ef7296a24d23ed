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
if ((${#packages[@]})); then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        SUDO="sudo"
    fi
    echo "installing build packages: ${packages[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null
fi
