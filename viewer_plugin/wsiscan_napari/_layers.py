"""Pure functions behind the plugin: a ``wsiscan predict`` result -> layer data, regions, hotspots.

No napari and no Qt here, so everything is testable without a viewer.  Results are read
only through wsiscan's public API (:func:`wsiscan.open_result`, :class:`wsiscan.Result`).

Frames.  The viewer's world frame is micrometres from the slide's top-left corner,
arrays as (rows, cols) so world points are (y_um, x_um).  A napari image places the
centre of its element (0, 0) at ``translate``, so:

- the slide at ``mpp`` um/px has ``scale = (mpp, mpp)``, ``translate = (mpp / 2, mpp / 2)``;
- the heatmap uses the OME-Zarr transform the store records (translation = centre of
  cell (0, 0), see :meth:`wsiscan.Heatmap`'s ``origin_um``);
- GeoJSON regions are in level-0 px (corner-based), so ``um = l0 * l0_mpp``.

A model of more than 2 classes gives one heatmap layer per class: the scored class's is
the ``heatmap`` layer the review panel follows, the others are ``class-heatmap`` layers.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import wsiscan
from wsiscan import StoreError, find_result, open_result
from wsiscan.errors import RecordError, SlideOpenError
from wsiscan.layout import STORE_NAME, SUMMARY_NAME
from wsiscan.records import SlideSummary

__all__ = [
    "STORE_NAME",
    "SUMMARY_NAME",
    "WsiscanResult",
    "NativeLevel",
    "PixelPyramid",
    "Hotspot",
    "find_result",
    "open_result",
    "open_pixel_pyramid",
    "pyramid_arrays",
    "heatmap_layer",
    "class_layers",
    "slide_layer",
    "layer_data",
    "threshold_regions",
    "region_rings_um",
    "rank_hotspots",
    "view_for_bbox",
    "export_geojson",
    "read_geojson_geometries",
    "summary_rows",
]

CHUNK_PX = 512  # side of one lazily read block of the slide pyramid
MIN_LEVEL_SIDE_PX = 512  # the pyramid's coarsest level is no larger than this
HEATMAP_COLORMAP = "inferno"
HEATMAP_OPACITY = 0.5
CLASS_COLORMAPS = ("magma", "viridis", "cividis", "plasma", "twilight", "turbo")  # the other classes' layers

WsiscanResult = wsiscan.Result  # one slide's result folder, opened read-only


# -- the slide as a lazy pyramid -------------------------------------------------------------------
@dataclass(frozen=True)
class NativeLevel:
    downsample: float  # px of the pyramid's finest level per px of this level
    dimensions_px: tuple[int, int]  # (width, height)


@dataclass
class PixelPyramid:
    """A slide's pixels as 2x levels over the levels the source really has, read on demand.

    Level k is the finest level downsampled by 2**k; a block of it is read from the
    coarsest native level at least as fine (OpenSlide's deep-zoom rule) and area-averaged.
    ``reads`` counts native reads per pyramid level, so tests can see what was loaded.
    """

    kind: str  # "openslide" (the slide file, native resolution) or "store" (the tile store's copy)
    mpp: float  # um per px of level 0
    native: tuple[NativeLevel, ...]
    read_native: Callable[[int, tuple[int, int], tuple[int, int]], np.ndarray]  # (level, (x, y), (w, h))
    description: str
    reads: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dimensions_px(self) -> tuple[int, int]:
        return self.native[0].dimensions_px

    def n_levels(self, *, min_side_px: int = MIN_LEVEL_SIDE_PX) -> int:
        n, side = 1, max(self.dimensions_px)
        while side > min_side_px:
            side = math.ceil(side / 2)
            n += 1
        return n

    def level_shape(self, k: int) -> tuple[int, int, int]:
        w, h = self.dimensions_px
        return (math.ceil(h / 2**k), math.ceil(w / 2**k), 3)

    def read(self, k: int, box_px: tuple[int, int, int, int]) -> np.ndarray:
        """(rows, cols, 3) uint8 of level-k px box (x0, y0, x1, y1); outside the slide is white."""
        from PIL import Image

        x0, y0, x1, y1 = box_px
        ds = 2.0**k
        j = max(i for i, lv in enumerate(self.native) if lv.downsample <= ds * 1.001 or i == 0)
        f = ds / self.native[j].downsample  # level-k px -> native-j px
        nx0, ny0, nx1, ny1 = x0 * f, y0 * f, x1 * f, y1 * f
        ix0, iy0 = math.floor(nx0 + 1e-9), math.floor(ny0 + 1e-9)
        ix1, iy1 = math.ceil(nx1 - 1e-9), math.ceil(ny1 - 1e-9)
        region = self.read_native(j, (ix0, iy0), (ix1 - ix0, iy1 - iy0))
        with self._lock:
            self.reads[k] += 1
        ow, oh = x1 - x0, y1 - y0
        if region.shape[:2] == (oh, ow):
            return region
        img = Image.fromarray(region)
        return np.asarray(img.resize((ow, oh), Image.Resampling.BOX, box=(nx0 - ix0, ny0 - iy0, nx1 - ix0, ny1 - iy0)))


class _LazyLevel:
    """Array-like view of one pyramid level: indexing reads just that region."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, pyramid: PixelPyramid, k: int) -> None:
        self.pyramid, self.k = pyramid, k
        self.shape = pyramid.level_shape(k)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        (y0, y1, ys), (x0, x1, xs) = (key[i].indices(self.shape[i]) for i in range(2))
        block = self.pyramid.read(self.k, (x0, y0, max(x1, x0), max(y1, y0)))
        return block[::ys, ::xs][:, :, key[2]]


def pyramid_arrays(pyramid: PixelPyramid, *, chunk_px: int = CHUNK_PX) -> list[Any]:
    """One dask array per pyramid level, chunked (chunk_px, chunk_px, 3); nothing is read yet."""
    import dask.array as da

    token = uuid.uuid4().hex[:12]  # a fresh name: napari's dask cache must never serve another pyramid's blocks
    return [
        da.from_array(_LazyLevel(pyramid, k), chunks=(chunk_px, chunk_px, 3), name=f"wsiscan-{pyramid.kind}-{token}-{k}",
                      meta=np.empty((0, 0, 0), np.uint8), asarray=True)
        for k in range(pyramid.n_levels())
    ]


def _white(size_px: tuple[int, int]) -> np.ndarray:
    return np.full((max(size_px[1], 0), max(size_px[0], 0), 3), 255, np.uint8)


def _read_array_box(arr: np.ndarray, xy: tuple[int, int], size_px: tuple[int, int]) -> np.ndarray:
    """A box of an in-memory (rows, cols, 3) image; outside is white."""
    out = _white(size_px)
    x0, y0 = xy
    h, w = arr.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + size_px[0], w), min(y0 + size_px[1], h)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = arr[cy0:cy1, cx0:cx1]
    return out


