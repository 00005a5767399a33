"""What a slide's scan keeps: the grid tiles to score, the store chunks to decode, the TIFF tiles to read.

Each rule widens the one before by what the next stage can reach: a kept tile has
tissue under its heatmap cell (or footprint, see :func:`wsiscan.tissue.keep_tiles`); a
store chunk is needed when a tile that could be kept, at any stride, could touch it (the
mask dilated by one tile); a TIFF tile of the level read is decoded when such a tile,
or the box filter of its resampling, could read one of its pixels (glass skip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TileConfig, TissueConfig
from .grid import StoreGeometry, TileGrid, grid_border
from .tissue import (
    TileScores,
    TissueMask,
    cell_tissue_fractions,
    keep_tiles,
    mask_box_counts,
    score_tiles,
)

__all__ = ["GLASS_MARGIN_PX", "KeptTiles", "boxes_near_tissue", "chunks_needed", "glass_tile_keep", "keep_grid_tiles"]

# Glass skip: a TIFF tile of the level read is decoded only when some tile (patch) that could
# be kept, at any stride, could use one of its pixels: when it lies within one patch plus this
# margin (store px) of a tissue pixel of the mask.  The margin covers the box filter of a
# resampled read, whose output px reads the level px under it plus a partial one on each side.
GLASS_MARGIN_PX = 4


@dataclass(frozen=True)
class KeptTiles:
    """The grid tiles to score and their footprint scores, row-major."""

    rc: np.ndarray  # (N, 2) int32 row, col
    scores: TileScores


def keep_grid_tiles(tissue: TissueMask, grid: TileGrid, *, px_mpp: float, tile: TileConfig,
                    tissue_config: TissueConfig) -> KeptTiles:
    """Score every tile of ``grid`` on the mask (store px at ``px_mpp``) and keep those the
    keep rule of :func:`wsiscan.tissue.keep_tiles` accepts (none kept: an empty result)."""
    rr, cc = np.meshgrid(np.arange(grid.n_rows), np.arange(grid.n_cols), indexing="ij")
    all_rc = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int32)
    px_xy = grid.px_origin(all_rc)
    scores = score_tiles(tissue, px_xy=px_xy, tile_size_px=grid.tile_size_px, px_mpp=px_mpp)
    # a tile's heatmap cell has tissue, or on the grid's border its footprint
    keep = keep_tiles(scores, min_tissue=tile.min_tissue,
                      max_dark_bright_fraction=tissue_config.max_dark_bright_fraction,
                      min_max_saturation=tissue_config.pcam_min_max_saturation,
                      cell_tissue_fraction=cell_tissue_fractions(tissue, px_xy=px_xy, tile_size_px=grid.tile_size_px,
                                                                 stride_px=grid.stride_px, px_mpp=px_mpp),
                      on_grid_border=grid_border(grid, all_rc))
    return KeptTiles(all_rc[keep], TileScores(scores.tissue_fraction[keep], scores.dark_bright_fraction[keep],
                                              scores.max_saturation[keep]))


def boxes_near_tissue(tissue: TissueMask, *, px_mpp: float, x0_px: np.ndarray, x1_px: np.ndarray,
                      y0_px: np.ndarray, y1_px: np.ndarray, reach_px: float) -> np.ndarray:
    """(len(y0_px), len(x0_px)) bool: whether the box [x0, x1) x [y0, y1) (store px at
    ``px_mpp``), grown by ``reach_px`` on every side, holds a tissue pixel of the mask."""
    rows, cols = tissue.mask.shape
    scale = px_mpp / tissue.mask_mpp  # mask px per store px

    def mask_range(a_px: np.ndarray, b_px: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        m0 = np.clip(np.floor((a_px - reach_px) * scale), 0, limit).astype(np.int64)
        m1 = np.clip(np.ceil((b_px + reach_px) * scale), 0, limit).astype(np.int64)
        return m0, m1

    mx0, mx1 = mask_range(x0_px, x1_px, cols)
    my0, my1 = mask_range(y0_px, y1_px, rows)
    near: np.ndarray = mask_box_counts(tissue.mask, my0[:, None], mx0[None, :], my1[:, None], mx1[None, :]) > 0
    return near


def chunks_needed(geometry: StoreGeometry, tissue: TissueMask, grid: TileGrid, kept_rc: np.ndarray) -> np.ndarray:
    """(n_chunk_rows, n_chunk_cols) bool: chunks any tile with tissue could touch, at any
    stride (the mask dilated by one tile), and every kept tile's chunks."""
    n_r, n_c = geometry.n_chunk_rows, geometry.n_chunk_cols
    s, w, h, t = geometry.supertile_px, geometry.width_px, geometry.height_px, grid.tile_size_px
    px_x0 = np.arange(n_c) * s
    px_y0 = np.arange(n_r) * s
    needed = boxes_near_tissue(tissue, px_mpp=geometry.effective_mpp, x0_px=px_x0, x1_px=np.minimum(px_x0 + s, w),
                               y0_px=px_y0, y1_px=np.minimum(px_y0 + s, h), reach_px=t)
    # every kept tile's chunks, whatever the mask says (min_tissue may be 0)
    if len(kept_rc):
        px = grid.px_origin(kept_rc)
        for dx in (0, t - 1):
            for dy in (0, t - 1):
                ci = np.minimum((px[:, 1] + dy) // s, n_r - 1)
                cj = np.minimum((px[:, 0] + dx) // s, n_c - 1)
                needed[ci, cj] = True
    return needed


def glass_tile_keep(tissue: TissueMask, *, lv_tile_layout: tuple[tuple[int, int], tuple[int, int]],
                    lv_per_px: float, px_mpp: float, tile_size_px: int) -> np.ndarray:
    """(tile rows, cols) bool over the TIFF tiles of the level read: True where a tile must be decoded.

    The rule of :func:`chunks_needed` (the mask dilated by one patch) at TIFF-tile
    granularity, plus ``GLASS_MARGIN_PX``: a kept patch has tissue under its footprint,
    so it lies within one patch of a tissue pixel, whatever the stride; every level px
    it, or its resampling, reads is in a kept tile.  ``lv_tile_layout``: ((tile w, h),
    (rows, cols)) of the level read; ``lv_per_px``: level px per store px.
    """
    (tw, th), (n_tr, n_tc) = lv_tile_layout
    lv_x0 = np.arange(n_tc, dtype=np.float64) * tw
    lv_y0 = np.arange(n_tr, dtype=np.float64) * th
    return boxes_near_tissue(tissue, px_mpp=px_mpp, x0_px=lv_x0 / lv_per_px, x1_px=(lv_x0 + tw) / lv_per_px,
                             y0_px=lv_y0 / lv_per_px, y1_px=(lv_y0 + th) / lv_per_px,
                             reach_px=tile_size_px + GLASS_MARGIN_PX)
