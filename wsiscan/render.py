"""Pictures for people: the tissue QC image and (later) heatmap overlays.  PIL only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["render_tissue_qc", "save_png_atomic", "fit_size", "resize_box"]


def fit_size(width: int, height: int, max_side_px: int) -> tuple[int, int, float]:
    """(w, h, scale) of an image fitted within ``max_side_px`` (never enlarged)."""
    scale = min(1.0, max_side_px / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def resize_box(image: np.ndarray, size: tuple[int, int], *, stripe_rows: int = 64) -> np.ndarray:
    """``image`` (rows, cols[, channels]) uint8 area-averaged to ``size`` (width, height).

    PIL's BOX resize of the whole image (within one grey level: a stripe's box starts at a
    fractional row, which rounds some weights differently), computed a stripe of output
    rows at a time: PIL copies its input (RGB into 4 bytes a pixel), which for the
    6,250 x 6,250 px thumbnail of a 100,000 px slide was a 156 MB temporary.
    """
    h, w = image.shape[:2]
    ow, oh = size
    scale_y = h / oh
    out = np.empty((oh, ow) + image.shape[2:], np.uint8)
    for r0 in range(0, oh, stripe_rows):
        r1 = min(oh, r0 + stripe_rows)
        y0, y1 = r0 * scale_y, r1 * scale_y
        iy0, iy1 = int(np.floor(y0)), min(h, int(np.ceil(y1)))
        part = Image.fromarray(np.ascontiguousarray(image[iy0:iy1]))
        out[r0:r1] = np.asarray(part.resize((ow, r1 - r0), Image.Resampling.BOX, box=(0, y0 - iy0, w, y1 - iy0)))
    return out


def save_png_atomic(image: Image.Image, path: str | Path) -> Path:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG", optimize=False)
    os.replace(tmp, p)
    return p


def render_tissue_qc(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    *,
    tile_boxes_thumb: np.ndarray,
    title: str,
    max_side_px: int = 2000,
) -> Image.Image:
    """Thumbnail with the tissue mask outlined (green) and the kept tiles drawn (blue).

    ``tile_boxes_thumb`` is (N, 4) x0, y0, x1, y1 in thumbnail pixels.
    """
    h, w = mask.shape
    ow, oh, scale = fit_size(w, h, max_side_px)
    if thumbnail.shape[:2] != mask.shape:  # a sharper picture than the mask was given
        ow, oh = thumbnail.shape[1], thumbnail.shape[0]
        ow, oh, extra = fit_size(ow, oh, max_side_px)
        scale = ow / w
    base = Image.fromarray(resize_box(thumbnail, (ow, oh)))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((ow, oh), Image.Resampling.NEAREST)) > 0
    # light tint outside tissue so the mask reads at a glance
    arr = np.asarray(base).astype(np.float32)
    arr[~small_mask] = arr[~small_mask] * 0.6 + np.array([255, 200, 200]) * 0.4
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    boxes = np.asarray(tile_boxes_thumb, np.float64) * scale
    fill = boxes.shape[0] and (boxes[0, 2] - boxes[0, 0]) < 4
    for x0, y0, x1, y1 in boxes:
        if fill:
            draw.rectangle((x0, y0, x1, y1), outline=None, fill=(40, 90, 220))
        else:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(40, 90, 220))
    edge = small_mask & ~ndimage.binary_erosion(small_mask, iterations=max(1, round(ow / 800)))
    out = np.asarray(img).copy()
    out[edge] = (0, 200, 0)
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    lines = title.split("\n")
    canvas = Image.new("RGB", (ow, oh + 14 * len(lines) + 6), (255, 255, 255))
    canvas.paste(img, (0, 14 * len(lines) + 6))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, 3 + 14 * k), line, fill=(0, 0, 0))
    return canvas
