#!/usr/bin/env bash
# Prepares, once, what building llamagate's `vulkan` feature needs on Debian 12 and prints
# the folder to export as VULKAN_SDK:
#   VULKAN_SDK="$(scripts/vulkan-sdk.sh)" cargo build --features vulkan
# - Debian packages: the Vulkan loader (libvulkan-dev), glslc (llama.cpp compiles its
#   shaders with it), SPIRV-Headers, and Mesa's drivers, whose lavapipe is a Vulkan device
#   that runs on the CPU (what the test suite runs the Vulkan backend on).
# - llama.cpp's Vulkan backend uses Vulkan-Hpp 1.4 (vk::LayerSettingEXT); Debian 12's
#   headers are 1.3.239. The headers of Debian 13's libvulkan-dev (pinned version and
#   sha256 below, from Debian's pool) are unpacked into the folder; the loader it links
#   and runs with stays Debian 12's (the headers' newer entry points are looked up at run
#   time, so an older loader is fine).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

VERSION="1.4.309.0-1"
SHA256="8d329d465e16168afff58b1bd0dd6db46aac2cc3f56054a481b25a04e90b345a"
URL="https://deb.debian.org/debian/pool/main/v/vulkan-loader/libvulkan-dev_${VERSION}_amd64.deb"
SDK="${LLAMAGATE_VULKAN_SDK:-$HOME/.cache/llamagate/vulkan-sdk-$VERSION}"

packages=()
[[ -e /usr/lib/x86_64-linux-gnu/libvulkan.so ]] || packages+=(libvulkan-dev)
command -v glslc >/dev/null 2>&1 || packages+=(glslc)
[[ -e /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake ]] || packages+=(spirv-headers)
compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null || packages+=(mesa-vulkan-drivers)
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" ${packages[@]+"${packages[@]}"} >&2

if [[ ! -f "$SDK/include/vulkan/vulkan.hpp" ]]; then
    echo "unpacking Vulkan-Hpp headers $VERSION (Debian 13's libvulkan-dev) into $SDK" >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    curl -sSfL --retry 3 -o "$tmp/dev.deb" "$URL"
    echo "$SHA256  $tmp/dev.deb" | sha256sum -c --quiet - >&2
    dpkg-deb -x "$tmp/dev.deb" "$tmp/x"
    rm -rf "$SDK"
    mkdir -p "$SDK/lib" "$SDK/bin"
    cp -r "$tmp/x/usr/include" "$SDK/include"
fi
# The loader and compiler are the system's (FindVulkan looks in $VULKAN_SDK/lib and /bin).
ln -sfn /usr/lib/x86_64-linux-gnu/libvulkan.so "$SDK/lib/libvulkan.so"
ln -sfn "$(command -v glslc)" "$SDK/bin/glslc"
# llama-cpp-sys-2 never configures CMake twice in one build directory: a Vulkan build
# configured with other headers (Debian 12's, which fail) is removed, to be configured anew.
for cache in "$CARGO_TARGET_DIR"/*/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt; do
    if [[ -f "$cache" ]] && grep -q '^Vulkan_INCLUDE_DIR:' "$cache" \
        && ! grep -q "^Vulkan_INCLUDE_DIR:PATH=$SDK/include\$" "$cache"; then
        echo "llama.cpp's Vulkan build was configured with other headers: configuring it again" >&2
        rm -rf "$(dirname "$cache")"
    fi
done
echo "$SDK"
