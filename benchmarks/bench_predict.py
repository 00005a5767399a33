"""End-to-end `wsiscan predict` against the naive pipeline, on benchmark slides of several sizes.

For each size, in the same run and on the same slide:

* wsiscan: ``wsiscan predict SLIDE -o OUT --model CKPT`` as a subprocess (tiling,
  inference, heatmap pyramid, overlay, GeoJSON, summary), wall time and peak RSS of
  the process tree;
* naive: the pipeline many research scripts use: one OpenSlide ``read_region`` per patch
  (at the level wsiscan reads, resampled with PIL), a PyTorch DataLoader, an fp32 model,
  and the probabilities pasted into a whole-slide numpy canvas; wall time and peak RSS.

Both score the same kept tiles (the naive one reuses wsiscan's tissue plan, so its
tissue detection is free) with the same checkpoint.  Peak memory is sampled every
20 ms with psutil over the process and its children.

    python benchmarks/bench_predict.py --sizes 8000 16000 --model resnet18 -o bench-out/bench_predict.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _load_make_slide():
    spec = importlib.util.spec_from_file_location("make_slide", REPO / "benchmarks" / "make_slide.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_slide"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


class PeakRss:
    """Samples the RSS of a process and its children (sum) every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak_bytes = max(self.peak_bytes, total)
            except psutil.Error:
                pass
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def device_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count()}
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        info["cuda"] = None
    return info


def make_checkpoint(arch: str, path: Path) -> Path:
    import torch

    from wsiscan.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, name=f"random {arch} (benchmark)")
    save_checkpoint(path, build_model(spec), spec)
    return path


def run_wsiscan(slide: Path, out: Path, ckpt: Path, extra: list[str]) -> dict[str, Any]:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a cold run: nothing to resume
    cmd = [sys.executable, "-m", "wsiscan", "predict", str(slide), "-o", str(out), "--model", str(ckpt), "-q",
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRss(proc.pid) as rss:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"wsiscan predict failed: {stderr.strip()}")
    summary = json.loads((out / slide.stem / "summary.json").read_text())
    n = summary["tiles"]["n_tiles"]
    return {"command": " ".join(cmd), "wall_s": wall, "peak_rss_mb": rss.peak_bytes / 2**20, "n_patches": n,
            "patches_per_s": n / wall, "stage_timings_s": summary["timings_s"]}


def _naive_child(slide: str, ckpt: str, result_path: str, workers: int, batch_size: int) -> None:
    """Runs in a subprocess so its peak RSS is measured on its own."""
    import openslide
    import torch
    from PIL import Image

    from wsiscan.config import load_config
    from wsiscan.models import load_checkpoint
    from wsiscan.tiling import plan_tiling

    t0 = time.perf_counter()
    model, spec = load_checkpoint(ckpt)
    cfg = load_config().replace("tile", target_mpp=spec.input_mpp, tile_size_px=spec.patch_size_px)
    plan = plan_tiling(slide, cfg)
    level = plan.selection.level
    ds = plan.slide_info["levels"][level]["downsample"]
    lv_size = int(round(spec.patch_size_px * plan.selection.lv_per_px))
    l0_xy = plan.l0_xy()

    class Patches(torch.utils.data.Dataset):
        handle = None

        def __len__(self) -> int:
            return len(l0_xy)

        def __getitem__(self, i: int):
            if Patches.handle is None:
                Patches.handle = openslide.OpenSlide(slide)
            x, y = (int(v) for v in l0_xy[i])
            img = Patches.handle.read_region((x, y), level, (lv_size, lv_size)).convert("RGB")
            if lv_size != spec.patch_size_px:
                img = img.resize((spec.patch_size_px, spec.patch_size_px), Image.Resampling.BOX)
            return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0, i

    loader = torch.utils.data.DataLoader(Patches(), batch_size=batch_size, num_workers=workers)
    canvas = np.full((plan.grid.n_rows * plan.grid.stride_px, plan.grid.n_cols * plan.grid.stride_px), np.nan,
                     np.float32)  # the whole-slide canvas older tools stitch into
    from wsiscan.models import predict_proba

    with torch.inference_mode():
        for x, idx in loader:
            probs = predict_proba(model, spec, x).numpy()
            for p, i in zip(probs, idx.numpy()):
                r, c = plan.kept_rc[i]
                s = plan.grid.stride_px
                canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] = p
    Path(result_path).write_text(json.dumps({"n_patches": int(len(l0_xy)), "inner_s": time.perf_counter() - t0}))


def run_naive(slide: Path, ckpt: Path, workers: int, batch_size: int, tmp: Path) -> dict[str, Any]:
    result = tmp / "naive.json"
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import bench_predict as b; "
            f"b._naive_child({str(slide)!r}, {str(ckpt)!r}, {str(result)!r}, {workers}, {batch_size})")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    with PeakRss(proc.pid) as rss:
        _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"naive pipeline failed: {stderr.strip()[-2000:]}")
    n = json.loads(result.read_text())["n_patches"]
    return {"wall_s": wall, "peak_rss_mb": rss.peak_bytes / 2**20, "n_patches": n, "patches_per_s": n / wall,
            "workers": workers, "batch_size": batch_size}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000], help="slide sides in px at 0.25 um/px")
    ap.add_argument("--model", default="resnet18", help="architecture of the (random) benchmark checkpoint")
    ap.add_argument("--cache", type=Path, default=REPO / "bench-out" / "slides")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "bench-out" / "bench_predict.json")
    ap.add_argument("--naive-workers", type=int, default=2)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--predict-args", default="", help="extra arguments for wsiscan predict")
    args = ap.parse_args(argv)

    from wsiscan.config import runtime_versions

    make_slide = _load_make_slide()
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.out.parent / "bench_predict_work"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(args.model, work / f"{args.model}.pt")
    rows = []
    for size in args.sizes:
        slide = args.cache / f"bench-{size}.tif"
        if not slide.exists():
            t = time.perf_counter()
            make_slide.make_benchmark_slide(slide, width_px=size, height_px=size)
            print(f"made {slide} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        row: dict[str, Any] = {"slide": str(slide), "size_px": [size, size], "mpp": 0.25,
                               "file_mb": slide.stat().st_size / 2**20}
        row["wsiscan"] = run_wsiscan(slide, work / "out", ckpt, args.predict_args.split())
        if not args.skip_naive:
            row["naive"] = run_naive(slide, ckpt, args.naive_workers, 64, work)
            row["speedup"] = row["naive"]["wall_s"] / row["wsiscan"]["wall_s"]
            row["memory_ratio"] = row["naive"]["peak_rss_mb"] / row["wsiscan"]["peak_rss_mb"]
        rows.append(row)
    result = {"benchmark": "bench_predict", "device": device_info(), "versions": runtime_versions(),
              "command": " ".join([sys.executable, *sys.argv]), "model": args.model, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'slide px':>12} {'patches':>8} {'wsiscan s':>10} {'naive s':>9} {'speedup':>8} "
          f"{'wsiscan RSS MB':>15} {'naive RSS MB':>13}")
    for r in rows:
        w, n = r["wsiscan"], r.get("naive", {})
        print(f"{r['size_px'][0]:>12} {w['n_patches']:>8} {w['wall_s']:>10.1f} {n.get('wall_s', float('nan')):>9.1f} "
              f"{r.get('speedup', float('nan')):>8.2f} {w['peak_rss_mb']:>15.0f} {n.get('peak_rss_mb', float('nan')):>13.0f}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
