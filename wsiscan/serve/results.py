"""The results folder ``wsiscan serve`` shows: its slides, their summaries, where their pixels are.

Read-only, and the one place that decides which paths the server may touch:

- a slide id is the name of a folder directly under OUT (not hidden, not a link that
  leads out of OUT), looked up in a listing of OUT, never joined from the request;
- a file is one of :data:`RESULT_FILES` inside that folder;
- a slide file is the one the slide's tile store records (``slide.path``), opened only
  when its size and quick hash still match the recording.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RecordError, SlideOpenError, StoreError, WsiscanError
from ..heatmap import HeatmapFrame, scored_cells
from ..layout import MANIFEST_NAME, MEDIA_TYPES, STORE_NAME, SUMMARY_NAME, has_store, is_result_folder
from ..records import ManifestEntry, SlideSummary, read_summary
from ..store import open_tile_store, store_exists

__all__ = [
    "RESULT_FILES",
    "SlideEntry",
    "SlideResult",
    "list_slides",
    "find_slide_dir",
    "result_file",
    "open_slide_result",
    "slide_file_problem",
    "check_slide_file",
]

# the files of a slide folder the server hands out, with their media types
RESULT_FILES = MEDIA_TYPES


@dataclass(frozen=True)
class SlideEntry:
    """One row of the index: a slide folder under OUT, or a slide the manifest records as failed."""

    slide_id: str
    status: str  # "complete", "in progress" (a store without summary.json) or "failed"
    error: str  # the manifest's one-line error of a failed slide
    slide_path: str
    model: str
    max_probability: float | None
    top_k_mean_probability: float | None
    tumour_area_mm2: float | None
    tissue_area_mm2: float | None
    n_regions: int | None
    n_tiles: int | None
    threshold: float | None
    has_viewer: bool  # a store with a heatmap: the viewer can show it
    files: tuple[str, ...]  # which of RESULT_FILES exist
    model_names: tuple[str, ...] = ()  # the models as the run named them (registry names or checkpoint paths)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "model_names"} | \
            {"files": list(self.files)}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_SUMMARIES: dict[Path, tuple[int, SlideSummary | None]] = {}  # summary.json -> (mtime_ns, its record)
_SUMMARIES_LOCK = threading.Lock()


def cached_summary(path: Path) -> SlideSummary | None:
    """The summary at ``path`` (None when missing or unreadable), read again only when its
    mtime changes: the index asks for every slide's summary on each request."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    with _SUMMARIES_LOCK:
        held = _SUMMARIES.get(path)
    if held is not None and held[0] == stamp:
        return held[1]
    try:
        summary: SlideSummary | None = read_summary(path)
    except RecordError:
        summary = None
    with _SUMMARIES_LOCK:
        if len(_SUMMARIES) > 4096:
            _SUMMARIES.clear()
        _SUMMARIES[path] = (stamp, summary)
    return summary


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _slide_dirs(out_dir: Path) -> dict[str, Path]:
    """slide id -> folder, for every result folder directly under ``out_dir`` that stays inside it."""
    root = out_dir.resolve()
    found: dict[str, Path] = {}
    try:
        children = sorted(root.iterdir())
    except OSError:
        return found
    for child in children:
        if child.name.startswith(".") or not child.is_dir():
            continue
        if child.resolve().parent != root:  # a link out of OUT is not served
            continue
        if is_result_folder(child) or has_store(child):
            found[child.name] = child
    return found


def find_slide_dir(out_dir: Path, slide_id: str) -> Path | None:
    """The folder of ``slide_id`` under ``out_dir``, or None when OUT has no such result."""
    return _slide_dirs(out_dir).get(slide_id)


def result_file(out_dir: Path, slide_id: str, name: str) -> Path | None:
    """The path of result file ``name`` of ``slide_id``, or None unless it is one of RESULT_FILES and exists."""
    slide_dir = find_slide_dir(out_dir, slide_id)
    if slide_dir is None or name not in RESULT_FILES:
        return None
    path = slide_dir / name
    if not path.is_file() or path.resolve().parent != slide_dir.resolve():
        return None
    return path


def _entry(slide_id: str, slide_dir: Path | None, failed: ManifestEntry | None) -> SlideEntry:
    summary = cached_summary(slide_dir / SUMMARY_NAME) if slide_dir is not None else None
    has_viewer = False
    if slide_dir is not None and store_exists(slide_dir / STORE_NAME):
        try:
            has_viewer = open_tile_store(slide_dir / STORE_NAME, mode="r").has_heatmap()
        except WsiscanError:
            has_viewer = False
    if summary is not None:
        status, error = "complete", ""
    elif failed is not None:
        status, error = "failed", failed.error or ""
    else:
        status, error = "in progress", ""
    files = tuple(n for n in RESULT_FILES if slide_dir is not None and (slide_dir / n).is_file())
    if summary is None:
        return SlideEntry(slide_id=slide_id, status=status, error=error,
                          slide_path=failed.slide if failed is not None else "", model="", max_probability=None,
                          top_k_mean_probability=None, tumour_area_mm2=None, tissue_area_mm2=None, n_regions=None,
                          n_tiles=None, threshold=None, has_viewer=False, files=files)
    scores, areas = summary.scores, summary.areas  # areas: results.area_summary
    return SlideEntry(
        slide_id=slide_id,
        status=status,
        error=error,
        slide_path=str(summary.slide.get("path", "")),
        model=" + ".join(Path(n).name for n in summary.model_names),
        max_probability=_number(summary.max_probability),
        top_k_mean_probability=_number(summary.top_k_mean_probability),
        tumour_area_mm2=_number(areas.get("tumour_area_mm2", scores.get("tumour_area_mm2"))),
        tissue_area_mm2=_number(areas.get("tissue_area_mm2", scores.get("tissue_area_mm2"))),
        n_regions=summary.n_regions,
        n_tiles=summary.n_tiles,
        threshold=_number(summary.threshold),
        has_viewer=has_viewer,
        files=files,
        model_names=tuple(summary.model_names),
    )


