"""The whole run (run_bench: every section into one JSON-ready report) and the report as a table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from .environment import device_info, load_avg_1m
from .feed import bench_feed
from .inputs import benchmark_slide, make_checkpoint, smoke_slide
from .options import NOTES, SCHEMA_VERSION, BenchOptions, MiB
from .runner import _ratio, check_compare_src
from .stages import bench_decode, bench_end_to_end, bench_model, bench_tiling, bench_tissue


def run_bench(opts: BenchOptions, *, command: str) -> dict[str, Any]:
    """Every section of the benchmark; returns the JSON-ready report."""
    import tempfile

    from wsiscan.config import runtime_versions
    from wsiscan.inference import select_device
    from wsiscan.slide import open_slide

    load_start = load_avg_1m()
    device = select_device(opts.device)
    if opts.smoke:
        opts.repeats = min(opts.repeats, 1)
        opts.model_batches = min(opts.model_batches, 2)
        opts.model_seconds = 0.0
        opts.batch_size = opts.batch_size or 8
        opts.naive_max_tiles = min(opts.naive_max_tiles, 50)
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="wsiscan-bench-", dir=opts.work_dir)
    work = Path(tmp.name)
    try:
        generated = None
        if opts.slide is not None:
            slide = Path(opts.slide).resolve()
        elif opts.smoke:
            slide = smoke_slide(work)
        else:
            opts.progress(f"benchmark slide {opts.size} (generated once, then cached in {opts.cache_dir}) ...")
            slide, generated = benchmark_slide(opts.size, opts.cache_dir, seed=opts.seed)
        with open_slide(slide) as s:
            info = s.info
        with slide.open("rb") as fh:  # a warm page cache for every contender
            while fh.read(16 * MiB):
                pass
        report: dict[str, Any] = {
            "benchmark": "wsiscan-bench", "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "smoke": opts.smoke,
            "repeats": opts.repeats, "versions": runtime_versions(), "device": device_info(device),
            "load_avg_1m": {"start": load_start},
            "slide": {"path": str(slide), "dimensions_px": list(info.dimensions_px),
                      "mpp": info.mpp.mpp if info.mpp else None, "vendor": info.vendor,
                      "file_size_bytes": info.file_size_bytes, "generated": generated},
            "tiling": [], "feed": [], "decode": None, "tissue_mask": None, "model": [], "end_to_end": [],
            "compare_src": str(opts.compare_src) if opts.compare_src else None,
            "compare_src_package": str(check_compare_src(opts.compare_src)) if opts.compare_src else None,
            "notes": NOTES,
        }
        sections = report["section_seconds"] = {}
        if "tiling" not in opts.skip:
            opts.progress("tiling: wsiscan tile vs one read_region per patch ...")
            t = time.perf_counter()
            for stride in opts.strides_px:
                report["tiling"].append(bench_tiling(slide, stride, opts, work))
            sections["tiling"] = time.perf_counter() - t
        if "feed" not in opts.skip:
            opts.progress("feed rate: patches delivered to the device, model skipped ...")
            t = time.perf_counter()
            for stride in opts.strides_px:
                report["feed"].append(bench_feed(slide, stride, device, opts, work))
            sections["feed"] = time.perf_counter() - t
        if "decode" not in opts.skip:
            opts.progress("decode: OpenSlide vs raw TIFF tiles ...")
            t = time.perf_counter()
            report["decode"] = bench_decode(slide, opts)
            sections["decode"] = time.perf_counter() - t
        if "tissue" not in opts.skip:
            opts.progress("tissue mask ...")
            t = time.perf_counter()
            report["tissue_mask"] = bench_tissue(slide, opts)
            sections["tissue_mask"] = time.perf_counter() - t
        if "model" not in opts.skip:
            t = time.perf_counter()
            for arch in opts.archs:
                opts.progress(f"model only: {arch} ...")
                report["model"].append(bench_model(arch, device, opts))
            sections["model"] = time.perf_counter() - t
        if "e2e" not in opts.skip:
            t = time.perf_counter()
            ckpt = make_checkpoint(opts.archs[0], work / f"{opts.archs[0]}.pt")
            for stride in opts.strides_px:
                opts.progress(f"end to end: wsiscan predict vs naive pipeline, {opts.archs[0]}, stride {stride} px ...")
                report["end_to_end"].append(bench_end_to_end(slide, ckpt, stride, device, opts, work))
            sections["end_to_end"] = time.perf_counter() - t
    finally:
        tmp.cleanup()
    report["load_avg_1m"]["end"] = load_avg_1m()
    report["seconds"] = time.perf_counter() - t0
    report["peak_gpu_memory_mb"] = _max_of(report, "peak_gpu_memory_mb")
    report["peak_rss_mb"] = max((e["wsiscan"]["peak_rss_mb"] for e in report["end_to_end"]), default=None)
    return report


def _max_of(report: dict[str, Any], key: str) -> float | None:
    vals = [m["wsiscan"].get(key) for m in report["model"]] + [e["wsiscan"].get(key) for e in report["end_to_end"]]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def cell(value: float | None, width: int = 12, fmt: str = ".1f", missing: str = "-") -> str:
    """One right-aligned table cell of every benchmark table: ``missing`` when there is no figure."""
    return f"{value:>{width}{fmt}}" if value is not None else f"{missing:>{width}}"


def ratio_cell(ratio: float | None, width: int = 9) -> str:
    """A ratio cell: ``1.23x``, or ``-`` when either figure is missing."""
    return f"{ratio:>{width - 1}.2f}x" if ratio else f"{'-':>{width}}"


def format_table(r: dict[str, Any]) -> str:
    """The report as a readable table: each figure, its naive baseline and the ratio."""
    d, s = r["device"], r["slide"]
    cols = ["wsiscan", "before", "naive"] if r.get("compare_src") else ["wsiscan", "naive"]
    lines = [f"device: {d['name']} ({d['type']}, {d['cores_usable']} cores, {d['memory_gib']} GiB); 1-min load "
             f"{r['load_avg_1m']['start']} -> {r['load_avg_1m'].get('end')}; best of {r['repeats']}",
             f"slide: {Path(s['path']).name} {s['dimensions_px'][0]}x{s['dimensions_px'][1]} px at "
             f"{(s['mpp'] or 0):.4g} um/px", "",
             f"{'figure':<44}" + "".join(f"{c:>12}" for c in cols) + f"{'ratio':>9}"]

    def row(label: str, get: Callable[[dict], float | None], section: dict, ratio: float | None, fmt: str = ".1f"):
        cells = "".join(cell(get(section[c]) if c in section else None, 12, fmt) for c in cols)
        lines.append(f"{label:<44}{cells}{ratio_cell(ratio)}")

    for t in r.get("tiling") or []:
        lines.append(f"tiling, stride {t['stride_px']} px: {t['n_tiles']} tiles of {t['tile_size_px']} px, level "
                     f"{t['level_read']} ({'resampled' if t['resample'] else 'as-is'}), "
                     f"{t['chunks_needed']}/{t['chunks_total']} chunks, read by {t['wsiscan'].get('reader', '?')}")
        row("  tiles/s (tile_slide end to end)", lambda x: x["tiles_per_s"], t, t["ratio"]["tiles_per_s_vs_naive"], ".0f")
        row("  tiles/s (decode + store only)", lambda x: x.get("pixels_tiles_per_s", x["tiles_per_s"]), t,
            t["ratio"]["pixels_tiles_per_s_vs_naive"], ".0f")
        row("  decode MB/s (decode + store only)", lambda x: x.get("pixels_decoded_mb_per_s", x["decoded_mb_per_s"]),
            t, _ratio(t["wsiscan"]["pixels_decoded_mb_per_s"], t["naive"]["decoded_mb_per_s"]))
        row("  CPU s of the run, user+sys (least)", lambda x: x.get("cpu_s_min"), t, None, ".2f")
        row("  peak RSS MB", lambda x: x["peak_rss_mb"], t, None, ".0f")
    for f in r.get("feed") or []:
        lines.append(f"feed rate, stride {f['stride_px']} px: {f['n_patches']} patches decoded, cut and converted on "
                     f"{f['device']} by {f['workers']} decode threads, no model (planning {f['plan_s']:.1f} s apart)")
        lines.append(f"{'  patches/s delivered':<44}{f['patches_per_s']:>12.0f}")
        lines.append(f"{'  decode MB/s':<44}{f['decoded_mb_per_s']:>12.0f}")
    dc = r.get("decode")
    if dc:
        lines.append(f"decode only, {dc['n_chunks']} supertile chunks, one thread, nothing stored "
                     f"(columns: OpenSlide, raw tiles, raw + glass skip)")
        cells = "".join(cell(dc.get(k, {}).get("region_mb_per_s"), 12, ".0f")
                        for k in ("openslide", "raw", "raw_glass_skip"))
        lines.append(f"{'  region MB/s':<44}{cells}{ratio_cell(dc['ratio']['raw_glass_skip_vs_openslide'])}")
    tm = r.get("tissue_mask")
    if tm:
        row("tissue mask s", lambda x: x["seconds"], tm, tm["ratio"]["speedup_vs_naive"], ".2f")
    for m in r["model"]:
        w = m["wsiscan"]
        row(f"model {m['arch']} patches/s ({w['precision']}{', cl' if w['channels_last'] else ''}, bs {m['batch_size']})",
            lambda x: x["patches_per_s"], m, m["ratio"]["patches_per_s_vs_naive"], ".0f")
        row("  CPU s per 1,000 patches", lambda x: x["cpu_s_per_1k_patches"], m, None, ".2f")
    for e in r["end_to_end"]:
        lines.append(f"end to end, stride {e['stride_px']} px: {e['n_patches']} patches")
        row("  s/slide (speed-up)", lambda x: x["wall_s"], e, e["ratio"]["speedup_vs_naive"], ".2f")
        row("  patches/s", lambda x: x["patches_per_s"], e, e["ratio"]["speedup_vs_naive"], ".0f")
        row("  CPU s, user+sys (least of the runs)", lambda x: x.get("cpu_s_min"), e,
            e["ratio"].get("cpu_s_naive_over_wsiscan"), ".1f")
        row("  peak host RSS MB (wsiscan/naive)", lambda x: x["peak_rss_mb"], e, e["ratio"]["peak_rss_vs_naive"], ".0f")
        row("  GPU utilisation % (mean)", lambda x: x["gpu_utilisation_mean_percent"], e, None, ".0f")
        row("  peak GPU memory MB", lambda x: x["peak_gpu_memory_mb"], e, None, ".0f")
    lines.append("ratio: wsiscan over the naive baseline (rates and speed-ups: > 1 is better; RSS: < 1 is better)")
    return "\n".join(lines)
