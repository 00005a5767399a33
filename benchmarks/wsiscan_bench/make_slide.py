"""Write a large, realistic pyramidal benchmark slide from the tissue of a small real one.

The tissue of ``CMU-1-Small-Region.svs`` (2220 x 2967 px at 0.499 um/px, H&E) is
resampled to the requested resolution (0.25 um/px by default: Lanczos, each source
pixel becomes about 2 x 2) and cut into "islands": rounded windows of the tissue,
each flipped / rotated by a multiple of 90 degrees, laid out in shelves on a glass
background with gaps between them until the requested tissue fraction is reached.

The slide is streamed: no level is ever held whole in memory.  Every level (level 0
and the reductions at 4x, 16x and 64x) is rendered tile by tile straight from the
island layout at that level's scale (the source is kept as a small box-averaged
pyramid, and islands sit on a 64 px lattice, so the levels agree pixel for pixel in
the tissue), JPEG-encoded in worker processes and handed to tifffile as an iterator
of encoded tiles.  The file is OpenSlide's "generic tiled TIFF" (each level a
top-level tiled page, reduced ones ``subfiletype=1``, resolution in centimetres), or
an Aperio SVS with ``--aperio``.

    python benchmarks/make_slide.py --size 20k -o bench-out/slides/bench-20k.tif
    python benchmarks/make_slide.py --width-px 30000 --height-px 20000 --tissue-fraction 0.2 -o /tmp/x.tif

The importable core is :func:`make_benchmark_slide`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["PRESETS", "DEFAULT_SOURCE", "Island", "make_benchmark_slide", "main"]

REPO = Path(__file__).resolve().parents[2]  # the checkout: this file is benchmarks/wsiscan_bench/make_slide.py
# WSISCAN_BENCH_SOURCE: another copy of it (benchmarks/gpu_check.sh carries one to a GPU machine)
DEFAULT_SOURCE = Path(os.environ.get("WSISCAN_BENCH_SOURCE")
                      or REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs")
PRESETS: dict[str, tuple[int, int]] = {
    "small": (8_000, 8_000),  # CI smoke runs: seconds
    "20k": (20_000, 20_000),  # the tiling benchmark
    "camelyon": (100_000, 100_000),  # a CAMELYON16-sized slide
}
GLASS_RGB = (240.0, 240.0, 238.0)
GLASS_NOISE = 2.0  # +- grey levels of per-pixel noise on the glass at level 0
GLASS_PERIOD_PX = 1000  # the glass noise repeats every this many px (not a multiple of the tile size)
DOWNSAMPLES = (1, 4, 16, 64)
LATTICE_PX = 64  # island positions, sizes and source windows are multiples of this (the largest downsample)
TILE_PX = 256
SAT_LOW, SAT_HIGH = 0.05, 0.11  # HSV saturation ramp of the source's tissue alpha (glass is ~0.01)
MIN_ISLAND_UM = 160.0  # shortest side of an island
MIN_WINDOW_TISSUE = 0.4  # a source window with less tissue than this (share of its box) is drawn again


@dataclass(frozen=True)
class Island:
    """One piece of tissue on the slide, in level-0 pixels (all multiples of LATTICE_PX)."""

    l0_x: int
    l0_y: int
    width_px: int
    height_px: int
    transform: int  # bit 4: transpose, bit 2: flip rows, bit 1: flip columns (the 8 flips/rotations)
    src_x: int  # origin of the window in the resampled source tissue (before the transform)
    src_y: int
    exponent: float  # super-ellipse exponent of the outline (2: ellipse, larger: squarer)
    harmonics: tuple[tuple[int, float, float], ...]  # (k, amplitude, phase) wobbles of the outline
    tissue_px: float  # level-0 px of tissue (sum of alpha), estimated at 16x


# -- the source tissue ------------------------------------------------------------


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max, float32."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32)
    mn = np.minimum(np.minimum(r, g), b).astype(np.float32)
    return (mx - mn) / np.maximum(mx, 1.0)


def _box_down(rgba: np.ndarray, f: int) -> np.ndarray:
    """Area average by ``f`` (the sides are multiples of ``f``), colour and alpha separately."""
    from PIL import Image

    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgba[..., :3])).reduce(f))
    alpha = np.asarray(Image.fromarray(np.ascontiguousarray(rgba[..., 3])).reduce(f))
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def load_source(source: str | Path, *, mpp: float) -> tuple[dict[int, np.ndarray], float]:
    """The source tissue at ``mpp``, cropped to its tissue box, as RGBA pyramids keyed by downsample.

    Alpha is a soft HSV-saturation mask (tissue 255, glass 0).  Returns the pyramid
    and the source's own resolution.
    """
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from wsiscan.slide import open_slide

    with open_slide(source) as slide:
        src_mpp = slide.require_mpp().mpp
        rgb = slide.read_level(level=0, lv_xy=(0, 0), size_px=slide.info.dimensions_px)
    # the mask at the source resolution (blurred a little so that it is soft), then resampled with the pixels
    sat = gaussian_filter(_saturation(rgb), sigma=1.0)
    alpha = np.clip((sat - SAT_LOW) / (SAT_HIGH - SAT_LOW), 0.0, 1.0)
    # the tissue box: rows and columns with a real share of tissue (drops thin strands and specks)
    col_share = alpha.mean(axis=0)
    row_share = alpha.mean(axis=1)
    cols = np.flatnonzero(col_share > 0.1 * col_share.max())
    rows = np.flatnonzero(row_share > 0.1 * row_share.max())
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    factor = src_mpp / mpp
    rgb = rgb[y0:y1, x0:x1]
    alpha = alpha[y0:y1, x0:x1]
    out_w, out_h = round(rgb.shape[1] * factor), round(rgb.shape[0] * factor)
    out_w -= out_w % LATTICE_PX
    out_h -= out_h % LATTICE_PX
    if out_w < LATTICE_PX or out_h < LATTICE_PX:
        raise ValueError(f"{source}: its tissue box is too small at {mpp} um/px; choose a finer --mpp")
    size = (round(rgb.shape[1] * factor), round(rgb.shape[0] * factor))
    up = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))[:out_h, :out_w]
    a = Image.fromarray(np.round(alpha * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    rgba = np.concatenate([up, np.asarray(a)[:out_h, :out_w, None]], axis=-1)
    pyramid = {1: np.ascontiguousarray(rgba)}
    prev = 1
    for ds in DOWNSAMPLES[1:]:
        pyramid[ds] = _box_down(pyramid[prev], ds // prev)
        prev = ds
    return pyramid, src_mpp


# -- island outlines and rendering ----------------------------------------------------


def _outline(island: Island, rows: np.ndarray, cols: np.ndarray, ds: int) -> np.ndarray:
    """Soft mask (rows, cols) of the island's rounded outline at island-local level-``ds`` px.

    A super-ellipse whose radius wobbles with the angle; the (costly) angle is only
    computed near the edge, where the wobble matters.
    """
    v = ((rows.astype(np.float32) + 0.5) * ds / island.height_px) * 2.0 - 1.0
    u = ((cols.astype(np.float32) + 0.5) * ds / island.width_px) * 2.0 - 1.0
    p = island.exponent
    rho = (np.abs(v)[:, None] ** p + np.abs(u)[None, :] ** p) ** (1.0 / p)
    soft = 6.0 / max(8.0, min(island.width_px, island.height_px) / ds)  # an edge about 3 level px wide
    r_max = 0.97
    r_min = r_max - sum(amp for _, amp, _ in island.harmonics)
    out = np.clip((r_max - rho) / soft + 0.5, 0.0, 1.0)
    edge = rho > r_min - soft
    if edge.any():
        er, ec = np.nonzero(edge)
        theta = np.arctan2(v[er], u[ec])
        radius = np.full(theta.shape, r_max, np.float32)
        for k, amp, phase in island.harmonics:
            radius -= amp * 0.5 * (1.0 + np.cos(k * theta + phase))
        out[er, ec] = np.clip((radius - rho[er, ec]) / soft + 0.5, 0.0, 1.0)
    return out


def _island_block(island: Island, src: np.ndarray, ds: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """RGBA (r1-r0, c1-c0, 4) of island-local level-``ds`` rows [r0, r1) and cols [c0, c1)."""
    ih, iw = island.height_px // ds, island.width_px // ds
    transpose, flip_r, flip_c = bool(island.transform & 4), bool(island.transform & 2), bool(island.transform & 1)
    # undo the flips (on island axes), then the transpose (island rows are source columns)
    ra, rb = (ih - r1, ih - r0) if flip_r else (r0, r1)
    ca, cb = (iw - c1, iw - c0) if flip_c else (c0, c1)
    sx, sy = island.src_x // ds, island.src_y // ds
    if transpose:
        block = src[sy + ca : sy + cb, sx + ra : sx + rb].transpose(1, 0, 2)
    else:
        block = src[sy + ra : sy + rb, sx + ca : sx + cb]
    if flip_r:
        block = block[::-1]
    if flip_c:
        block = block[:, ::-1]
    return block


def _glass_pattern(ds: int, seed: int) -> np.ndarray:
    """A GLASS_PERIOD_PX square of glass with per-pixel grey noise, repeated over the level (uint8 RGB)."""
    rng = np.random.default_rng([seed, ds])
    noise = rng.uniform(-GLASS_NOISE, GLASS_NOISE, (GLASS_PERIOD_PX, GLASS_PERIOD_PX)) / math.sqrt(ds)
    rgb = np.asarray(GLASS_RGB, np.float64)[None, None, :] + noise[..., None]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


class Mosaic:
    """An island layout over a ``width_px`` x ``height_px`` level-0 frame, renderable at any of DOWNSAMPLES."""

    def __init__(self, pyramid: dict[int, np.ndarray], islands: list[Island], *, width_px: int, height_px: int,
                 seed: int) -> None:
        self.pyramid = pyramid
        self.islands = islands
        self.width_px = width_px
        self.height_px = height_px
        self.seed = seed
        self._glass = {ds: _glass_pattern(ds, seed) for ds in DOWNSAMPLES}
        self._boxes = np.array([(i.l0_x, i.l0_y, i.l0_x + i.width_px, i.l0_y + i.height_px) for i in islands],
                               np.int64).reshape(-1, 4)

    def render(self, ds: int, lv_x0: int, lv_y0: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of level ``ds`` at level px (lv_x0, lv_y0)."""
        period = GLASS_PERIOD_PX
        rows = self._glass[ds][np.arange(lv_y0, lv_y0 + height) % period]
        ox = lv_x0 % period
        out = np.tile(rows, (1, (ox + width + period - 1) // period, 1))[:, ox : ox + width]
        l0 = np.array([lv_x0 * ds, lv_y0 * ds, (lv_x0 + width) * ds, (lv_y0 + height) * ds])
        b = self._boxes
        hit = np.flatnonzero((b[:, 0] < l0[2]) & (b[:, 2] > l0[0]) & (b[:, 1] < l0[3]) & (b[:, 3] > l0[1]))
        src = self.pyramid[ds]
        for idx in hit:
            isl = self.islands[idx]
            ix, iy = isl.l0_x // ds, isl.l0_y // ds
            iw, ih = isl.width_px // ds, isl.height_px // ds
            c0, c1 = max(lv_x0, ix) - ix, min(lv_x0 + width, ix + iw) - ix
            r0, r1 = max(lv_y0, iy) - iy, min(lv_y0 + height, iy + ih) - iy
            if c1 <= c0 or r1 <= r0:
                continue
            block = _island_block(isl, src, ds, r0, r1, c0, c1)
            a = block[..., 3] * np.float32(1.0 / 255.0) * _outline(isl, np.arange(r0, r1), np.arange(c0, c1), ds)
            view = out[iy + r0 - lv_y0 : iy + r1 - lv_y0, ix + c0 - lv_x0 : ix + c1 - lv_x0]
            glass = view.astype(np.float32)
            view[...] = glass + a[..., None] * (block[..., :3] - glass) + 0.5  # cast truncates: +0.5 rounds
        return out

    def island_tissue_px(self, island: Island, ds: int = 16) -> float:
        """Level-0 px of tissue in an island (sum of its alpha), estimated at downsample ``ds``."""
        ih, iw = island.height_px // ds, island.width_px // ds
        block = _island_block(island, self.pyramid[ds], ds, 0, ih, 0, iw)
        a = block[..., 3].astype(np.float32) / 255.0 * _outline(island, np.arange(ih), np.arange(iw), ds)
        return float(a.sum()) * ds * ds


# -- layout ---------------------------------------------------------------------------


def _snap(v: float) -> int:
    return int(v // LATTICE_PX) * LATTICE_PX


def layout_islands(pyramid: dict[int, np.ndarray], *, width_px: int, height_px: int, mpp: float,
                   tissue_fraction: float, seed: int) -> tuple[list[Island], float]:
    """Shelf-pack islands over the slide, then keep a random subset that reaches the tissue fraction.

    Returns the islands (in layout order) and the tissue fraction they give.
    """
    rng = np.random.default_rng(seed)
    src_h, src_w = pyramid[1].shape[:2]
    short = min(width_px, height_px)
    scale = min(1.0, short / 20_000)  # smaller slides: smaller gaps, margins and islands
    margin = max(LATTICE_PX, _snap(0.03 * short))
    cap = max(2 * LATTICE_PX, _snap(0.45 * short))  # no island larger than this on either side
    gap_lo, gap_hi = 30.0 / mpp * scale, 150.0 / mpp * scale  # 30-150 um between islands on a big slide
    # no slivers or specks: islands of at least MIN_ISLAND_UM (wsiscan drops tissue under 0.02 mm^2)
    min_side = min(cap, max(2 * LATTICE_PX, _snap(0.15 * min(cap, max(src_w, src_h))), _snap(MIN_ISLAND_UM / mpp)))
    probe = Mosaic(pyramid, [], width_px=width_px, height_px=height_px, seed=seed)
    candidates: list[Island] = []
    y = margin
    while y + min_side <= height_px - margin:
        long_side = min(max(src_w, src_h), cap, height_px - margin - y)
        row_h = max(min_side, _snap(rng.uniform(0.35, 1.0) * long_side))
        # orientations whose source window can fill most of the row's height
        fits = [t for t in range(8) if min(src_w if t & 4 else src_h, cap) >= 0.7 * row_h] or list(range(8))
        x = margin + _snap(rng.uniform(0, gap_hi))
        while True:
            t = int(rng.choice(fits))
            max_w, max_h = (src_h, src_w) if t & 4 else (src_w, src_h)  # island size limits after the transform
            h_max = min(row_h, max_h, cap)
            h = max(min(min_side, h_max), _snap(rng.uniform(0.75, 1.0) * h_max))
            w_max = min(max_w, cap, width_px - margin - x)
            if h < min_side or w_max < max(min_side, 0.3 * h):
                break  # the row is full
            w = max(_snap(rng.uniform(0.5, 1.0) * w_max), _snap(0.3 * h), min_side)
            dy = _snap(rng.uniform(0, row_h - h + 1))
            win_w, win_h = (h, w) if t & 4 else (w, h)  # the window in the source, before the transform
            harmonics = tuple((int(k), float(rng.uniform(0.0, 0.1) / math.sqrt(k)), float(rng.uniform(0, 2 * math.pi)))
                              for k in rng.choice([2, 3, 4, 5, 7, 9], size=4, replace=False))
            exponent = float(rng.uniform(2.5, 5.0))
            best = None
            for _ in range(6):  # draw the window a few times, keep the one with most tissue
                sx = _snap(rng.uniform(0, src_w - win_w + 1))
                sy = _snap(rng.uniform(0, src_h - win_h + 1))
                trial = Island(x, y + dy, w, h, t, sx, sy, exponent, harmonics, 0.0)
                tissue = probe.island_tissue_px(trial)
                if best is None or tissue > best.tissue_px:
                    best = Island(x, y + dy, w, h, t, sx, sy, exponent, harmonics, tissue)
                if tissue >= MIN_WINDOW_TISSUE * w * h:
                    break
            if best is not None and best.tissue_px >= 0.5 * MIN_WINDOW_TISSUE * w * h:
                candidates.append(best)
            x += w + max(LATTICE_PX, _snap(rng.uniform(gap_lo, gap_hi)))
        y += row_h + max(LATTICE_PX, _snap(rng.uniform(gap_lo, gap_hi)))
    target_px = tissue_fraction * width_px * height_px
    chosen: list[int] = []
    total = 0.0
    for idx in rng.permutation(len(candidates)):
        if total >= target_px:
            break
        tissue = candidates[idx].tissue_px
        if total + tissue - target_px > target_px - total:  # adding this one overshoots more than leaving it
            continue
        chosen.append(int(idx))
        total += tissue
    if not chosen and candidates:  # a tiny slide whose every island overshoots: take the closest
        chosen = [int(np.argmin([abs(c.tissue_px - target_px) for c in candidates]))]
        total = candidates[chosen[0]].tissue_px
    islands = [candidates[i] for i in sorted(chosen)]
    return islands, total / (width_px * height_px)


# -- encoding and writing --------------------------------------------------------------

_STATE: dict[str, Any] = {}  # the mosaic, in this process and (by fork) in the workers


def _encode_row(ds: int, ty: int, level_w: int, quality: int) -> list[bytes]:
    """JPEG tiles of tile row ``ty`` of level ``ds`` (full TILE_PX tiles; the edges are glass)."""
    import imagecodecs

    mosaic: Mosaic = _STATE["mosaic"]
    n_cols = math.ceil(level_w / TILE_PX)
    row = mosaic.render(ds, 0, ty * TILE_PX, n_cols * TILE_PX, TILE_PX)
    return [
        imagecodecs.jpeg_encode(np.ascontiguousarray(row[:, tx * TILE_PX : (tx + 1) * TILE_PX]), level=quality,
                                colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))
        for tx in range(n_cols)
    ]


def _tiles(ds: int, level_w: int, level_h: int, quality: int, pool: Any, workers: int,
           bar: Any) -> Iterator[bytes]:
    """The encoded tiles of one level in TIFF order, at most ``4 * workers`` rows in flight."""
    n_rows = math.ceil(level_h / TILE_PX)
    if pool is None:
        for ty in range(n_rows):
            yield from _encode_row(ds, ty, level_w, quality)
            bar.update(1)
        return
    pending: deque = deque()
    rows = iter(range(n_rows))
    for ty in rows:
        pending.append(pool.apply_async(_encode_row, (ds, ty, level_w, quality)))
        if len(pending) >= 4 * workers:
            yield from pending.popleft().get()
            bar.update(1)
    while pending:
        yield from pending.popleft().get()
        bar.update(1)


def _aperio_description(width_px: int, height_px: int, mpp: float, quality: int, level: int, ds: int) -> str:
    # OpenSlide's aperio driver reads "key = value" pairs after the first "|" (MPP, AppMag)
    lw, lh = width_px // ds, height_px // ds
    head = f"Aperio Image Library v12.0.0 \r\n{width_px}x{height_px} [0,0 {width_px}x{height_px}] ({TILE_PX}x{TILE_PX}) JPEG/RGB Q={quality}"
    if level:
        head += f" -> {lw}x{lh}"
    return head + f"|AppMag = {round(10.0 / mpp)}|MPP = {mpp:.4f}|Filename = wsiscan-benchmark"


def default_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def make_benchmark_slide(
    path: str | Path,
    *,
    width_px: int,
    height_px: int,
    mpp: float = 0.25,
    tissue_fraction: float = 0.3,
    seed: int = 0,
    source: str | Path = DEFAULT_SOURCE,
    quality: int = 90,
    workers: int | None = None,
    aperio: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a pyramidal JPEG slide of ``width_px`` x ``height_px`` level-0 px at ``mpp``; returns a summary.

    Levels are at downsample 1, 4, 16 and 64 (floor of the size), 256 px tiles.
    The same arguments always give the same pixels (``seed`` drives the layout).
    """
    import tifffile
    from tqdm import tqdm

    if width_px < 2 * LATTICE_PX or height_px < 2 * LATTICE_PX:
        raise ValueError(f"a benchmark slide must be at least {2 * LATTICE_PX} px on each side, not {width_px}x{height_px}")
    if not 0.0 < tissue_fraction <= 0.6:
        raise ValueError(f"tissue_fraction {tissue_fraction} is outside (0, 0.6]; real slides hold 5-40 % tissue")
    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pyramid, src_mpp = load_source(source, mpp=mpp)
    islands, achieved = layout_islands(pyramid, width_px=width_px, height_px=height_px, mpp=mpp,
                                       tissue_fraction=tissue_fraction, seed=seed)
    if achieved < 0.8 * tissue_fraction:
        warnings.warn(f"only {achieved:.1%} tissue fits on {width_px}x{height_px} px (asked for {tissue_fraction:.1%}); "
                      "the islands are limited by the slide's size", stacklevel=2)
    t_layout = time.perf_counter() - t0
    _STATE["mosaic"] = Mosaic(pyramid, islands, width_px=width_px, height_px=height_px, seed=seed)
    levels = [(width_px // ds, height_px // ds, ds) for ds in DOWNSAMPLES if width_px // ds and height_px // ds]
    n_workers = workers if workers is not None else default_workers()
    use_pool = n_workers > 1 and "fork" in mp.get_all_start_methods()  # workers inherit the mosaic by fork
    bigtiff = width_px * height_px * 3 > 2**31  # a classic TIFF holds 4 GiB, and JPEG never exceeds the raw size
    total_rows = sum(math.ceil(lh / TILE_PX) for _, lh, _ in levels)
    pool = mp.get_context("fork").Pool(n_workers) if use_pool else None
    bar = tqdm(total=total_rows, unit="row", desc=f"writing {path.name}", disable=not progress, leave=False)
    tmp = path.with_name(path.name + ".partial")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            for i, (lw, lh, ds) in enumerate(levels):
                res = 1e4 / (mpp * ds)
                tif.write(
                    _tiles(ds, lw, lh, quality, pool, n_workers, bar),
                    shape=(lh, lw, 3), dtype=np.uint8, tile=(TILE_PX, TILE_PX), photometric="rgb",
                    compression="jpeg", subsampling=(2, 2), subfiletype=0 if i == 0 else 1,
                    resolution=(res, res), resolutionunit="CENTIMETER", metadata=None,
                    description=_aperio_description(width_px, height_px, mpp, quality, i, ds) if aperio else None,
                    software="wsiscan benchmarks/make_slide.py",
                )
        os.replace(tmp, path)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        _STATE.clear()
        if tmp.exists():
            tmp.unlink()
    seconds = time.perf_counter() - t0
    return {
        "path": str(path),
        "dimensions_px": [width_px, height_px],
        "mpp": mpp,
        "levels": [{"dimensions_px": [lw, lh], "downsample": ds} for lw, lh, ds in levels],
        "format": "aperio-svs" if aperio else "generic-tiff",
        "tile_px": TILE_PX,
        "jpeg_quality": quality,
        "bigtiff": bigtiff,
        "source": str(Path(source).resolve()),
        "source_mpp": src_mpp,
        "seed": seed,
        "tissue_fraction_target": tissue_fraction,
        "tissue_fraction": achieved,
        "n_islands": len(islands),
        "workers": n_workers if use_pool else 1,
        "layout_s": t_layout,
        "seconds": seconds,
        "file_size_bytes": path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", type=Path, help="output .tif (default bench-out/slides/bench-<size>-seed<seed>.tif)")
    p.add_argument("--size", choices=sorted(PRESETS), default="small",
                   help="preset: small 8000x8000, 20k 20000x20000, camelyon 100000x100000 px (default small)")
    p.add_argument("--width-px", type=int, help="level-0 width in px (overrides --size)")
    p.add_argument("--height-px", type=int, help="level-0 height in px (overrides --size)")
    p.add_argument("--mpp", type=float, default=0.25, help="level-0 resolution in um/px (default 0.25)")
    p.add_argument("--tissue-fraction", type=float, default=0.3, help="share of the slide covered by tissue (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="layout seed (default 0)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"slide whose tissue is used (default {DEFAULT_SOURCE})")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: one per core, at most 16)")
    p.add_argument("--aperio", action="store_true", help="write an Aperio ImageDescription (OpenSlide vendor aperio)")
    args = p.parse_args(argv)
    width, height = PRESETS[args.size]
    width = args.width_px or width
    height = args.height_px or height
    label = args.size if not (args.width_px or args.height_px) else f"{width}x{height}"
    out = args.out or REPO / "bench-out" / "slides" / f"bench-{label}-seed{args.seed}.{'svs' if args.aperio else 'tif'}"
    info = make_benchmark_slide(out, width_px=width, height_px=height, mpp=args.mpp, tissue_fraction=args.tissue_fraction,
                                seed=args.seed, source=args.source, quality=args.quality, workers=args.workers,
                                aperio=args.aperio, progress=sys.stderr.isatty())
    print(f"wrote {info['path']}: {width}x{height} px at {args.mpp} um/px, {len(info['levels'])} levels, "
          f"{info['n_islands']} islands, {info['tissue_fraction']:.1%} tissue")
    print(f"{info['seconds']:.1f} s ({info['workers']} workers), {info['file_size_bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
