"""detect_tissue and tile scoring in row stripes give exactly what the whole-picture steps give.

The reference below is the detection written the straightforward way, on whole arrays
with scipy (label, binary_fill_holes, gaussian_filter, binary_closing, binary_dilation),
step for step in the order detect_tissue documents.  The streamed detection is compared
with it on pictures where stripes could go wrong: stripes forced to a few rows, parts and
holes crossing many stripe boundaries, parts and background touching the borders, ink
across tissue, empty and full pictures, in memory and in temporary files, in one thread
and several; and on the real slides of ../shared/data when they are there.
"""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import numpy as np
import pytest
from conftest import SLIDES
from scipy import ndimage

from wsiscan import rowimage
from wsiscan import tissue as tissue_mod
from wsiscan.config import TissueConfig
from wsiscan.rowimage import RowImage
from wsiscan.tissue import (
    INK_MARGIN_UM,
    INK_MIN_AREA_UM2,
    detect_ink,
    detect_tissue,
    gray_of,
    mask_box_counts,
    saturation_of,
    score_tiles,
    window_max_at,
)

MASK_MPP = 4.0


# -- the whole-array reference -------------------------------------------------------
def _disk(radius_px: float) -> np.ndarray:
    r = int(math.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk: np.ndarray = xx**2 + yy**2 <= radius_px**2
    return disk


def _remove_small(mask: np.ndarray, min_px: int, count: np.ndarray | None = None) -> np.ndarray:
    labels, n = ndimage.label(mask)
    sizes = np.bincount((labels[count] if count is not None else labels).ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    kept: np.ndarray = keep[labels]
    return kept if count is None else kept & count


def _small_holes(mask: np.ndarray, min_px: int) -> np.ndarray:
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    small = np.bincount(labels.ravel(), minlength=n + 1) < min_px
    small[0] = False
    filled: np.ndarray = small[labels]
    return filled


def reference_detect(rgb: np.ndarray, *, mask_mpp: float, config: TissueConfig,
                     steps: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray | None, float]:
    """(mask, saturation, dark_bright, ink, threshold) the whole-array way; ``steps`` gets the
    raw ink and the closed mask before its parts and holes are cleaned."""
    steps = {} if steps is None else steps
    sat = saturation_of(rgb)
    gray = gray_of(rgb)
    dark_bright = (gray < config.dark_threshold) | (gray > config.bright_threshold)
    ink = None
    if config.ink_filter:
        steps["raw_ink"] = detect_ink(rgb)
        ink = _remove_small(steps["raw_ink"], int(INK_MIN_AREA_UM2 / mask_mpp**2))
        if INK_MARGIN_UM / mask_mpp >= 1:
            ink = ndimage.binary_dilation(ink, structure=_disk(INK_MARGIN_UM / mask_mpp))
        sat[ink] = 0.0
    sigma_px = config.blur_sigma_um / mask_mpp
    if sigma_px > 0.3:
        sat = ndimage.gaussian_filter(sat, sigma_px)
    usable = ~dark_bright if ink is None else ~dark_bright & ~ink
    hist, edges = np.histogram(sat[usable], bins=256, range=(0.0, 1.0))
    threshold = max(tissue_mod._otsu_of_histogram(hist, edges), config.min_saturation)
    mask = (sat >= threshold) & usable
    radius_px = config.closing_radius_um / mask_mpp
    if radius_px >= 1:
        r = int(math.ceil(radius_px))
        mask = ndimage.binary_closing(np.pad(mask, r), structure=_disk(radius_px))[r:-r, r:-r]
    steps["closed"] = mask
    min_object_px = int(config.min_object_area_um2 / mask_mpp**2)
    min_hole_px = int(config.min_hole_area_um2 / mask_mpp**2)
    if ink is None or not ink.any():
        mask = _remove_small(mask, min_object_px)
        mask |= _small_holes(mask, min_hole_px)
    else:
        joined = mask | ink
        cleaned = _remove_small(joined, min_object_px, count=mask)
        cleaned |= _small_holes(joined, min_hole_px)
        mask = cleaned & ~ink
    return mask, sat, dark_bright, ink, float(threshold)


# -- pictures where stripes could go wrong -------------------------------------------
TISSUE = (200, 110, 190)  # pink-purple, saturated
GLASS = (242, 242, 242)
BLUE_INK = (35, 70, 175)


def _blobs(shape: tuple[int, int], seed: int, sigma: float, fraction: float) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    blobs: np.ndarray = field > np.quantile(field, 1 - fraction)
    return blobs


def _paint(truth: np.ndarray, seed: int) -> np.ndarray:
    """A thumbnail: noisy tissue colour where ``truth``, glass elsewhere."""
    rng = np.random.default_rng(seed)
    rgb = np.empty(truth.shape + (3,), np.uint8)
    rgb[...] = GLASS
    noise = rng.integers(-25, 26, truth.shape + (3,)) if not truth.all() else np.zeros(truth.shape + (3,), int)
    rgb[truth] = np.clip(np.array(TISSUE) + noise[truth], 0, 255).astype(np.uint8)
    return rgb


def _shapes() -> np.ndarray:
    """(120, 90) bool: parts and holes that cross many stripes of a few rows.

    - a U whose arms meet only at the bottom: each stripe holds two pieces of one part;
    - a ring whose hole (about 220 px) spans ten stripes, and a smaller ring in it;
    - a comb touching the top border, its gaps background parts that touch the border;
    - a frame open on the right by one pixel, so its inside touches the border through it;
    - single pixels and a thin diagonal line (parts of 1 px per stripe)."""
    m = np.zeros((120, 90), bool)
    m[10:60, 5:9] = m[10:60, 20:24] = m[56:60, 5:24] = True  # U
    m[15:55, 35:65] = True
    m[22:48, 42:58] = False  # hole of 26 * 16 = 416 px ...
    m[30:40, 47:53] = True  # ... with an island in it
    m[0:30, 70:90:3] = True  # comb on the top border
    m[70:110, 10:50] = True
    m[73:107, 13:47] = False
    m[85, 47:50] = False  # opening to the outside
    m[5:115:7, 60] = True  # single pixels
    for k in range(40):
        m[75 + k, 55 + k // 2] = True  # diagonal line, 4-connected only in part
    for y, x in ((3, 30), (62, 40), (100, 80), (114, 2)):
        m[y : y + 5, x : x + 5] = True  # specks: small parts, some on a border
    return m


def _inked(truth: np.ndarray, seed: int) -> np.ndarray:
    """``_paint`` with blue strokes across tissue and glass, and ink specks too small to count."""
    rgb = _paint(truth, seed)
    rows, cols = truth.shape
    for k in range(3):
        y = rows * (k + 1) // 4
        rgb[y : y + 3, cols // 8 : cols - 2] = BLUE_INK  # long strokes, across the stripes' parts
    rgb[rows // 8 : rows - 4, cols // 2 : cols // 2 + 2] = BLUE_INK  # a vertical stroke across stripes
    rgb[2:4, 2:4] = BLUE_INK  # a speck (smaller than INK_MIN_AREA_UM2)
    return rgb


def _configs() -> list[TissueConfig]:
    base = TissueConfig()
    return [
        base,
        # smaller areas (in mask px: 12 and 150), so both sides of each limit occur in the pictures
        dataclasses.replace(base, min_object_area_um2=200.0, min_hole_area_um2=2400.0),
        dataclasses.replace(base, min_object_area_um2=2400.0, min_hole_area_um2=200.0, closing_radius_um=6.0),
        dataclasses.replace(base, ink_filter=False, min_object_area_um2=400.0, min_hole_area_um2=3000.0),
        dataclasses.replace(base, blur_sigma_um=0.0, closing_radius_um=0.0, min_object_area_um2=0.0,
                            min_hole_area_um2=0.0),
        # a blur reaching 30 rows and a closing by a disk of 2.5 px, a small ink margin (4 um at 4 um/px)
        dataclasses.replace(base, blur_sigma_um=29.2, closing_radius_um=10.0, min_object_area_um2=300.0,
                            min_hole_area_um2=1000.0),
    ]


def _pictures() -> dict[str, np.ndarray]:
    shapes = _shapes()
    blobs = _blobs((150, 130), 1, 3.0, 0.45)
    holes = _blobs((150, 130), 2, 6.0, 0.7) & ~_blobs((150, 130), 3, 1.5, 0.2)  # big parts with small holes
    return {
        "shapes": _paint(shapes, 1),
        "shapes_inked": _inked(shapes, 2),
        "blobs": _paint(blobs, 3),
        "blobs_inked": _inked(blobs, 4),
        "holes_inked": _inked(holes, 5),
        "empty": _paint(np.zeros((60, 70), bool), 6),
        "full": _paint(np.ones((60, 70), bool), 7),  # one colour: all tissue
        "dark": np.zeros((40, 50, 3), np.uint8),
        "one_row": _paint(blobs[:1], 8),
        "one_col": _paint(blobs[:, :1], 9),
    }


def _assert_same(streamed: tissue_mod.TissueMask, rgb: np.ndarray, config: TissueConfig, what: str, *,
                 mask_mpp: float = MASK_MPP) -> None:
    mask, sat, dark_bright, ink, threshold = reference_detect(rgb, mask_mpp=mask_mpp, config=config)
    assert streamed.threshold == threshold, what
    np.testing.assert_array_equal(streamed.saturation.to_array(), sat, err_msg=f"{what}: saturation")
    np.testing.assert_array_equal(streamed.dark_bright.to_array(), dark_bright, err_msg=f"{what}: dark/bright")
    if ink is None:
        assert streamed.ink is None, what
    else:
        np.testing.assert_array_equal(streamed.ink.to_array(), ink, err_msg=f"{what}: ink")
    np.testing.assert_array_equal(streamed.mask.to_array(), mask, err_msg=f"{what}: mask")
    assert streamed.tissue_area_um2 == mask.sum() * mask_mpp**2
    assert streamed.ink_area_um2 == (0.0 if ink is None else ink.sum() * mask_mpp**2)


@pytest.mark.parametrize("stripe_rows, threads, in_files", [(1, 1, False), (3, 2, True), (7, 3, True),
                                                             (10**6, 1, False), (5, 2, False)])
def test_streamed_detection_equals_the_whole_array_reference(monkeypatch, stripe_rows, threads, in_files):
    monkeypatch.setattr(tissue_mod, "_threads", lambda: threads)
    if in_files:
        monkeypatch.setattr(rowimage, "RAM_LIMIT_BYTES", 0)  # every picture in a temporary file
    pictures = _pictures()
    for name, rgb in pictures.items():
        monkeypatch.setattr(tissue_mod, "_STREAM_PX", stripe_rows * rgb.shape[1])
        thumbnail = RowImage.from_array(rgb) if in_files else rgb
        for i, config in enumerate(_configs()):
            t = detect_tissue(thumbnail, mask_mpp=MASK_MPP, config=config)
            assert t.mask.in_memory is not in_files
            _assert_same(t, rgb, config, f"{name}, config {i}, {stripe_rows} rows a stripe")


def test_the_pictures_test_what_they_should():
    """The pictures above hold what the comparison needs (else it could not fail): in each,
    under some configuration, parts removed and holes filled; ink kept and dropped."""
    for name, rgb in _pictures().items():
        removed = filled = ink_dropped = ink_kept = False
        for config in _configs():
            steps: dict[str, np.ndarray] = {}
            mask, _, _, ink, _ = reference_detect(rgb, mask_mpp=MASK_MPP, config=config, steps=steps)
            removed |= bool((steps["closed"] & ~mask & ~(ink if ink is not None else False)).any())
            filled |= bool((mask & ~steps["closed"]).any())
            if ink is not None:
                ink_dropped |= bool((steps["raw_ink"] & ~ink).any())
                ink_kept |= bool(ink.any())
        if name in ("shapes", "shapes_inked", "blobs", "blobs_inked", "holes_inked"):
            assert removed and filled, name
        if name.endswith("_inked"):
            assert ink_dropped and ink_kept, name
    full = reference_detect(_pictures()["full"], mask_mpp=MASK_MPP, config=TissueConfig())[0]
    assert full.all()


def test_detection_of_a_large_thumbnail_holds_a_few_stripes(monkeypatch):
    """A thumbnail in a temporary file: detection and scoring allocate a few stripes, never a
    picture of the mask's size (numpy reports its allocations to tracemalloc; the whole-array
    detection's peak was several times the saturation's size)."""
    rows, cols = 6400, 600
    truth = _blobs((rows, cols), 11, 20.0, 0.4)
    thumbnail = RowImage.from_array(_inked(truth, 12), ram_limit_bytes=0)
    monkeypatch.setattr(tissue_mod, "_STREAM_PX", 64 * cols)
    monkeypatch.setattr(rowimage, "RAM_LIMIT_BYTES", 0)  # as a slide's pictures are
    mask_bytes = rows * cols * 4  # the float32 saturation
    detect_tissue(_inked(truth[:100, :100], 13), mask_mpp=MASK_MPP, config=TissueConfig())  # modules imported first
    tracemalloc.start()
    try:
        t = detect_tissue(thumbnail, mask_mpp=MASK_MPP, config=TissueConfig())
        # the tiles of a stride-96 grid: their tables (a row of the mask's width per row of
        # tiles) are small beside the mask
        px_xy = np.stack(np.meshgrid(np.arange(0, cols * 4 - 96, 96), np.arange(0, rows * 4 - 96, 96)),
                         -1).reshape(-1, 2)
        score_tiles(t, px_xy=px_xy, tile_size_px=96, px_mpp=1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not t.mask.in_memory and not t.saturation.in_memory
    assert t.mask.any() and t.ink.any()
    assert peak < mask_bytes / 2, f"peak {peak / 1e6:.1f} MB for a {mask_bytes / 1e6:.1f} MB saturation"


@pytest.mark.parametrize("in_files", [False, True])
def test_scoring_from_row_images_equals_scoring_from_arrays(monkeypatch, in_files):
    """score_tiles, mask_box_counts and window_max_at on RowImages read in stripes of a few
    rows give what they give on whole arrays."""
    rng = np.random.default_rng(21)
    mask = _blobs((97, 61), 22, 2.0, 0.4)
    dark_bright = rng.random((97, 61)) < 0.2
    sat = rng.random((97, 61), dtype=np.float32)
    monkeypatch.setattr(RowImage, "stripe_rows", lambda self, stripe_bytes=0: 4)

    def image(a: np.ndarray) -> RowImage:
        return RowImage.from_array(a, ram_limit_bytes=0 if in_files else None)

    y0, x0 = rng.integers(0, 97, 300), rng.integers(0, 61, 300)
    y1, x1 = np.minimum(y0 + rng.integers(0, 30, 300), 97), np.minimum(x0 + rng.integers(0, 30, 300), 61)
    np.testing.assert_array_equal(mask_box_counts(image(mask), y0, x0, y1, x1), mask_box_counts(mask, y0, x0, y1, x1))
    for size in (1, 3, 24):
        ys, xs = np.concatenate([y0, [96, 0]]), np.concatenate([x0, [60, 0]])
        np.testing.assert_array_equal(window_max_at(image(sat), size, ys=ys, xs=xs),
                                      window_max_at(sat, size, ys=ys, xs=xs))
    arrays = tissue_mod.TissueMask(mask=mask, saturation=sat, dark_bright=dark_bright, mask_mpp=4.0, threshold=0.1)
    images = tissue_mod.TissueMask(mask=image(mask), saturation=image(sat), dark_bright=image(dark_bright),
                                   mask_mpp=4.0, threshold=0.1)
    px_xy = rng.integers(0, 240, (500, 2)).astype(np.float64)
    a, b = (score_tiles(t, px_xy=px_xy, tile_size_px=40, px_mpp=1.0) for t in (arrays, images))
    for field in ("tissue_fraction", "dark_bright_fraction", "max_saturation"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


REAL_MPP = 1.0  # the real slides' thumbnails at 1 um/px: larger masks, larger blur and closing (in px)


def test_connected_parts_equal_scipy_connected_components():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(31)
    for n, n_edges in ((0, 0), (1, 0), (5, 0), (50, 30), (2000, 1500), (2000, 4000)):
        i, j = rng.integers(0, max(n, 1), (2, n_edges))
        if n_edges < n:  # a chain through a random half of the nodes: a long path to join
            chain = rng.permutation(n)[: n // 2]
            i, j = np.concatenate([i, chain[:-1]]), np.concatenate([j, chain[1:]])
        n_parts, part = tissue_mod._connected_parts(n, i, j)
        expected_n, expected = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)),
                                                     directed=False)
        assert n_parts == expected_n
        # the same partition (the numbering may differ)
        pairs = np.unique(np.stack([part, expected]), axis=1)
        assert pairs.shape[1] == n_parts == len(np.unique(part))


def _real_thumbnails() -> list[tuple[str, np.ndarray]]:
    from wsiscan.slide import open_slide

    found = []
    for name, slide_mpp in (("CMU-1-Small-Region.svs", None), ("TCGA-CR-7395-01A-01-TS1.svs", 0.25)):
        path = SLIDES / name
        if path.exists():
            with open_slide(path, slide_mpp=slide_mpp) as slide:
                found.append((name, slide.read_thumbnail(mpp=REAL_MPP)))
    return found


@pytest.mark.realdata
def test_streamed_detection_of_real_slides_equals_the_reference(monkeypatch):
    thumbnails = _real_thumbnails()
    if not thumbnails:
        pytest.skip(f"no real slides in {SLIDES}")
    monkeypatch.setattr(tissue_mod, "_threads", lambda: 2)
    monkeypatch.setattr(rowimage, "RAM_LIMIT_BYTES", 0)
    for name, rgb in thumbnails:
        monkeypatch.setattr(tissue_mod, "_STREAM_PX", 37 * rgb.shape[1])  # stripes of 37 rows
        for config in (TissueConfig(), _configs()[1], _configs()[3]):
            t = detect_tissue(RowImage.from_array(rgb), mask_mpp=REAL_MPP, config=config)
            assert t.mask.any()
            _assert_same(t, rgb, config, name, mask_mpp=REAL_MPP)


@pytest.mark.parametrize("stride_px", [96, 32])
def test_keep_rule_and_chunks_from_row_images_equal_those_from_arrays(monkeypatch, stride_px):
    """keep.py's tiles, scores, needed chunks and glass-skip tiles from a TissueMask of
    temporary-file RowImages read in stripes of 3 rows equal those from whole arrays."""
    from wsiscan.config import TileConfig
    from wsiscan.grid import build_grid, select_level, store_geometry
    from wsiscan.keep import chunks_needed, glass_tile_keep, keep_grid_tiles

    monkeypatch.setattr(rowimage, "RAM_LIMIT_BYTES", 0)
    monkeypatch.setattr(tissue_mod, "_STREAM_PX", 3 * 130)
    truth = _blobs((150, 130), 41, 3.0, 0.45)
    truth[90:], truth[:, 70:] = False, False  # glass at the right and the bottom: chunks not needed
    rgb = _inked(truth, 42)
    streamed = detect_tissue(RowImage.from_array(rgb), mask_mpp=MASK_MPP, config=TissueConfig())
    assert not streamed.mask.in_memory
    arrays = tissue_mod.TissueMask(mask=streamed.mask.to_array(), saturation=streamed.saturation.to_array(),
                                   dark_bright=streamed.dark_bright.to_array(), mask_mpp=MASK_MPP,
                                   threshold=streamed.threshold, ink=streamed.ink.to_array())
    assert arrays.mask.in_memory
    tile = TileConfig(stride_px=stride_px, supertile_px=128)
    selection = select_level(requested_mpp=tile.target_mpp, level_mpps=(0.25, 1.0), tolerance=tile.mpp_tolerance)
    geometry = store_geometry(l0_dimensions_px=(130 * 16, 150 * 16), base_mpp=0.25, selection=selection,
                              supertile_px=tile.supertile_px, pad_px=tile.tile_size_px)
    grid = build_grid(width_px=geometry.slide_width_px, height_px=geometry.slide_height_px,
                      tile_size_px=tile.tile_size_px, stride_px=stride_px, pad_px=geometry.pad_px)
    results = []
    for t in (streamed, arrays):
        kept = keep_grid_tiles(t, grid, px_mpp=selection.effective_mpp, tile=tile, tissue_config=TissueConfig())
        results.append((kept.rc, kept.scores.tissue_fraction, kept.scores.dark_bright_fraction,
                        kept.scores.max_saturation, chunks_needed(geometry, t, grid, kept.rc),
                        glass_tile_keep(t, lv_tile_layout=((64, 64), (40, 35)), lv_per_px=selection.lv_per_px,
                                        px_mpp=selection.effective_mpp, tile_size_px=tile.tile_size_px)))
    assert len(results[0][0]) and not results[0][4].all() and not results[0][5].all()
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
