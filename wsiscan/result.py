"""Reading a ``wsiscan predict`` result: the heatmap as an array with its geometry in micrometres,
the regions, the summary.  Public through :func:`wsiscan.open_result`.

The heatmap's level 0 holds one value per patch; cell (r, c) is the ``stride`` x
``stride`` store-px square centred on grid tile (r, c) (see :mod:`wsiscan.heatmap`).
Its centre lies at ``origin_um + (c, r) * cell_um`` from the slide's top-left corner.
For a model of more than 2 classes the array is (classes, rows, cols), one channel per
class, named in ``class_names``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError, WsiscanError
from .heatmap import HeatmapFrame, heatmap_class_names, tumour_regions
from .layout import GEOJSON_NAME, STORE_NAME, SUMMARY_NAME, is_result_folder
from .records import SlideSummary, read_summary
from .store import TileStore, open_tile_store, store_exists

__all__ = ["Heatmap", "Region", "Result", "find_result", "open_result"]


@dataclass(frozen=True)
class Heatmap:
    """One level of a result's heatmap, in memory, with where its cells lie in micrometres.

    ``values``: float32 (rows, cols), or (classes, rows, cols) for more than 2 classes;
    NaN = no tissue patch.  ``cell_um``: side of a cell; ``origin_um``: the centre of
    cell (0, 0) from the slide's top-left corner (the same along x and y).
    """

    values: np.ndarray
    cell_um: float
    origin_um: float
    level: int
    class_names: tuple[str, ...] | None  # one per channel; None: one channel (the scored class)
    scored_class: str  # the class whose probability a 2-class heatmap holds, and predict's scores use

    @property
    def shape_cells(self) -> tuple[int, int]:
        return tuple(self.values.shape[-2:])

    def channel(self, class_name: str) -> np.ndarray:
        """(rows, cols) of one class; for a 2-class heatmap only the scored class exists."""
        if self.class_names is None:
            if class_name != self.scored_class:
                raise KeyError(f"this heatmap holds only '{self.scored_class}', not {class_name!r}")
            return self.values
        try:
            return self.values[self.class_names.index(class_name)]
        except ValueError:
            raise KeyError(f"no class {class_name!r}; the classes are {', '.join(self.class_names)}") from None

    def scored(self) -> np.ndarray:
        """(rows, cols) of the scored class."""
        return self.channel(self.scored_class)

    def centres_um(self) -> tuple[np.ndarray, np.ndarray]:
        """(x_um of each column, y_um of each row): cell centres from the slide's top-left corner."""
        rows, cols = self.shape_cells
        return self.origin_um + np.arange(cols) * self.cell_um, self.origin_um + np.arange(rows) * self.cell_um

    def at_um(self, x_um: float, y_um: float) -> np.ndarray | float:
        """The value(s) of the cell covering the point (NaN outside the heatmap)."""
        c = int(np.floor((x_um - self.origin_um) / self.cell_um + 0.5))
        r = int(np.floor((y_um - self.origin_um) / self.cell_um + 0.5))
        rows, cols = self.shape_cells
        if not (0 <= r < rows and 0 <= c < cols):
            return np.full(self.values.shape[:-2], np.nan, np.float32) if self.values.ndim == 3 else float("nan")
        v = self.values[..., r, c]
        return v if self.values.ndim == 3 else float(v)


@dataclass(frozen=True)
class Region:
    """One exported region: a GeoJSON geometry in level-0 pixels, with its statistics."""

    class_name: str
    geometry: dict[str, Any]  # GeoJSON Polygon / MultiPolygon, level-0 px (x, y)
    area_mm2: float
    mean_probability: float
    max_probability: float


