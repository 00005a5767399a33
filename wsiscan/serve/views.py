"""What the viewer of one slide needs, opened once and kept: tile generators, heatmap cells, regions.

A :class:`SlideView` is cached per slide (a few at a time, least recently used first out)
and reopened when the result's ``summary.json`` changes, so a rerun of ``predict``
while the server runs is picked up.  Keeping the slide open is what makes a tile fast:
opening a slide costs more than serving a tile.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideOpenError, WsiscanError
from ..heatmap import tumour_regions
from ..layout import SUMMARY_NAME
from .deepzoom import HeatmapDeepZoom, StoreDeepZoom, colormap_lut
from .results import SlideResult, check_slide_file, open_slide_result, slide_file_problem

__all__ = ["SlideView", "ViewCache", "SOURCES"]

SOURCES = ("auto", "openslide", "store")
COLORMAP = "inferno"


@dataclass
class SlideView:
    result: SlideResult
    slide_tiles: Any  # DeepZoomGenerator (slide file) or StoreDeepZoom (tile store)
    slide_size_um: tuple[float, float]  # the slide image's extent in the viewer's um world
    source: str  # "openslide" or "store"
    source_note: str  # why the store is shown ('' for the slide file)
    heatmap_tiles: HeatmapDeepZoom
    closer: Any = None  # the open Slide, closed when the view leaves the cache
    _cells: np.ndarray | None = None
    _regions: dict[float, list[dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cells(self) -> np.ndarray:
        with self._lock:
            if self._cells is None:
                self._cells = self.result.cells()
            return self._cells

    def regions(self, threshold: float) -> list[dict[str, Any]]:
        """The regions at ``threshold`` exactly as predict exports them (same minimum area, simplification)."""
        key = round(float(threshold), 4)
        with self._lock:
            cached = self._regions.get(key)
        if cached is not None:
            return cached
        r = self.result
        found = tumour_regions(self.cells(), r.frame, threshold=key, min_area_um2=r.min_region_area_um2,
                               simplify_tolerance_um=r.simplify_tolerance_um)
        with self._lock:
            if len(self._regions) > 64:
                self._regions.clear()
            self._regions[key] = found
        return found

    def close(self) -> None:
        if self.closer is not None:
            self.closer.close()


def _store_tiles(result: SlideResult) -> tuple[StoreDeepZoom, tuple[float, float]]:
    store = result.store
    px_mpp = result.frame.px_mpp
    sources: list[tuple[Any, float]] = [(store.pixels, 1.0)]
    group = store.group
    if "overview" in group:
        overview = store.array("overview")
        sources.append((overview, float(overview.attrs["overview_mpp"]) / px_mpp))
    mask_mpp = store.meta.get("mask_mpp")
    if "thumbnail" in group and mask_mpp:
        sources.append((store.array("thumbnail"), float(mask_mpp) / px_mpp))
    tiles = StoreDeepZoom(sources)
    return tiles, (tiles.width_px * px_mpp, tiles.height_px * px_mpp)


def open_view(out_dir: Path, slide_id: str, *, source: str) -> SlideView:
    """Open ``slide_id``'s result with the slide file (``openslide``), the store, or the file when it is there."""
    from ..slide import open_slide

    result = open_slide_result(out_dir, slide_id)
    heatmap = HeatmapDeepZoom(result.store.heatmap_levels(), result.frame, colormap=COLORMAP)
    note = ""
    if source in ("auto", "openslide"):
        note = slide_file_problem(result)
        if source == "openslide" and note:
            check_slide_file(result, problem=note)
        if not note:
            try:
                slide = open_slide(result.slide_path)
            except (WsiscanError, OSError) as exc:
                if source == "openslide":
                    raise SlideOpenError(f"{result.slide_dir}: {exc}") from exc
                note = f"slide file unreadable ({exc})"
            else:
                tiles = slide.deep_zoom()
                return SlideView(result, tiles, result.size_um, "openslide", "", heatmap, closer=slide)
    else:
        note = "asked for the tile store's copy (--source store)"
    if result.store.meta.get("pixels_kept") is False:  # predict without --keep-pixels: thumbnail only
        from ..slide_pixels import PIXELS_NOT_KEPT

        note = (f"{PIXELS_NOT_KEPT} ({note}): only the thumbnail can be shown; put the slide file back, "
                f"or rerun `wsiscan predict --keep-pixels`")
    tiles, size_um = _store_tiles(result)
    return SlideView(result, tiles, size_um, "store", note, heatmap)


class ViewCache:
    """The open views of the last ``capacity`` slides viewed."""

    def __init__(self, out_dir: Path, *, source: str = "auto", capacity: int = 8) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        self.out_dir, self.source, self.capacity = out_dir, source, capacity
        self._views: collections.OrderedDict[str, tuple[int, SlideView]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}  # one opener per slide: a page asks for many tiles at once

    def _stamp(self, slide_id: str) -> int:
        try:
            return (self.out_dir / slide_id / SUMMARY_NAME).stat().st_mtime_ns
        except OSError:
            return -1

    def _held(self, slide_id: str, stamp: int) -> SlideView | None:
        with self._lock:
            held = self._views.get(slide_id)
            if held is not None and held[0] == stamp:
                self._views.move_to_end(slide_id)
                return held[1]
            return None

    def get(self, slide_id: str) -> SlideView:
        stamp = self._stamp(slide_id)
        view = self._held(slide_id, stamp)
        if view is not None:
            return view
        with self._lock:
            opening = self._opening.setdefault(slide_id, threading.Lock()) if len(self._opening) < 1024 else \
                threading.Lock()
        with opening:
            view = self._held(slide_id, stamp)  # opened by another request meanwhile
            if view is not None:
                return view
            view = open_view(self.out_dir, slide_id, source=self.source)
        with self._lock:
            # a dropped view is not closed here: another request may still be reading a tile from
            # it; its slide handle closes when the last reference goes
            self._views.pop(slide_id, None)
            self._views[slide_id] = (stamp, view)
            while len(self._views) > self.capacity:
                self._views.popitem(last=False)
        return view

    def close(self) -> None:
        with self._lock:
            views = [v for _, v in self._views.values()]
            self._views.clear()
        for v in views:
            v.close()


def legend_stops(n: int = 11) -> list[str]:
    """CSS colours of the colormap at n evenly spaced probabilities, for the legend's gradient."""
    lut = colormap_lut(COLORMAP)
    return ["#{:02x}{:02x}{:02x}".format(*lut[round(i * 255 / (n - 1))][:3]) for i in range(n)]
