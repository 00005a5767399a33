"""Pure geometry: pyramid level choice for a target resolution, and the tile grid.

Frames (prefixes): ``l0_`` level-0 pixels, ``lv_`` pixels of the level read, ``px_``
pixels of the tile store (at the effective target resolution), ``rc`` grid row/col,
``hm_`` heatmap cells.  Tuples are (x, y) / (width, height); arrays are (rows, cols).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ResolutionError

__all__ = [
    "LevelSelection",
    "select_level",
    "StoreGeometry",
    "store_geometry",
    "TileGrid",
    "build_grid",
    "tile_coverage",
    "TileCoverage",
    "grid_border",
    "cell_offset_px",
    "coarsest_level_within",
    "paste_overlap",
]


@dataclass(frozen=True)
class LevelSelection:
    """Which pyramid level to read for a requested resolution, and how to resample it."""

    requested_mpp: float
    level: int
    level_mpp: float
    effective_mpp: float  # resolution of the pixels actually produced
    resample: bool  # False: the level is read as-is (it is within tolerance of the request)
    lv_per_px: float  # level px per output px (1.0 when not resampling)


def select_level(
    *, requested_mpp: float, level_mpps: tuple[float, ...], tolerance: float, source: str = "slide"
) -> LevelSelection:
    """Choose the pyramid level to cut patches at ``requested_mpp`` from.

    1. A level within ``tolerance`` (relative) of the request is read as-is: no
       resampling, and the pixels keep that level's true resolution.
    2. Otherwise the coarsest level finer than the request is read and downsampled
       with area averaging to exactly the requested resolution.
    3. If every level is coarser than the request beyond the tolerance, the slide
       cannot provide it: upsampling would invent detail, so this raises.
    """
    if requested_mpp <= 0:
        raise ResolutionError(f"{source}: requested resolution {requested_mpp} um/px is not positive")
    close = [
        (abs(m / requested_mpp - 1.0), i) for i, m in enumerate(level_mpps) if abs(m / requested_mpp - 1.0) <= tolerance
    ]
    if close:
        _, i = min(close)
        return LevelSelection(requested_mpp, i, level_mpps[i], level_mpps[i], False, 1.0)
    # no level equals the request (that one would be close): a finer one is strictly finer
    i_finer = coarsest_level_within(level_mpps, max_mpp=requested_mpp)
    if i_finer is None:
        available = ", ".join(f"level {i}: {m:.4g}" for i, m in enumerate(level_mpps))
        raise ResolutionError(
            f"{source}: cannot provide {requested_mpp:g} um/px without upsampling; "
            f"its resolutions are {available} um/px; use a model or --target-mpp at "
            f"{min(level_mpps):.4g} um/px or coarser, or a higher-magnification scan"
        )
    m = level_mpps[i_finer]
    return LevelSelection(requested_mpp, i_finer, m, requested_mpp, True, requested_mpp / m)


def coarsest_level_within(level_mpps: tuple[float, ...], *, max_mpp: float) -> int | None:
    """Index of the coarsest level whose resolution is ``max_mpp`` um/px or finer (of equal
    ones the last); None when every level is coarser."""
    within = [(m, i) for i, m in enumerate(level_mpps) if m <= max_mpp]
    return max(within)[1] if within else None


@dataclass(frozen=True)
class StoreGeometry:
    """The pixel frame of the tile store: the whole slide at ``effective_mpp``."""

    effective_mpp: float
    l0_per_px: float  # level-0 px per store px
    width_px: int  # the slide, plus ``pad_px`` of glass on the right and bottom
    height_px: int
    supertile_px: int
    pad_px: int = 0  # glass (white) past the slide's right and bottom edges, so the last tiles fit

    @property
    def slide_width_px(self) -> int:
        """Width of the slide itself in store px (without the glass padding)."""
        return self.width_px - self.pad_px

    @property
    def slide_height_px(self) -> int:
        return self.height_px - self.pad_px

    @property
    def n_chunk_rows(self) -> int:
        return math.ceil(self.height_px / self.supertile_px)

    @property
    def n_chunk_cols(self) -> int:
        return math.ceil(self.width_px / self.supertile_px)

    def chunk_box_px(self, ci: int, cj: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of chunk (row ci, col cj) in store px, clipped to the slide."""
        s = self.supertile_px
        return (cj * s, ci * s, min((cj + 1) * s, self.width_px), min((ci + 1) * s, self.height_px))

    def chunks_in_box(self, px_box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        """(ci, cj) row-major of the chunks that store-px box (x0, y0, x1, y1) overlaps inside the store."""
        x0, y0, x1, y1 = px_box
        s = self.supertile_px
        x1, y1 = min(x1, self.width_px), min(y1, self.height_px)
        if x1 <= x0 or y1 <= y0:
            return []
        return [(ci, cj) for ci in range(max(y0, 0) // s, (y1 - 1) // s + 1)
                for cj in range(max(x0, 0) // s, (x1 - 1) // s + 1)]


def paste_overlap(dst: np.ndarray, dst_xy: tuple[int, int], src: np.ndarray, src_xy: tuple[int, int]) -> None:
    """Copy into ``dst`` the part of ``src`` that overlaps it, both (rows, cols, ...) arrays
    placed at top-left px (x, y) of one frame (``dst_xy``, ``src_xy``)."""
    x0, y0 = dst_xy
    sx0, sy0 = src_xy
    ax0, ay0 = max(x0, sx0), max(y0, sy0)
    ax1, ay1 = min(x0 + dst.shape[1], sx0 + src.shape[1]), min(y0 + dst.shape[0], sy0 + src.shape[0])
    if ax1 > ax0 and ay1 > ay0:
        dst[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = src[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]


def store_geometry(
    *, l0_dimensions_px: tuple[int, int], base_mpp: float, selection: LevelSelection, supertile_px: int,
    pad_px: int = 0,
) -> StoreGeometry:
    """The store frame: the slide at the effective resolution, plus ``pad_px`` of glass past
    its right and bottom edges (one tile's worth lets the last partial row and column of
    tiles be scored, see :func:`build_grid`); the padding reads as white, like glass."""
    l0_per_px = selection.effective_mpp / base_mpp
    width = int(math.floor(l0_dimensions_px[0] / l0_per_px + 1e-6))
    height = int(math.floor(l0_dimensions_px[1] / l0_per_px + 1e-6))
    return StoreGeometry(selection.effective_mpp, l0_per_px, width + pad_px, height + pad_px, supertile_px, pad_px)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile_size_px`` every ``stride_px`` over a ``width_px`` x ``height_px`` frame.

    Tile (r, c) has its top-left corner at store px (c * stride, r * stride).  The grid
    covers the whole slide: the last row and column reach past its bottom and right
    edges into the store's glass padding (see :func:`build_grid`).  Order is row-major.
    """

    tile_size_px: int
    stride_px: int
    n_rows: int
    n_cols: int

    @property
    def n_tiles(self) -> int:
        return self.n_rows * self.n_cols

    def px_origin(self, rc: np.ndarray) -> np.ndarray:
        """(N, 2) store-px (x, y) of the tiles at (N, 2) grid (row, col)."""
        rc = np.asarray(rc, np.int64)
        return np.stack([rc[:, 1] * self.stride_px, rc[:, 0] * self.stride_px], axis=1)

    @property
    def hm_offset_px(self) -> float:
        """Store px from a tile's origin to the origin of its heatmap cell.

        Heatmap cell (r, c) is the ``stride`` x ``stride`` square centred on tile
        (r, c): for a 96 px tile at stride 32 it is the tile's centre 32 x 32 px, the
        region a PCam label describes; at stride 96 it is the tile itself.
        """
        return cell_offset_px(tile_size_px=self.tile_size_px, stride_px=self.stride_px)


def cell_offset_px(*, tile_size_px: int, stride_px: int) -> float:
    """Store px from a tile's origin to the origin of its heatmap cell, the ``stride_px``
    square centred on the tile (see :attr:`TileGrid.hm_offset_px`)."""
    return (tile_size_px - stride_px) / 2.0


def _grid_count(size_px: int, tile_size_px: int, stride_px: int, pad_px: int) -> int:
    """Tiles along one axis: enough to reach the slide's last pixel (the last tile may hang
    past the edge into at most ``pad_px`` of glass); none when the slide is under one tile."""
    if size_px < tile_size_px:
        return 0
    n = -(-(size_px - tile_size_px) // stride_px) + 1  # ceil: the last tile reaches the edge
    while n > 1 and (n - 1) * stride_px + tile_size_px > size_px + pad_px:
        n -= 1  # not enough glass padding for the last one: it stays inside the frame
    return n


def build_grid(*, width_px: int, height_px: int, tile_size_px: int, stride_px: int, pad_px: int = 0) -> TileGrid:
    """The tile grid over a slide of ``width_px`` x ``height_px`` store px.

    With ``pad_px`` >= ``tile_size_px`` of glass past the right and bottom edges (as
    :func:`store_geometry` adds it), the last partial row and column are scored: their
    tiles are padded with glass, as the peers do (hs2p, TIAToolbox).  With no padding,
    tiles lie entirely inside the slide and up to ``stride_px`` - 1 px at the right and
    bottom are in no tile.
    """
    return TileGrid(tile_size_px, stride_px, _grid_count(height_px, tile_size_px, stride_px, pad_px),
                    _grid_count(width_px, tile_size_px, stride_px, pad_px))


def grid_border(grid: TileGrid, rc: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each grid (row, col) lies in the grid's first or last row or column."""
    rc = np.asarray(rc).reshape(-1, 2)
    border: np.ndarray = (rc[:, 0] == 0) | (rc[:, 1] == 0) | (rc[:, 0] == grid.n_rows - 1) | (rc[:, 1] == grid.n_cols - 1)
    return border


def tile_coverage(mask_shape: tuple[int, int], *, mask_mpp: float, px_mpp: float, px_xy: np.ndarray,
                  tile_size_px: int) -> np.ndarray:
    """(rows, cols) bool over a mask at ``mask_mpp``: whether each mask pixel's centre lies
    inside one of the tiles at store-px origins ``px_xy`` (N, 2) (x, y) of ``px_mpp``.

    The coverage is constant between the tiles' edges: a difference image over the distinct
    edges only (a few hundred a side, not the mask's thousands of pixels), summed, then
    each of its cells repeated over the mask pixels it spans.  The whole mask at once: for
    a large mask, :class:`TileCoverage` gives it a stripe of rows at a time.
    """
    table = TileCoverage(mask_shape, mask_mpp=mask_mpp, px_mpp=px_mpp, px_xy=px_xy, tile_size_px=tile_size_px)
    covered = table.covered
    return np.repeat(np.repeat(covered, np.diff(table.xs), axis=1), np.diff(table.ys), axis=0)


class TileCoverage:
    """:func:`tile_coverage`, row by row: built once from the tiles (a table over their
    distinct edges, small), then :meth:`rows` gives the coverage of any stripe of mask rows."""

    def __init__(self, mask_shape: tuple[int, int], *, mask_mpp: float, px_mpp: float, px_xy: np.ndarray,
                 tile_size_px: int) -> None:
        rows, cols = mask_shape
        self.shape = (int(rows), int(cols))
        scale = px_mpp / mask_mpp  # mask px per store px
        px_xy = np.asarray(px_xy, np.float64).reshape(-1, 2)
        # pixel j's centre (j + 0.5) / scale lies in [x0, x0 + t)  <=>  j in [ceil(x0 s - 0.5), ceil((x0 + t) s - 0.5))
        x0 = np.clip(np.ceil(px_xy[:, 0] * scale - 0.5 - 1e-9), 0, cols).astype(np.int64)
        x1 = np.clip(np.ceil((px_xy[:, 0] + tile_size_px) * scale - 0.5 - 1e-9), 0, cols).astype(np.int64)
        y0 = np.clip(np.ceil(px_xy[:, 1] * scale - 0.5 - 1e-9), 0, rows).astype(np.int64)
        y1 = np.clip(np.ceil((px_xy[:, 1] + tile_size_px) * scale - 0.5 - 1e-9), 0, rows).astype(np.int64)
        xs = np.unique(np.concatenate([[0, cols], x0, x1]))  # edges: cell k spans [xs[k], xs[k + 1])
        ys = np.unique(np.concatenate([[0, rows], y0, y1]))
        diff = np.zeros((len(ys), len(xs)), np.int32)
        x0, x1, y0, y1 = (np.searchsorted(e, v) for e, v in ((xs, x0), (xs, x1), (ys, y0), (ys, y1)))
        np.add.at(diff, (y0, x0), 1)
        np.add.at(diff, (y0, x1), -1)
        np.add.at(diff, (y1, x0), -1)
        np.add.at(diff, (y1, x1), 1)
        np.cumsum(diff, axis=0, out=diff)
        np.cumsum(diff, axis=1, out=diff)
        self.xs, self.ys = xs, ys
        self.covered: np.ndarray = diff[:-1, :-1] > 0  # (cell rows, cell cols): cell (i, k) has a tile

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """(y1 - y0, cols) bool: the coverage of mask rows ``y0:y1``: the cell rows they cross,
        each repeated over its mask columns and over its mask rows inside the stripe."""
        if not 0 <= y0 <= y1 <= self.shape[0]:
            raise IndexError(f"rows {y0}:{y1} outside 0:{self.shape[0]}")
        if y0 == y1:
            return np.zeros((0, self.shape[1]), bool)
        k0 = int(np.searchsorted(self.ys, y0, side="right")) - 1  # cell row of mask row y0
        k1 = int(np.searchsorted(self.ys, y1 - 1, side="right"))  # past the cell row of mask row y1 - 1
        in_stripe = np.diff(np.clip(self.ys[k0 : k1 + 1], y0, y1))  # mask rows of each cell row in the stripe
        return np.repeat(np.repeat(self.covered[k0:k1], np.diff(self.xs), axis=1), in_stripe, axis=0)