def find_result(path: str | Path) -> Path | None:
    """The slide folder of a ``wsiscan predict`` result at ``path``, or None (never raises).

    Accepts ``OUT/<slide-id>``, ``OUT`` holding exactly one such folder, or the
    ``store.zarr`` itself.  The store must open and hold a heatmap.
    """
    try:
        p = Path(path)
        if not p.is_dir():
            return None
        if p.name == STORE_NAME and store_exists(p):
            p = p.parent
        if not store_exists(p / STORE_NAME):
            found = [d for d in sorted(p.iterdir()) if d.is_dir() and store_exists(d / STORE_NAME)]
            if len(found) != 1:
                return None
            p = found[0]
        store = open_tile_store(p / STORE_NAME, mode="r")
        if not store.has_heatmap() or not store.heatmap_levels():
            return None
        return p
    except (WsiscanError, OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Result:
    """One slide's result folder, opened read-only (:func:`open_result`)."""

    slide_dir: Path
    store: TileStore  # the tile store (layout in the README), for what the methods below do not cover
    frame: HeatmapFrame
    summary: SlideSummary | None  # summary.json (None: the run has not finished)
    slide_path: Path  # where predict read the slide (it may have moved since)
    l0_mpp: float  # um per level-0 px of the slide
    threshold: float  # predict's threshold
    min_region_area_um2: float
    simplify_tolerance_um: float

    @property
    def slide_id(self) -> str:
        return self.slide_dir.name

    @property
    def slide_name(self) -> str:
        """The name predict writes into the GeoJSON (the slide file's name)."""
        return self.slide_path.name

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The channels' classes of a multi-class heatmap; None for a 2-class one."""
        return heatmap_class_names(self.store)

    @property
    def checksums(self) -> bool:
        """Whether the store's chunks carry checksums; False for a store of schema version 1,
        whose damage only the range check on probabilities can catch."""
        return self.store.checksums

    @property
    def scored_class(self) -> str:
        """The class whose probability predict scores (the model's positive class)."""
        meta = self.store.heatmap_meta()
        if meta.get("class_names"):
            return meta["class_names"][meta["positive_class"]]
        spec = (meta.get("models") or [{}])[0].get("spec", {})
        names = spec.get("class_names") or ["normal", "tumor"]
        return names[spec.get("positive_class", 1)]

    def heatmap(self, level: int = 0) -> Heatmap:
        """Heatmap ``level`` (0 = one cell per patch; each next level a 2x2 NaN-aware mean) in memory."""
        levels = self.store.heatmap_levels()
        if not 0 <= level < len(levels):
            raise StoreError(f"{self.slide_dir}: heatmap level {level} does not exist; levels 0..{len(levels) - 1}")
        scale_um, origin_um = self.frame.level_transform_um(level)
        return Heatmap(np.asarray(levels[level][...], np.float32), scale_um, origin_um, level, self.class_names,
                       self.scored_class)

    def cells(self) -> np.ndarray:
        """Level 0 of the scored class: one probability per patch, NaN = not tissue."""
        return self.heatmap(0).scored()

    def regions(self) -> list[Region]:
        """The regions predict exported (``tumor.geojson``), in file order."""
        path = self.slide_dir / GEOJSON_NAME
        try:
            features = json.loads(path.read_text())["features"]
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{path}: cannot read the regions ({exc}); rerun `wsiscan heatmap {self.slide_dir}`") from exc
        out = []
        for f in features:
            p = f["properties"]
            out.append(Region(p["classification"]["name"], f["geometry"], float(p["area_mm2"]),
                              float(p["mean_probability"]), float(p["max_probability"])))
        return out

    def regions_at(self, threshold: float, cells: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Regions of ``cells`` (default: the scored class) at ``threshold``, exactly as predict makes them."""
        return tumour_regions(self.cells() if cells is None else cells, self.frame, threshold=float(threshold),
                              min_area_um2=self.min_region_area_um2, simplify_tolerance_um=self.simplify_tolerance_um)

    def write_regions(self, regions: list[dict[str, Any]], path: str | Path, *, threshold: float) -> Path:
        """``regions`` (from :meth:`regions_at`) as predict's QuPath GeoJSON."""
        from .results import is_smoke_model, write_region_geojson

        return write_region_geojson(regions, path, slide_name=self.slide_name, threshold=float(threshold),
                                    smoke=is_smoke_model([dict(m) for m in self.summary.models]
                                                         if self.summary is not None else []))

    # -- the slide's pixels -------------------------------------------------------------------------
    def open_slide(self) -> tuple[Any, str]:
        """``(Slide, "")`` when the slide file is where predict read it and unchanged, else ``(None, why)``."""
        from .slide import open_slide
        from .slide_pixels import recorded_slide_problem

        path = self.slide_path
        why = recorded_slide_problem({**self.store.meta.get("slide", {}), "path": str(path)})
        if why:
            return None, why
        try:
            return open_slide(path), ""
        except (WsiscanError, OSError) as exc:
            return None, f"slide file {path} unreadable ({exc})"

    @property
    def store_size_px(self) -> tuple[int, int]:
        """(width, height) of the store's copy of the slide, at ``frame.px_mpp``."""
        h, w = self.store.pixels.shape[:2]
        return int(w), int(h)

    @property
    def pixels_kept(self) -> bool:
        """Whether the store keeps the slide's pixels (``tile``, or ``predict --keep-pixels``)."""
        return self.store.meta.get("pixels_kept") is not False

    @cached_property
    def _store_pixels(self) -> Any:
        from .slide_pixels import open_store_pixels

        return open_store_pixels(self.store)

    def read_store_px(self, px_box: tuple[int, int, int, int]) -> np.ndarray:
        """(rows, cols, 3) uint8 of the store's copy, box (x0, y0, x1, y1) in store px; glass is white.

        Where the store does not keep the pixels (``predict`` without ``--keep-pixels``) they
        are decoded from the slide file as predict read them (:mod:`wsiscan.slide_pixels`);
        SlideOpenError says so when that file is gone or changed.
        """
        if self.pixels_kept:
            return self.store.read_px(px_box=px_box)
        return self._store_pixels.read_px(px_box=px_box)

    @property
    def thumbnail_mpp(self) -> float | None:
        """The thumbnail's um/px; None when the store has no thumbnail (or only part of one: a
        run writing it, or killed while it did)."""
        mpp = self.store.meta.get("mask_mpp")
        return float(mpp) if mpp and "thumbnail" not in self.store.missing_pictures(overview=False) else None

    def thumbnail(self) -> np.ndarray:
        """The whole slide, small (rows, cols, 3) uint8, at :attr:`thumbnail_mpp`."""
        return self.store.thumbnail()


def open_result(path: str | Path) -> Result:
    """Open the result at ``path`` (``OUT/<slide-id>``, ``OUT`` with one slide, or its store.zarr).

    Raises :class:`StoreError` when there is none.
    """
    slide_dir = find_result(path)
    if slide_dir is None:
        raise StoreError(
            f"{path}: not a wsiscan result (expected OUT/<slide-id>/{STORE_NAME} with a heatmap, "
            f"as written by `wsiscan predict SLIDE -o OUT`)"
        )
    store = open_tile_store(slide_dir / STORE_NAME, mode="r")
    meta, hm = store.meta, store.heatmap_meta()
    frame = HeatmapFrame.from_meta(hm)
    # a summary that cannot be read as one is refused (RecordError names it and the fix)
    summary = read_summary(slide_dir / SUMMARY_NAME) if is_result_folder(slide_dir) else None
    settings = summary.region_settings() if summary is not None else {}
    return Result(
        slide_dir=slide_dir,
        store=store,
        frame=frame,
        summary=summary,
        slide_path=Path(meta.get("slide", {}).get("path", slide_dir.name)),
        l0_mpp=frame.px_mpp / frame.l0_per_px,
        threshold=float(settings.get("threshold", 0.5)),
        min_region_area_um2=float(settings.get("min_region_area_um2", 0.0)),
        simplify_tolerance_um=float(settings.get("simplify_tolerance_um", 0.0)),
    )
