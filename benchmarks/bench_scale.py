"""Scaling `wsiscan predict` over many slides: one process vs a local Dask cluster of 1 and 2 workers.

In one run, on the same slides and checkpoint, each mode is a fresh
``wsiscan predict SLIDES... -o OUT --model CKPT -q [--workers N]`` subprocess into an
empty output folder (a cold run: nothing to resume or skip):

* ``single``: no --workers: today's single-process run, slides in turn;
* ``dask-1``, ``dask-2``, ...: ``--workers N``, a local Dask cluster (N worker processes,
  one thread each; on CPU each worker gets cores // N torch threads).

Wall time counts everything a user waits for: interpreter and torch start-up, model
loading, cluster start-up and every slide.  ``in_run_s`` is the manifest's own clock
(from the first slide submitted to the last finished; dask modes only).  Every mode's
heatmaps are compared with the single-process run's (``identical``).

    python benchmarks/bench_scale.py --slides 8 --workers 1 2 -o bench-out/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def device_info() -> dict[str, Any]:
    """wsiscan_bench's device description (the CUDA device when present), load average, torch threads."""
    import torch
    from wsiscan_bench import device_info as library_device_info

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {**library_device_info(device), "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "torch_threads": torch.get_num_threads()}


def versions() -> dict[str, str]:
    from importlib import metadata

    from wsiscan.config import runtime_versions

    out = runtime_versions()
    for dist in ("dask", "distributed", "dask-cuda"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def make_slides(work: Path, n: int, size_px: tuple[int, int], distinct: int) -> list[Path]:
    """``distinct`` synthetic slides (different tissue layouts), copied under other names up to ``n``."""
    from wsiscan.testing import write_synthetic_slide

    work.mkdir(parents=True, exist_ok=True)
    w, h = size_px
    sources = []
    for i in range(min(distinct, n)):
        p = work / f"src-{w}x{h}-{i}.tif"
        if not p.exists():
            shift = i * w // 16
            boxes = ((w // 8 + shift, h // 6, w // 2 + shift, h // 2 + h // 6),
                     (w // 2 + w // 8, h // 2 - shift // 2, w - w // 8, h - h // 8))
            write_synthetic_slide(p.with_suffix(".partial.tif"), dimensions_px=size_px, boxes=boxes)
            os.replace(p.with_suffix(".partial.tif"), p)
        sources.append(p)
    slides = []
    for i in range(n):
        p = work / "slides" / f"slide-{i:03d}.tif"
        p.parent.mkdir(exist_ok=True)
        if not p.exists():
            shutil.copy(sources[i % len(sources)], p)
        slides.append(p)
    return slides


def make_checkpoint(arch: str, path: Path) -> Path:
    import torch

    from wsiscan.models import ModelSpec, build_model, save_checkpoint

    if not path.exists():
        torch.manual_seed(0)
        spec = ModelSpec(arch=arch, name=f"random {arch} (benchmark)", input_mpp=0.972)
        save_checkpoint(path, build_model(spec), spec)
    return path


def run_mode(slides: list[Path], out: Path, ckpt: Path, workers: int | None, extra: list[str]) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "wsiscan", "predict", *map(str, slides), "-o", str(out), "--model", str(ckpt), "-q",
           *extra]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {proc.stderr.strip()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    entries = manifest["slides"]
    patches = sum(e["n_tiles"] for e in entries)
    return {"wall_s": wall, "n_slides": len(entries), "patches": patches,
            "in_run_s": (manifest.get("totals") or {}).get("elapsed_s"),
            "slide_seconds_sum": sum(e["seconds"] for e in entries), "command": " ".join(cmd[:3] + ["predict", "..."])
            + (f" --workers {workers}" if workers else "")}


def identical(a: Path, b: Path, slides: list[Path]) -> bool:
    import numpy as np
    import zarr

    for s in slides:
        ha = zarr.open_group(str(a / s.stem / "store.zarr"), mode="r")["heatmap/0"][...]
        hb = zarr.open_group(str(b / s.stem / "store.zarr"), mode="r")["heatmap/0"][...]
        if not np.array_equal(ha, hb, equal_nan=True):
            return False
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=8, help="number of slides")
    ap.add_argument("--size", type=int, nargs=2, default=[8192, 6144], metavar=("W", "H"),
                    help="slide size in level-0 px at 0.486 um/px")
    ap.add_argument("--distinct", type=int, default=2, help="distinct tissue layouts (the rest are copies)")
    ap.add_argument("--model", default="resnet18", help="architecture of the (random) checkpoint, or 'tiny'")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="local cluster sizes to measure")
    ap.add_argument("--repeats", type=int, default=1, help="runs per mode (interleaved); the median is reported")
    ap.add_argument("--predict-args", default="", help="extra arguments for every wsiscan predict")
    ap.add_argument("--work", type=Path, default=REPO / "bench-out" / "bench_scale_work")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "bench-out" / "bench_scale.json")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    slides = make_slides(args.work, args.slides, tuple(args.size), args.distinct)
    ckpt = make_checkpoint(args.model, args.work / f"{args.model}.pt")
    print(f"{len(slides)} slides ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    extra = args.predict_args.split()
    modes: list[tuple[str, int | None]] = [("single", None)] + [(f"dask-{n}", n) for n in args.workers]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in modes}
    for rep in range(args.repeats):
        for name, n in modes:
            r = run_mode(slides, args.work / f"out-{name}", ckpt, n, extra)
            runs[name].append(r)
            print(f"repeat {rep + 1}: {name:>8}: {r['wall_s']:.1f} s", file=sys.stderr)
    rows = []
    single_wall = statistics.median(r["wall_s"] for r in runs["single"])
    for name, n in modes:
        wall = statistics.median(r["wall_s"] for r in runs[name])
        first = runs[name][0]
        in_run = [r["in_run_s"] for r in runs[name] if r["in_run_s"]]
        rows.append({
            "mode": name, "dask_workers": n, "wall_s": wall, "wall_s_all": [r["wall_s"] for r in runs[name]],
            "slides_per_s": first["n_slides"] / wall, "patches_per_s": first["patches"] / wall,
            "speedup_vs_single": single_wall / wall,
            "in_run_s": statistics.median(in_run) if in_run else None,
            "in_run_slides_per_s": first["n_slides"] / statistics.median(in_run) if in_run else None,
            "identical_to_single": True if name == "single" else identical(args.work / "out-single",
                                                                            args.work / f"out-{name}", slides),
            "command": first["command"],
        })
    result = {
        "benchmark": "bench_scale", "device": device_info(), "versions": versions(),
        "command": " ".join([sys.executable, *sys.argv]),
        "slides": {"n": len(slides), "size_px": args.size, "mpp": 0.486, "distinct": args.distinct,
                   "patches_per_slide": runs["single"][0]["patches"] / len(slides)},
        "model": args.model, "repeats": args.repeats, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'mode':>8} {'wall s':>8} {'slides/s':>9} {'patches/s':>10} {'speedup':>8} {'in-run s':>9} {'identical':>9}")
    for r in rows:
        in_run = f"{r['in_run_s']:.1f}" if r["in_run_s"] else "-"
        print(f"{r['mode']:>8} {r['wall_s']:>8.1f} {r['slides_per_s']:>9.3f} {r['patches_per_s']:>10.0f} "
              f"{r['speedup_vs_single']:>8.2f} {in_run:>9} {str(r['identical_to_single']):>9}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
