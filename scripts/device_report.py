#!/usr/bin/env python3
"""Writes OUT/report.md and OUT/report.json from what scripts/device-check.sh left in OUT.

Usage: device_report.py OUT_DIR KIT_DIR. Reads whatever stages got to run (stages.tsv, the logs,
epoch-*.summary.json, bench-gpu.json, torch-anchor.jsonl); a missing part is reported as missing.
Standard library only.
"""
import json
import os
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_json(path):
    text = read(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


GROUPS = [("aligned", "aligned_accuracy"), ("conflicting", "conflicting_accuracy"),
          ("unbiased", "unbiased_accuracy"), ("worst group", "worst_group_accuracy"),
          ("all", "accuracy")]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: device_report.py OUT_DIR KIT_DIR")
    out, kit = sys.argv[1:]
    stages = []
    for line in (read(os.path.join(out, "stages.tsv")) or "").splitlines():
        name, limit, secs, status = (line.split("\t") + ["", "", "", ""])[:4]
        stages.append(dict(stage=name, limit_s=limit, seconds=secs, status=status))
    report = dict(
        kit=read_json(os.path.join(kit, "kit.json")),
        gpu=(read(os.path.join(out, "nvidia-smi.txt")) or "").strip() or None,
        stages=stages,
        rest_device=read(os.path.join(out, "device.txt")),
        check_summary=None,
        epoch={dev: read_json(os.path.join(out, f"epoch-{dev}.summary.json")) for dev in ("cuda", "cpu")},
        bench_gpu=read_json(os.path.join(out, "bench-gpu.json")),
        torch_anchor=[json.loads(l) for l in (read(os.path.join(out, "torch-anchor.jsonl")) or "").splitlines()
                      if l.strip().startswith("{")],
    )
    check = read(os.path.join(out, "check.txt"))
    if check:
        lines = [l for l in check.splitlines() if "checks of" in l]
        report["check_summary"] = lines[-1] if lines else None

    md = ["# rest device check", ""]
    if report["kit"]:
        k = report["kit"]
        md.append(f"Kit: commit {k.get('commit')}, kernels for {', '.join(k.get('archs', []))} "
                  f"(NVRTC {'.'.join(map(str, k.get('nvrtc', [])))}), binary needs glibc >= {k.get('glibc_min')}.")
    md.append(f"GPU (nvidia-smi): {report['gpu'] or 'not reached'}")
    md += ["", "## Stages", "", "| stage | limit s | took s | status |", "|---|---|---|---|"]
    md += [f"| {s['stage']} | {s['limit_s']} | {s['seconds']} | {s['status']} |" for s in stages]
    if report["rest_device"]:
        md += ["", "## rest device", "", "```", report["rest_device"].strip(), "```"]
    md += ["", "## Kernels against their CPU twins", "", report["check_summary"] or "not run"]

    md += ["", "## One CMNIST epoch (REST, 1 %, density 0.05): GPU beside CPU", ""]
    ep = report["epoch"]
    if ep["cuda"] or ep["cpu"]:
        md += ["| test accuracy % | GPU | CPU |", "|---|---|---|"]
        for label, key in GROUPS:
            cells = []
            for dev in ("cuda", "cpu"):
                s = ep[dev]
                cells.append(f"{100 * s['test'][key]:.2f}" if s and key in s.get("test", {}) else "–")
            md.append(f"| {label} | {cells[0]} | {cells[1]} |")
        secs = [f"{ep[d]['wall_seconds']:.1f}" if ep[d] and "wall_seconds" in ep[d] else "–" for d in ("cuda", "cpu")]
        md.append(f"| wall seconds | {secs[0]} | {secs[1]} |")
    else:
        md.append("not run")

    md += ["", "## rest bench gpu", ""]
    bench = read(os.path.join(out, "bench.txt"))
    md += ["```", bench.strip(), "```"] if bench else ["not run"]

    md += ["", "## PyTorch anchor", ""]
    rows = report["torch_anchor"]
    if rows:
        md.append(f"PyTorch {rows[0].get('torch')}, cuDNN {rows[0].get('cudnn')}, {rows[0].get('device')}, "
                  f"TF32 {'on' if rows[0].get('tf32') else 'off'} (convolutions and matmuls)")
        md += ["", "| model | px | batch | mode | density | img/s |", "|---|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['model']} | {r['size']} | {r['batch']} | {r['mode']} | {r['density']} | "
                      f"{r['img_per_s']:.0f} |")
    else:
        md.append("not run")

    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