def _openslide_pyramid(result: WsiscanResult) -> tuple[PixelPyramid | None, str]:
    """The slide file at native resolution, when it is still where predict read it and unchanged."""
    slide, why = result.open_slide()
    if slide is None:
        return None, why
    native = tuple(NativeLevel(lv.downsample, lv.dimensions_px) for lv in slide.info.levels)

    def read_native(j: int, xy: tuple[int, int], size_px: tuple[int, int]) -> np.ndarray:
        return slide.read_level(level=j, lv_xy=xy, size_px=size_px)

    desc = f"{result.slide_path.name} via OpenSlide, {len(native)} level(s), {result.l0_mpp:.3g} um/px"
    return PixelPyramid("openslide", result.l0_mpp, native, read_native, desc), ""


def _store_pyramid(result: WsiscanResult, why: str) -> PixelPyramid:
    """The tile store's copy of the slide (at the model's mpp; glass away from tissue), plus its thumbnail."""
    native = [NativeLevel(1.0, result.store_size_px)]
    thumb: list[np.ndarray] = []  # the store's small whole-slide picture, a coarser level
    if result.thumbnail_mpp:
        thumb.append(result.thumbnail())
        th, tw = thumb[0].shape[:2]
        native.append(NativeLevel(result.thumbnail_mpp / result.frame.px_mpp, (tw, th)))

    def read_native(j: int, xy: tuple[int, int], size_px: tuple[int, int]) -> np.ndarray:
        if j == 0:
            try:
                return result.read_store_px((xy[0], xy[1], xy[0] + size_px[0], xy[1] + size_px[1]))
            except SlideOpenError:  # pixels not kept and the slide file gone: the description says so
                return np.full((size_px[1], size_px[0], 3), 255, np.uint8)
        return _read_array_box(thumb[0], xy, size_px)

    desc = f"tile store copy at {result.frame.px_mpp:.3g} um/px ({why})"
    if not result.pixels_kept:  # predict without --keep-pixels: the store has the thumbnail only
        from wsiscan.slide_pixels import PIXELS_NOT_KEPT

        desc = (f"{PIXELS_NOT_KEPT} ({why}): only the thumbnail can be shown; put the slide file back, "
                f"or rerun `wsiscan predict --keep-pixels`")
    return PixelPyramid("store", result.frame.px_mpp, tuple(native), read_native, desc)


