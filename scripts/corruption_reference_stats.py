#!/usr/bin/env python3
"""Statistics of LfF's Corrupted CIFAR-10 corruptions on fixed synthetic images.

Writes tests/fixtures/corruption_reference.json, which tests/data_corrupt_reference.rs compares
rest's corruptions with. Nothing of the reference is copied here: the script loads LfF's own
protocol file (alinlab/LfF, data/corrupted_cifar10_protocol.py, which carries Hendrycks'
CIFAR-10-C functions) from a path you give, and calls its functions the way LfF's
make_dataset.py does: table row = severity + 1, output cast to uint8 (truncation).

Setup (in a throwaway folder outside the repository):

    python3 -m venv venv && ./venv/bin/pip install imagecorruptions wand   # + apt libmagickwand-6.q16-6
    curl -O https://raw.githubusercontent.com/alinlab/LfF/master/data/corrupted_cifar10_protocol.py
    ./venv/bin/python scripts/corruption_reference_stats.py corrupted_cifar10_protocol.py \
        venv/lib/python3.11/site-packages/imagecorruptions/frost > tests/fixtures/corruption_reference.json

The frost photographs come from the `imagecorruptions` wheel (the same files LfF's protocol
reads from its resource folder). The shims below only let the 2020 file run on today's numpy,
scipy and scikit-image; they do not change what any corruption computes.
"""

import importlib.util
import json
import sys
import types

import numpy as np
import scipy.ndimage
import skimage.filters
from PIL import Image

DRAWS = 12
ROWS = [2, 3, 4, 5]  # rest's severities 1..4 are the tables' rows 2..5, as LfF's make_dataset
NAMES = [
    ("snow", "Snow"),
    ("frost", "Frost"),
    ("fog", "Fog"),
    ("brightness", "Brightness"),
    ("contrast", "Contrast"),
    ("spatter", "Spatter"),
    ("elastic_transform", "Elastic"),
    ("jpeg_compression", "JPEG"),
    ("pixelate", "Pixelate"),
    ("saturate", "Saturate"),
]


def test_image(k):
    """The fixed 32x32 RGB images; tests/data_corrupt_reference.rs builds the same bytes."""
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    for y in range(32):
        for x in range(32):
            for c in range(3):
                if k == 0:
                    v = [8 * x, 8 * y, 64 + 128 * (((x // 4) + (y // 4)) % 2)][c]
                elif k == 1:
                    inside = 8 <= x < 24 and 8 <= y < 24
                    v = [200 if inside else 40, (x * y) % 256, 255 - 8 * x][c]
                else:
                    h = ((x * 37 + y * 91 + c * 53) * 2654435761) % (1 << 32)
                    v = 64 + (h >> 25)
                img[y, x, c] = v
    return img


def stats(clean, out):
    signed = out.astype(np.int32) - clean.astype(np.int32)
    d = np.abs(signed)
    shift = [round(float(signed[..., c].mean()), 4) for c in range(3)]
    return float(d.mean()), float((d > 10).mean()), shift


def load_protocol(path, frost_dir):
    np.float_ = np.float64  # removed in numpy 2
    np.fromstring = lambda s, dtype: np.frombuffer(s, dtype)  # binary mode removed
    sys.modules["scipy.ndimage.interpolation"] = scipy.ndimage
    plain_gaussian = skimage.filters.gaussian

    def gaussian(img, sigma=1, multichannel=None, **kw):  # `multichannel` was renamed
        if multichannel:
            kw["channel_axis"] = -1
        return plain_gaussian(img, sigma=sigma, **kw)

    skimage.filters.gaussian = gaussian
    spec = importlib.util.spec_from_file_location("lff_protocol", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.resource_path = frost_dir
    return mod.CORRUPTED_CIFAR10_PROTOCOL


def main():
    protocol = load_protocol(sys.argv[1], sys.argv[2])
    out = {
        "source": "alinlab/LfF data/corrupted_cifar10_protocol.py, row = severity + 1, uint8 cast",
        "draws": DRAWS,
        "images": 3,
        "stats": "mad: mean |corrupted - clean| in levels 0..255 over all values; "
        "frac10: share of values changed by more than 10 levels; shift: mean signed change "
        "of the red, green and blue planes (the corruption's tint); one entry per draw "
        "(np.random.seed(draw)), per image",
        "corruptions": {},
    }
    for name, key in NAMES:
        per_sev = {}
        for sev, row in enumerate(ROWS, start=1):
            mads, fracs, shifts = [], [], []
            for k in range(3):
                clean = test_image(k)
                for draw in range(DRAWS):
                    np.random.seed(draw)
                    res = protocol[key](Image.fromarray(clean), row)
                    res = np.array(res).astype(np.uint8)
                    m, f, sh = stats(clean, res)
                    mads.append(round(m, 4))
                    fracs.append(round(f, 5))
                    shifts.append(sh)
            per_sev[str(sev)] = {"mad": mads, "frac10": fracs, "shift": shifts}
        out["corruptions"][name] = per_sev
        print(name, {s: round(float(np.mean(v["mad"])), 2) for s, v in per_sev.items()}, file=sys.stderr)
    json.dump(out, sys.stdout, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