def list_slides(out_dir: Path) -> list[SlideEntry]:
    """Every slide under ``out_dir``: its result folders, and the failed slides of ``manifest.json``."""
    dirs = _slide_dirs(out_dir)
    manifest = _read_json(out_dir / MANIFEST_NAME)
    failed = {}
    for item in manifest.get("slides", []):
        if isinstance(item, dict) and item.get("status") == "failed" and (item.get("slide_id") or item.get("slide")):
            entry = ManifestEntry.from_json({"slide_id": Path(str(item.get("slide"))).stem, "slide": "", **item})
            failed[entry.slide_id] = entry
    ids = sorted(set(dirs) | set(failed))
    return [_entry(i, dirs.get(i), failed.get(i)) for i in ids]


@dataclass(frozen=True)
class SlideResult:
    """One slide's finished result, opened read-only, with what the viewer needs."""

    slide_id: str
    slide_dir: Path
    store: Any  # wsiscan.store.TileStore, opened read-only
    frame: HeatmapFrame
    summary: SlideSummary
    slide_path: Path  # where predict read the slide (it may have moved since)
    slide_record: dict[str, Any]  # path, size_bytes, mtime_ns, quick_sha256 as tiling recorded them
    l0_mpp: float  # um per level-0 px of the slide
    l0_dimensions_px: tuple[int, int]  # (width, height) of the slide's level 0
    threshold: float
    min_region_area_um2: float
    simplify_tolerance_um: float

    @property
    def size_um(self) -> tuple[float, float]:
        w, h = self.l0_dimensions_px
        return w * self.l0_mpp, h * self.l0_mpp

    def cells(self) -> np.ndarray:
        """Heatmap level 0 of the scored class, one probability per patch (NaN = not tissue): small,
        ~1e6 cells at most.  A multi-class heatmap's channel of the positive class (heatmap.scored_cells)."""
        return np.asarray(scored_cells(self.store), np.float32)


def open_slide_result(out_dir: Path, slide_id: str) -> SlideResult:
    """Open the finished result of ``slide_id`` under ``out_dir``; StoreError says what is missing."""
    slide_dir = find_slide_dir(out_dir, slide_id)
    if slide_dir is None:
        raise StoreError(f"{out_dir}: no result for slide {slide_id!r}; the index lists the slides")
    if not is_result_folder(slide_dir):
        raise StoreError(f"{slide_dir}: no finished result (no {SUMMARY_NAME}); rerun `wsiscan predict` to finish it")
    summary = read_summary(slide_dir / SUMMARY_NAME)
    store = open_tile_store(slide_dir / STORE_NAME, mode="r")
    if not store.has_heatmap():
        raise StoreError(f"{slide_dir / STORE_NAME}: has no heatmap; rerun `wsiscan predict` for this slide")
    meta, hm = store.meta, store.heatmap_meta()
    frame = HeatmapFrame.from_meta(hm)
    levels = meta.get("slide_info", {}).get("levels") or []
    if levels:
        l0_dims = tuple(int(v) for v in levels[0]["dimensions_px"])
    else:  # the store's own extent, in level-0 px
        h, w = store.pixels.shape[:2]
        l0_dims = (round(w * frame.l0_per_px), round(h * frame.l0_per_px))
    settings = summary.region_settings()
    record = dict(meta.get("slide", {}))
    return SlideResult(
        slide_id=slide_id,
        slide_dir=slide_dir,
        store=store,
        frame=frame,
        summary=summary,
        slide_path=Path(str(record.get("path", ""))),
        slide_record=record,
        l0_mpp=frame.px_mpp / frame.l0_per_px,
        l0_dimensions_px=(int(l0_dims[0]), int(l0_dims[1])),
        threshold=float(settings.get("threshold", 0.5)),
        min_region_area_um2=float(settings.get("min_region_area_um2", 0.0)),
        simplify_tolerance_um=float(settings.get("simplify_tolerance_um", 0.0)),
    )


def slide_file_problem(result: SlideResult) -> str:
    """Why the slide file cannot be read as predict read it ('' when it can): gone or changed."""
    from ..slide_pixels import recorded_slide_problem

    return recorded_slide_problem({**result.slide_record, "path": str(result.slide_path)})


def check_slide_file(result: SlideResult, *, problem: str | None = None) -> None:
    """Raise SlideOpenError when the slide file is missing or changed (``problem``: already found)."""
    problem = slide_file_problem(result) if problem is None else problem
    if problem:
        raise SlideOpenError(f"{result.slide_dir}: {problem}; put it back, or serve the tile store's copy "
                             f"(`wsiscan serve --source store`)")
