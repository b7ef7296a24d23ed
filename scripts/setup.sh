#!/usr/bin/env bash
# Installs what the test suite needs beside Rust and Python, once: Debian packages
# (a real Prometheus and promtool for the metrics tests). Skips what is already there.
set -euo pipefail

packages=()
command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)

if ((${#packages[@]})); then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        SUDO="sudo"
    fi
    echo "installing: ${packages[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${packages[@]}" | sort -u) >/dev/null
fi
echo "system packages ready"
