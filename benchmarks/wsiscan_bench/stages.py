"""The benchmark's sections: tiling, tissue mask, model only and end to end, each against its naive baseline."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .options import MB, BenchOptions, MiB
from .runner import _best, _child_cmd, _interleave, _ratio, _run_child, _wsiscan_predict, _wsiscan_tile
from .sampling import GpuSampler


def bench_tiling(slide: Path, stride_px: int, opts: BenchOptions, work: Path) -> dict[str, Any]:
    """wsiscan tile (and the --compare-src tree) against one read per kept patch, at one stride.

    wsiscan decodes the pixels near tissue once whatever the stride; one read per patch
    reads (tile / stride)^2 times as many patches at a finer stride.
    """
    from wsiscan.config import load_config
    from wsiscan.tiling import plan_tiling

    plan = plan_tiling(slide, load_config().replace("tile", stride_px=stride_px))
    sel, n = plan.selection, plan.n_tiles
    patch_px = plan.grid.tile_size_px
    read_px = int(math.ceil(patch_px * sel.lv_per_px - 1e-9))
    m = min(n, opts.naive_max_tiles)
    start = int(np.random.default_rng(opts.seed).integers(0, n - m + 1))
    np.save(work / "l0_xy.npy", plan.l0_xy()[start : start + m])  # a contiguous row-major run: the order of a full run
    naive_args = {"slide": str(slide), "l0_xy_path": str(work / "l0_xy.npy"), "level": sel.level, "read_px": read_px,
                  "patch_px": patch_px, "result_path": str(work / "naive-tiles.json")}

    def naive() -> dict[str, Any]:
        run = _run_child(_child_cmd("naive-tiles", naive_args, work))
        res = json.loads((work / "naive-tiles.json").read_text())
        return {"seconds_timed": res["seconds"], "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                "peak_rss_mb": run["peak_rss_mb"]}

    contenders: dict[str, Callable] = {"wsiscan": lambda: _wsiscan_tile(slide, work / "tile", stride_px=stride_px,
                                                                        workers=opts.workers, src=None)}
    if opts.compare_src:
        contenders["before"] = lambda: _wsiscan_tile(slide, work / "tile-before", stride_px=stride_px,
                                                     workers=opts.workers, src=opts.compare_src)
    contenders["naive"] = naive
    key = {"wsiscan": "seconds", "before": "seconds", "naive": "seconds_timed"}
    runs: dict[str, list] = {k: [] for k in contenders}
    for _ in range(opts.repeats):
        for name, fn in contenders.items():
            runs[name].append(fn())
    best = {name: _best(r, key[name]) for name, r in runs.items()}
    out: dict[str, Any] = {"n_tiles": n, "tile_size_px": patch_px, "stride_px": plan.grid.stride_px,
                           "level_read": sel.level, "level_mpp": sel.level_mpp, "effective_mpp": sel.effective_mpp,
                           "resample": sel.resample, "supertile_px": plan.geometry.supertile_px,
                           "chunks_needed": int(plan.chunks_needed.sum()),
                           "chunks_total": int(plan.chunks_needed.size)}
    for name in ("wsiscan", "before"):
        if name not in best:
            continue
        b = best[name]
        b.update(tiles_per_s=n / b["seconds"], decoded_mb_per_s=b["decoded_bytes"] / b["seconds"] / MB,
                 pixels_tiles_per_s=n / b["pixels_seconds"],
                 pixels_decoded_mb_per_s=b["decoded_bytes"] / b["pixels_seconds"] / MB)
        out[name] = b
    nv = best["naive"]
    rate = m / nv["seconds_timed"]
    nv.update(n_tiles=n, n_tiles_timed=m, extrapolated=m < n, read_px=read_px, seconds=n / rate, tiles_per_s=rate,
              decoded_bytes=n * read_px * read_px * 3, decoded_mb_per_s=rate * read_px * read_px * 3 / MB)
    out["naive"] = nv
    ws = out["wsiscan"]
    out["ratio"] = {
        "tiles_per_s_vs_naive": _ratio(ws["tiles_per_s"], nv["tiles_per_s"]),
        "pixels_tiles_per_s_vs_naive": _ratio(ws["pixels_tiles_per_s"], nv["tiles_per_s"]),
        "decoded_bytes_vs_naive": _ratio(ws["decoded_bytes"], nv["decoded_bytes"]),
        "tiles_per_s_vs_before": _ratio(ws["tiles_per_s"], out["before"]["tiles_per_s"]) if "before" in out else None,
        "pixels_tiles_per_s_vs_before": (_ratio(ws["pixels_tiles_per_s"], out["before"]["pixels_tiles_per_s"])
                                         if "before" in out else None),
    }
    return out


DECODE_MAX_CHUNKS = 200  # supertile chunks timed per decode contender (the first needed ones, row-major)


def bench_decode(slide: Path, opts: BenchOptions) -> dict[str, Any]:
    """Reading the needed supertile chunks, nothing stored, in one thread: OpenSlide's
    ``read_region`` against the raw TIFF tile reader, without and with the glass skip."""
    from wsiscan.config import load_config
    from wsiscan.slide import open_slide
    from wsiscan.tiling import plan_tiling

    plan = plan_tiling(slide, load_config())
    sel, geo = plan.selection, plan.geometry
    chunks = [tuple(map(int, ij)) for ij in np.argwhere(plan.chunks_needed)][:DECODE_MAX_CHUNKS]
    keep = plan.glass_tile_keep()

    def contender(reader: str, tile_keep: np.ndarray | None) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            with open_slide(slide, reader=reader) as s:
                t0 = time.perf_counter()
                region_bytes = 0
                for ci, cj in chunks:
                    x0, y0, x1, y1 = geo.chunk_box_px(ci, cj)
                    f = sel.lv_per_px
                    s.read_resampled(level=sel.level, lv_box=(x0 * f, y0 * f, x1 * f, y1 * f),
                                     out_size_px=(x1 - x0, y1 - y0), tile_keep=tile_keep)
                    region_bytes += (x1 - x0) * (y1 - y0) * 3
                dt = time.perf_counter() - t0
                decoded = sum(s.decoded_px.values()) * 3
                return {"seconds": dt, "reader": s.reader_for(sel.level), "region_mb_per_s": region_bytes / dt / MB,
                        "decoded_mb": decoded / MB, "decoded_mb_per_s": decoded / dt / MB,
                        "chunks_per_s": len(chunks) / dt}
        return run

    contenders = {"openslide": contender("openslide", None), "raw": contender("auto", None)}
    if keep is not None:
        contenders["raw_glass_skip"] = contender("auto", keep)
    best = _interleave(contenders, opts.repeats, "seconds")
    with open_slide(slide) as s:
        why = s.why_openslide(sel.level) or None
    best.update(n_chunks=len(chunks), chunks_needed=int(plan.chunks_needed.sum()), level_read=sel.level,
                resample=sel.resample, why_openslide=why)
    fastest = best.get("raw_glass_skip", best["raw"])
    best["ratio"] = {"raw_vs_openslide": _ratio(best["openslide"]["seconds"], best["raw"]["seconds"]),
                     "raw_glass_skip_vs_openslide": _ratio(best["openslide"]["seconds"], fastest["seconds"])}
    return best


def bench_tissue(slide: Path, opts: BenchOptions) -> dict[str, Any]:
    """wsiscan's thumbnail + mask against one read of the whole level + PIL resize + the same mask."""
    from PIL import Image

    from wsiscan.config import load_config
    from wsiscan.slide import open_slide
    from wsiscan.tissue import detect_tissue

    cfg = load_config().tissue

    def ours() -> dict[str, Any]:
        t0 = time.perf_counter()
        with open_slide(slide) as s:
            thumb = s.read_thumbnail(mpp=cfg.mask_mpp)
        mask = detect_tissue(thumb, mask_mpp=cfg.mask_mpp, config=cfg)
        return {"seconds": time.perf_counter() - t0, "shape": list(mask.mask.shape)}

    def naive() -> dict[str, Any]:
        t0 = time.perf_counter()
        with open_slide(slide) as s:
            base = s.require_mpp().mpp
            level = s.level_for_mpp(cfg.mask_mpp, tolerance=0.0)
            lw, lh = s.info.levels[level].dimensions_px
            whole = s.read_level(level=level, lv_xy=(0, 0), size_px=(lw, lh))
            w0, h0 = s.info.dimensions_px
        size = (max(1, math.ceil(w0 * base / cfg.mask_mpp)), max(1, math.ceil(h0 * base / cfg.mask_mpp)))
        thumb = np.asarray(Image.fromarray(whole).resize(size, Image.Resampling.BOX))
        mask = detect_tissue(thumb, mask_mpp=cfg.mask_mpp, config=cfg)
        return {"seconds": time.perf_counter() - t0, "shape": list(mask.mask.shape)}

    best = _interleave({"wsiscan": ours, "naive": naive}, opts.repeats, "seconds")
    best["ratio"] = {"speedup_vs_naive": _ratio(best["naive"]["seconds"], best["wsiscan"]["seconds"])}
    return best


