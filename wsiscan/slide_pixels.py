"""Store pixels for a result whose tile store does not keep them, read back from the slide file.

``predict`` keeps the decoded pixels only with ``--keep-pixels`` (``predict.keep_pixels``),
so a result folder may hold a heatmap and no pixels.  :func:`open_store_pixels` gives a
reader of store-px boxes either way: the store's own pixels where every chunk the box
overlaps is there, else the slide file the store records (checked by size and quick
hash), decoded chunk by chunk with the very call the scan uses
(:func:`wsiscan.decode.read_chunk_run`), so a patch is exactly the one predict scored.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlideOpenError, StoreError
from .grid import LevelSelection, StoreGeometry, paste_overlap
from .store import TileStore

__all__ = ["PIXELS_NOT_KEPT", "StorePixels", "open_store_pixels", "recorded_slide_problem", "slide_file_problem_of"]

PIXELS_NOT_KEPT = "pixels not kept and slide file missing"


def slide_file_problem_of(store: TileStore) -> str:
    """Why the slide file a store records cannot be read as predict read it ('' when it can)."""
    return recorded_slide_problem(store.meta.get("slide", {}))


def recorded_slide_problem(record: dict[str, Any]) -> str:
    """Why the slide file of a store's ``slide`` record is gone or changed ('' when it is there as recorded)."""
    from .slide import slide_fingerprint

    path = Path(str(record.get("path", "")))
    if not str(record.get("path", "")) or not path.is_file():
        return f"slide file {path} not found (moved or deleted since predict)"
    try:
        now = slide_fingerprint(path)
    except OSError as exc:
        return f"slide file {path} unreadable ({exc.strerror or exc})"
    if now.get("quick_sha256") != record.get("quick_sha256"):
        return f"slide file {path} has changed since predict (another file at that path)"
    return ""


def _geometry(store: TileStore) -> StoreGeometry:
    g = store.meta["geometry"]
    return StoreGeometry(float(g["effective_mpp"]), float(g["l0_per_px"]), int(g["width_px"]), int(g["height_px"]),
                         int(g["supertile_px"]), int(g.get("pad_px", 0)))


class StorePixels:
    """``read_px(px_box)`` of a tile store: its pixels, or the slide file's where they are not kept."""

    def __init__(self, store: TileStore, *, cache_chunks: int = 16) -> None:
        self.store = store
        self.geometry = _geometry(store)
        self.selection = LevelSelection(**store.meta["level_selection"])
        self._slide: Any = None
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_chunks = cache_chunks

    def stored(self, px_box: tuple[int, int, int, int]) -> bool:
        """Whether the store itself holds every chunk ``px_box`` overlaps."""
        return all(self.store.chunk_done(ci, cj) for ci, cj in self.geometry.chunks_in_box(px_box))

    def read_px(self, *, px_box: tuple[int, int, int, int]) -> np.ndarray:
        """(h, w, 3) uint8 of a store-px box (outside the store: white), as predict scored it."""
        chunks = self.geometry.chunks_in_box(px_box)
        done = [self.store.chunk_done(ci, cj) for ci, cj in chunks]
        if all(done):
            return self.store.read_px(px_box=px_box)
        x0, y0, x1, y1 = px_box
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        for (ci, cj), in_store in zip(chunks, done, strict=True):
            cx0, cy0, cx1, cy1 = self.geometry.chunk_box_px(ci, cj)
            data = np.asarray(self.store.pixels[cy0:cy1, cx0:cx1]) if in_store else self._decode(ci, cj)
            paste_overlap(out, (x0, y0), data, (cx0, cy0))
        return out

    def _decode(self, ci: int, cj: int) -> np.ndarray:
        hit = self._cache.get((ci, cj))
        if hit is not None:
            self._cache.move_to_end((ci, cj))
            return hit
        from .decode import read_chunk_run

        data, _, _ = read_chunk_run(self._open_slide(), self.selection, self.geometry, ci, cj, cj + 1)
        self._cache[(ci, cj)] = data
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return data

    def _open_slide(self) -> Any:
        if self._slide is None:
            problem = slide_file_problem_of(self.store)
            if problem:
                raise SlideOpenError(f"{self.store.path}: {PIXELS_NOT_KEPT} ({problem}); put the slide file back, "
                                     f"or rerun `wsiscan predict --keep-pixels` while it is there")
            from .config import load_config
            from .tiling import open_configured_slide

            recorded = self.store.meta.get("config", {})
            cfg = load_config().replace("slide", **recorded.get("slide", {}))
            cfg = cfg.replace("tile", reader=recorded.get("tile", {}).get("reader"))
            self._slide = open_configured_slide(self.store.meta["slide"]["path"], cfg)
        return self._slide

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None
        self._cache.clear()

    def __enter__(self) -> "StorePixels":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store_pixels(store: TileStore) -> StorePixels:
    """A pixel reader of ``store`` (see :class:`StorePixels`); StoreError if it records no geometry."""
    if "geometry" not in store.meta or "level_selection" not in store.meta:
        raise StoreError(f"{store.path}: records no pixel geometry; rerun `wsiscan predict` for this slide")
    return StorePixels(store)

