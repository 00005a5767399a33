"""The threshold-dependent part of a result: regions, areas, tumor.geojson, overlay.png and
the summary's figures, made in one place so that ``predict`` and ``heatmap --threshold``
write the same things and summary.json never disagrees with the exports.

One vocabulary of areas (mm2), used by summary.json, the napari panel and the README:

- ``tissue_area_mm2``: the tissue mask (pen ink excluded);
- ``ink_area_mm2``: pen ink found on the thumbnail (never tissue);
- ``scored_area_mm2``: the heatmap cells of the scored tiles (at stride 96 the tiles
  themselves; at stride 32 their centre 32 x 32 px cells);
- ``scored_tissue_fraction``: the share of the tissue mask inside scored tiles;
- ``tumour_area_mm2``: the cells at or above the threshold;
- ``region_area_mm2``: the exported polygons (tumor.geojson, the overlay's and napari's outlines);
- ``dropped_area_mm2``: cells at or above the threshold in regions smaller than the minimum
  region (none by default), so ``tumour = region cells + dropped`` exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .heatmap import HeatmapFrame, geojson_collection, overlay_title, render_overlay, slide_scores, tumour_regions
from .layout import GEOJSON_NAME, OVERLAY_NAME, write_geojson_atomic
from .render import SMOKE_MODEL_MARK
from .rowimage import RowImage

__all__ = ["is_smoke_model", "area_summary", "threshold_outputs", "write_region_geojson", "SUMMARY_AREA_KEYS"]

SUMMARY_AREA_KEYS = ("tissue_area_mm2", "ink_area_mm2", "scored_area_mm2", "scored_tissue_fraction",
                     "tumour_area_mm2", "region_area_mm2", "dropped_area_mm2")


def is_smoke_model(models: list[dict[str, Any]]) -> bool:
    """Whether any model of a result (``LoadedModels.describe()`` entries) is the smoke-test ``tiny`` one."""
    return any((m.get("spec") or {}).get("arch") == "tiny" or m.get("model") == "wsiscan/tiny" for m in models)


def area_summary(cells: np.ndarray, frame: HeatmapFrame, regions: list[dict[str, Any]], *, threshold: float,
                 tissue_area_mm2: float | None, ink_area_mm2: float | None,
                 scored_tissue_fraction: float | None) -> dict[str, Any]:
    """The summary's ``areas`` block (see the module's vocabulary); counts are exact integers."""
    finite = np.isfinite(cells)
    n_scored = int(finite.sum())
    n_tumour = int((finite & (cells >= threshold)).sum())
    n_region = int(sum(r["n_cells"] for r in regions))
    cell_mm2 = frame.cell_um**2 / 1e6
    return {
        "threshold": threshold,
        "cell_area_mm2": cell_mm2,
        "tissue_area_mm2": tissue_area_mm2,
        "ink_area_mm2": ink_area_mm2,
        "scored_area_mm2": n_scored * cell_mm2,
        "scored_tissue_fraction": scored_tissue_fraction,
        "tumour_area_mm2": n_tumour * cell_mm2,
        "region_area_mm2": float(sum(r["area_mm2"] for r in regions)),
        "dropped_area_mm2": (n_tumour - n_region) * cell_mm2,
        "n_scored_cells": n_scored,
        "n_tumour_cells": n_tumour,
        "n_region_cells": n_region,
        "n_dropped_cells": n_tumour - n_region,
    }


def write_region_geojson(regions: list[dict[str, Any]], path: str | Path, *, slide_name: str, threshold: float,
                         smoke: bool) -> Path:
    """tumor.geojson (heatmap.geojson_collection, written atomically); for the smoke-test
    model (``smoke``) the collection carries a ``warning`` and each region's name says so
    (QuPath shows the names).  predict, ``heatmap`` and the napari export all write through here."""
    collection = geojson_collection(regions, slide_name=slide_name, threshold=threshold)
    if smoke:
        collection["properties"]["warning"] = SMOKE_MODEL_MARK
        for feature in collection["features"]:
            feature["properties"]["name"] = f"[smoke test, not a tumour classifier] {feature['properties']['name']}"
    return write_geojson_atomic(collection, path)


def threshold_outputs(slide_dir: Path, cells: np.ndarray, frame: HeatmapFrame, *, threshold: float, top_k: int,
                      min_region_area_um2: float, simplify_tolerance_um: float, slide_name: str,
                      models: list[dict[str, Any]], n_tiles: int, picture: RowImage | np.ndarray | None,
                      picture_mpp: float, tissue: dict[str, Any], geojson_name: str = GEOJSON_NAME,
                      overlay_name: str | None = OVERLAY_NAME, write_geojson_file: bool = True) -> dict[str, Any]:
    """Regions at ``threshold``; writes tumor.geojson and overlay.png (atomically, from the same
    polygons) and returns the summary's threshold-dependent blocks: ``scores``, ``regions``, ``areas``.

    ``tissue``: ``tissue_area_mm2``, ``ink_area_mm2`` and ``scored_tissue_fraction`` (which do
    not depend on the threshold).  ``picture`` None or ``overlay_name`` None: no overlay.
    """
    scores = slide_scores(cells, threshold=threshold, top_k=top_k, cell_um=frame.cell_um)
    regions = tumour_regions(cells, frame, threshold=threshold, min_area_um2=min_region_area_um2,
                             simplify_tolerance_um=simplify_tolerance_um)
    smoke = is_smoke_model(models)
    if write_geojson_file:
        write_region_geojson(regions, slide_dir / geojson_name, slide_name=slide_name, threshold=threshold,
                             smoke=smoke)
    if overlay_name is not None and picture is not None:
        title = overlay_title(slide_name=slide_name, model_names=[m["model"] for m in models], n_tiles=n_tiles,
                              tile_size_px=frame.tile_size_px, px_mpp=frame.px_mpp, stride_px=frame.stride_px,
                              max_probability=scores["max_probability"], threshold=threshold, n_regions=len(regions))
        render_overlay(picture, cells, frame, thumb_mpp=picture_mpp, threshold=threshold, title=title,
                       path=slide_dir / overlay_name, regions=regions,
                       mark=SMOKE_MODEL_MARK if smoke else None)
    areas = area_summary(cells, frame, regions, threshold=threshold, tissue_area_mm2=tissue.get("tissue_area_mm2"),
                         ink_area_mm2=tissue.get("ink_area_mm2"),
                         scored_tissue_fraction=tissue.get("scored_tissue_fraction"))
    return {
        "scores": scores,
        "regions": {"n": len(regions), "threshold": threshold, "min_region_area_um2": min_region_area_um2,
                    "simplify_tolerance_um": simplify_tolerance_um,
                    "top": [{k: r[k] for k in ("area_mm2", "mean_probability", "max_probability")}
                            for r in regions[:5]]},
        "areas": areas,
        "smoke_model": smoke,
    }


def class_regions_block(regions_block: dict[str, Any], class_regions: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's ``regions`` for a multi-class result: ``n`` and ``top`` count the regions of
    every class, as tumor.geojson holds them (``heatmap.export_class_regions``); the positive
    class's own count stays as ``n_positive_class`` (its area is in ``areas.region_area_mm2``)."""
    ranked = sorted(class_regions, key=lambda r: r["area_mm2"], reverse=True)
    return {**regions_block, "n": len(class_regions), "n_positive_class": regions_block["n"],
            "top": [{k: r[k] for k in ("class_name", "area_mm2", "mean_probability", "max_probability")}
                    for r in ranked[:5]]}
