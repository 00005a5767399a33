"""Feed rate: patches/s the streaming pipeline delivers to the device with the model skipped."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from .options import MB, BenchOptions
from .runner import _ratio


class _NoModel:
    """Stands in for the Ensemble: converts each batch to the model's input (float32,
    channels_last), as predict does, and returns one value per patch; no network runs."""

    fixed_shape = False

    def __init__(self, device: Any) -> None:
        self.device = device

    def score_uint8(self, x_u8):
        import torch

        x = x_u8.to(dtype=torch.float32, memory_format=torch.channels_last)
        return x[:, 0, 0, 0]


def bench_feed(slide: Path, stride_px: int, device: Any, opts: BenchOptions, work: Path) -> dict[str, Any]:
    """Plan once, then stream every unit to the device (decode, cut, convert) with the model skipped."""
    import shutil

    from wsiscan.config import load_config
    from wsiscan.decode import default_workers
    from wsiscan.inference import DeviceScorer, RegionRing, plan_units
    from wsiscan.scan import Pipeline, scan_slide, units_with_work
    from wsiscan.tiling import plan_tiling, prepare_store

    cfg = load_config().replace("tile", stride_px=stride_px)
    t = time.perf_counter()
    plan = plan_tiling(slide, cfg)
    plan_s = time.perf_counter() - t
    g = plan.grid
    uplan = plan_units(n_rows=g.n_rows, n_cols=g.n_cols, tile_size_px=g.tile_size_px, stride_px=g.stride_px,
                       supertile_px=plan.geometry.supertile_px)
    workers = opts.workers or default_workers()
    runs = []
    for _ in range(opts.repeats):
        path = work / f"feed-s{stride_px}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        store, _ = prepare_store(plan, path, overwrite=True)  # empty: every chunk is decoded
        units, tiles, per_chunk, _ = units_with_work(uplan, plan.kept_rc, lambda ci, cj: False)
        side = (uplan.tiles_per_unit - 1) * uplan.stride_px + uplan.tile_size_px
        ring = RegionRing((side, side, 3), n_slots=7, device=device)
        scorer = DeviceScorer(_NoModel(device), uplan, units, tiles, per_chunk,  # type: ignore[arg-type]
                              batch_size=opts.batch_size or 512, write_chunk=lambda ci, cj, data: None, ring=ring)
        pipe = Pipeline()
        t = time.perf_counter()
        stats = scan_slide(plan, store, workers=workers, keep_pixels=False, uplan=uplan, units=units,
                           consume=functools.partial(scorer.run, pipeline=pipe), region_buffer=ring, pipeline=pipe,
                           queue_units=4)
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t
        runs.append({"seconds": seconds, "n_patches": scorer.stats["tiles"], "patches_per_s": scorer.stats["tiles"] / seconds,
                     "decoded_mb_per_s": stats.decoded_bytes / MB / seconds, "chunks_decoded": stats.chunks_decoded,
                     "device_idle_s": scorer.stats["wait_s"]})
        shutil.rmtree(path, ignore_errors=True)
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs_seconds"] = [r["seconds"] for r in runs]
    return {"stride_px": stride_px, "workers": workers, "plan_s": plan_s, "device": str(device), **best,
            "reader": plan.pixel_reader, "ratio": {"vs_plan": _ratio(best["seconds"], plan_s)}}
