#!/usr/bin/env bash
# One call on a lent GPU machine (it has CUDA, PyTorch and nvcc, but no Rust): the binary built
# on the developer machine is carried as target/release/rest. Prints, in order:
#   1. which NVRTC is used, `rest device`;
#   2. `rest device --check`: every kernel against its CPU twin on the GPU (pass/fail table);
#   3. one epoch of REST on Colored MNIST (or synthetic data when no MNIST was carried);
#   4. `rest bench gpu` (per-layer sparse vs dense conv, cross-entropy bandwidth, topology update,
#      training step images/s);
#   5. scripts/torch_anchor.py: PyTorch (cuDNN) on the same models, dense and masked-dense.
# Results also land under $OUT (when set) as JSON/text. Fits in about 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/rest-device-check}"
mkdir -p "$OUT"
BIN=./target/release/rest
[ -x "$BIN" ] || { echo "device-check: $BIN is missing: build it here with cargo build --release and carry it"; exit 2; }

# NVRTC 13: the toolkit's lib64, else the cu13 wheel inside the PyTorch environment.
for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 \
         $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null); do
  if [ -e "$d/libnvrtc.so.13" ]; then
    export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "device-check: NVRTC from $d"
    break
  fi
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

step() { echo; echo "=== $* ==="; }
status=0

step "rest device"
"$BIN" device --device cuda 2>&1 | tee "$OUT/device.txt" || status=1

step "rest device --check (kernels vs CPU twins on the GPU)"
timeout 120 "$BIN" device --device cuda --check 2>&1 | tee "$OUT/check.txt" || status=1

step "one epoch of REST on Colored MNIST"
DATA=(--dataset synthetic)
if [ -d datasets/cmnist ] || [ -d datasets/mnist ]; then
  [ -d datasets/cmnist ] || timeout 60 "$BIN" data make --dataset cmnist --ratio 1 || true
  [ -d datasets/cmnist ] && DATA=(--dataset cmnist --ratio 1)
fi
timeout 150 "$BIN" train "${DATA[@]}" --device cuda --epochs 1 --out /tmp/rest-epoch 2>&1 | tail -25 | tee "$OUT/epoch.txt" || status=1

step "rest bench gpu"
timeout 150 "$BIN" bench gpu --json "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.txt" || status=1

step "PyTorch anchor (cuDNN): dense and masked-dense"
PYTHONUNBUFFERED=1 timeout 120 python3 scripts/torch_anchor.py --json "$OUT/torch-anchor.jsonl" 2>&1 | tee "$OUT/torch-anchor.txt" || status=1

echo
echo "device-check: done (status $status); results under $OUT"
exit $status
