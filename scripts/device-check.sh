#!/usr/bin/env bash
# The GPU check in one call, for a machine with the NVIDIA driver, Python and PyTorch, but no Rust,
# no NVRTC needed, and no network. It runs the kit that scripts/device-prep.sh built here
# (target/device-kit: the `rest` binary, exported kernels, MNIST) and writes a report
# (report.md + report.json, plus each stage's log) to OUT_DIR.
#
# Usage: bash scripts/device-check.sh [--dry-run] [OUT_DIR]     (default OUT_DIR target/device-check)
#   --dry-run   list the stages with their time limits and check that the kit (binary, kernel
#               export, data) and the Python packages are present; runs nothing on a GPU.
# Environment: REST_DEVICE_KIT (kit folder), PYTHON (default python3).
#
# Stages, each under its own time limit, all within TOTAL_LIMIT (450 s, under 8 minutes with a
# margin); the first stage that fails or runs out of time stops the check with a message, and the
# report covers the stages run so far:
#   preflight   kit, glibc, nvidia-smi, torch sees the GPU
#   device      `rest device --device cuda` with REST_KERNEL_DIR=kit/kernels (no NVRTC used)
#   check       `rest device --check`: every kernel against its CPU twin on the GPU
#   data        Colored MNIST (1 %) generated from the kit's MNIST
#   epoch-gpu   one CMNIST epoch of REST (density 0.05) on the GPU
#   epoch-cpu   the same epoch on the CPU (per-group accuracy side by side in the report)
#   bench       `rest bench gpu`
#   torch       scripts/torch_anchor.py: eager dense, masked-dense, and CUDA-graph PyTorch
#   nvrtc       only when NVRTC is present: kernels compiled at run time into an empty cache
#               (last, so that a failure here loses none of the measurements above)
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=""
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "device-check: unknown option $a (see --help)"; exit 2 ;;
    *) OUT="$a" ;;
  esac
done
OUT="${OUT:-target/device-check}"
KIT="${REST_DEVICE_KIT:-target/device-kit}"
PY="${PYTHON:-python3}"
BIN="$KIT/rest"
TOTAL_LIMIT=450
STAGES="preflight:15 device:20 check:40 data:25 epoch-gpu:40 epoch-cpu:50 bench:100 torch:110 nvrtc:45"

limit_of() { for s in $STAGES; do [ "${s%%:*}" = "$1" ] && echo "${s##*:}"; done; }

