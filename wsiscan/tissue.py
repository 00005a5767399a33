"""Tissue detection on a low-resolution thumbnail.  Pure: a picture and numbers in, values out.

The thumbnail and the pictures of the result are RowImages (:mod:`wsiscan.rowimage`),
read and written in row stripes, so memory holds a few stripes whatever the slide's size.

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

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from scipy import ndimage

from .config import TissueConfig
from .grid import cell_offset_px
from .rowimage import RowImage, as_row_image

_STRIPE_ROWS = 256  # rows per stripe of otsu_threshold's histogram with a selection

__all__ = ["TissueMask", "TileScores", "detect_tissue", "detect_ink", "keep_tiles", "cell_tissue_fractions", "score_tiles", "otsu_threshold", "summed_area_table", "box_counts",
           "mask_box_counts", "window_max_at", "usable_cores"]


@dataclass(frozen=True)
class TissueMask:
    """The pictures of :func:`detect_tissue`, each a :class:`~wsiscan.rowimage.RowImage`
    at ``mask_mpp`` (arrays given are wrapped, without a copy)."""

    mask: RowImage  # (rows, cols) bool, True = tissue
    # the two below are needed only by score_tiles; a plan drops them once tiles are scored
    saturation: RowImage | None  # (rows, cols) float32, blurred HSV saturation in [0, 1]
    dark_bright: RowImage | None  # (rows, cols) bool, over-dark or over-bright pixel
    mask_mpp: float  # um per mask pixel
    threshold: float  # saturation threshold used
    ink: RowImage | None = None  # (rows, cols) bool, pen ink found (never tissue); None: filter off

    def __post_init__(self) -> None:
        for name in ("mask", "saturation", "dark_bright", "ink"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, RowImage):
                object.__setattr__(self, name, as_row_image(value))

    @property
    def tissue_area_um2(self) -> float:
        return float(self.mask.count_nonzero()) * self.mask_mpp**2

    @property
    def ink_area_um2(self) -> float:
        return 0.0 if self.ink is None else float(self.ink.count_nonzero()) * self.mask_mpp**2


@dataclass(frozen=True)
class TileScores:
    tissue_fraction: np.ndarray  # (N,) float32
    dark_bright_fraction: np.ndarray  # (N,) float32
    max_saturation: np.ndarray  # (N,) float32


def otsu_threshold(values: np.ndarray, *, bins: int = 256, where: np.ndarray | None = None) -> float:
    """Otsu's threshold of values in [0, 1] (only those where ``where`` is True, if given)."""
    if where is None:
        hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    elif _is_power_of_two(bins):
        hist, edges = _unit_histogram(values, bins, exclude=(~where,)), np.linspace(0.0, 1.0, bins + 1)
    else:  # stripe by stripe: no copy of the selected values
        hist = np.zeros(bins, np.int64)
        for r0 in range(0, values.shape[0], _STRIPE_ROWS):
            h, edges = np.histogram(values[r0 : r0 + _STRIPE_ROWS][where[r0 : r0 + _STRIPE_ROWS]], bins=bins,
                                    range=(0.0, 1.0))
            hist += h
    return _otsu_of_histogram(hist, edges)


def _otsu_of_histogram(hist: np.ndarray, edges: np.ndarray) -> float:
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


def _is_power_of_two(n: int) -> bool:
    return 0 < n <= 1 << 16 and n & (n - 1) == 0


def _unit_histogram(values: np.ndarray, bins: int, *, exclude: tuple[np.ndarray, ...] = (),
                    threads: int | None = None) -> np.ndarray:
    """``np.histogram(values[keep], bins, range=(0, 1))[0]``, keep = not any of ``exclude``, for
    float ``values`` and a power-of-two ``bins``: counted piece by piece in threads, with no
    copy of the selected values the size of the image.

    The same counts: with ``bins`` a power of two, the edges k / bins and ``value * bins`` are
    exact, so numpy's bin (its edge corrections never apply) is floor(value * bins), the
    last bin closed; values outside [0, 1] (and NaN) are in none."""
    if not _is_power_of_two(bins):
        raise ValueError(f"bins must be a power of two up to 65536, not {bins}")

    def count(a: int, b: int) -> np.ndarray:
        v = values[a:b]
        keep = (v >= 0) & (v <= 1)
        for mask in exclude:
            keep &= ~mask[a:b]
        index = (v[keep] * bins).astype(np.intp)  # v in [0, 1]: exact, floor
        np.minimum(index, bins - 1, out=index)  # v == 1 is in the last bin
        return np.bincount(index, minlength=bins)

    return sum(_map_pieces(count, values.shape[0], _piece_rows(values), threads=threads), np.zeros(bins, np.int64))


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


_PIECE_PX = 1 << 15  # pixels per piece of a pixel-by-pixel pass (see _piecewise): 256 KiB as int64


