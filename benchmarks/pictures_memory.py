"""Peak memory and CPU seconds of write_qc and of render_overlay on one slide.

    python benchmarks/pictures_memory.py SLIDE RESULT_DIR OUT_DIR {array|rows}

RESULT_DIR: a finished predict result of SLIDE (its store's heatmap and summary.json are used).
array: the plan's pictures held whole in memory (as before predict kept them in RowImages);
rows: each in a file-backed RowImage, even when small (what predict does with a large slide's).  Before each call the peak RSS is reset
(/proc/self/clear_refs 5, Linux) after gc and malloc_trim; VmHWM after the call minus VmRSS
before it is what the call added.  REPEAT=n measures each call n times.  Writes qc.png and
overlay.png into OUT_DIR (compare them with RESULT_DIR's: the same bytes).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def settle() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def measure(label: str, fn, *args, **kwargs):
    import os

    for _ in range(int(os.environ.get("REPEAT", "1")) - 1):  # earlier rounds, printed too
        _measure_once(label, fn, *args, **kwargs)
    return _measure_once(label, fn, *args, **kwargs)


def _measure_once(label: str, fn, *args, **kwargs):
    settle()
    rss0 = status_kb("VmRSS")
    hwm0 = status_kb("VmHWM")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fn(*args, **kwargs)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    hwm = status_kb("VmHWM")
    print(json.dumps({"call": label, "rss_before_mb": round(rss0 / 1024, 1), "hwm_reset_mb": round(hwm0 / 1024, 1),
                      "peak_mb": round(hwm / 1024, 1), "added_mb": round((hwm - rss0) / 1024, 1),
                      "cpu_s": round(cpu, 3), "wall_s": round(wall, 3)}), flush=True)
    return result


def main() -> None:
    slide, result_dir, out_dir, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    out_dir.mkdir(parents=True, exist_ok=True)
    import wsiscan
    from wsiscan import results
    from wsiscan.config import load_config
    from wsiscan.heatmap import HeatmapFrame, scored_cells
    from wsiscan.qc import overview_picture, write_qc
    from wsiscan.records import read_summary
    from wsiscan.store import open_tile_store
    from wsiscan.tiling import plan_tiling

    print("wsiscan from", wsiscan.__file__, file=sys.stderr)
    summary = json.loads((result_dir / "summary.json").read_text())
    config = load_config()
    config = config.replace("tile", **{k: summary["config"]["tile"][k] for k in ("target_mpp", "stride_px")})
    if summary["config"]["slide"].get("slide_mpp") is not None:
        config = config.replace("slide", slide_mpp=summary["config"]["slide"]["slide_mpp"])
    plan = plan_tiling(slide, config)
    tissue_figures = {"tissue_area_mm2": plan.tissue.tissue_area_um2 / 1e6,
                      "ink_area_mm2": plan.tissue.ink_area_um2 / 1e6,
                      "scored_tissue_fraction": plan.scored_tissue_fraction}
    from wsiscan.rowimage import RowImage

    def converted(image):
        """The plan's picture as a RowImage in memory (array) or in a file even when small (rows)."""
        if image is None:
            return None
        whole = image.to_array()
        return RowImage.wrap(whole) if mode == "array" else RowImage.from_array(whole, ram_limit_bytes=0)

    same = plan.overview is plan.thumbnail
    thumbnail = converted(plan.thumbnail)
    tissue = dataclasses.replace(plan.tissue, mask=converted(plan.tissue.mask), ink=converted(plan.tissue.ink))
    plan = dataclasses.replace(plan, thumbnail=thumbnail, tissue=tissue,
                               overview=thumbnail if same else plan.overview,
                               unscored_tissue=converted(plan.unscored_tissue))
    gc.collect()
    print("inputs:", plan.thumbnail, plan.tissue.mask, plan.tissue.ink, plan.unscored_tissue, file=sys.stderr)

    measure("write_qc", write_qc, plan, out_dir / "qc.png")

    store = open_tile_store(result_dir / "store.zarr", mode="r")
    frame = HeatmapFrame.from_meta(store.heatmap_meta())
    cells = scored_cells(store)
    pc = config.predict
    rec = read_summary(result_dir / "summary.json")
    picture, picture_mpp = overview_picture(plan)
    inner = results.render_overlay

    def timed_render_overlay(*args, **kwargs):
        return measure("render_overlay", inner, *args, **kwargs)

    results.render_overlay = timed_render_overlay
    results.threshold_outputs(out_dir, cells, frame, threshold=pc.threshold, top_k=pc.top_k,
                              min_region_area_um2=pc.min_region_area_um2,
                              simplify_tolerance_um=pc.simplify_tolerance_um, slide_name=plan.slide_path.name,
                              models=[dict(m) for m in rec.models], n_tiles=plan.n_tiles, picture=picture,
                              picture_mpp=picture_mpp, tissue=tissue_figures)


if __name__ == "__main__":
    main()
