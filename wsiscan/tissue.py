"""Tissue detection on a low-resolution thumbnail.  Pure: arrays and numbers in, values out.

The mask is HSV saturation above an Otsu threshold (never below a floor), with
over-dark and over-bright pixels removed, then closed, cleaned of small islands and
filled in small holes, all with sizes in um and um^2.

Pen ink (blue, green, red, black marker) is found first by colour rules in HSV, as
histolab's pen filters and HistoQC's pen-marking module do (:func:`detect_ink`), and
left out of the pixels the Otsu threshold is chosen from, so a thumbnail ringed with
ink cannot move the threshold; ink pixels are then removed from the final mask.  Per tile, three numbers are
measured on the thumbnail under the tile's footprint: the tissue fraction, the
fraction of over-dark/over-bright pixels and the maximum saturation of the blurred
thumbnail (PCam's own rule keeps a patch when it reaches 0.07).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from .config import TissueConfig
from .grid import cell_offset_px

_STRIPE_ROWS = 256  # rows per stripe of the stripe-wise passes over a mask

__all__ = ["TissueMask", "TileScores", "detect_tissue", "detect_ink", "keep_tiles", "cell_tissue_fractions", "score_tiles", "otsu_threshold", "summed_area_table", "box_counts",
           "usable_cores"]


@dataclass(frozen=True)
class TissueMask:
    mask: np.ndarray  # (rows, cols) bool, True = tissue
    # the two below are needed only by score_tiles; a plan drops them once tiles are scored
    saturation: np.ndarray | None  # (rows, cols) float32, blurred HSV saturation in [0, 1]
    dark_bright: np.ndarray | None  # (rows, cols) bool, over-dark or over-bright pixel
    mask_mpp: float  # um per mask pixel
    threshold: float  # saturation threshold used
    ink: np.ndarray | None = None  # (rows, cols) bool, pen ink found (never tissue); None: filter off

    @property
    def tissue_area_um2(self) -> float:
        return float(np.count_nonzero(self.mask)) * self.mask_mpp**2

    @property
    def ink_area_um2(self) -> float:
        return 0.0 if self.ink is None else float(np.count_nonzero(self.ink)) * self.mask_mpp**2


@dataclass(frozen=True)
class TileScores:
    tissue_fraction: np.ndarray  # (N,) float32
    dark_bright_fraction: np.ndarray  # (N,) float32
    max_saturation: np.ndarray  # (N,) float32


def otsu_threshold(values: np.ndarray, *, bins: int = 256, where: np.ndarray | None = None) -> float:
    """Otsu's threshold of values in [0, 1] (only those where ``where`` is True, if given)."""
    if where is None:
        hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    else:  # stripe by stripe: no copy of the selected values
        hist = np.zeros(bins, np.int64)
        for r0 in range(0, values.shape[0], _STRIPE_ROWS):
            h, edges = np.histogram(values[r0 : r0 + _STRIPE_ROWS][where[r0 : r0 + _STRIPE_ROWS]], bins=bins,
                                    range=(0.0, 1.0))
            hist += h
    hist = hist.astype(np.float64)
    if hist.sum() == 0:
        return 1.0
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def usable_cores(*, at_most: int = 8) -> int:
    """Cores this process may run on (its CPU affinity), at most ``at_most``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(at_most, cores))


def _threads() -> int:
    """Threads of the striped passes (a function of its own so that tests can set it)."""
    return usable_cores()


def _stripe_bounds(n_rows: int) -> np.ndarray | None:
    """Row bounds of the stripes of an image of ``n_rows`` rows (about four per thread), or None
    where one piece is better (one thread, or a small image)."""
    threads = _threads()
    if threads == 1 or n_rows < 4 * _STRIPE_ROWS:
        return None
    return np.linspace(0, n_rows, min(4 * threads, n_rows // _STRIPE_ROWS) + 1).astype(int)


def _stripewise(fn: Callable[..., np.ndarray], *arrays: np.ndarray, halo: int) -> np.ndarray:
    """``fn(*arrays)`` computed on horizontal stripes in threads, each stripe read with
    ``halo`` rows of its neighbours on either side, which are dropped from its result.

    Exact for any ``fn`` whose output row depends only on input rows within ``halo`` of it
    (pointwise maps, separable filters, morphology by a structure of that radius): at the
    image's own top and bottom a stripe's edge is the image's edge, as in one call.
    numpy and scipy.ndimage release the GIL, so stripes run in parallel.
    """
    n = arrays[0].shape[0]
    bounds = _stripe_bounds(n)
    if bounds is None:
        return fn(*arrays)

    def part(k: int) -> np.ndarray:
        a, b = int(bounds[k]), int(bounds[k + 1])
        lo, hi = max(0, a - halo), min(n, b + halo)
        return fn(*(x[lo:hi] for x in arrays))[a - lo : b - lo]

    # the first stripe tells the output's type; the others are written into it as they come,
    # so at most one stripe per thread exists beside the output (no concatenation copy)
    first = part(0)
    out = np.empty((n,) + first.shape[1:], first.dtype)
    out[: bounds[1]] = first
    del first

    def write(k: int) -> None:
        out[bounds[k] : bounds[k + 1]] = part(k)

    with ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="wsiscan-tissue") as pool:
        list(pool.map(write, range(1, len(bounds) - 1)))
    return out


def _stripewise_at(fn: Callable[[np.ndarray], np.ndarray], array: np.ndarray, *, halo: int, ys: np.ndarray,
                   xs: np.ndarray) -> np.ndarray:
    """``fn(array)[ys, xs]`` computed on the stripes of :func:`_stripewise`, each stripe's
    result sampled at the points that fall in it and then dropped: no output the size of
    ``array`` is ever made (the same values, under the same condition on ``fn``)."""
    n = array.shape[0]
    bounds = _stripe_bounds(n)
    if bounds is None:
        whole: np.ndarray = fn(array)[ys, xs]
        return whole
    stripe_of = np.searchsorted(bounds, ys, side="right") - 1
    # the points of each stripe, and (filled by the threads) their values
    points = [np.flatnonzero(stripe_of == k) for k in range(len(bounds) - 1)]
    parts: list[np.ndarray | None] = [None] * len(points)

    def part(k: int) -> None:
        a, b = int(bounds[k]), int(bounds[k + 1])
        lo, hi = max(0, a - halo), min(n, b + halo)
        sel = points[k]
        parts[k] = fn(array[lo:hi])[ys[sel] - lo, xs[sel]] if len(sel) else None

    with ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="wsiscan-tissue") as pool:
        list(pool.map(part, range(len(points))))
    first = next((p for p in parts if p is not None), None)
    out = np.empty(len(ys), first.dtype if first is not None else array.dtype)
    for sel, values in zip(points, parts, strict=True):
        if values is not None:
            out[sel] = values
    return out


def saturation_of(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an RGB uint8 image, float32.

    Channel max and min are taken plane by plane in uint8, so no float32 copy of the whole
    image (four times its size) is made.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    np.subtract(mx, mn, out=mn)  # max - min >= 0: no wrap-around in uint8
    out: np.ndarray = mn.astype(np.float32)
    np.divide(out, mx, out=out, where=mx > 0)
    return out


def gray_of(rgb: np.ndarray) -> np.ndarray:
    """Mean of the three channels, float32, summed in uint16 (no float32 copy of the image)."""
    total = rgb[..., 0].astype(np.uint16)
    total += rgb[..., 1]
    total += rgb[..., 2]
    gray = total.astype(np.float32)
    gray /= np.float32(3)
    return gray


def _hue_deg(rgb: np.ndarray, value: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of an RGB uint8 image, given its max and max - min (float32)."""
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    c = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(value == r, ((g - b) / c) % 6.0, np.where(value == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return (hue * 60.0).astype(np.float32)


# Pen ink colour rules on the thumbnail (HSV: hue in degrees, saturation and value in [0, 1]).
# H&E is pink to purple (hue ~250-350 deg: eosin ~300-345, haematoxylin ~250-300, measured on
# CMU-1 and TCGA-CR-7395 thumbnails); marker ink is blue, green, red or black.  A pixel is ink when:
INK_BLUE = (175.0, 245.0, 0.25)  # hue from, hue to, min saturation: blue and cyan marker
INK_GREEN = (65.0, 175.0, 0.15)  # green marker (H&E never has green hues)
INK_RED = (352.0, 20.0, 0.55)  # hue wraps through 0: saturated red marker (eosin is pinker and paler)
INK_DEEP_RED = (335.0, 0.80)  # red marker over haematoxylin turns crimson: hue from 335, saturation
# above any H&E pixel's (99.9th percentile 0.72 on CMU-1, 0.78 on TCGA-CR-7395)
INK_BLACK = (0.30, 0.40, 0.12)  # black marker: max channel below 0.30 and saturation below 0.40 (dense
# nuclei are as dark but purple: saturation 0.5-0.7, max channel >= 0.16 on CMU-1), or max channel
# below 0.12 whatever the saturation (black ink over tissue); pure-black scanner padding is not ink
INK_MIN_AREA_UM2 = 4000.0  # an ink blob smaller than this is a speck of dye or debris, not a pen stroke
INK_MARGIN_UM = 4.0  # ink grows by this much: the anti-aliased, paler rim of a stroke is ink too


# A pixel can be ink only when it is dark enough for the black rule (max channel below
# INK_BLACK's 0.30 * 255 = 76.5) or saturated enough for a colour rule (saturation at least
# INK_GREEN's 0.15, the lowest): a pixel with max channel >= 77 and (max - min) * 100 < 14 * max
# (saturation below 0.14) is ink by no rule, so the rules run on the other pixels only.
_INK_CANDIDATE_MIN_MAX = 77
_INK_CANDIDATE_SAT_PERCENT = 14


def detect_ink(rgb: np.ndarray) -> np.ndarray:
    """(rows, cols) bool: pixels of an RGB uint8 image that are pen ink by colour (before the margin).

    The colour rules (:func:`_ink_rules`, float32 HSV) run only on the pixels that could meet
    one of them, a cheap integer test on max and min channel: pixel by pixel the same
    result as running them on every pixel, for a quarter of the work on a slide with
    glass around its tissue."""
    mx = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    chroma = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    np.subtract(mx, chroma, out=chroma)  # max - min >= 0: no wrap-around in uint8
    candidate = chroma.astype(np.uint16)
    candidate *= 100
    limit = mx.astype(np.uint16)
    limit *= _INK_CANDIDATE_SAT_PERCENT
    cand: np.ndarray = candidate >= limit
    del candidate, limit, chroma
    cand |= mx < _INK_CANDIDATE_MIN_MAX
    del mx
    ink = np.zeros(rgb.shape[:2], bool)
    if cand.any():
        ink[cand] = _ink_rules(rgb[cand])
    return ink


def _ink_rules(rgb: np.ndarray) -> np.ndarray:
    """(...) bool: the pen-ink colour rules on RGB uint8 pixels (..., 3), in float32 HSV."""
    mx = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.float32)
    mn = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.float32)
    chroma = mx - mn
    sat = np.divide(chroma, mx, out=np.zeros_like(mx), where=mx > 0)
    hue = _hue_deg(rgb, mx, chroma)
    ink = np.zeros(rgb.shape[:-1], bool)
    for lo, hi, min_sat in (INK_BLUE, INK_GREEN):
        ink |= (hue >= lo) & (hue < hi) & (sat >= min_sat)
    lo, hi, min_sat = INK_RED
    ink |= ((hue >= lo) | (hue < hi)) & (sat >= min_sat)
    lo, min_sat = INK_DEEP_RED
    ink |= ((hue >= lo) | (hue < hi)) & (sat >= min_sat)
    max_value, max_sat, black_value = INK_BLACK
    ink |= ((mx < max_value * 255.0) & (sat < max_sat) | (mx < black_value * 255.0)) & (mx > 0)
    return ink


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndimage.label(mask)`` (4-connected) into uint16 labels when they fit: half the memory of
    its int32 default (156 MB on a 6,250 px mask), in the planning peak.  With more than 65,535
    parts scipy refuses the narrow type (after labelling once more into int32 itself) and the
    int32 labelling is made as before."""
    labels = np.empty(mask.shape, np.uint16)
    try:
        n = int(ndimage.label(mask, output=labels))
    except RuntimeError:  # scipy: "insufficient bit-depth in requested output type"
        del labels
        wide, n_wide = ndimage.label(mask)
        return np.asarray(wide), int(n_wide)
    return labels, n


def _label_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels per label 0..n of a label image, counted a stripe at a time: bincount converts
    its input to int64, so a whole label image would make an int64 temporary of its size."""
    sizes = np.zeros(n + 1, np.int64)
    for r0 in range(0, labels.shape[0], _STRIPE_ROWS):
        sizes += np.bincount(labels[r0 : r0 + _STRIPE_ROWS].ravel(), minlength=n + 1)
    return sizes