def bench_model(arch: str, device: Any, opts: BenchOptions) -> dict[str, Any]:
    """Patches/s of the network as predict runs it against plain fp32 NCHW, same weights and device."""
    import torch

    from wsiscan.inference import Ensemble, default_batch_size, resolve_precision
    from wsiscan.models import ModelSpec, build_model, normalise

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, name=f"random {arch} (benchmark)")
    model = build_model(spec).eval()
    autocast = resolve_precision(opts.precision, device)
    bs = opts.batch_size or default_batch_size(device)
    ens = Ensemble([copy.deepcopy(model)], [spec], device, autocast_dtype=autocast, tta=False, compile=opts.compile)
    plain = copy.deepcopy(model).to(device).eval()
    x = torch.rand(bs, 3, spec.patch_size_px, spec.patch_size_px, device=device)
    x_ens = x.contiguous(memory_format=torch.channels_last) if ens.channels_last else x
    cuda = device.type == "cuda"

    def baseline(inp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(plain(normalise(inp, spec)), dim=1)[:, spec.positive_class]

    def timed(fn: Callable, inp: torch.Tensor) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            gpu = GpuSampler(device.index or 0, enabled=cuda)
            for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN algorithm choice
                fn(inp)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            with gpu:
                c0, t0 = time.process_time(), time.perf_counter()
                n_batches = 0
                while n_batches < opts.model_batches or time.perf_counter() - t0 < opts.model_seconds:
                    fn(inp)
                    n_batches += 1
                    if cuda and n_batches % 50 == 0:  # the clock must see the device's work, not the queue
                        torch.cuda.synchronize(device)
                if cuda:
                    torch.cuda.synchronize(device)
                seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            n = n_batches * bs
            return {"seconds": seconds, "cpu_s": cpu_s, "n_patches": n, "patches_per_s": n / seconds,
                    "cpu_s_per_1k_patches": 1000 * cpu_s / n, "gpu": gpu.result(),
                    "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / MiB if cuda else None}
        return run

    best = _interleave({"wsiscan": timed(ens, x_ens), "naive": timed(baseline, x)}, opts.repeats, "seconds")
    precision = str(autocast or "fp32").replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16")
    best["wsiscan"].update(precision=precision, channels_last=ens.channels_last, compile=opts.compile)
    best["naive"].update(precision="fp32", channels_last=False, compile=False)
    return {"arch": arch, "batch_size": bs, "patch_size_px": spec.patch_size_px, **best,
            "ratio": {"patches_per_s_vs_naive": _ratio(best["wsiscan"]["patches_per_s"],
                                                       best["naive"]["patches_per_s"])}}


def bench_end_to_end(slide: Path, ckpt: Path, stride_px: int, device: Any, opts: BenchOptions,
                     work: Path) -> dict[str, Any]:
    """wsiscan predict (and the --compare-src tree) against the naive pipeline, from start to outputs."""
    cuda = device.type == "cuda"
    dev = str(device)
    index = device.index or 0
    naive_args = {"slide": str(slide), "ckpt": str(ckpt), "stride_px": stride_px, "device": dev,
                  "workers": opts.naive_workers, "batch_size": opts.naive_batch_size,
                  "result_path": str(work / "naive-predict.json")}

    def naive() -> dict[str, Any]:
        gpu = GpuSampler(index, enabled=cuda)
        run = _run_child(_child_cmd("naive-predict", naive_args, work), gpu=gpu)
        res = json.loads((work / "naive-predict.json").read_text())
        return {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "n_patches": res["n_patches"],
                "peak_rss_mb": run["peak_rss_mb"],
                "gpu": gpu.result(), "workers": opts.naive_workers, "batch_size": opts.naive_batch_size}

    def ours(src: Path | None, name: str) -> Callable[[], dict[str, Any]]:
        return lambda: _wsiscan_predict(slide, work / name, ckpt, stride_px=stride_px, device=dev,
                                        precision=opts.precision, batch_size=opts.batch_size, workers=opts.workers, src=src,
                                        gpu=GpuSampler(index, enabled=cuda))

    contenders: dict[str, Callable] = {"wsiscan": ours(None, "predict")}
    if opts.compare_src:
        contenders["before"] = ours(opts.compare_src, "predict-before")
    contenders["naive"] = naive
    best = _interleave(contenders, opts.repeats, "wall_s")
    for b in best.values():
        b.update(s_per_slide=b["wall_s"], patches_per_s=b["n_patches"] / b["wall_s"],
                 gpu_utilisation_mean_percent=(b["gpu"] or {}).get("utilisation_mean_percent"),
                 peak_gpu_memory_mb=(b["gpu"] or {}).get("memory_peak_mb"))
    ws, nv = best["wsiscan"], best["naive"]
    out = {"stride_px": stride_px, "n_patches": ws["n_patches"], **best}
    out["ratio"] = {"speedup_vs_naive": _ratio(nv["wall_s"], ws["wall_s"]),
                    "cpu_s_naive_over_wsiscan": _ratio(nv.get("cpu_s_min"), ws.get("cpu_s_min")),
                    "peak_rss_vs_naive": _ratio(ws["peak_rss_mb"], nv["peak_rss_mb"]),
                    "speedup_vs_before": _ratio(best["before"]["wall_s"], ws["wall_s"]) if "before" in best else None,
                    "peak_rss_vs_before": (_ratio(ws["peak_rss_mb"], best["before"]["peak_rss_mb"])
                                           if "before" in best else None)}
    return out
