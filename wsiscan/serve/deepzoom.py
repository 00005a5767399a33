"""Deep-zoom tiles for the browser viewer: the slide (from its file or the tile store) and the heatmap.

The viewer's world is micrometres from the slide's top-left corner: OpenSeadragon places
each tiled image at its top-left corner in um (the slide at 0, the heatmap at the corner
of cell (0, 0)) with its width in um, so the slide, the heatmap and the region outlines
line up by construction, whatever their pixel sizes.

- :class:`StoreDeepZoom` has the interface of openslide's ``DeepZoomGenerator`` (which
  serves the slide file, see :meth:`wsiscan.slide.Slide.deep_zoom`) over the tile store's
  copy: the store's pixels, or its overview / thumbnail for the coarse levels.
- :class:`HeatmapDeepZoom` renders tiles of a virtual image of the heatmap, ``CELL_PX``
  px per cell at its finest level, coloured with a colormap; each tile reads only the
  heatmap chunks under it, from the coarsest OME-Zarr level that still has a cell per
  tile pixel.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..heatmap import HeatmapFrame

__all__ = ["HeatmapDeepZoom", "StoreDeepZoom", "colormap_lut", "dzi_xml", "level_dimensions"]

CELL_PX = 8  # heatmap px per cell at the heatmap image's finest level
HEATMAP_TILE_PX = 256


def dzi_xml(width_px: int, height_px: int, *, tile_size_px: int, overlap_px: int, fmt: str) -> str:
    """The Deep Zoom Image descriptor (the same XML openslide's ``get_dzi`` writes)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="{overlap_px}" '
            f'TileSize="{tile_size_px}"><Size Height="{height_px}" Width="{width_px}"/></Image>')


def level_dimensions(width_px: int, height_px: int) -> tuple[tuple[int, int], ...]:
    """Deep-zoom levels, coarsest (1 x 1 px) first, each half the next, as Microsoft's format defines."""
    dims = [(width_px, height_px)]
    while dims[-1] != (1, 1):
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return tuple(reversed(dims))


class _DeepZoomGrid:
    """Tile addressing shared by the generators: level sizes, tile boxes with overlap."""

    def __init__(self, width_px: int, height_px: int, *, tile_size_px: int, overlap_px: int) -> None:
        self.width_px, self.height_px = width_px, height_px
        self.tile_size_px, self.overlap_px = tile_size_px, overlap_px
        self.level_dimensions = level_dimensions(width_px, height_px)
        self.level_count = len(self.level_dimensions)

    def level_downsample(self, level: int) -> float:
        """Full-resolution px per px of ``level``."""
        return float(2 ** (self.level_count - 1 - level))

    def tile_box(self, level: int, address: tuple[int, int]) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) ``level`` px of tile ``address`` (col, row), overlap included; ValueError outside."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} outside 0..{self.level_count - 1}")
        col, row = address
        lw, lh = self.level_dimensions[level]
        t, o = self.tile_size_px, self.overlap_px
        if not (0 <= col * t < lw and 0 <= row * t < lh):
            raise ValueError(f"tile {col}_{row} outside level {level} ({lw} x {lh} px)")
        x0, y0 = col * t - (o if col else 0), row * t - (o if row else 0)
        return x0, y0, min((col + 1) * t + o, lw), min((row + 1) * t + o, lh)

    def get_dzi(self, fmt: str) -> str:
        return dzi_xml(self.width_px, self.height_px, tile_size_px=self.tile_size_px, overlap_px=self.overlap_px,
                       fmt=fmt)


def _read_box(array: Any, box: tuple[int, int, int, int]) -> np.ndarray:
    """(rows, cols, 3) uint8 of px box (x0, y0, x1, y1) of a (rows, cols, 3) array; outside is white.

    ``array`` may be a zarr array: slicing it reads only the chunks under the box."""
    x0, y0, x1, y1 = box
    h, w = array.shape[:2]
    out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = array[cy0:cy1, cx0:cx1]
    return out


