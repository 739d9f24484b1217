#!/usr/bin/env bash
# Registers, shared memory and spills per kernel, from ptxas -v on the PTX that NVRTC makes for
# sm_80 and sm_90. Needs NVRTC (see README) and ptxas: from a CUDA toolkit on PATH, else from the
# PyPI wheel nvidia-cuda-nvcc==13.0.88 (installed into a temporary folder). No GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PTXAS="$(command -v ptxas || true)"
if [ -z "$PTXAS" ]; then
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$work/nvcc" nvidia-cuda-nvcc==13.0.88
  PTXAS="$work/nvcc/nvidia/cu13/bin/ptxas"
fi
mkdir -p "$work/ptx"
REST_PTX_DIR="$work/ptx" REQUIRE_NVRTC=1 cargo test --release -q --test nvrtc_compile every_kernel >/dev/null
printf '%-6s %-34s %5s %7s %7s %7s\n' arch kernel regs smem spill_st spill_ld
for f in "$work"/ptx/*.ptx; do
  arch="sm_${f##*.compute_}"; arch="${arch%.ptx}"
  "$PTXAS" -arch="$arch" -v "$f" -o /dev/null 2>&1 | awk -v arch="$arch" '
    /Compiling entry function/ { match($0, /function [^ ]+/); name = substr($0, RSTART + 9, RLENGTH - 9); gsub(/[\047`]/, "", name) }
    /spill stores/ { st = $5; ld = $9 }
    /Used [0-9]+ registers/ {
      regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      printf "%-6s %-34s %5s %7s %7s %7s\n", arch, name, regs, smem, st, ld
    }'
done