echo "device-check: stages (time limit each; all within ${TOTAL_LIMIT} s):"
sum=0
for s in $STAGES; do
  printf '  %-10s %4s s\n' "${s%%:*}" "${s##*:}"
  sum=$((sum + ${s##*:}))
done
echo "  (limits add up to $sum s; nvrtc runs only where NVRTC is present)"

# --- what must be here: the kit and Python with PyTorch ------------------------------------------
missing=()
if [ ! -x "$BIN" ]; then
  missing+=("the rest binary $BIN (build the kit here: bash scripts/device-prep.sh)")
elif ! "$BIN" --version >/dev/null 2>&1; then
  need="$(sed -n 's/.*"glibc_min": "\([0-9.]*\)".*/\1/p' "$KIT/kit.json" 2>/dev/null)"
  have="$(ldd --version 2>/dev/null | head -1 | grep -o '[0-9]*\.[0-9]*$')"
  missing+=("a $BIN that starts here: it needs glibc >= ${need:-?}, this system has ${have:-?} (see README, On NVIDIA GPUs)")
fi
if [ ! -f "$KIT/kernels/manifest.json" ]; then
  missing+=("the kernel export $KIT/kernels/manifest.json (bash scripts/device-prep.sh)")
elif [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  ours="$("$BIN" device --device cpu 2>/dev/null | sed -n 's/.*sources hash \([0-9a-f]*\).*/\1/p')"
  if ! grep -q "\"source_hash\": \"$ours\"" "$KIT/kernels/manifest.json"; then
    missing+=("a kernel export built by this binary: $KIT/kernels is from other kernel sources (bash scripts/device-prep.sh)")
  fi
fi
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$KIT/data/mnist/$f.gz" ] || missing+=("MNIST $KIT/data/mnist/$f.gz (bash scripts/device-prep.sh)")
done
for f in scripts/torch_anchor.py scripts/device_report.py; do
  [ -f "$f" ] || missing+=("$f")
done
if ! command -v "$PY" >/dev/null 2>&1; then
  missing+=("Python ($PY)")
else
  torch_version="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  [ -n "$torch_version" ] || missing+=("PyTorch for $PY (import torch failed)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "device-check: missing:"
  printf '  - %s\n' "${missing[@]}"
  exit 2
fi
echo "device-check: kit $KIT ($(sed -n 's/.*"commit": "\([^"]*\)".*/\1/p' "$KIT/kit.json" 2>/dev/null)), PyTorch $torch_version: present"
if [ $DRY = 1 ]; then
  echo "device-check: dry run, nothing started"
  exit 0
fi

# --- the stages ------------------------------------------------------------------------------------
mkdir -p "$OUT"
rm -f "$OUT/stages.tsv"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DEADLINE=$(( $(date +%s) + TOTAL_LIMIT ))
export REST_KERNEL_DIR="$KIT/kernels"

finish() {
  "$PY" scripts/device_report.py "$OUT" "$KIT" || echo "device-check: the report could not be written"
  [ -f "$OUT/report.md" ] && { echo; cat "$OUT/report.md"; }
  exit "$1"
}

# run_stage NAME COMMAND...: runs under the stage's limit (less if the total budget is short),
# logs to OUT/NAME.txt, records the outcome; stops the check on failure.
run_stage() {
  local name="$1"; shift
  local limit; limit="$(limit_of "$name")"
  local left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -lt "$limit" ] && limit="$left"
  echo; echo "=== $name (limit ${limit} s) ==="
  if [ "$limit" -le 0 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" 0 0 "no time left" >> "$OUT/stages.tsv"
    echo "device-check: STOPPED before $name: the ${TOTAL_LIMIT} s budget is spent"
    finish 1
  fi
  local t0; t0="$(date +%s%N)"
  # bash -c runs the stage functions too (exported below); timeout alone runs only programs.
  timeout --kill-after=5 "$limit" bash -c '"$@"' stage "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  local secs; secs="$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')"
  tail -n 40 "$OUT/$name.txt"
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="ran past its ${limit} s limit"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$secs" "$status" >> "$OUT/stages.tsv"
  if [ "$status" != ok ]; then
    echo "device-check: STOPPED at stage $name: it $status; its log is $OUT/$name.txt"
    finish 1
  fi
}

preflight() {
  set -o pipefail
  command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA driver here"; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
    | tee "$OUT/nvidia-smi.txt" || { echo "nvidia-smi failed: is the NVIDIA driver loaded?"; return 1; }
  "$PY" -c 'import torch, sys
ok = torch.cuda.is_available()
print("torch", torch.__version__, "CUDA", torch.version.cuda, "sees", torch.cuda.get_device_name() if ok else "no GPU")
sys.exit(0 if ok else 1)' || { echo "PyTorch sees no GPU"; return 1; }
  ldd --version 2>&1 | sed -n 1p
}
export OUT KIT PY BIN WORK
export -f preflight
run_stage preflight preflight

run_stage device "$BIN" device --device cuda

run_stage check "$BIN" device --device cuda --check

make_data() {
  mkdir -p "$WORK/data/mnist"
  for f in "$KIT"/data/mnist/*.gz; do
    gunzip -c "$f" > "$WORK/data/mnist/$(basename "$f" .gz)" || return 1
  done
  "$BIN" data make --dataset cmnist --ratio 1 --data-dir "$WORK/data"
}
export -f make_data
run_stage data make_data

epoch() {
  "$BIN" train --dataset cmnist --ratio 1 --data-dir "$WORK/data" --device "$1" --epochs 1 \
    --out "$WORK/epoch-$1" --quiet || return 1
  cp "$WORK/epoch-$1/summary.json" "$OUT/epoch-$1.summary.json"
}
export -f epoch
run_stage epoch-gpu epoch cuda
run_stage epoch-cpu epoch cpu

run_stage bench "$BIN" bench gpu --json "$OUT/bench-gpu.json"

run_stage torch env PYTHONUNBUFFERED=1 "$PY" scripts/torch_anchor.py \
  --json "$OUT/torch-anchor.jsonl" --budget $(( $(limit_of torch) - 15 ))

if "$BIN" device --device cpu 2>/dev/null | grep -q '^NVRTC: [0-9]'; then
  run_stage nvrtc env -u REST_KERNEL_DIR XDG_CACHE_HOME="$WORK/cache" "$BIN" device --device cuda
else
  printf '%s\t%s\t%s\t%s\n' nvrtc 0 0 "skipped: no NVRTC here" >> "$OUT/stages.tsv"
  echo; echo "=== nvrtc: skipped (no NVRTC on this machine; the exported kernels are used) ==="
fi

echo; echo "device-check: all stages passed; report in $OUT"
finish 0
