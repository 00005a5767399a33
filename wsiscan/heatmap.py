"""Heatmap outputs: the OME-Zarr pyramid, the PNG overlay, GeoJSON regions, slide scores.

Cell (r, c) of heatmap level 0 holds the probability of grid tile (r, c) and covers the
``stride`` x ``stride`` store-px square centred on that tile: at stride 96 the tile
itself, at stride 32 (96 px tiles) the tile's centre 32 x 32 px, the region a PCam
label describes.  So overlapping strides never average: each cell has exactly one
patch.  Cells without a kept tile are NaN (not tissue), distinct from probability 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .grid import cell_offset_px
from .layout import PNG_COMPRESS_LEVEL, write_figure_atomic, write_geojson_atomic, write_json_atomic
from .rowimage import RowImage
from .store import TileStore

__all__ = [
    "HeatmapFrame",
    "build_pyramid",
    "check_heatmap",
    "ome_multiscales",
    "slide_scores",
    "tumour_regions",
    "region_cells",
    "write_geojson",
    "render_overlay",
    "overlay_title",
    "write_json_atomic",
]


@dataclass(frozen=True)
class HeatmapFrame:
    """Where heatmap cells sit: store px and level-0 px per cell, and the offset."""

    stride_px: int
    tile_size_px: int
    px_mpp: float  # um per store px
    l0_per_px: float  # level-0 px per store px

    @classmethod
    def from_meta(cls, hm: dict[str, Any]) -> "HeatmapFrame":
        """The frame recorded in a store's heatmap attributes (``TileStore.heatmap_meta()``)."""
        return cls(int(hm["stride_px"]), int(hm["tile_size_px"]), float(hm["px_mpp"]), float(hm["l0_per_px"]))

    @property
    def offset_px(self) -> float:
        return cell_offset_px(tile_size_px=self.tile_size_px, stride_px=self.stride_px)

    @property
    def cell_um(self) -> float:
        return self.stride_px * self.px_mpp

    def cell_to_l0(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of cell-index coordinates, cell c's centre at index c."""
        x = (self.offset_px + (np.asarray(cols) + 0.5) * self.stride_px) * self.l0_per_px
        y = (self.offset_px + (np.asarray(rows) + 0.5) * self.stride_px) * self.l0_per_px
        return x, y

    def level_transform_um(self, level: int) -> tuple[float, float]:
        """(scale, translation) in um of pyramid ``level``: translation is the centre of element (0, 0)."""
        f = 2**level
        scale = self.cell_um * f
        translation = (self.offset_px + self.stride_px * f / 2.0) * self.px_mpp
        return scale, translation


def build_pyramid(store: TileStore, *, min_side: int = 64, block: int = 1024) -> int:
    """Levels 1.. of the heatmap, each the NaN-aware 2x2 mean of the one below, block by block."""
    level = 0
    src = store.heatmap_level(0)
    chunk = src.chunks[-1]
    lead = tuple(src.shape[:-2])  # a class axis, per class independently
    while max(src.shape[-2:]) > min_side:
        h, w = math.ceil(src.shape[-2] / 2), math.ceil(src.shape[-1] / 2)
        dst = store.create_heatmap_level(level + 1, shape=(*lead, h, w), chunk=chunk)
        for y in range(0, h, block):
            for x in range(0, w, block):
                part = src[..., 2 * y : 2 * min(y + block, h), 2 * x : 2 * min(x + block, w)]
                ph, pw = part.shape[-2:]
                padded = np.full((*lead, ph + ph % 2, pw + pw % 2), np.nan, np.float32)
                padded[..., :ph, :pw] = part
                view = padded.reshape(*lead, padded.shape[-2] // 2, 2, padded.shape[-1] // 2, 2)
                count = np.sum(~np.isnan(view), axis=(-3, -1))
                total = np.nansum(view, axis=(-3, -1))
                out = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
                if np.isfinite(out).any():
                    dst[..., y : y + out.shape[-2], x : x + out.shape[-1]] = out
        src = dst
        level += 1
    return level + 1


def ome_multiscales(frame: HeatmapFrame, n_levels: int, *, name: str,
                    class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """NGFF 0.5 ``ome`` attributes: axes in micrometres, scale and translation per level.

    With ``class_names`` (a model of more than 2 classes) the arrays are (c, y, x): a
    ``c`` channel axis first, one channel per class, named in ``omero.channels``.
    """
    c_scale, c_shift, c_axis = ([1.0], [0.0], [{"name": "c", "type": "channel"}]) if class_names else ([], [], [])
    datasets = []
    for k in range(n_levels):
        scale, translation = frame.level_transform_um(k)
        datasets.append({
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [*c_scale, scale, scale]},
                {"type": "translation", "translation": [*c_shift, translation, translation]},
            ],
        })
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [{
            "name": name,
            "axes": [*c_axis, {"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": datasets,
            "type": "mean of 2x2, NaN-aware",
        }],
    }
    if class_names:
        ome["omero"] = {"channels": [{"label": n, "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0}}
                                     for n in class_names]}
    return ome


def slide_scores(cells: np.ndarray, *, threshold: float, top_k: int, cell_um: float) -> dict[str, Any]:
    values = cells[np.isfinite(cells)]
    if values.size == 0:
        return {"n_cells": 0, "max_probability": None, "top_k_mean_probability": None,
                "n_cells_above_threshold": 0, "threshold": threshold, "tumour_area_mm2": 0.0, "scored_area_mm2": 0.0}
    k = min(top_k, values.size)
    top = np.partition(values, values.size - k)[values.size - k :]
    n_pos = int((values >= threshold).sum())
    return {
        "n_cells": int(values.size),
        "max_probability": float(values.max()),
        "top_k": int(k),
        "top_k_mean_probability": float(top.mean()),
        "mean_probability": float(values.mean()),
        "n_cells_above_threshold": n_pos,
        "threshold": threshold,
        # the summary's names: tumour area = cells >= threshold, scored area = cells of scored tiles
        # (the tissue mask's own area is the summary's areas.tissue_area_mm2)
        "tumour_area_mm2": n_pos * cell_um**2 / 1e6,
        "scored_area_mm2": values.size * cell_um**2 / 1e6,
    }


def _label_regions(cells: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """8-connected groups of finite cells >= threshold: the regions of the GeoJSON."""
    from scipy import ndimage

    positive = np.isfinite(cells) & (cells >= threshold)
    labels, n = ndimage.label(positive, structure=np.ones((3, 3), bool))
    return np.asarray(labels), int(n)


def region_cells(cells: np.ndarray, frame: HeatmapFrame, *, threshold: float, min_area_um2: float) -> np.ndarray:
    """(rows, cols) bool: the cells of the regions :func:`tumour_regions` exports (at or
    above ``threshold``, in a region of at least ``min_area_um2``)."""
    labels, n = _label_regions(cells, threshold)
    if n == 0:
        return np.zeros(cells.shape, bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes * frame.cell_um**2 >= min_area_um2
    keep[0] = False
    return np.asarray(keep[labels])


def tumour_regions(cells: np.ndarray, frame: HeatmapFrame, *, threshold: float, min_area_um2: float,
                   simplify_tolerance_um: float) -> list[dict[str, Any]]:
    """Connected regions of cells >= threshold as polygons in level-0 px, with statistics.

    Boundaries follow cell edges exactly (the union of the cells' squares, holes
    included), then Douglas-Peucker simplification in um when ``simplify_tolerance_um`` > 0
    (default 0: none).  ``area_mm2`` is the exported polygon's area (with no
    simplification, exactly its cells' area, ``cells_area_mm2``).  Everything that draws
    regions (tumor.geojson, overlay.png, the napari outlines) draws these polygons.
    """
    import shapely
    from scipy import ndimage
    from shapely.geometry import mapping

    labels, n = _label_regions(cells, threshold)
    if n == 0:
        return []
    objects = ndimage.find_objects(labels)
    cell_area_um2 = frame.cell_um**2
    tol_cells = simplify_tolerance_um / frame.cell_um
    regions = []
    for idx, sl in enumerate(objects, start=1):
        comp = labels[sl] == idx
        n_cells = int(comp.sum())
        area_um2 = n_cells * cell_area_um2
        if area_um2 < min_area_um2:
            continue
        vals = cells[sl][comp]
        rr, cc = np.nonzero(comp)
        rr = rr + sl[0].start
        cc = cc + sl[1].start
        # exact cell-edge outline: the union of the cells' squares (a coverage union is linear-time)
        boxes = shapely.box(cc - 0.5, rr - 0.5, cc + 0.5, rr + 0.5)
        geom = shapely.coverage_union_all(boxes)
        if tol_cells > 0:
            geom = geom.simplify(tol_cells, preserve_topology=True)
        geom = shapely.make_valid(geom)
        # cell-index coordinates (cell c's centre at c) -> level-0 px
        if geom.is_empty:
            continue
        polygon_area_um2 = geom.area * cell_area_um2  # in cell units: one cell is 1 x 1
        geom = shapely.transform(geom, lambda xy: np.column_stack(frame.cell_to_l0(xy[:, 1], xy[:, 0])))
        regions.append({
            "geometry": mapping(geom),
            "area_mm2": polygon_area_um2 / 1e6,
            "cells_area_mm2": area_um2 / 1e6,
            "n_cells": n_cells,
            "mean_probability": float(vals.mean()),
            "max_probability": float(vals.max()),
            "bbox_cells": [sl[0].start, sl[1].start, sl[0].stop, sl[1].stop],
        })
    regions.sort(key=lambda r: (-r["max_probability"], -r["area_mm2"]))
    return regions


def geojson_collection(regions: list[dict[str, Any]], *, slide_name: str, threshold: float,
                       class_name: str = "Tumor") -> dict[str, Any]:
    """A FeatureCollection QuPath imports: one annotation per region, classified, with measurements."""
    features = []
    for i, r in enumerate(regions, start=1):
        measurements = {
            "mean_probability": r["mean_probability"],
            "max_probability": r["max_probability"],
            "area_mm2": r["area_mm2"],
        }
        features.append({
            "type": "Feature",
            "id": f"{slide_name}-region-{i}",
            "geometry": r["geometry"],
            "properties": {
                "objectType": "annotation",
                "name": f"tumour region {i} (max {r['max_probability']:.2f})",
                "classification": {"name": class_name, "color": [200, 0, 0]},
                "isLocked": False,
                "measurements": measurements,
                **measurements,
            },
        })
    return {"type": "FeatureCollection", "features": features,
            "properties": {"slide": slide_name, "threshold": threshold, "coordinates": "level-0 pixels"}}


def write_geojson(regions: list[dict[str, Any]], path: str | Path, *, slide_name: str, threshold: float) -> Path:
    return write_geojson_atomic(geojson_collection(regions, slide_name=slide_name, threshold=threshold), path)


def overlay_title(*, slide_name: str, model_names: list[str], n_tiles: int, tile_size_px: int, px_mpp: float,
                  stride_px: int, max_probability: float | None, threshold: float | None = None,
                  n_regions: int | None = None) -> str:
    """The caption of ``overlay.png``: slide, models, patches, resolution, stride, max p, threshold."""
    models = " + ".join(n if n.count("/") == 1 and not Path(n).exists() else Path(n).name for n in model_names)
    top = f"{max_probability:.2f}" if max_probability is not None else "-"
    thr = "" if threshold is None else (f"  |  cyan outlines: {n_regions} regions of p >= {threshold:g}"
                                         if n_regions is not None else f"  |  threshold {threshold:g}")
    return (f"{slide_name}  |  model {models}  |  {n_tiles} patches {tile_size_px} px @ {px_mpp:.3g} um/px, "
            f"stride {stride_px}  |  max p {top}{thr}")


def render_overlay(thumbnail: RowImage | np.ndarray, cells: np.ndarray, frame: HeatmapFrame, *, thumb_mpp: float,
                   threshold: float, title: str, path: str | Path, max_side_px: int = 1600,
                   min_region_area_um2: float = 0.0, regions: list[dict[str, Any]] | None = None,
                   mark: str | None = None) -> Path:
    """The heatmap (colour, alpha) over the slide thumbnail, with a colour bar, a scale bar,
    the caption ``title`` (``mark`` above it in red) and the outlines of ``regions`` (the
    polygons :func:`tumour_regions` exports to GeoJSON, drawn as they are; when None they
    are made here with ``min_region_area_um2`` and no simplification).  Written atomically.

    ``thumbnail`` (a RowImage or an array) is read a stripe at a time: only the overlay-sized
    picture is held whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .render import resize_box

    th, tw = thumbnail.shape[:2]
    scale = min(1.0, max_side_px / max(th, tw))
    ow, oh = max(1, round(tw * scale)), max(1, round(th * scale))
    base = resize_box(thumbnail, (ow, oh))
    # overlay pixel centre -> store px -> heatmap cell
    out_mpp = thumb_mpp * tw / ow
    xs = (np.arange(ow) + 0.5) * out_mpp / frame.px_mpp
    ys = (np.arange(oh) + 0.5) * out_mpp / frame.px_mpp
    cc = np.floor((xs - frame.offset_px) / frame.stride_px).astype(np.int64)
    rr = np.floor((ys - frame.offset_px) / frame.stride_px).astype(np.int64)

    import textwrap

    from matplotlib.colors import Normalize

    dpi = 100
    fig_w = ow / dpi + 1.6
    font_pt = 11
    wrap = max(30, int((fig_w - 0.4) * 72 / (font_pt * 0.62)))  # characters per line (DejaVu Sans ~0.6 em)
    title = "\n".join(textwrap.wrap(title, width=wrap))
    n_lines = title.count("\n") + 1
    mark_lines = "\n".join(textwrap.wrap(mark, width=wrap)) if mark else ""
    n_lines += mark_lines.count("\n") + 1 if mark else 0
    title_h = 0.25 + font_pt * 1.35 / 72 * n_lines
    fig_h = oh / dpi + 0.3 + title_h
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.2 / fig_w, 0.2 / fig_h, ow / dpi / fig_w, oh / dpi / fig_h))
    # the axes are exactly ow x oh px, so both pictures are drawn as they are (_PixelImage):
    # what imshow would make of them, without its float64 resampling of every pixel
    norm = Normalize(vmin=0.0, vmax=1.0)
    _add_pixels(ax, np.dstack([base, np.full((oh, ow), 255, np.uint8)]), alpha=None, cmap=None, norm=None)
    del base
    im = _add_pixels(ax, _heat_rgba(cells, rr, cc, cmap="inferno", norm=norm, alpha=0.55), alpha=0.55,
                     cmap="inferno", norm=norm)
    ax.set_aspect("equal")  # as imshow sets it
    if regions is None:
        regions = tumour_regions(cells, frame, threshold=threshold, min_area_um2=min_region_area_um2,
                                 simplify_tolerance_um=0.0)
    l0_per_out = out_mpp / frame.px_mpp * frame.l0_per_px  # level-0 px per overlay px
    from matplotlib.collections import LineCollection

    # the exported polygons themselves, level-0 px -> overlay px, as one collection: the same
    # pixels as a Line2D per ring (same colour, width, cap and join; checked on the test slides),
    # in half the time on a slide with a thousand regions (one artist to set up and draw, not one a ring)
    rings = [np.asarray(ring, np.float64) / l0_per_out - 0.5 for ring in _rings(regions)]
    ax.add_collection(LineCollection(rings, colors="cyan", linewidths=1.0, capstyle="projecting",
                                     joinstyle="round"), autolim=False)
    ax.set_xlim(-0.5, ow - 0.5)
    ax.set_ylim(oh - 0.5, -0.5)
    _scale_bar(ax, ow=ow, oh=oh, um_per_px=out_mpp)
    ax.set_axis_off()
    cax = fig.add_axes(((ow / dpi + 0.35) / fig_w, 0.2 / fig_h + 0.1 * oh / dpi / fig_h, 0.18 / fig_w,
                        0.8 * oh / dpi / fig_h))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("tumour probability")
    cb.ax.axhline(threshold, color="cyan", lw=1.5)
    top = 1 - 0.1 / fig_h
    if mark:
        fig.text(0.2 / fig_w, top, mark_lines, fontsize=font_pt, va="top", color="#c00000", fontweight="bold")
        top -= font_pt * 1.35 / 72 * (mark_lines.count("\n") + 1) / fig_h
    fig.text(0.2 / fig_w, top, title, fontsize=font_pt, va="top")
    try:
        return write_figure_atomic(
            lambda tmp: fig.savefig(tmp, dpi=dpi, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL}), path)
    finally:
        plt.close(fig)


def _rings(regions: list[dict[str, Any]]) -> list[list[list[float]]]:
    """Every ring (outlines and holes) of the regions' GeoJSON geometries."""
    rings: list[list[list[float]]] = []
    for r in regions:
        g = r["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"] if g["type"] == "MultiPolygon" else []
        for poly in polys:
            rings.extend(list(ring) for ring in poly)
    return rings


def _heat_rgba(cells: np.ndarray, rr: np.ndarray, cc: np.ndarray, *, cmap: str, norm: Any,
               alpha: float) -> np.ndarray:
    """(len(rr), len(cc), 4) uint8: the colour of heatmap cell (rr[i], cc[j]) at each overlay pixel,
    transparent outside the heatmap and where it is NaN.

    The RGBA imshow makes at 1:1 of the overlay-sized float32 picture with ``alpha``: colormapped
    (bad: (0, 0, 0, 0)), ``alpha`` times the alpha channel, each channel x 255 truncated to uint8;
    computed once per cell and then indexed, not once per overlay pixel."""
    from matplotlib.cm import ScalarMappable

    n_r, n_c = cells.shape
    colours = np.zeros((n_r + 1, n_c + 1, 4), np.float64)  # the last row and column: outside, transparent
    sm = ScalarMappable(norm=norm, cmap=cmap)
    colours[:n_r, :n_c] = sm.to_rgba(np.ma.masked_invalid(cells.astype(np.float32, copy=False)))
    colours[..., 3] *= alpha
    table = (colours * 255).astype(np.uint8)
    rows = np.where((rr >= 0) & (rr < n_r), rr, n_r)
    cols = np.where((cc >= 0) & (cc < n_c), cc, n_c)
    return table[rows[:, None], cols[None, :]]


def _add_pixels(ax: Any, rgba: np.ndarray, *, alpha: float | None, cmap: str | None, norm: Any) -> Any:
    """An image of ``ax`` (which is exactly ``rgba``'s size in figure pixels) drawn as the RGBA
    pixels given, in place of ``ax.imshow(..., interpolation="nearest")``.

    At 1:1, imshow's pixels are the picture's own (for uint8 RGB, v / 255 in float32 times 255
    truncates back to v for every v), so the drawing (clip, alpha, blending) is the same, without
    the resampling of a float64 RGBA copy of the whole picture (hundreds of MB on a large slide).
    Should the axes not be ``rgba``'s size after all (never in overlay.png: the figure is laid out
    in whole pixels), matplotlib resamples ``rgba`` itself; the heatmap's ``alpha``, already in its
    alpha channel, then counts twice there."""
    from matplotlib.image import AxesImage

    class _PixelImage(AxesImage):
        def make_image(self, renderer: Any, magnification: float = 1.0, unsampled: bool = False) -> Any:
            from matplotlib.transforms import Bbox, IdentityTransform, TransformedBbox

            x1, x2, y1, y2 = self.get_extent()
            drawn = TransformedBbox(Bbox(np.array([[x1, y1], [x2, y2]])), self.get_transform())
            clipped = Bbox.intersection(drawn, self.get_clip_box() or self.axes.bbox)
            if clipped is not None and not unsampled:
                # where _ImageBase._make_image puts the picture: its extent rounded to whole pixels
                e = np.asarray(clipped.extents) * magnification
                x0, y0 = np.floor(e[0] + 0.5), np.ceil(e[1] - 0.5 - 1e-8)
                x1, y1 = np.floor(e[2] + 0.5 + 1e-8), np.ceil(e[3] - 0.5)
                if (int(y1 - y0), int(x1 - x0)) == rgba.shape[:2]:  # bottom row first, as _make_image's
                    return np.ascontiguousarray(rgba[::-1]), x0 / magnification, y0 / magnification, \
                        IdentityTransform()
            self.set_data(rgba)
            return super().make_image(renderer, magnification, unsampled)

    im = _PixelImage(ax, cmap=cmap, norm=norm, interpolation="nearest")
    # a 1 px stand-in for the data (set_data copies and masks what it is given) and the extent
    # imshow gives the picture: -0.5 .. size - 0.5, first row at the top
    im.set_data(np.zeros((1, 1, 4), np.uint8))
    im.set_extent((-0.5, rgba.shape[1] - 0.5, rgba.shape[0] - 0.5, -0.5))
    im.set_alpha(alpha)
    im.set_clip_path(ax.patch)
    ax.add_image(im)
    return im


def _scale_bar(ax: Any, *, ow: int, oh: int, um_per_px: float) -> None:
    """A round-length scale bar in the bottom-left corner of an image axis, on a white box."""
    from matplotlib.patches import Rectangle

    from .render import scale_bar_um

    length_um = scale_bar_um(ow * um_per_px)
    bar_px = length_um / um_per_px
    label = f"{length_um:g} um" if length_um < 1000 else f"{length_um / 1000:g} mm"
    x0, y1 = 0.03 * ow, oh - 0.03 * oh
    # above the region outlines (lines draw at zorder 2): none shows through the box
    ax.add_patch(Rectangle((x0 - 6, y1 - 0.075 * oh), max(bar_px, 0.12 * ow) + 12, 0.075 * oh + 6,
                           facecolor="white", edgecolor="none", alpha=0.85, zorder=3))
    ax.plot([x0, x0 + bar_px], [y1 - 4, y1 - 4], color="black", linewidth=3, solid_capstyle="butt", zorder=4)
    ax.text(x0, y1 - 12, label, fontsize=10, va="bottom", ha="left", color="black", zorder=4)


# QuPath colours of the classes of a multi-class model's regions, in class order
_CLASS_COLOURS = ([31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14], [148, 103, 189], [140, 86, 75],
                  [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207])


def heatmap_class_names(store: TileStore) -> tuple[str, ...] | None:
    """The class of each channel of a multi-class heatmap (c, y, x); None for one channel (2 classes)."""
    names = store.heatmap_meta().get("class_names")
    return tuple(names) if names else None


def check_heatmap(store: TileStore) -> None:
    """Read level 0 of the heatmap one chunk row at a time, so a damaged chunk or a value
    outside [0, 1] raises :class:`wsiscan.errors.DamagedChunkError` before anything is
    rewritten from it."""
    level0 = store.heatmap_level(0)
    step = level0.chunks[-2]
    for r in range(0, level0.shape[-2], step):
        level0[..., r : r + step, :]


def scored_cells(store: TileStore) -> np.ndarray:
    """Level 0 of the scored (positive) class: the whole heatmap for 2 classes, its channel for more.

    Read through :meth:`TileStore.heatmap_level`, so a damaged chunk or a value outside
    [0, 1] raises :class:`wsiscan.errors.DamagedChunkError` naming it."""
    level0 = store.heatmap_level(0)
    if level0.ndim == 2:
        return level0[...]
    return level0[int(store.heatmap_meta()["positive_class"])]


def export_class_regions(store: TileStore, frame: HeatmapFrame, path: str | Path, *, slide_name: str,
                         threshold: float, min_area_um2: float, simplify_tolerance_um: float,
                         on_channel: Callable[[int, np.ndarray], None] | None = None) -> list[dict[str, Any]]:
    """Regions of every class of a multi-class heatmap (c, y, x), written as one GeoJSON.

    Each region carries ``class_name`` and each feature is classified with it in QuPath.
    Returns the regions written.  Each class's level-0 channel is read once, and handed to
    ``on_channel(k, cells)`` for whatever else needs it.  A 2-class result's regions come
    from :func:`wsiscan.results.threshold_outputs` instead.
    """
    names = heatmap_class_names(store)
    if names is None:
        raise ValueError("export_class_regions needs a multi-class heatmap (one with class_names)")
    features, regions = [], []
    level0 = store.heatmap_level(0)
    for k, name in enumerate(names):
        cells = np.asarray(level0[k])
        if on_channel is not None:
            on_channel(k, cells)
        found = tumour_regions(cells, frame, threshold=threshold, min_area_um2=min_area_um2,
                               simplify_tolerance_um=simplify_tolerance_um)
        regions += [{**r, "class_name": name} for r in found]
        for f in geojson_collection(found, slide_name=slide_name, threshold=threshold, class_name=name)["features"]:
            f["id"] = f"{f['id']}-{name}"
            f["properties"]["classification"]["color"] = _CLASS_COLOURS[k % len(_CLASS_COLOURS)]
            f["properties"]["name"] = f"{name} " + f["properties"]["name"].split(" ", 1)[1]
            features.append(f)
    collection = {"type": "FeatureCollection", "features": features,
                  "properties": {"slide": slide_name, "threshold": threshold, "coordinates": "level-0 pixels",
                                 "classes": list(names)}}
    write_geojson_atomic(collection, path)
    return regions