class StoreDeepZoom(_DeepZoomGrid):
    """Deep-zoom tiles of the tile store's copy of the slide (at the model's um/px; glass away from tissue).

    ``sources`` are (array, store px per array px), finest first: the store's pixels, then
    its overview and thumbnail.  A tile is read from the coarsest source at least as
    fine as its level and area-averaged, so no tile reads more than ~4 tiles' worth.
    """

    def __init__(self, sources: Sequence[tuple[Any, float]], *, tile_size_px: int = 254, overlap_px: int = 1) -> None:
        h, w = sources[0][0].shape[:2]
        super().__init__(w, h, tile_size_px=tile_size_px, overlap_px=overlap_px)
        self.sources = tuple(sorted(sources, key=lambda s: s[1]))

    def get_tile(self, level: int, address: tuple[int, int]) -> Image.Image:
        x0, y0, x1, y1 = self.tile_box(level, address)
        ds = self.level_downsample(level)
        array, per_px = [s for s in self.sources if s[1] <= ds * 1.001][-1]
        f = ds / per_px  # source px per level px
        fx0, fy0, fx1, fy1 = x0 * f, y0 * f, x1 * f, y1 * f
        ix0, iy0, ix1, iy1 = math.floor(fx0), math.floor(fy0), math.ceil(fx1), math.ceil(fy1)
        region = _read_box(array, (ix0, iy0, ix1, iy1))
        img = Image.fromarray(region)
        if region.shape[:2] == (y1 - y0, x1 - x0):
            return img
        return img.resize((x1 - x0, y1 - y0), Image.Resampling.BOX, box=(fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0))


@functools.lru_cache(maxsize=4)
def colormap_lut(name: str = "inferno") -> np.ndarray:
    """(256, 4) uint8 RGBA of a matplotlib colormap: entry i is the colour of probability i / 255."""
    from matplotlib import colormaps

    lut = (colormaps[name](np.linspace(0.0, 1.0, 256)) * 255.0).round().astype(np.uint8)
    lut[:, 3] = 255
    lut.setflags(write=False)
    return lut


class HeatmapDeepZoom(_DeepZoomGrid):
    """Deep-zoom tiles (RGBA PNG) of the heatmap: ``CELL_PX`` x ``CELL_PX`` px per cell at the finest level.

    The image starts at the top-left corner of cell (0, 0), ``origin_um`` from the slide's
    corner on both axes, and spans the cell grid (``size_um``), so cell edges fall on whole
    px.  ``levels`` are the OME-Zarr heatmap levels (level k holds NaN-aware means of
    2**k x 2**k level-0 cells), read lazily.  Non-tissue (NaN) is transparent.
    """

    def __init__(self, levels: Sequence[Any], frame: HeatmapFrame, *, colormap: str = "inferno",
                 tile_size_px: int = HEATMAP_TILE_PX) -> None:
        self.frame = frame
        self.levels = list(levels)
        n_rows, n_cols = self.levels[0].shape[:2]
        super().__init__(max(1, n_cols * CELL_PX), max(1, n_rows * CELL_PX), tile_size_px=tile_size_px, overlap_px=0)
        self.hm_mpp = frame.cell_um / CELL_PX
        self.origin_um = frame.offset_px * frame.px_mpp
        self.size_um = (n_cols * frame.cell_um, n_rows * frame.cell_um)
        self.lut = colormap_lut(colormap)

    @staticmethod
    def _cell_indices(start_px: int, stop_px: int, ds: float, k: int) -> np.ndarray:
        """Heatmap level-k cell index of each level px centre in [start_px, stop_px)."""
        c0 = np.floor((np.arange(start_px, stop_px) + 0.5) * ds / CELL_PX).astype(np.int64)
        return c0 >> k

    def get_tile(self, level: int, address: tuple[int, int]) -> Image.Image:
        x0, y0, x1, y1 = self.tile_box(level, address)
        ds = self.level_downsample(level)
        cells_per_px = ds / CELL_PX
        k = min(max(0, int(math.floor(math.log2(cells_per_px)))) if cells_per_px >= 2 else 0, len(self.levels) - 1)
        array = self.levels[k]
        rows, cols = self._cell_indices(y0, y1, ds, k), self._cell_indices(x0, x1, ds, k)
        ok_r, ok_c = rows < array.shape[0], cols < array.shape[1]
        rgba = np.zeros((y1 - y0, x1 - x0, 4), np.uint8)
        if ok_r.any() and ok_c.any():
            r0, r1 = int(rows[ok_r].min()), int(rows[ok_r].max()) + 1
            c0, c1 = int(cols[ok_c].min()), int(cols[ok_c].max()) + 1
            block = np.asarray(array[r0:r1, c0:c1], np.float32)  # only the chunks under this tile
            values = block[np.ix_(rows[ok_r] - r0, cols[ok_c] - c0)]
            finite = np.isfinite(values)
            index = np.clip(np.round(np.where(finite, values, 0.0) * 255.0), 0, 255).astype(np.uint8)
            colours = self.lut[index]
            colours[~finite] = 0
            rgba[np.ix_(ok_r, ok_c)] = colours
        return Image.fromarray(rgba, "RGBA")
