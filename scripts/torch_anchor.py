#!/usr/bin/env python3
"""PyTorch anchor for `rest bench gpu`: training-step images/s of the same two models.

Times the CMNIST CNN (batch 256, 3x28x28) and ResNet-18 (width 64, batch 64, 3x32x32) in
PyTorch with cuDNN, as our engine builds them (CNHW is ours; here NCHW, PyTorch's own layout):
  - dense: a plain training step (forward, cross-entropy, backward, SGD momentum 0.9);
  - masked: the authors' recipe for sparse training, which keeps dense tensors and multiplies
    every masked weight by its 0/1 mask after each optimiser step, so its cost is dense whatever
    the density (measured at each density anyway, to show it).
Prints one JSON object per line and a summary table; `--json FILE` also writes them to a file.

Run on the GPU machine by scripts/device-check.sh; it needs only torch (CUDA) and Python 3.
"""
import argparse
import json
import sys
import time


def build_cnn(torch, width=64, in_ch=3, classes=10):
    nn = torch.nn
    layers, cin = [], in_ch
    for cout in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def build_resnet18(torch, width=64, in_ch=3, classes=10):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            s = x if self.short is None else self.short(x)
            return torch.relu(y + s)

    layers = [nn.Conv2d(in_ch, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    cin = width
    for s, mult in enumerate((1, 2, 4, 8)):
        for i in range(2):
            stride = 2 if s > 0 and i == 0 else 1
            layers.append(Block(cin, width * mult, stride))
            cin = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def random_masks(torch, model, density, gen):
    """Uniform random masks at `density` on every conv/linear weight (the cost does not depend on
    which weights are kept: the masked recipe computes densely either way)."""
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() in (2, 4):
            masks[name] = (torch.rand(p.shape, generator=gen, device=p.device) < density).float()
    return masks


def time_steps(torch, model, batch, size, steps, warmup, masks, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    w = torch.ones(batch, device=device)
    params = dict(model.named_parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (torch.nn.functional.cross_entropy(model(x), y, reduction="none") * w).sum() / w.sum()
        loss.backward()
        opt.step()
        if masks:
            with torch.no_grad():
                for name, m in masks.items():
                    params[name].mul_(m)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per point (default 30)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--densities", default="1,0.05,0.01", help="comma list for the masked recipe")
    ap.add_argument("--models", default="cnn,resnet18")
    ap.add_argument("--json", help="also write the JSON lines here")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("torch_anchor.py: PyTorch is not installed (pip install torch)")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_anchor.py: --device cuda but torch sees no GPU")
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    setups = {"cnn": (build_cnn, 256, 28), "resnet18": (build_resnet18, 64, 32)}
    for name in a.models.split(","):
        build, batch, size = setups[name]
        model = build(torch).to(device)
        rows.append(dict(model=name, batch=batch, mode="dense", density=1.0,
                         img_per_s=time_steps(torch, model, batch, size, a.steps, a.warmup, None, device)))
        for d in (float(s) for s in a.densities.split(",")):
            masks = random_masks(torch, model, d, gen)
            rows.append(dict(model=name, batch=batch, mode="masked", density=d,
                             img_per_s=time_steps(torch, model, batch, size, a.steps, a.warmup, masks, device)))
    env = dict(torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
               device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    out = [json.dumps(dict(r, **env)) for r in rows]
    print("\n".join(out))
    if a.json:
        with open(a.json, "w") as f:
            f.write("\n".join(out) + "\n")
    print(f"\nPyTorch {env['torch']} on {env['device']}", file=sys.stderr)
    for r in rows:
        print(f"{r['model']:9} batch {r['batch']:3}  {r['mode']:6} density {r['density']:<6} "
              f"{r['img_per_s']:10.0f} img/s", file=sys.stderr)


if __name__ == "__main__":
    main()