def open_pixel_pyramid(result: WsiscanResult, *, source: str = "auto") -> PixelPyramid:
    """The slide's pixels: OpenSlide at native resolution when the slide file is there, else the store."""
    if source not in ("auto", "openslide", "store"):
        raise ValueError(f"source must be 'auto', 'openslide' or 'store', got {source!r}")
    why = "asked for the store"
    if source in ("auto", "openslide"):
        pyramid, why = _openslide_pyramid(result)
        if pyramid is not None:
            return pyramid
        if source == "openslide":
            raise StoreError(f"{result.slide_dir}: cannot read the slide through OpenSlide: {why}")
    return _store_pyramid(result, why)


# -- layer data -----------------------------------------------------------------------------------
def slide_layer(result: WsiscanResult, pyramid: PixelPyramid, *, chunk_px: int = CHUNK_PX) -> tuple[list[Any], dict, str]:
    mpp = pyramid.mpp
    kwargs = {
        "name": result.slide_id,
        "multiscale": True,
        "rgb": True,
        "contrast_limits": (0, 255),
        "scale": (mpp, mpp),
        "translate": (mpp / 2.0, mpp / 2.0),
        "units": ("um", "um"),
        "metadata": {"wsiscan": {"role": "slide", "slide_dir": str(result.slide_dir), "pyramid": pyramid,
                                 "description": pyramid.description}},
    }
    return pyramid_arrays(pyramid, chunk_px=chunk_px), kwargs, "image"


def _heatmap_kwargs(result: WsiscanResult, heatmap: wsiscan.Heatmap, *, name: str, role: str,
                    colormap: str, visible: bool, class_name: str | None = None) -> dict:
    scale, translation = heatmap.cell_um, heatmap.origin_um
    meta = {"role": role, "slide_dir": str(result.slide_dir)}
    if class_name is not None:
        meta["class_name"] = class_name
    return {
        "name": name,
        "colormap": colormap,
        "contrast_limits": (0.0, 1.0),
        "opacity": HEATMAP_OPACITY,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "scale": (scale, scale),
        "translate": (translation, translation),
        "units": ("um", "um"),
        "visible": visible,
        "metadata": {"wsiscan": meta},
    }


def heatmap_layer(result: WsiscanResult) -> tuple[np.ndarray, dict, str]:
    """Level 0 of the scored class (one value per patch: small) with its OME-Zarr placement in um."""
    heatmap = result.heatmap(0)
    name = f"{result.slide_id} tumour probability" if heatmap.class_names is None \
        else f"{result.slide_id} {heatmap.scored_class} probability"
    kwargs = _heatmap_kwargs(result, heatmap, name=name, role="heatmap", colormap=HEATMAP_COLORMAP, visible=True,
                             class_name=None if heatmap.class_names is None else heatmap.scored_class)
    return heatmap.scored(), kwargs, "image"


def class_layers(result: WsiscanResult) -> list[tuple[np.ndarray, dict, str]]:
    """One layer per class other than the scored one (none for a 2-class model), hidden at first."""
    heatmap = result.heatmap(0)
    if heatmap.class_names is None:
        return []
    others = [n for n in heatmap.class_names if n != heatmap.scored_class]
    return [(heatmap.channel(n),
             _heatmap_kwargs(result, heatmap, name=f"{result.slide_id} {n} probability", role="class-heatmap",
                             colormap=CLASS_COLORMAPS[i % len(CLASS_COLORMAPS)], visible=False, class_name=n),
             "image") for i, n in enumerate(others)]


