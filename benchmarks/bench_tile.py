"""Tiling throughput: wsiscan's supertile reads against one ``read_region`` per patch.

Times ``wsiscan.tiling.tile_slide`` on a slide (by default a 20,000 x 20,000 px
benchmark slide at 0.25 um/px made by make_slide.py, cached under bench-out/slides),
then the naive approach of many research scripts on the same kept tiles: one
OpenSlide ``read_region`` per patch at the level wsiscan reads, resampled to the patch
size with PIL's BOX filter (``wsiscan_bench.naive.read_patches``, the loop ``wsiscan
bench`` times too), in one process, and again split over the same number of worker
processes (to separate the read pattern from parallelism).  A naive run longer than
``--naive-max-tiles`` patches is timed on a contiguous row-major run of that many kept
tiles from a seeded random start (the order a full run reads them in, so OpenSlide's
tile cache helps it as much) and extrapolated.

    python benchmarks/bench_tile.py                      # 20k slide, one worker per core
    python benchmarks/bench_tile.py --slide my.svs --workers 8 --out bench-out/my.json

Writes JSON (device, versions, command, slide, figures, ratios) and prints a table.
``wsiscan bench`` measures tiling the same way beside the model and the whole pipeline;
this script adds the parallel naive run and extrapolation notes.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from wsiscan_bench import PeakRss, make_slide
from wsiscan_bench import device_info as library_device_info
from wsiscan_bench.naive import read_patches
from wsiscan_bench.options import REPO, MiB
from wsiscan_bench.report import cell

# -- measurement --------------------------------------------------------------------


def device_info() -> dict[str, Any]:
    """wsiscan_bench's device description plus the load average before any work."""
    # other work on the machine skews timings
    return {**library_device_info(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


def warm_page_cache(path: Path) -> None:
    """Read the file once so that both contenders start from the same (warm) page cache."""
    with path.open("rb") as fh:
        while fh.read(16 * MiB):
            pass


# -- the naive baseline -----------------------------------------------------------------


def run_naive(slide_path: Path, l0_xy: np.ndarray, *, level: int, read_px: int, patch_px: int,
              workers: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with PeakRss() as rss:
        if workers <= 1:
            read_patches(str(slide_path), l0_xy, level, read_px, patch_px)
        else:  # each worker its own handle and a contiguous share of the tiles
            parts = [p for p in np.array_split(l0_xy, workers) if len(p)]
            with mp.get_context("spawn").Pool(len(parts)) as pool:
                pool.starmap(read_patches, [(str(slide_path), p, level, read_px, patch_px) for p in parts])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mib": rss.peak_bytes / MiB, "start_rss_mib": rss.start_bytes / MiB}


def naive_subset(n_tiles: int, max_tiles: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    if n_tiles <= max_tiles:
        return np.arange(n_tiles), {"method": "all kept tiles", "n_timed": n_tiles}
    start = int(np.random.default_rng(seed).integers(0, n_tiles - max_tiles + 1))
    return np.arange(start, start + max_tiles), {
        "method": "contiguous row-major run of kept tiles from a seeded random start; rates extrapolated to all tiles",
        "n_timed": max_tiles, "start_index": start, "seed": seed,
    }


# -- the benchmark -----------------------------------------------------------------------


def _rates(n_tiles: int, seconds: float, decoded_bytes: float, patch_bytes: float) -> dict[str, float]:
    return {
        "tiles_per_s": n_tiles / seconds,
        "decoded_mb_per_s": decoded_bytes / seconds / 1e6,
        "patch_mb_per_s": patch_bytes / seconds / 1e6,
    }


def run_benchmark(slide_path: Path, *, work_dir: Path, config_path: Path | None, workers: int, naive_workers: int,
                  naive_max_tiles: int, seed: int, repeats: int = 1) -> dict[str, Any]:
    from wsiscan.config import load_config
    from wsiscan.slide import open_slide
    from wsiscan.tiling import tile_slide

    config = load_config(config_path)
    with open_slide(slide_path) as slide:
        info = slide.info
    warm_page_cache(slide_path)

    # wsiscan: plan + supertile decode in worker threads + grid + QC image, end to end; the fastest of the repeats
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with PeakRss() as rss:
            result = tile_slide(slide_path, work_dir, config, overwrite=True, progress=False, workers=workers)
        runs.append((time.perf_counter() - t0, result, rss))
    wall, result, _ = min(runs, key=lambda r: r[0])
    peak_rss = max(r[2].peak_bytes for r in runs)
    start_rss = min(r[2].start_bytes for r in runs)
    plan = result.plan
    sel = plan.selection
    patch_px = plan.grid.tile_size_px
    patch_bytes = patch_px * patch_px * 3
    n = result.n_tiles
    pixels_s = result.timings_s["pixels_s"]
    ws = {
        "workers": workers,
        "n_tiles": n,
        "n_chunks_written": result.n_chunks_written,
        "decoded_bytes": result.decoded_bytes,
        "seconds": wall,
        "pixels_seconds": pixels_s,
        "runs_seconds": [r[0] for r in runs],
        "runs_pixels_seconds": [r[1].timings_s["pixels_s"] for r in runs],
        **_rates(n, wall, result.decoded_bytes, n * patch_bytes),
        "pixels_only": _rates(n, pixels_s, result.decoded_bytes, n * patch_bytes),
        "peak_rss_mib": peak_rss / MiB,
        "start_rss_mib": start_rss / MiB,
        "timings_s": result.timings_s,
        "store": str(result.store_path),
        "qc_png": str(result.qc_path),
    }

    # naive: the same kept tiles, one read_region each at the level wsiscan reads
    read_px = int(math.ceil(patch_px * sel.lv_per_px - 1e-9))
    idx, subset = naive_subset(n, naive_max_tiles, seed)
    l0_xy = plan.l0_xy()[idx]
    m = len(idx)
    naive_runs = {}
    for key, w in (("naive", 1), ("naive_parallel", naive_workers)):
        if key == "naive_parallel" and w <= 1:
            naive_runs[key] = None
            continue
        tries = [run_naive(slide_path, l0_xy, level=sel.level, read_px=read_px, patch_px=patch_px, workers=w)
                 for _ in range(repeats)]
        run = min(tries, key=lambda r: r["seconds"])
        decoded = m * read_px * read_px * 3
        rates = _rates(m, run["seconds"], decoded, m * patch_bytes)
        naive_runs[key] = {
            "workers": w,
            "n_tiles": n,
            "n_tiles_timed": m,
            "subset": subset,
            "read_px": read_px,
            "seconds_timed": run["seconds"],
            "runs_seconds_timed": [r["seconds"] for r in tries],
            "seconds": n / rates["tiles_per_s"],  # for all kept tiles (extrapolated when a subset was timed)
            "extrapolated": m < n,
            "decoded_bytes": n * read_px * read_px * 3,
            **rates,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in tries),
            "start_rss_mib": min(r["start_rss_mib"] for r in tries),
        }

    naive = naive_runs["naive"]
    par = naive_runs["naive_parallel"]
    ratio = {
        "tiles_per_s_vs_naive": ws["tiles_per_s"] / naive["tiles_per_s"],
        "pixels_only_tiles_per_s_vs_naive": ws["pixels_only"]["tiles_per_s"] / naive["tiles_per_s"],
        "tiles_per_s_vs_naive_parallel": ws["tiles_per_s"] / par["tiles_per_s"] if par else None,
        "pixels_only_tiles_per_s_vs_naive_parallel": ws["pixels_only"]["tiles_per_s"] / par["tiles_per_s"] if par else None,
        # how many more pixels wsiscan decodes than one read per kept tile (whole supertiles near tissue)
        "decoded_bytes_vs_naive": ws["decoded_bytes"] / naive["decoded_bytes"],
    }
    return {
        "slide": {
            "path": str(slide_path),
            "vendor": info.vendor,
            "dimensions_px": list(info.dimensions_px),
            "mpp": info.mpp.mpp if info.mpp else None,
            "mpp_source": info.mpp.source if info.mpp else None,
            "file_size_bytes": info.file_size_bytes,
            "levels": [{"dimensions_px": list(lv.dimensions_px), "downsample": lv.downsample, "mpp": lv.mpp}
                       for lv in info.levels],
        },
        "tiling": {
            "target_mpp": config.tile.target_mpp,
            "tile_size_px": patch_px,
            "stride_px": plan.grid.stride_px,
            "supertile_px": config.tile.supertile_px,
            "level_read": sel.level,
            "level_mpp": sel.level_mpp,
            "effective_mpp": sel.effective_mpp,
            "lv_per_px": sel.lv_per_px,
            "resample": sel.resample,
            "grid_tiles": plan.grid.n_tiles,
            "kept_tiles": n,
        },
        "wsiscan": ws,
        "naive": naive,
        "naive_parallel": par,
        "ratio": ratio,
        "notes": [
            "seconds of wsiscan are tile_slide end to end (open, thumbnail, tissue mask, decode + store write, "
            "grid, QC PNG); pixels_only is the decode + store write step alone",
            "naive seconds cover only the read_region loop (the tiles are given to it), worker start-up included",
            "decoded bytes: RGB bytes of the regions requested at the level read (wsiscan reads whole supertiles near "
            "tissue, naive reads one patch per tile); patch_mb_per_s counts the output patches only",
            "the slide file was read once before timing (warm page cache for both)",
            "with --repeats N each contender runs N times and the fastest run is reported; peak RSS is the "
            "largest of the runs (RSS of this process plus its children, summed, sampled every 20 ms; pages "
            "shared between processes count once per process)",
        ],
    }


def format_table(report: dict[str, Any]) -> str:
    s, t, d = report["slide"], report["tiling"], report["device"]
    lines = [
        f"device: {d['cpu_model']}, {d['cores_usable']} usable cores, {d['memory_gib']} GiB "
        f"(1-min load {d['load_avg_1m_at_start']} at start); best of {report['repeats']} run(s) each",
        f"slide: {Path(s['path']).name}  {s['dimensions_px'][0]}x{s['dimensions_px'][1]} px at {s['mpp']:.4g} um/px, "
        f"{s['vendor']}, {s['file_size_bytes'] / MiB:.1f} MiB",
        f"tiling: {t['kept_tiles']} of {t['grid_tiles']} tiles of {t['tile_size_px']} px at {t['effective_mpp']:.4g} um/px "
        f"from level {t['level_read']} ({t['level_mpp']:.4g} um/px, {'resampled' if t['resample'] else 'read as-is'})",
        "",
        f"{'run':<34}{'tiles':>8}{'seconds':>10}{'tiles/s':>10}{'MB/s dec':>10}{'MB/s out':>10}{'peak RSS MiB':>14}",
    ]

    def row(name: str, n: int, sec: float, r: dict[str, float], rss: float | None, mark: str = "") -> None:
        lines.append(f"{name:<34}{n:>8}{cell(sec, 10, '.2f')}{cell(r['tiles_per_s'], 10, '.0f')}"
                     f"{cell(r['decoded_mb_per_s'], 10)}{cell(r['patch_mb_per_s'], 10)}{cell(rss, 14, '.0f', '')}{mark}")

    ws = report["wsiscan"]
    row(f"wsiscan tile_slide x{ws['workers']} (end to end)", ws["n_tiles"], ws["seconds"], ws, ws["peak_rss_mib"])
    row("  decode + store write only", ws["n_tiles"], ws["pixels_seconds"], ws["pixels_only"], None)
    for key in ("naive", "naive_parallel"):
        nv = report[key]
        if nv is None:
            continue
        mark = " *" if nv["extrapolated"] else ""
        row(f"naive read_region x{nv['workers']}", nv["n_tiles_timed"], nv["seconds_timed"], nv, nv["peak_rss_mib"], mark)
    r = report["ratio"]
    lines.append("")
    lines.append(f"wsiscan / naive x1 tiles/s: {r['tiles_per_s_vs_naive']:.2f}x end to end, "
                 f"{r['pixels_only_tiles_per_s_vs_naive']:.2f}x decode only")
    if r["tiles_per_s_vs_naive_parallel"] is not None:
        lines.append(f"wsiscan / naive x{report['naive_parallel']['workers']} tiles/s: "
                     f"{r['tiles_per_s_vs_naive_parallel']:.2f}x end to end, "
                     f"{r['pixels_only_tiles_per_s_vs_naive_parallel']:.2f}x decode only")
    lines.append(f"wsiscan decodes {r['decoded_bytes_vs_naive']:.2f}x the pixels of one read per kept tile "
                 f"({report['wsiscan']['n_chunks_written']} supertiles of {t['supertile_px']} px)")
    if report["naive"]["extrapolated"]:
        nv = report["naive"]
        lines.append(f"* timed on {nv['n_tiles_timed']} of {nv['n_tiles']} tiles (contiguous row-major run); "
                     f"all {nv['n_tiles']} would take about {nv['seconds']:.0f} s at x1")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from wsiscan.config import runtime_versions
    from wsiscan.decode import default_workers

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide", type=Path, help="slide to tile (default: a generated benchmark slide of --size)")
    p.add_argument("--size", choices=sorted(make_slide.PRESETS), default="20k", help="generated slide preset (default 20k)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated slide and the naive subset (default 0)")
    p.add_argument("--cache-dir", type=Path, default=REPO / "bench-out" / "slides", help="where generated slides are kept")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench-out" / "work", help="where wsiscan writes its store")
    p.add_argument("--config", type=Path, default=None, help="wsiscan config YAML (default: packaged defaults)")
    p.add_argument("--workers", type=int, default=None, help="wsiscan decode threads (default: one per core, at most 8)")
    p.add_argument("--naive-workers", type=int, default=None,
                   help="processes for the parallel naive run (default: --workers; 0 or 1 skips it)")
    p.add_argument("--naive-max-tiles", type=int, default=2000,
                   help="time the naive runs on at most this many tiles and extrapolate (default 2000)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each contender; the fastest is reported (default 1)")
    p.add_argument("--out", type=Path, default=REPO / "bench-out" / "bench_tile.json", help="JSON report path")
    args = p.parse_args(argv)
    device = device_info()  # before any work: its load average tells what else was running
    workers = args.workers or default_workers()
    naive_workers = workers if args.naive_workers is None else args.naive_workers

    generated = None
    slide_path = args.slide
    if slide_path is None:
        w, h = make_slide.PRESETS[args.size]
        slide_path = args.cache_dir / f"bench-{args.size}-seed{args.seed}.tif"
        if not slide_path.exists():
            print(f"generating {slide_path} ({w}x{h} px) ...", flush=True)
            generated = make_slide.make_benchmark_slide(slide_path, width_px=w, height_px=h, seed=args.seed)
            print(f"  {generated['seconds']:.1f} s, {generated['file_size_bytes'] / MiB:.1f} MiB", flush=True)
    report = run_benchmark(slide_path.resolve(), work_dir=args.work_dir, config_path=args.config, workers=workers,
                           naive_workers=naive_workers, naive_max_tiles=args.naive_max_tiles, seed=args.seed,
                           repeats=max(1, args.repeats))
    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {
        "benchmark": "tile",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device,
        "versions": runtime_versions(),
        "command": shlex.join([sys.executable, str(Path(__file__).resolve()), *argv]),
        "repeats": max(1, args.repeats),
        **report,
        "generated_slide": generated,
        # the kernel's peak for this process alone (KiB on Linux), a check on the sampled peaks; the
        # children's figure is left out: on Linux it counts the parent's pages at fork time
        "ru_maxrss_self_mib": ru_self / 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
