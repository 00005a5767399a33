"""End-to-end `wsiscan predict` against the naive pipeline, on benchmark slides of several sizes.

A thin wrapper over :func:`wsiscan_bench.bench_end_to_end` (the code behind
``wsiscan bench``): for each size, in the same run and on the same slide, contenders
interleaved and repeated (the fastest run is reported):

* wsiscan: ``wsiscan predict SLIDE -o OUT --model CKPT`` as a subprocess (tiling,
  inference, heatmap pyramid, overlay, GeoJSON, summary), wall time, CPU time and peak
  RSS of the process tree;
* naive: one OpenSlide ``read_region`` per patch, a PyTorch DataLoader, an fp32 model,
  the probabilities pasted into a whole-slide numpy canvas;
* with ``--compare-src DIR``: ``wsiscan predict`` from another source tree ("before").

Peak RSS by slide size shows whether memory stays flat as slides grow.

    python benchmarks/bench_predict.py --sizes 8000 16000 24000 --model resnet18 -o bench-out/bench_predict.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wsiscan_bench import BenchOptions, bench_end_to_end, device_info, load_avg_1m, make_checkpoint, make_slide
from wsiscan_bench.options import REPO
from wsiscan_bench.report import cell, ratio_cell


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000], help="slide sides in px at 0.25 um/px")
    ap.add_argument("--model", default="resnet18", help="architecture of the (random) benchmark checkpoint")
    ap.add_argument("--stride-px", type=int, nargs="+", default=[96], help="strides of the end-to-end runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per contender; the fastest is reported")
    ap.add_argument("--cache", type=Path, default=REPO / "bench-out" / "slides")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "bench-out" / "bench_predict.json")
    ap.add_argument("--naive-workers", type=int, default=2)
    ap.add_argument("--compare-src", type=Path, default=None, help="also run wsiscan predict from this source tree")
    args = ap.parse_args(argv)

    from wsiscan.config import runtime_versions
    from wsiscan.inference import select_device

    device = select_device(args.device)
    opts = BenchOptions(repeats=args.repeats, naive_workers=args.naive_workers,
                        compare_src=args.compare_src.resolve() if args.compare_src else None)
    args.cache.mkdir(parents=True, exist_ok=True)
    load_start = load_avg_1m()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        ckpt = make_checkpoint(args.model, work / f"{args.model}.pt")
        for size in args.sizes:
            slide = args.cache / f"bench-{size}.tif"
            if not slide.exists():
                t = time.perf_counter()
                make_slide.make_benchmark_slide(slide, width_px=size, height_px=size)
                print(f"made {slide} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for stride in args.stride_px:
                row = bench_end_to_end(slide, ckpt, stride, device, opts, work)
                rows.append({"slide": str(slide), "size_px": [size, size], "mpp": 0.25,
                             "file_mb": slide.stat().st_size / 2**20, **row})
    result = {"benchmark": "bench_predict", "device": device_info(device), "versions": runtime_versions(),
              "command": shlex.join([sys.executable, str(Path(__file__).resolve()), *argv]), "model": args.model,
              "repeats": args.repeats, "load_avg_1m": {"start": load_start, "end": load_avg_1m()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'slide px':>9} {'stride':>6} {'patches':>8} {'wsiscan s':>10} {'before s':>9} {'naive s':>8} "
          f"{'speed-up':>9} {'wsiscan RSS MB':>15} {'before RSS MB':>14} {'naive RSS MB':>13}")
    for r in rows:
        w, b, n = r["wsiscan"], r.get("before", {}), r["naive"]
        print(f"{r['size_px'][0]:>9} {r['stride_px']:>6} {r['n_patches']:>8} {cell(w['wall_s'], 10)} "
              f"{cell(b.get('wall_s'), 9)} {cell(n['wall_s'], 8)} {ratio_cell(r['ratio']['speedup_vs_naive'])} "
              f"{cell(w['peak_rss_mb'], 15, '.0f')} {cell(b.get('peak_rss_mb'), 14, '.0f')} "
              f"{cell(n['peak_rss_mb'], 13, '.0f')}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
