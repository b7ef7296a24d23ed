#!/usr/bin/env bash
# Prepares, once, a CUDA 13.5 toolkit from NVIDIA's wheels on PyPI (pinned versions and
# sha256 below: nvcc, its C runtime headers and NVVM, the CUDA runtime with its static
# library, culibos, cuBLAS, CCCL) in one folder, and prints that folder:
#   CUDA="$(scripts/cuda-toolkit.sh)"
#   export CUDA_PATH="$CUDA" CUDAToolkit_ROOT="$CUDA" CMAKE_CUDA_COMPILER="$CUDA/bin/nvcc"
#   export CMAKE_CUDA_ARCHITECTURES=89-real   # your GPU's; without a GPU "native" fails
# Debian 12's main component has no CUDA toolkit; these wheels are NVIDIA's own
# redistributable builds. They hold no libcuda (the driver's), and cuBLAS only as a
# shared library: a machine with the NVIDIA driver has the first, and linking llamagate
# against the second needs LLAMA_BUILD_SHARED_LIBS=1 (llama-cpp-sys-2 links cuBLAS
# statically otherwise). docs/GPU.md says what was built with it and what was not.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

TOOLKIT="${LLAMAGATE_CUDA_TOOLKIT:-$HOME/.cache/llamagate/cuda-13.5}"
WHEELS=(
    "nvidia-cuda-nvcc==13.5.37 f5c4f7ead5d964fb4af42bbf1e6d3ec3c1e6e9d83b53749f691d387e7fcaa3a7"
    "nvidia-cuda-crt==13.5.37 e898b7f73d3035fa89915a3f7bf3b54a73e90249746111aed295822c4729bb29"
    "nvidia-nvvm==13.5.37 c41bfa362e407405163f103c2229f0765f8cc2ed7d148b754dc77f228bf7e070"
    "nvidia-cuda-runtime==13.5.37 df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d"
    "nvidia-cuda-cccl==13.3.5.0.6 d5230098fa2df5021e1a00c0c4eee41797671a91119d31e892463e5ccf3ee326"
    "nvidia-cuda-culibos==13.4.92 ccfb159353836a36ba265e886be19bd32bb43ab6b4c2947a1d434acc20a1203e"
    "nvidia-cublas==13.10.0.20 dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84"
)

if [[ ! -x "$TOOLKIT/bin/nvcc" ]]; then
    echo "assembling a CUDA toolkit from PyPI wheels into $TOOLKIT (~1 GB)" >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    for entry in "${WHEELS[@]}"; do
        read -r spec sha <<<"$entry"
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/$spec" "$spec" >&2
        wheel="$(ls "$tmp/$spec"/*.whl)"
        echo "$sha  $wheel" | sha256sum -c --quiet - >&2
        python3 -m zipfile -e "$wheel" "$tmp/x"
    done
    rm -rf "$TOOLKIT"
    mkdir -p "$(dirname "$TOOLKIT")"
    mv "$tmp/x/nvidia/cu13" "$TOOLKIT"
    chmod +x "$TOOLKIT"/bin/* "$TOOLKIT"/nvvm/bin/* 2>/dev/null || true
    # CMake's FindCUDAToolkit looks for the unversioned names.
    for lib in libcudart libcublas libcublasLt; do
        ln -sfn "$lib.so.13" "$TOOLKIT/lib/$lib.so"
    done
fi
echo "$TOOLKIT"