def remove_small(mask: np.ndarray, min_px: int, *, count: np.ndarray | None = None) -> np.ndarray:
    """``mask`` without its (4-)connected parts of fewer than ``min_px`` pixels; with ``count``,
    a part's size is its number of ``count`` pixels, and only those are returned."""
    if min_px <= 1 or not mask.any():
        return mask if count is None else mask & count
    labels, n = _label(mask)
    keep = _label_sizes(labels if count is None else np.where(count, labels, 0), n) >= min_px
    keep[0] = False
    kept: np.ndarray = keep[labels]
    return kept if count is None else kept & count


def _disk_rows(radius_px: float) -> list[tuple[int, int]]:
    """(dy, half width) of each row of the digital disk x^2 + y^2 <= radius^2."""
    r = int(math.ceil(radius_px))
    return [(dy, int(math.floor(math.sqrt(radius_px**2 - dy * dy)))) for dy in range(-r, r + 1)
            if dy * dy <= radius_px**2]


def dilate_or_erode_disk(mask: np.ndarray, radius_px: float, *, dilate: bool) -> np.ndarray:
    """Binary dilation or erosion by a disk, outside the image False (scipy's border_value=0).

    The disk is a union of horizontal segments: one 1-D max (min) filter per distinct
    segment width, then one OR (AND) per row of the disk, shifted.  The same result as
    ``ndimage.binary_dilation``/``binary_erosion`` with the disk as structure (tested),
    in about half the time on a 6,250 x 6,250 px mask.
    """
    rows = _disk_rows(radius_px)
    filt = ndimage.maximum_filter1d if dilate else ndimage.minimum_filter1d
    u8 = mask.view(np.uint8)
    lines = {w: filt(u8, size=2 * w + 1, axis=1, mode="constant", cval=0).view(bool) for w in {w for _, w in rows}}
    n = mask.shape[0]
    out = np.zeros_like(mask) if dilate else np.ones_like(mask)
    for dy, w in rows:  # out[y] (op)= lines[w][y + dy], rows outside the image are False
        line = lines[w]
        dst, src = (out[: n - dy], line[dy:]) if dy >= 0 else (out[-dy:], line[: n + dy])
        if dilate:
            dst |= src
        else:
            dst &= src
            if dy > 0:
                out[n - dy :] = False
            elif dy < 0:
                out[:-dy] = False
    return out