def _piece_rows(array: np.ndarray) -> int:
    """Rows per piece of about ``_PIECE_PX`` pixels of ``array`` (rows, cols[, channels])."""
    return max(1, _PIECE_PX // max(1, array.shape[1] if array.ndim > 1 else 1))


def _map_pieces(fn: Callable[[int, int], Any], n_rows: int, piece_rows: int, *,
                threads: int | None = None) -> list[Any]:
    """``[fn(a, b)]`` over the row pieces [a, b) of ``n_rows`` rows, in ``threads`` threads
    (default :func:`_threads`)."""
    bounds = list(range(0, n_rows, piece_rows)) + [n_rows]
    pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
    threads = min(_threads() if threads is None else threads, len(pieces))
    if threads == 1:
        return [fn(a, b) for a, b in pieces]
    # one task per thread, each taking every threads-th piece: a task per piece would cost
    # the pool's queue and future for each of a pass's ~1,000 pieces
    results: list[Any] = [None] * len(pieces)

    def run(first: int) -> None:
        for k in range(first, len(pieces), threads):
            results[k] = fn(*pieces[k])

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsiscan-tissue") as pool:
        list(pool.map(run, range(threads)))
    return results


def _max_and_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Channel max and max - min of an RGB uint8 image, uint8, taken plane by plane."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    chroma = np.minimum(np.minimum(r, g), b)
    np.subtract(mx, chroma, out=chroma)  # max - min >= 0: no wrap-around in uint8
    return mx, chroma


def _saturation(mx: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    out: np.ndarray = chroma.astype(np.float32)
    np.divide(out, mx, out=out, where=mx > 0)
    return out


def saturation_of(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an RGB uint8 image, float32.

    Channel max and min are taken plane by plane in uint8, so no float32 copy of the whole
    image (four times its size) is made.
    """
    return _saturation(*_max_and_chroma(rgb))


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


# A pixel can be ink only when one rule could take it; integer tests on its channels
# (max, min and chroma = max - min) leave out the pixels no rule takes, with a margin:
# - black: max channel below INK_BLACK's 0.30 * 255 = 76.5, so max < 77;
# - green or blue: saturation at least 0.15 (100 * chroma >= 14 * max) and hue in [65, 245):
#   the hue of a pixel whose max is red lies in [0, 60] or [300, 360), so green or blue is
#   the max (g > r), or blue alone is and the hue (60 (4 + (r - g) / chroma)) is below 245,
#   so 12 (r - g) < chroma (12 (r - g) <= chroma leaves 0.02 deg for float32 rounding);
# - red or deep red: hue >= 335 or < 20, only when red is the max, with saturation at least
#   0.55 (100 * chroma >= 54 * max).
# H&E tissue (pink to purple: hue 250-345, saturation mostly below 0.55) passes none of
# them, so the float rules run on a few per cent of a slide's pixels, not a third.
_INK_CANDIDATE_MIN_MAX = 77
_INK_CANDIDATE_SAT_PERCENT = 14
_INK_CANDIDATE_RED_SAT_PERCENT = 54


def _ink_candidates(rgb: np.ndarray, mx: np.ndarray | None = None, chroma: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) bool: the pixels of an RGB uint8 image some ink rule could take (a
    superset of :func:`_ink_rules`, by the integer tests above); ``mx`` and ``chroma`` as
    :func:`_max_and_chroma` gives them, if already known."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if mx is None or chroma is None:
        mx, chroma = _max_and_chroma(rgb)
    c100 = chroma.astype(np.uint16)
    c100 *= 100
    mx16 = mx.astype(np.uint16)
    cand: np.ndarray = mx < _INK_CANDIDATE_MIN_MAX
    # green or blue: g > r, or b the max with 12 (r - g) <= chroma (r - g taken only where r >= g:
    # where g > r the first test already holds)
    r_minus_g = np.subtract(r, g, dtype=np.int16)
    r_minus_g *= 12
    hue_ok = (b > r) & (b > g) & (r_minus_g <= chroma)
    hue_ok |= g > r
    hue_ok &= c100 >= mx16 * _INK_CANDIDATE_SAT_PERCENT
    cand |= hue_ok
    red = c100 >= mx16 * _INK_CANDIDATE_RED_SAT_PERCENT
    red &= r == mx
    cand |= red
    return cand


def detect_ink(rgb: np.ndarray, mx: np.ndarray | None = None, chroma: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) bool: pixels of an RGB uint8 image that are pen ink by colour (before the margin).

    The colour rules (:func:`_ink_rules`, float32 HSV) run only on the pixels that could meet
    one of them (:func:`_ink_candidates`, integer tests): pixel by pixel the same result as
    running them on every pixel (tested over all 2^24 colours), for a small part of the work.
    ``mx`` and ``chroma``: as :func:`_ink_candidates`."""
    cand = _ink_candidates(rgb, mx, chroma)
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


def _disk_rows(radius_px: float) -> list[tuple[int, int]]:
    """(dy, half width) of each row of the digital disk x^2 + y^2 <= radius^2."""
    r = int(math.ceil(radius_px))
    return [(dy, int(math.floor(math.sqrt(radius_px**2 - dy * dy)))) for dy in range(-r, r + 1)
            if dy * dy <= radius_px**2]


def _row_runs(mask: np.ndarray, widths: list[int], *, dilate: bool,
              scratch: _Scratch | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """For each half width w of ``widths`` (ascending): w and the OR (dilate) or AND (erode)
    of ``mask`` over [x - w, x + w] along each row, outside the image False
    (``maximum_filter1d``/``minimum_filter1d`` of size 2w + 1 with cval 0).  A yielded run
    is valid until the next one is asked for: two buffers serve all widths.

    Widths are reached one from another by two shifted ORs (ANDs) of whole rows:
    [x - w', x + w'] shifted by k = w - w' either way covers [x - w, x + w] when k <= 2 w' + 1.
    A shifted OR is one pass over the bytes, several times faster than scipy's filter."""
    buffers = ([np.empty_like(mask), np.empty_like(mask)] if scratch is None else
               [scratch.get("runs0", mask.shape, mask.dtype), scratch.get("runs1", mask.shape, mask.dtype)])
    cur_w, cur = 0, mask
    for w in widths:
        while cur_w < w:
            step_w = min(w, 3 * cur_w + 1)
            k = step_w - cur_w
            new = buffers[0] if cur is not buffers[0] else buffers[1]
            new[...] = cur
            if dilate:
                new[:, k:] |= cur[:, :-k]
                new[:, :-k] |= cur[:, k:]
            else:
                new[:, k:] &= cur[:, :-k]
                new[:, :-k] &= cur[:, k:]
                new[:, :k] = False  # outside the image is False
                new[:, -k:] = False
            cur_w, cur = step_w, new
        yield w, cur


def dilate_or_erode_disk(mask: np.ndarray, radius_px: float, *, dilate: bool, scratch: _Scratch | None = None,
                         out_name: str = "disk") -> np.ndarray:
    """Binary dilation or erosion by a disk, outside the image False (scipy's border_value=0).

    The disk is a union of horizontal segments: one row-wise OR (AND) per distinct segment
    width (:func:`_row_runs`), then one OR (AND) per row of the disk, shifted.  The same
    result as ``ndimage.binary_dilation``/``binary_erosion`` with the disk as structure
    (tested), in a fraction of the time on a 6,250 x 6,250 px mask.  With ``scratch`` the
    result and the row runs live in this thread's buffers (the result in ``out_name``),
    valid until they are asked for again.
    """
    disk_rows: dict[int, list[int]] = {}  # half width -> the rows dy of the disk that wide
    for dy, w in _disk_rows(radius_px):
        disk_rows.setdefault(w, []).append(dy)
    n = mask.shape[0]
    if scratch is None:
        out = np.zeros_like(mask) if dilate else np.ones_like(mask)
    else:  # a buffer of this thread's, valid until the next call with the same ``out_name``
        out = scratch.get(out_name, mask.shape, mask.dtype)
        out[...] = not dilate
    for w, line in _row_runs(mask, sorted(disk_rows), dilate=dilate, scratch=scratch):
        for dy in disk_rows[w]:  # out[y] (op)= line[y + dy], rows outside the image are False
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


_STREAM_PX = 1 << 20  # pixels per stripe of detect_tissue's passes (about 4 MB as float32)


def _stream_bounds(rows: int, cols: int) -> list[tuple[int, int]]:
    """(y0, y1) of the stripes of detect_tissue's passes over a (rows, cols) mask."""
    step = max(1, _STREAM_PX // max(1, cols))
    return [(y0, min(y0 + step, rows)) for y0 in range(0, rows, step)]


class _Scratch:
    """Named buffers of each thread, reused from stripe to stripe.

    A stripe's arrays are megabytes; allocated fresh for each stripe they would each be
    mapped and faulted in anew (large allocations come from mmap, see
    :func:`wsiscan.heap.bound_heap`), which cost more than the work on them.  An array from
    :meth:`get` is valid until the same thread asks for the same name again; the buffers
    go when the object does (one per detect_tissue call)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype`` on this thread's buffer ``name``."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        buffers = self._local.__dict__
        buf = buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = buffers[name] = np.empty(max(nbytes, 1), np.uint8)
        array: np.ndarray = buf[:nbytes].view(dtype).reshape(shape)
        return array

    def rows(self, name: str, image: RowImage, y0: int, y1: int) -> np.ndarray:
        """A writable copy of ``image``'s rows [y0, y1) in the buffer ``name``."""
        return image.rows(y0, y1, out=self.get(name, (y1 - y0,) + image.row_shape, image.dtype))

    def view(self, name: str, image: RowImage, y0: int, y1: int) -> np.ndarray:
        """``image``'s rows [y0, y1) to read: a view of an image in memory, else read into the buffer ``name``."""
        return image.rows(y0, y1) if image.in_memory else self.rows(name, image, y0, y1)


def _each_stripe(fn: Callable[[int, int, int], Any], bounds: list[tuple[int, int]]) -> list[Any]:
    """``[fn(k, y0, y1)]`` over the stripes ``bounds``, in threads: at most one stripe per
    thread is being worked on, and each one's pixel-by-pixel work is done in cache-sized
    pieces by its own thread (numpy and scipy.ndimage release the GIL)."""
    threads = min(_threads(), len(bounds))
    if threads <= 1:
        return [fn(k, a, b) for k, (a, b) in enumerate(bounds)]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsiscan-tissue") as pool:
        return list(pool.map(lambda k: fn(k, *bounds[k]), range(len(bounds))))


def _piecewise(fn: Callable[..., tuple[np.ndarray, ...]], arrays: tuple[np.ndarray, ...],
               outs: tuple[np.ndarray, ...]) -> None:
    """``outs[:] = fn(*arrays)`` for a ``fn`` that maps each row on its own, in pieces of
    about ``_PIECE_PX`` pixels, in this thread.

    A piece's temporaries (up to 8 bytes a pixel: 256 KiB) stay in the CPU's cache and on
    the heap: stripe-sized ones would each be mapped fresh (see :func:`wsiscan.heap.bound_heap`)
    and page-faulted in, several times over per pass."""
    step = _piece_rows(arrays[0])
    for a in range(0, arrays[0].shape[0], step):
        for out, part in zip(outs, fn(*(x[a : a + step] for x in arrays)), strict=True):
            out[a : a + step] = part


def _piece_bincount(labels: np.ndarray, n: int, where: np.ndarray | None = None) -> np.ndarray:
    """``np.bincount(labels[where] or labels, minlength=n + 1)``, piece by piece: bincount
    makes an int64 copy of its input."""
    step = _piece_rows(labels)
    counts = np.zeros(n + 1, np.int64)
    for a in range(0, labels.shape[0], step):
        piece = labels[a : a + step]
        counts += np.bincount((piece if where is None else piece[where[a : a + step]]).ravel(), minlength=n + 1)
    return counts


def _connected_parts(n: int, i: np.ndarray, j: np.ndarray) -> tuple[int, np.ndarray]:
    """The connected parts of the graph of ``n`` nodes with the edges (``i``, ``j``): their
    number, and the part (0, 1, ...) of each node.

    Each node points at a node of its part no larger than itself (a tree; a root points at
    itself).  Every round points the roots at the two ends of each edge at the smaller of
    the two, then every node at its root's root until nothing moves: the trees an edge
    spans are joined.  When every edge lies within one tree, the trees are the parts.
    (scipy.sparse.csgraph does the same, but importing it costs 10 MB of memory.)"""
    root = np.arange(n)
    while len(i):
        ri, rj = root[i], root[j]
        if np.array_equal(ri, rj):
            break
        low = np.minimum(ri, rj)
        np.minimum.at(root, ri, low)
        np.minimum.at(root, rj, low)
        while True:  # every node at its root
            up = root[root]
            if np.array_equal(up, root):
                break
            root = up
    roots, part = np.unique(root, return_inverse=True)
    return len(roots), part


class _StripeParts:
    """The 4-connected parts of a picture seen one stripe at a time.

    A first pass hands each stripe to :meth:`add`, which labels it on its own
    (``ndimage.label``) and keeps only per-label numbers: size, whether the label touches
    the picture's border, and the labels of the stripe's first and last rows.
    :meth:`resolve` joins the labels that meet across stripe boundaries (one graph of a
    few numbers per label, :func:`_connected_parts`) into parts, and sums their sizes.
    A second pass labels each stripe again (the same input gives the same labels) and
    :meth:`lookup` maps them through a per-part table.  Nothing the size of the picture is
    held: a stripe's labels live only while it is worked on.
    """

    def __init__(self, bounds: list[tuple[int, int]], rows: int, scratch: _Scratch) -> None:
        self.bounds = bounds
        self.rows = rows
        self.scratch = scratch
        self._stripes: list[Any] = [None] * len(bounds)
        self._part: np.ndarray | None = None  # the part of each label, labels of all stripes in turn
        self._offsets: np.ndarray | None = None  # first label of each stripe in that numbering

    def label(self, part: np.ndarray) -> tuple[np.ndarray, int]:
        """4-connected labels of a stripe (int32, in this thread's buffer) and their count."""
        labels = self.scratch.get("labels", part.shape, np.int32)
        n = ndimage.label(part, output=labels)
        return labels, int(n)

    def add(self, k: int, part: np.ndarray, *, count: np.ndarray | None = None) -> None:
        """Stripe ``k``'s pixels of the parts (bool); a part's size counts its ``count``
        pixels when given, else all of them."""
        a, b = self.bounds[k]
        labels, n = self.label(part)
        first, last = labels[0].copy(), labels[-1].copy()
        if n == 0:
            self._stripes[k] = (0, np.zeros(1, np.int64), np.zeros(1, bool), first, last)
            return
        sizes = _piece_bincount(labels, n, count)
        border = np.zeros(n + 1, bool)
        border[labels[:, 0]] = True
        border[labels[:, -1]] = True
        if a == 0:
            border[first] = True
        if b == self.rows:
            border[last] = True
        self._stripes[k] = (n, sizes, border, first, last)

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """(sizes, touches border) of the parts, indexed by part: the tables :meth:`lookup` takes."""
        ns = np.array([s[0] for s in self._stripes], np.int64)
        offsets = np.concatenate([[0], np.cumsum(ns)])
        total = int(offsets[-1])
        sizes = np.concatenate([s[1][1:] for s in self._stripes] + [np.zeros(0, np.int64)])
        border = np.concatenate([s[2][1:] for s in self._stripes] + [np.zeros(0, bool)])
        # labels of vertically adjacent pixels across a stripe boundary are one part
        above, below = [], []
        for k in range(1, len(self._stripes)):
            last, first = self._stripes[k - 1][4], self._stripes[k][3]
            both = (last > 0) & (first > 0)
            above.append(last[both].astype(np.int64) - 1 + offsets[k - 1])
            below.append(first[both].astype(np.int64) - 1 + offsets[k])
        i = np.concatenate(above + [np.zeros(0, np.int64)])
        j = np.concatenate(below + [np.zeros(0, np.int64)])
        n_parts, part = _connected_parts(total, i, j)
        self._part, self._offsets = part, offsets
        part_sizes = np.bincount(part, weights=sizes, minlength=n_parts).astype(np.int64)
        part_border = np.bincount(part, weights=border, minlength=n_parts) > 0
        return part_sizes, part_border

    def stripe_table(self, k: int, table: np.ndarray) -> np.ndarray:
        """``table`` of the parts of stripe ``k``'s labels 1..n (indexed by label - 1)."""
        if self._part is None or self._offsets is None:
            raise RuntimeError("_StripeParts used before resolve")
        looked_up: np.ndarray = table[self._part[self._offsets[k] : self._offsets[k + 1]]]
        return looked_up

    def lookup(self, k: int, part: np.ndarray, table: np.ndarray, *, out: np.ndarray) -> np.ndarray:
        """``out[:] = table[the part of each pixel]`` of stripe ``k``, False off the parts:
        ``part`` must be the stripe :meth:`add` was given."""
        labels, n = self.label(part)
        if n != self._stripes[k][0]:
            raise RuntimeError(f"stripe {k} labelled {n} parts the second time, {self._stripes[k][0]} the first")
        stripe_table = np.zeros(n + 1, table.dtype)
        stripe_table[1:] = self.stripe_table(k, table)
        _piecewise(lambda piece: (stripe_table[piece],), (labels,), (out,))
        return out


def _closed_rows(mask_rows: Callable[[int, int, np.ndarray], None], a: int, b: int, rows: int, cols: int,
                 radius_px: float, scratch: _Scratch) -> np.ndarray:
    """Rows [a, b) of the morphological closing by a disk of a (rows, cols) mask, padded so
    that tissue touching the border is not eroded (``ndimage.binary_closing(np.pad(mask, r),
    disk)[r:-r, r:-r]``, r = ceil(radius_px)), from its rows within 2 r of them, which
    ``mask_rows(y0, y1, out)`` writes into ``out``.

    The padded mask has r False pixels on every side; a closed row depends on its rows
    within 2 r.  The window here is those rows of the padded
    mask, clipped to it, so where it ends at the padded mask's edge it ends there as in one
    call, and elsewhere it reaches far enough.  The result is a view of a buffer of this thread's."""
    r = int(math.ceil(radius_px))
    lo, hi = max(-r, a - 2 * r), min(rows + r, b + 2 * r)  # padded-mask rows, in mask coordinates
    window = scratch.get("close", (hi - lo, cols + 2 * r), bool)
    window[...] = False
    y0, y1 = max(0, lo), min(rows, hi)
    mask_rows(y0, y1, window[y0 - lo : y1 - lo, r : r + cols])
    dilated = dilate_or_erode_disk(window, radius_px, dilate=True, scratch=scratch, out_name="dilated")
    closed = dilate_or_erode_disk(dilated, radius_px, dilate=False, scratch=scratch, out_name="closed")
    return closed[a - lo : b - lo, r : r + cols]


def _drop_parts(image: RowImage, parts: _StripeParts, keep: np.ndarray, has_parts: list[bool], k: int, a: int,
                b: int) -> None:
    """Rows [a, b) (stripe ``k``) of ``image`` without the parts ``keep`` says False, in place."""
    if has_parts[k] and not parts.stripe_table(k, keep).all():  # else every part of the stripe stays
        rows = parts.scratch.rows("drop", image, a, b)
        image.write_rows(a, parts.lookup(k, rows, keep, out=rows))  # each pixel read before it is written


def detect_tissue(thumbnail: RowImage | np.ndarray, *, mask_mpp: float, config: TissueConfig) -> TissueMask:
    """Tissue mask of an RGB uint8 ``thumbnail`` whose pixels are ``mask_mpp`` um wide.

    The thumbnail is read, and every picture of the result written, in row stripes
    (:class:`~wsiscan.rowimage.RowImage`): memory holds a few stripes, whatever the
    slide's size.  The passes, each over all stripes, in threads:

    1. saturation (unblurred, in a temporary RowImage until pass 2), over-dark/over-bright pixels and raw pen
       ink by colour; the raw ink's parts are labelled (:class:`_StripeParts`);
    2. ink parts too small are dropped (their stripes rewritten), what is left grows by
       the margin, its saturation is zeroed and the saturation blurred (each stripe with
       the rows of its neighbours the ink margin and the blur reach); the Otsu histogram of
       the usable pixels is counted;
    3. the mask (saturation at or above the threshold, not dark/bright, not ink), closed
       (with the 2 r rows the closing reaches); its parts (and, with ink, its holes) labelled;
    4. small parts removed and small holes filled; without ink the holes are those of the
       cleaned mask, which a 5th pass then fills.
    Each step is pixel for pixel the whole-picture step it replaces (blur and closing read
    every row their kernels reach; parts are joined across stripes exactly), so the
    result is the same bit for bit.
    """
    rgb = as_row_image(thumbnail)
    rows, cols = rgb.shape[:2]
    shape = (rows, cols)
    bounds = _stream_bounds(rows, cols)
    scratch = _Scratch()
    sigma_px = config.blur_sigma_um / mask_mpp
    blur_halo = int(4.0 * sigma_px + 0.5) + 1 if sigma_px > 0.3 else 0  # scipy's kernel reaches int(4 sigma + 0.5) px
    margin_px = INK_MARGIN_UM / mask_mpp
    margin_halo = int(math.ceil(margin_px)) if margin_px >= 1 else 0
    radius_px = config.closing_radius_um / mask_mpp
    min_ink_px = int(INK_MIN_AREA_UM2 / mask_mpp**2)
    min_object_px = int(config.min_object_area_um2 / mask_mpp**2)
    min_hole_px = int(config.min_hole_area_um2 / mask_mpp**2)

    dark_bright = RowImage(shape, bool)
    raw_sat = RowImage(shape, np.float32)
    raw_ink = RowImage(shape, bool) if config.ink_filter else None
    ink_parts = _StripeParts(bounds, rows, scratch) if config.ink_filter and min_ink_px > 1 else None

    def measure(rgb_piece: np.ndarray) -> tuple[np.ndarray, ...]:
        """Saturation, over-dark/over-bright and (with the ink filter) pen-ink pixels of a piece,
        from one channel max and chroma."""
        mx, chroma = _max_and_chroma(rgb_piece)
        gray = gray_of(rgb_piece)
        dark_bright = (gray < config.dark_threshold) | (gray > config.bright_threshold)
        if not config.ink_filter:
            return _saturation(mx, chroma), dark_bright
        return _saturation(mx, chroma), dark_bright, detect_ink(rgb_piece, mx, chroma)

    def pass_measure(k: int, a: int, b: int) -> bool:
        n = b - a
        outs = [scratch.get("sat", (n, cols), np.float32), scratch.get("dark_bright", (n, cols), bool)]
        if raw_ink is not None:
            outs.append(scratch.get("ink", (n, cols), bool))
        _piecewise(measure, (scratch.view("rgb", rgb, a, b),), tuple(outs))
        raw_sat.write_rows(a, outs[0])
        dark_bright.write_rows(a, outs[1])
        if raw_ink is None:
            return False
        raw_ink.write_rows(a, outs[2])
        if ink_parts is not None:
            ink_parts.add(k, outs[2])
        return bool(outs[2].any())

    stripes_with_ink = _each_stripe(pass_measure, bounds)

    # ink: raw ink without its parts smaller than INK_MIN_AREA_UM2 (rewritten in place)
    any_ink = any(stripes_with_ink)
    if raw_ink is not None and ink_parts is not None and any_ink:
        sizes, _ = ink_parts.resolve()
        keep = sizes >= min_ink_px
        any_ink = bool(keep.any())
        _each_stripe(functools.partial(_drop_parts, raw_ink, ink_parts, keep, stripes_with_ink), bounds)
    ink = raw_ink
    if raw_ink is not None and any_ink and margin_halo:
        ink = RowImage(shape, bool)  # the ink grown by the margin (its neighbours' rows read raw_ink)
    saturation = RowImage(shape, np.float32)

    def pass_blur(k: int, a: int, b: int) -> np.ndarray:
        lo, hi = max(0, a - blur_halo), min(rows, b + blur_halo)
        sat = scratch.rows("sat", raw_sat, lo, hi)  # a copy to zero and blur
        ink_rows = None
        if raw_ink is not None and ink is not None and any_ink:
            if ink is raw_ink:
                window = scratch.view("ink", raw_ink, lo, hi)
            else:  # grown by the margin: from the rows the margin reaches
                ilo, ihi = max(0, lo - margin_halo), min(rows, hi + margin_halo)
                window = dilate_or_erode_disk(scratch.view("ink", raw_ink, ilo, ihi), margin_px, dilate=True,
                                              scratch=scratch)[lo - ilo : hi - ilo]
                ink.write_rows(a, window[a - lo : b - lo])
            # ink's saturation must not bleed through the blur onto the glass beside it
            sat[window] = 0.0
            ink_rows = window[a - lo : b - lo]
        if blur_halo:
            ndimage.gaussian_filter(sat, sigma_px, output=sat)  # scipy filters line by line: in place is exact
        sat = sat[a - lo : b - lo]
        saturation.write_rows(a, sat)
        # usable pixels: neither dark/bright nor ink
        db_rows = scratch.view("dark_bright", dark_bright, a, b)
        return _unit_histogram(sat, 256, exclude=(db_rows,) if ink_rows is None else (db_rows, ink_rows), threads=1)

    hist = sum(_each_stripe(pass_blur, bounds), np.zeros(256, np.int64))
    raw_sat.close()
    if raw_ink is not None and ink is not raw_ink:
        raw_ink.close()
    otsu = _otsu_of_histogram(hist, np.linspace(0.0, 1.0, 257))
    threshold = max(otsu, config.min_saturation)
    with_ink = ink is not None and any_ink

    def tissue_pixels(s: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray]:
        m = s >= threshold
        for other in others:
            m &= ~other
        return (m,)

    def tissue_rows(y0: int, y1: int, out: np.ndarray) -> None:
        """Mask rows before the closing into ``out``: saturated, not dark/bright, not ink."""
        unusable: tuple[np.ndarray, ...] = (scratch.view("dark_bright", dark_bright, y0, y1),)
        if with_ink and ink is not None:
            unusable += (scratch.view("ink", ink, y0, y1),)
        _piecewise(tissue_pixels, (scratch.view("sat", saturation, y0, y1),) + unusable, (out,))

    mask = RowImage(shape, bool)
    # with ink, a stroke across tissue must neither cut it into islands that then count as
    # small nor open its holes: sizes and holes are those of tissue + ink, then ink is
    # removed (it is never tissue, even where the closing bridged it)
    parts = _StripeParts(bounds, rows, scratch) if min_object_px > 1 else None
    holes = _StripeParts(bounds, rows, scratch) if min_hole_px > 1 else None

    def joined_rows(closed: np.ndarray, a: int, b: int) -> np.ndarray:
        """Tissue and ink (with ink), else the tissue itself."""
        if not with_ink or ink is None:
            return closed
        joined: np.ndarray = np.bitwise_or(closed, scratch.view("ink", ink, a, b),
                                           out=scratch.get("joined", closed.shape, bool))
        return joined

    def pass_mask(k: int, a: int, b: int) -> None:
        if radius_px >= 1:
            closed = _closed_rows(tissue_rows, a, b, rows, cols, radius_px, scratch)
        else:
            closed = scratch.get("closed", (b - a, cols), bool)
            tissue_rows(a, b, closed)
        mask.write_rows(a, closed)
        joined = joined_rows(closed, a, b)
        if parts is not None:
            parts.add(k, joined, count=closed if with_ink else None)
        if holes is not None and with_ink:
            holes.add(k, np.logical_not(joined, out=scratch.get("background", joined.shape, bool)))

    _each_stripe(pass_mask, bounds)
    kept = fill = None
    if parts is not None:
        sizes, _ = parts.resolve()
        kept = sizes >= min_object_px
    if holes is not None and with_ink:
        sizes, border = holes.resolve()
        fill = (sizes < min_hole_px) & ~border

    def pass_clean(k: int, a: int, b: int) -> None:
        closed = scratch.rows("mask", mask, a, b)
        joined = joined_rows(closed, a, b)
        cleaned = closed
        if parts is not None and kept is not None and not parts.stripe_table(k, kept).all():  # else all stay
            cleaned = parts.lookup(k, joined, kept, out=scratch.get("cleaned", closed.shape, bool))
            cleaned &= closed
        background = scratch.get("background", closed.shape, bool)
        if with_ink and ink is not None:
            if holes is not None and fill is not None and holes.stripe_table(k, fill).any():  # else none filled
                cleaned |= holes.lookup(k, np.logical_not(joined, out=background), fill, out=background)
            cleaned &= ~scratch.view("ink", ink, a, b)
        elif holes is not None:  # without ink, the holes are the cleaned mask's
            holes.add(k, np.logical_not(cleaned, out=background))
        if cleaned is not closed or with_ink:  # else the stripe is as it was
            mask.write_rows(a, cleaned)

    _each_stripe(pass_clean, bounds)
    if holes is not None and not with_ink:
        sizes, border = holes.resolve()
        fill = (sizes < min_hole_px) & ~border

        def pass_fill(k: int, a: int, b: int) -> None:
            if holes.stripe_table(k, fill).any():  # else no hole of this stripe is filled
                cleaned = scratch.rows("mask", mask, a, b)
                background = np.logical_not(cleaned, out=scratch.get("background", cleaned.shape, bool))
                cleaned |= holes.lookup(k, background, fill, out=background)
                mask.write_rows(a, cleaned)

        _each_stripe(pass_fill, bounds)
    return TissueMask(mask=mask, saturation=saturation, dark_bright=dark_bright,
                      mask_mpp=mask_mpp, threshold=float(threshold), ink=ink)


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """(rows + 1, cols + 1) counts of True in ``mask`` above and left of each corner.

    The whole table, the straightforward way (in int32 where the count fits): planning uses
    :func:`mask_box_counts`, which builds only the rows its boxes need; this is the
    reference it is tested against.
    """
    rows, cols = mask.shape
    integral = np.zeros((rows + 1, cols + 1), np.int32 if rows * cols < 2**31 else np.int64)
    integral[1:, 1:] = mask
    np.cumsum(integral, axis=0, out=integral)
    np.cumsum(integral, axis=1, out=integral)
    return integral


def box_counts(integral: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """True pixels in each box [y0, y1) x [x0, x1) (index arrays broadcast) from a :func:`summed_area_table`."""
    counts: np.ndarray = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return counts


def mask_box_counts(mask: RowImage | np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray,
                    x1: np.ndarray) -> np.ndarray:
    """``box_counts(summed_area_table(mask), y0, x0, y1, x1)`` (the same integers: index arrays
    broadcast) without a table.

    A box's count is the difference of two rows of the table, each a row of running column
    counts summed along x.  One pass down the mask (read a stripe at a time) keeps the
    column counts; at each row where boxes start or end, that row's prefix sums are taken
    (one row, not a table) and subtracted from the boxes starting there, added to those
    ending there.  Memory: one row and the boxes, whatever the grid (a table of the rows
    the boxes use was 40 MB at stride 32 on a 100,000 px slide)."""
    image = as_row_image(mask)
    rows, cols = image.shape
    dtype: type[np.signedinteger] = np.int32 if rows * cols < 2**31 else np.int64
    y0, x0, y1, x1 = (np.asarray(a) for a in np.broadcast_arrays(y0, x0, y1, x1))
    shape = y0.shape
    y0, x0, y1, x1 = (a.ravel() for a in (y0, x0, y1, x1))
    counts = np.zeros(len(y0), np.int64)
    by_top, by_bottom = np.argsort(y0, kind="stable"), np.argsort(y1, kind="stable")
    top_rows, bottom_rows = y0[by_top], y1[by_bottom]
    column_counts = np.zeros(cols, dtype)
    prefix = np.zeros(cols + 1, np.int64)
    step = max(1, _STREAM_PX // max(1, cols))
    top = 0
    for y in np.unique(np.concatenate([top_rows, bottom_rows])).tolist():
        while top < y:  # mask rows [top, y) added to the counts of the rows above, a stripe at most at a time
            end = min(y, top + step)
            np.add(column_counts, np.sum(image.rows(top, end), axis=0, dtype=dtype), out=column_counts)
            top = end
        np.cumsum(column_counts, out=prefix[1:])
        for order, at, sign in ((by_top, top_rows, -1), (by_bottom, bottom_rows, 1)):
            boxes = order[np.searchsorted(at, y, "left"):np.searchsorted(at, y, "right")]
            if len(boxes):
                counts[boxes] += sign * (prefix[x1[boxes]] - prefix[x0[boxes]])
    return counts.astype(dtype).reshape(shape)


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


def window_max_at(image: RowImage | np.ndarray, size: int, *, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(N,) maxima of ``image`` over the windows [y, y + size) x [x, x + size) (clipped to the
    image) at the points (``ys``, ``xs``): ``ndimage.maximum_filter(image, size,
    origin=-(size // 2), mode="nearest")[ys, xs]`` (the same values: a maximum is exact in any
    order), without the filter's image-sized passes.

    Each distinct window top row is reduced once, down its ``size`` rows, into one row; the
    running maximum along that row is sampled at its points, and the row is reused for the
    next top (no table of all tops: 40 MB at stride 32 on a 100,000 px slide).  A grid's
    footprints start on a few hundred rows, so the work is about one pass over the rows the
    footprints cover, not two full-image filter passes.  The rows are read a band at a time
    (a stripe and the ``size`` - 1 rows below it), each band once."""
    picture = as_row_image(image)
    rows = picture.shape[0]
    tops, which = np.unique(np.asarray(ys), return_inverse=True)
    xs = np.asarray(xs).ravel()
    which = which.ravel()
    by_top = np.argsort(which, kind="stable")
    starts = np.searchsorted(which[by_top], np.arange(len(tops) + 1))
    values = np.empty(len(xs), picture.dtype)
    row = np.empty(picture.shape[1], picture.dtype)
    step = max(1, _STREAM_PX // max(1, picture.shape[1]))
    band, band_y0 = picture.rows(0, 0), 0
    for i, y in enumerate(tops.tolist()):  # one row of maxima at a time, sampled at its points
        end = min(y + size, rows)
        if end > band_y0 + len(band):  # the next band: from this top, a stripe of tops and their windows
            band_y0 = y
            band = picture.rows(y, min(rows, y + step + size - 1))
        np.max(band[y - band_y0 : end - band_y0], axis=0, out=row)
        maxima = ndimage.maximum_filter1d(row, size, origin=-(size // 2), mode="nearest") if size > 1 else row
        points = by_top[starts[i] : starts[i + 1]]
        values[points] = maxima[xs[points]]
    return values


def _box_fractions(mask: RowImage, *, px_xy: np.ndarray, size_px: float,
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
    return mask_box_counts(mask, y0, x0, y1, x1) / area, (y0, x0)


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

    # max saturation under each footprint: the maximum over [y0, y0 + fw) x [x0, x0 + fw), clipped
    # to the image (a running maximum sampled at each footprint's top-left corner)
    fw = max(1, int(round(tile_size_px * scale)))
    max_saturation = window_max_at(tissue.saturation, fw, ys=y0, xs=x0)
    return TileScores(
        tissue_fraction=tissue_fraction.astype(np.float32),
        dark_bright_fraction=dark_bright_fraction.astype(np.float32),
        max_saturation=max_saturation.astype(np.float32),
    )
