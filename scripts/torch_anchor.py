#!/usr/bin/env python3
"""PyTorch anchor for `rest bench gpu`: training-step images/s of the same models, as a user runs them.

Models as our engine builds them (CNHW is ours; here NCHW, PyTorch's own layout): the CMNIST CNN at
28 px, ResNet-18 (width 64) at 32 px and at 128 px (BFFHQ's size), each at batch 64 and 256.
Modes, each a full training step (forward, reweighted cross-entropy, backward, SGD momentum 0.9):
  - eager-dense:  plain eager PyTorch with cuDNN (cudnn.benchmark on);
  - eager-masked: the authors' recipe for sparse training (RigL-style masks over dense tensors:
    every masked weight multiplied by its 0/1 mask after each optimiser step), so its cost is
    dense whatever the density;
  - graph-dense, graph-masked: the same step captured once as a CUDA graph and replayed, the
    honest best a PyTorch user gets for small steps (no per-op launch overhead).
TF32 is on for convolutions and matmuls (said in the output). Prints one JSON object per line and
a table; `--json FILE` also writes the lines to a file. `--budget S` starts no new point after S
seconds and names what it skipped.

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


def time_steps(torch, model, batch, size, steps, warmup, masks, device, graph):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    w = torch.ones(batch, device=device)
    params = dict(model.named_parameters())

    def step():
        loss = (torch.nn.functional.cross_entropy(model(x), y, reduction="none") * w).sum() / w.sum()
        loss.backward()
        opt.step()
        if masks:
            with torch.no_grad():
                for name, m in masks.items():
                    params[name].mul_(m)

    def eager():
        opt.zero_grad(set_to_none=True)
        step()

    run = eager
    if graph:
        # PyTorch's whole-network capture recipe: warm up on a side stream, then capture one
        # step (gradients start as None, so the captured backward writes rather than adds).
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(max(warmup, 3)):
                eager()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(g):
            step()
        run = g.replay
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda or cpu (default cuda; graphs need cuda)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per point (default 20)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--density", type=float, default=0.05, help="mask density of the masked modes")
    ap.add_argument("--setups", default="cnn@28,resnet18@32,resnet18@128", help="model@pixels list")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--modes", default="eager-dense,eager-masked,graph-dense,graph-masked")
    ap.add_argument("--budget", type=float, default=0, help="seconds; start no point after (0: none)")
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
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    builders = {"cnn": build_cnn, "resnet18": build_resnet18}
    env = dict(torch=torch.__version__, cudnn=torch.backends.cudnn.version(), tf32=True,
               device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    print(f"PyTorch {env['torch']} on {env['device']}; TF32 on for convolutions and matmuls",
          file=sys.stderr)
    start = time.perf_counter()
    rows, skipped = [], []
    out = open(a.json, "w") if a.json else None
    for setup in a.setups.split(","):
        name, size = setup.split("@")
        for batch in (int(b) for b in a.batches.split(",")):
            for mode in a.modes.split(","):
                point = f"{name} {size}px batch {batch} {mode}"
                graph = mode.startswith("graph")
                if (a.budget and time.perf_counter() - start > a.budget) or (graph and device.type != "cuda"):
                    skipped.append(point)
                    continue
                torch.manual_seed(0)
                model = builders[name](torch).to(device)
                masked = mode.endswith("masked")
                masks = random_masks(torch, model, a.density, torch.Generator(device=device).manual_seed(0)) \
                    if masked else None
                ips = time_steps(torch, model, batch, int(size), a.steps, a.warmup, masks, device, graph)
                row = dict(model=name, size=int(size), batch=batch, mode=mode,
                           density=a.density if masked else 1.0, img_per_s=ips, **env)
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
                del model, masks
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if out:
        out.close()
    for r in rows:
        print(f"{r['model']:9} {r['size']:4}px batch {r['batch']:3}  {r['mode']:13} density {r['density']:<5} "
              f"{r['img_per_s']:10.0f} img/s", file=sys.stderr)
    if skipped:
        print(f"skipped ({'budget of %.0f s spent' % a.budget if a.budget else 'graphs need cuda'}): "
              + "; ".join(skipped), file=sys.stderr)


if __name__ == "__main__":
    main()