def close_disk(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Morphological closing by a disk, padded so that tissue touching the border is not eroded."""
    r = int(math.ceil(radius_px))
    padded = np.pad(mask, r, mode="constant")
    dilated = _stripewise(lambda m: dilate_or_erode_disk(m, radius_px, dilate=True), padded, halo=r)
    closed = _stripewise(lambda m: dilate_or_erode_disk(m, radius_px, dilate=False), dilated, halo=r)
    return closed[r:-r, r:-r]


def small_holes(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Holes of ``mask`` (4-connected background parts not touching the border, as
    ``ndimage.binary_fill_holes`` finds them) smaller than ``min_px`` pixels.

    One labelling of the background gives both the holes and their sizes.
    """
    if min_px <= 1 or mask.all():
        return np.zeros_like(mask)
    labels, n = _label(~mask)
    touches_border = np.zeros(n + 1, bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        touches_border[edge] = True
    small = (_label_sizes(labels, n) < min_px) & ~touches_border
    small[0] = False
    holes: np.ndarray = small[labels]
    return holes


def detect_tissue(thumbnail: np.ndarray, *, mask_mpp: float, config: TissueConfig) -> TissueMask:
    """Tissue mask of an RGB uint8 ``thumbnail`` whose pixels are ``mask_mpp`` um wide."""
    sigma_px = config.blur_sigma_um / mask_mpp
    ink = None
    if config.ink_filter:
        ink = remove_small(_stripewise(detect_ink, thumbnail, halo=0), int(INK_MIN_AREA_UM2 / mask_mpp**2))
        margin_px = INK_MARGIN_UM / mask_mpp
        if margin_px >= 1 and ink.any():
            ink = _stripewise(lambda m: dilate_or_erode_disk(m, margin_px, dilate=True), ink,
                              halo=int(math.ceil(margin_px)))
    sat = _stripewise(saturation_of, thumbnail, halo=0)
    if ink is not None and ink.any():  # ink's saturation must not bleed through the blur onto the glass beside it
        sat[ink] = 0.0
    if sigma_px > 0.3:  # scipy's kernel reaches int(4 sigma + 0.5) px (truncate=4)
        sat = _stripewise(lambda x: ndimage.gaussian_filter(x, sigma_px), sat, halo=int(4.0 * sigma_px + 0.5) + 1)

    def dark_or_bright(rgb: np.ndarray) -> np.ndarray:
        gray = gray_of(rgb)
        return (gray < config.dark_threshold) | (gray > config.bright_threshold)

    dark_bright = _stripewise(dark_or_bright, thumbnail, halo=0)
    usable = ~dark_bright if ink is None else ~(dark_bright | ink)

    otsu = otsu_threshold(sat, where=usable) if usable.any() else 1.0
    threshold = max(otsu, config.min_saturation)
    mask = sat >= threshold
    mask &= usable
    del usable

    radius_px = config.closing_radius_um / mask_mpp
    if radius_px >= 1:
        mask = close_disk(mask, radius_px)
    min_object_px = int(config.min_object_area_um2 / mask_mpp**2)
    min_hole_px = int(config.min_hole_area_um2 / mask_mpp**2)
    if ink is None or not ink.any():
        mask = remove_small(mask, min_object_px)
        mask |= small_holes(mask, min_hole_px)
    else:
        # a stroke across tissue must neither cut it into islands that then count as small
        # nor open its holes: sizes and holes are those of tissue + ink, then ink is removed
        # (it is never tissue, even where the closing bridged it)
        joined = mask | ink
        mask = remove_small(joined, min_object_px, count=mask)
        mask |= small_holes(joined, min_hole_px)
        mask &= ~ink
    return TissueMask(mask=mask, saturation=sat, dark_bright=dark_bright,
                      mask_mpp=mask_mpp, threshold=float(threshold), ink=ink)


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """(rows + 1, cols + 1) counts of True in ``mask`` above and left of each corner.

    Built in place in int32 where the count fits: a float64 table and its temporaries
    would take several times the memory.
    """
    rows, cols = mask.shape
    integral = np.zeros((rows + 1, cols + 1), np.int32 if rows * cols < 2**31 else np.int64)
    integral[1:, 1:] = mask
    threads = _threads()
    if threads == 1 or rows < 4 * _STRIPE_ROWS:
        np.cumsum(integral, axis=0, out=integral)
        np.cumsum(integral, axis=1, out=integral)
        return integral
    # in threads, exact in integers: each stripe of rows is summed down its columns and
    # along its rows on its own, then shifted by the column sums of the stripes above it
    bounds = np.linspace(1, rows + 1, 2 * threads + 1).astype(int)
    stripes = [integral[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def local(view: np.ndarray) -> None:
        np.cumsum(view, axis=0, out=view)
        np.cumsum(view, axis=1, out=view)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsiscan-tissue") as pool:
        list(pool.map(local, stripes))
        offsets = np.cumsum([v[-1] for v in stripes[:-1]], axis=0, dtype=integral.dtype)

        def shift(k: int) -> None:
            stripes[k] += offsets[k - 1]

        list(pool.map(shift, range(1, len(stripes))))
    return integral


def box_counts(integral: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """True pixels in each box [y0, y1) x [x0, x1) (index arrays broadcast) from a :func:`summed_area_table`."""
    counts: np.ndarray = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return counts


def keep_tiles(scores: TileScores, *, min_tissue: float, max_dark_bright_fraction: float,
               min_max_saturation: float, cell_tissue_fraction: np.ndarray | None = None,
               on_grid_border: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: the tiles to score.  The keep rule.

    A tile is kept when it has tissue of the mask (measured on boxes rounded outward to
    whole mask pixels) and at least ``min_tissue`` of its footprint is tissue.  "Has
    tissue": its heatmap cell (the stride x stride square centred on it,
    ``cell_tissue_fraction``) holds tissue, or, for a tile on the grid's border
    (``on_grid_border``), its footprint does (the strips of (tile - stride) / 2 px along
    the slide's edges lie in no cell).  Without cell fractions, the footprint decides.
    The cells tile the slide, and a cell lies inside its tile, so with ``min_tissue`` 0 (the
    default) every tissue pixel lies in a kept tile of a grid that covers the slide (see
    ``grid.tile_coverage``); at stride 32 this is PCam's own rule (a label describes the
    centre 32 x 32 px), at stride 96 cell and footprint are the same.  PCam's
    rule (the blurred footprint's maximum saturation reaches ``min_max_saturation``)
    and the over-dark/over-bright rule drop a tile only when it also has less tissue than
    the dark/bright part allows: a border tile that is mostly glass is still scored.
    """
    tf = scores.tissue_fraction
    has_tissue = tf > 0
    if cell_tissue_fraction is not None:
        border = on_grid_border if on_grid_border is not None else np.zeros(len(tf), bool)
        has_tissue = (cell_tissue_fraction > 0) | (border & has_tissue)
    keep = has_tissue & (tf >= min_tissue) & (scores.max_saturation >= min_max_saturation)
    mostly_dark_bright = scores.dark_bright_fraction > max_dark_bright_fraction
    # dark/bright pixels are never tissue in the mask (before closing), so a tile whose
    # tissue could not fit beside its dark/bright part is a fold, dust or blown-out tile
    keep &= ~(mostly_dark_bright & (tf + scores.dark_bright_fraction > 1.0 + 1e-6))
    return keep


def _box_fractions(mask: np.ndarray, *, px_xy: np.ndarray, size_px: float,
                   scale: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Fraction of True in each box of side ``size_px`` (store px) at origins ``px_xy`` (N, 2),
    rounded outward to whole mask pixels (at least one; ``scale`` mask px per store px);
    and the boxes' top-left mask pixels (y0, x0)."""
    rows, cols = mask.shape
    px_xy = np.asarray(px_xy, np.float64).reshape(-1, 2)
    x0 = np.clip(np.floor(px_xy[:, 0] * scale + 1e-6).astype(np.int64), 0, cols - 1)
    y0 = np.clip(np.floor(px_xy[:, 1] * scale + 1e-6).astype(np.int64), 0, rows - 1)
    x1 = np.clip(np.ceil((px_xy[:, 0] + size_px) * scale - 1e-6).astype(np.int64), x0 + 1, cols)
    y1 = np.clip(np.ceil((px_xy[:, 1] + size_px) * scale - 1e-6).astype(np.int64), y0 + 1, rows)
    area = (x1 - x0) * (y1 - y0)
    return box_counts(summed_area_table(mask), y0, x0, y1, x1) / area, (y0, x0)


def cell_tissue_fractions(tissue: TissueMask, *, px_xy: np.ndarray, tile_size_px: int, stride_px: int,
                          px_mpp: float) -> np.ndarray:
    """(N,) float32: tissue fraction of each tile's heatmap cell, the ``stride_px`` square
    centred on the tile at store-px origin ``px_xy`` (see :func:`keep_tiles`)."""
    offset_px = cell_offset_px(tile_size_px=tile_size_px, stride_px=stride_px)
    frac, _ = _box_fractions(tissue.mask, px_xy=np.asarray(px_xy, np.float64) + offset_px, size_px=stride_px,
                             scale=px_mpp / tissue.mask_mpp)
    return frac.astype(np.float32)


def score_tiles(tissue: TissueMask, *, px_xy: np.ndarray, tile_size_px: int, px_mpp: float) -> TileScores:
    """Measure each tile's footprint on the mask.

    ``px_xy`` (N, 2) holds tile origins in store px at ``px_mpp`` um/px.  Footprints
    are rounded to whole mask pixels (at least one).
    """
    if tissue.saturation is None or tissue.dark_bright is None:
        raise ValueError("score_tiles needs the TissueMask returned by detect_tissue (its saturation was dropped)")
    scale = px_mpp / tissue.mask_mpp
    tissue_fraction, (y0, x0) = _box_fractions(tissue.mask, px_xy=px_xy, size_px=tile_size_px, scale=scale)
    dark_bright_fraction, _ = _box_fractions(tissue.dark_bright, px_xy=px_xy, size_px=tile_size_px, scale=scale)

    # max saturation under each footprint: a running maximum over the footprint size,
    # sampled at each footprint's top-left corner
    # (stripe by stripe, sampled: no running-maximum image the size of the mask is kept)
    fw = max(1, int(round(tile_size_px * scale)))
    max_saturation = _stripewise_at(
        lambda x: ndimage.maximum_filter(x, size=fw, origin=-(fw // 2) if fw > 1 else 0, mode="nearest"),
        tissue.saturation, halo=fw, ys=y0, xs=x0)
    return TileScores(
        tissue_fraction=tissue_fraction.astype(np.float32),
        dark_bright_fraction=dark_bright_fraction.astype(np.float32),
        max_saturation=max_saturation.astype(np.float32),
    )
