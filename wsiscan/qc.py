"""The pictures of a slide that people look at: its overview, and qc.png (tissue mask and scored tiles)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .render import render_tissue_qc, save_png_atomic
from .rowimage import RowImage

if TYPE_CHECKING:
    from .slide import Slide
    from .tiling import TilingPlan

__all__ = ["OVERVIEW_MIN_SIDE_PX", "read_overview", "overview_picture", "write_qc"]

PictureT = TypeVar("PictureT", RowImage, np.ndarray)  # a thumbnail: a RowImage or an array

OVERVIEW_MIN_SIDE_PX = 1000  # long side of the overview picture of a slide whose mask thumbnail is smaller


def read_overview(slide: Slide, thumbnail: PictureT, *, mask_mpp: float,
                  base_mpp: float) -> tuple[PictureT | np.ndarray, float]:
    """The mask thumbnail when its long side reaches ``OVERVIEW_MIN_SIDE_PX``; for a small
    slide, a sharper read of the whole slide with that long side (never finer than level 0).
    Returns the picture and its um/px."""
    rows, cols = thumbnail.shape[:2]
    if max(rows, cols) >= OVERVIEW_MIN_SIDE_PX:
        return thumbnail, mask_mpp
    finer_mpp = max(mask_mpp * max(rows, cols) / OVERVIEW_MIN_SIDE_PX, base_mpp)
    return slide.read_thumbnail(mpp=finer_mpp), finer_mpp


def overview_picture(plan: TilingPlan) -> tuple[RowImage | np.ndarray, float]:
    """The whole slide for pictures people look at, and its um/px (read when the plan was made):
    a RowImage or an array, which the pictures read a stripe at a time."""
    if plan.overview is None or plan.overview_mpp is None:
        return plan.thumbnail, plan.tissue.mask_mpp
    return plan.overview, plan.overview_mpp


def write_qc(plan: TilingPlan, path: Path, *, max_side_px: int = 2000) -> Path:
    """Thumbnail + mask outline + kept tiles, so a person can check the mask at a glance.

    When the mask thumbnail is small (a small slide), the sharper overview read with
    the plan is drawn instead, so that the tiles stay visible.  The thumbnail, mask, ink
    and unscored tissue (RowImages or arrays) are read a stripe at a time.
    """
    scale = plan.geometry.effective_mpp / plan.tissue.mask_mpp
    px = plan.grid.px_origin(plan.kept_rc).astype(np.float64)
    t = plan.grid.tile_size_px
    boxes = np.concatenate([px * scale, (px + t) * scale], axis=1)
    picture, _ = overview_picture(plan)
    # ink and unscored tissue in colours of their own, areas in the caption, a scale bar
    tissue = plan.tissue
    title = (f"{plan.slide_path.name}: {plan.n_tiles} scored tiles of {t} px at {plan.geometry.effective_mpp:.4g} "
             f"um/px, stride {plan.grid.stride_px} px. Tissue {tissue.tissue_area_um2 / 1e6:.3f} mm2, "
             f"{plan.scored_tissue_fraction:.1%} of it in scored tiles; pen ink {tissue.ink_area_um2 / 1e6:.3f} mm2.\n"
             f"green: tissue mask outline, blue: scored tiles, yellow: pen ink (not tissue), "
             f"red: tissue in no scored tile, pink tint: not tissue")
    img = render_tissue_qc(picture, tissue.mask, tile_boxes_thumb=boxes, title=title, max_side_px=max_side_px,
                           mask_mpp=tissue.mask_mpp, ink=tissue.ink, unscored=plan.unscored_tissue)
    return save_png_atomic(img, path)