def layer_data(path: str | Path, *, source: str = "auto") -> list[tuple[Any, dict, str]]:
    """napari layer data tuples for the result at ``path``: the slide pyramid, the other classes'
    heatmaps (more than 2 classes), then the scored class's heatmap on top."""
    result = open_result(path)
    pyramid = open_pixel_pyramid(result, source=source)
    return [slide_layer(result, pyramid), *class_layers(result), heatmap_layer(result)]


# -- threshold -> regions -> shapes and hotspots ------------------------------------------------------
def threshold_regions(result: WsiscanResult, cells: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """Regions at ``threshold`` exactly as predict makes them (same minimum area and simplification)."""
    return result.regions_at(threshold, cells)


def _polygons(geometry: dict[str, Any]) -> list[list[Sequence[Sequence[float]]]]:
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    if geometry["type"] == "MultiPolygon":
        return list(geometry["coordinates"])
    return []


def region_rings_um(regions: Sequence[dict[str, Any]], *, l0_mpp: float) -> list[np.ndarray]:
    """Every ring (outlines and holes) of ``regions`` as (N, 2) (y_um, x_um) arrays, open (last != first)."""
    rings = []
    for r in regions:
        for poly in _polygons(r["geometry"]):
            for ring in poly:
                xy = np.asarray(ring, np.float64)
                if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
                    xy = xy[:-1]
                if len(xy) >= 3:
                    rings.append(xy[:, ::-1] * l0_mpp)
    return rings


@dataclass(frozen=True)
class Hotspot:
    rank: int  # 1-based
    region_index: int  # index into the regions list
    max_probability: float
    mean_probability: float
    area_mm2: float
    centre_um: tuple[float, float]  # (y, x)
    bbox_um: tuple[float, float, float, float]  # (y0, x0, y1, x1)


def rank_hotspots(regions: Sequence[dict[str, Any]], *, l0_mpp: float, by: str = "max",
                  top_n: int = 20) -> list[Hotspot]:
    """The ``top_n`` regions by max (or mean) probability, ties broken by area, largest first."""
    if by not in ("max", "mean"):
        raise ValueError(f"by must be 'max' or 'mean', got {by!r}")
    key = "max_probability" if by == "max" else "mean_probability"
    order = sorted(range(len(regions)), key=lambda i: (-regions[i][key], -regions[i]["area_mm2"], i))
    out = []
    for rank, i in enumerate(order[:top_n], start=1):
        r = regions[i]
        pts = np.concatenate([np.asarray(ring, np.float64) for poly in _polygons(r["geometry"]) for ring in poly[:1]])
        x0, y0 = pts.min(axis=0) * l0_mpp
        x1, y1 = pts.max(axis=0) * l0_mpp
        y0, x0, y1, x1 = float(y0), float(x0), float(y1), float(x1)
        out.append(Hotspot(rank, i, float(r["max_probability"]), float(r["mean_probability"]), float(r["area_mm2"]),
                           ((y0 + y1) / 2.0, (x0 + x1) / 2.0), (y0, x0, y1, x1)))
    return out


def view_for_bbox(bbox_um: tuple[float, float, float, float], canvas_px: tuple[int, int], *, margin: float = 1.5,
                  min_extent_um: float = 200.0) -> tuple[tuple[float, float], float]:
    """Camera (centre (y, x) in um, zoom in screen px per um) that frames ``bbox_um`` on a (h, w) canvas."""
    y0, x0, y1, x1 = bbox_um
    h_um = max(y1 - y0, min_extent_um) * margin
    w_um = max(x1 - x0, min_extent_um) * margin
    ch, cw = canvas_px
    zoom = min(max(ch, 1) / h_um, max(cw, 1) / w_um)
    return ((y0 + y1) / 2.0, (x0 + x1) / 2.0), float(zoom)


# -- export ------------------------------------------------------------------------------------------------
def export_geojson(result: WsiscanResult, regions: list[dict[str, Any]], path: str | Path, *,
                   threshold: float) -> Path:
    """The regions as predict's QuPath GeoJSON (same writer, same schema)."""
    return result.write_regions(regions, path, threshold=threshold)


def read_geojson_geometries(path: str | Path) -> list[Any]:
    """Shapely geometries of a GeoJSON FeatureCollection, in file order."""
    from shapely.geometry import shape

    data = json.loads(Path(path).read_text())
    return [shape(f["geometry"]) for f in data.get("features", [])]


# -- summary ------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def summary_rows(summary: SlideSummary | dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) pairs of the per-slide numbers in summary.json, for display.

    ``summary``: a result's :class:`wsiscan.records.SlideSummary` (or summary.json's JSON).
    Areas use summary.json's names: tissue area = the mask, scored area = the
    cells of the scored tiles, tumour area = cells >= threshold, region area = the exported
    polygons (older summaries without an ``areas`` block show what they have).
    """
    if not summary:
        return [("summary", f"{SUMMARY_NAME} missing")]
    if not isinstance(summary, SlideSummary):
        try:
            summary = SlideSummary.from_json(summary)
        except RecordError as exc:
            return [("summary", str(exc))]
    scores, areas, tiles, res = summary.scores, summary.areas, summary.tiles, summary.resolution
    models = ", ".join(Path(n).name for n in summary.model_names) or "-"
    thr = _fmt(areas.get("threshold", scores.get("threshold")), ".2f")
    rows = [
        ("slide", summary.slide_id),
        ("model", models),
        ("max probability", _fmt(scores.get("max_probability"))),
        (f"top-{scores.get('top_k', 'k')} mean", _fmt(scores.get("top_k_mean_probability"))),
        ("mean probability", _fmt(scores.get("mean_probability"))),
        ("tissue area (mask)", f"{_fmt(areas.get('tissue_area_mm2'))} mm²"),
        ("scored area (scored tiles)", f"{_fmt(areas.get('scored_area_mm2', scores.get('scored_area_mm2')))} mm²"
                                       + (f", {areas['scored_tissue_fraction']:.1%} of the tissue"
                                          if isinstance(areas.get("scored_tissue_fraction"), float) else "")),
        (f"tumour area (cells p ≥ {thr})", f"{_fmt(areas.get('tumour_area_mm2', scores.get('tumour_area_mm2')))} mm²"),
        (f"region area (p ≥ {thr})", f"{_fmt(areas.get('region_area_mm2'))} mm² in "
                                     f"{_fmt(summary.n_regions, 'd')} regions"),
    ]
    if areas.get("n_dropped_cells"):
        rows.append(("dropped (small regions)", f"{_fmt(areas.get('dropped_area_mm2'))} mm², "
                                                f"{areas['n_dropped_cells']} cells"))
    if areas.get("ink_area_mm2"):
        rows.append(("pen ink (not tissue)", f"{_fmt(areas.get('ink_area_mm2'))} mm²"))
    rows.append(("patches", f"{_fmt(tiles.get('n_tiles'), 'd')} × {tiles.get('tile_size_px', '?')} px, "
                            f"stride {tiles.get('stride_px', '?')} @ {_fmt(res.get('effective_mpp'), '.3g')} µm/px"))
    return rows


def is_smoke_result(summary: SlideSummary | dict[str, Any] | None) -> bool:
    """Whether a result was made with the smoke-test ``tiny`` model (not a tumour classifier)."""
    if summary is None:
        return False
    return bool(summary.get("smoke_model")) or any(
        (m.get("spec") or {}).get("arch") == "tiny" for m in summary.get("models", []) if isinstance(m, dict))


def legend_rgb(width_px: int = 200, height_px: int = 14) -> np.ndarray:
    """(height, width, 3) uint8: the heatmap's colour map from p = 0 (left) to 1 (right)."""
    from matplotlib import colormaps

    ramp = colormaps[HEATMAP_COLORMAP](np.linspace(0.0, 1.0, width_px))[:, :3]
    return np.ascontiguousarray(np.broadcast_to((ramp * 255).astype(np.uint8), (height_px, width_px, 3)))
