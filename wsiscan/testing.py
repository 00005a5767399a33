"""Synthetic slides and fixtures shared by tests, benchmarks and the viewer plugin.

Slides are written with tifffile as OpenSlide's "generic tiled TIFF": every pyramid
level is a top-level tiled page (levels after the first marked reduced-resolution,
``subfiletype=1``) with resolution tags in centimetres, which OpenSlide turns into
``openslide.mpp-x/y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "SyntheticSlide",
    "synthetic_tissue",
    "write_synthetic_slide",
    "write_tiled_tiff",
]

BACKGROUND = 243  # glass, just under the over-bright cut of 245


@dataclass(frozen=True)
class SyntheticSlide:
    path: Path
    dimensions_px: tuple[int, int]
    mpp: float | None
    tissue_boxes_l0: tuple[tuple[int, int, int, int], ...]  # (x0, y0, x1, y1) level-0 px


def synthetic_tissue(
    y0: int, y1: int, x0: int, x1: int, *, boxes: tuple[tuple[int, int, int, int], ...], seed: int = 0
) -> np.ndarray:
    """RGB uint8 pixels of rows [y0, y1) and cols [x0, x1) of a synthetic slide.

    Glass is a flat light grey.  Inside each tissue box, an H&E-like pink/purple whose
    darkness varies smoothly with position (so a model sees different patches), plus
    a fixed per-pixel noise so JPEG and area averaging have real texture to work on.
    The same (x, y) always gives the same colour, whatever block it is read in.
    """
    # a column of y and a row of x (float32): every expression below broadcasts them to the
    # block, element by element the same float32 arithmetic as on two full coordinate grids
    yy = np.arange(y0, y1).astype(np.float32)[:, None]
    xx = np.arange(x0, x1).astype(np.float32)[None, :]
    out = np.full((y1 - y0, x1 - x0, 3), BACKGROUND, np.uint8)
    inside = np.zeros((y1 - y0, x1 - x0), bool)
    for bx0, by0, bx1, by1 in boxes:
        inside |= ((yy >= by0) & (yy < by1)) & ((xx >= bx0) & (xx < bx1))
    if inside.any():
        f = 0.5 + 0.5 * np.sin(xx / 353.0) * np.cos(yy / 287.0)  # 0..1, smooth
        noise = ((xx * 7919 + yy * 104729 + seed * 31) % 17 - 8).astype(np.float32)
        for channel, (base, depth) in enumerate(((235, 90), (150, 100), (200, 40))):
            value = base - depth * f + noise
            out[..., channel][inside] = np.clip(value[inside], 0, 255).astype(np.uint8)
    return out


def _tiles(level_shape: tuple[int, int], tile_px: int, downsample: int,
           boxes: tuple[tuple[int, int, int, int], ...], white: bool) -> Iterator[np.ndarray]:
    h, w = level_shape
    for ty in range(0, h, tile_px):
        for tx in range(0, w, tile_px):
            if white:
                yield np.full((tile_px, tile_px, 3), 255, np.uint8)
                continue
            # render at level 0 and area-average down, as a scanner's pyramid would
            y0, x0 = ty * downsample, tx * downsample
            full = synthetic_tissue(y0, y0 + tile_px * downsample, x0, x0 + tile_px * downsample, boxes=boxes)
            if downsample > 1:  # the mean of each block (an exact integer sum, then one division)
                sums = full.reshape(tile_px, downsample, tile_px, downsample, 3).sum(axis=(1, 3), dtype=np.uint32)
                full = np.round(sums / float(downsample * downsample))
            yield full.astype(np.uint8)


def write_tiled_tiff(
    path: str | Path,
    *,
    dimensions_px: tuple[int, int],
    mpp: float | None,
    downsamples: tuple[int, ...] = (1, 4),
    boxes: tuple[tuple[int, int, int, int], ...] = (),
    tile_px: int = 256,
    compression: str | None = "zlib",
    resolution_unit: str = "CENTIMETER",
    resolution_dpi: float | None = None,
    white: bool = False,
) -> Path:
    """Write a pyramidal tiled TIFF that OpenSlide opens as generic-tiff.

    ``mpp`` None writes no resolution tags; ``resolution_dpi`` writes that many
    pixels per inch instead (72 gives the implausible 352.8 um/px of many exports).
    """
    import tifffile

    path = Path(path)
    w, h = dimensions_px
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, ds in enumerate(downsamples):
            lw, lh = w // ds, h // ds
            kwargs: dict = {}
            if resolution_dpi is not None:
                kwargs.update(resolution=(resolution_dpi, resolution_dpi), resolutionunit="INCH")
            elif mpp is not None:
                res = 1e4 / (mpp * ds)
                kwargs.update(resolution=(res, res), resolutionunit=resolution_unit)
            tif.write(
                _tiles((lh, lw), tile_px, ds, boxes, white),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_px, tile_px),
                photometric="rgb",
                compression=compression,
                subfiletype=0 if i == 0 else 1,
                metadata=None,
                **kwargs,
            )
    return path


def write_synthetic_slide(
    path: str | Path,
    *,
    dimensions_px: tuple[int, int] = (4096, 3072),
    mpp: float | None = 0.486,
    downsamples: tuple[int, ...] = (1, 4),
    boxes: tuple[tuple[int, int, int, int], ...] | None = None,
    compression: str | None = "zlib",
    **kwargs,
) -> SyntheticSlide:
    """A small pyramidal slide with tissue in known level-0 boxes.

    The default (4096 x 3072 px at 0.486 um/px, so 2x down to PCam's 0.972) has two
    tissue islands.
    """
    if boxes is None:
        w, h = dimensions_px
        boxes = (
            (w // 8, h // 6, w // 2, h // 2 + h // 6),
            (w // 2 + w // 8, h // 2, w - w // 8, h - h // 8),
        )
    write_tiled_tiff(path, dimensions_px=dimensions_px, mpp=mpp, downsamples=downsamples, boxes=boxes,
                     compression=compression, **kwargs)
    return SyntheticSlide(Path(path), dimensions_px, mpp, tuple(boxes))
