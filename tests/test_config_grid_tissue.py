"""Pure pieces: configuration, level selection and grid geometry, tissue detection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from wsiscan.config import DEFAULTS_PATH, Config, TissueConfig, load_config
from wsiscan.errors import ConfigError, ResolutionError
from wsiscan.grid import build_grid, select_level
from wsiscan.tissue import detect_tissue, otsu_threshold, score_tiles


# -- config -----------------------------------------------------------------------
def test_packaged_defaults_match_dataclass_defaults():
    assert load_config() == Config()


def test_every_default_key_has_a_comment():
    for line in DEFAULTS_PATH.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in stripped, f"no comment on config line: {line!r}"


def test_repository_configs_default_is_the_packaged_file():
    from pathlib import Path

    repo_default = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    assert yaml.safe_load(repo_default.read_text()) == yaml.safe_load(DEFAULTS_PATH.read_text())


def test_config_file_overrides_defaults_and_cli_overrides_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("tile:\n  stride_px: 32\n  min_tissue: 0.25\ntrain:\n  epochs: 3\n")
    cfg = load_config(f)
    assert cfg.tile.stride_px == 32 and cfg.tile.min_tissue == 0.25
    assert cfg.tile.tile_size_px == 96  # untouched default
    cfg2 = cfg.replace("tile", stride_px=48, min_tissue=None)
    assert cfg2.tile.stride_px == 48 and cfg2.tile.min_tissue == 0.25


def test_unknown_key_and_bad_type_name_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("tile:\n  strid_px: 32\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key tile.strid_px"):
        load_config(f)
    f.write_text("tile:\n  stride_px: fast\n")
    with pytest.raises(ConfigError, match=r"tile.stride_px must be of type int"):
        load_config(f)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# -- level selection and grid --------------------------------------------------------
def test_select_level_downsamples_from_the_coarsest_finer_level():
    sel = select_level(requested_mpp=0.972, level_mpps=(0.25, 1.0 * 4, 16.0), tolerance=0.02)
    assert sel.level == 0 and sel.resample and sel.effective_mpp == 0.972
    assert sel.lv_per_px == pytest.approx(0.972 / 0.25)
    sel = select_level(requested_mpp=0.972, level_mpps=(0.499,), tolerance=0.05)
    assert sel.level == 0 and sel.lv_per_px == pytest.approx(0.972 / 0.499)


def test_select_level_reads_a_level_within_tolerance_as_is():
    sel = select_level(requested_mpp=0.972, level_mpps=(0.25, 1.0, 4.0), tolerance=0.05)
    assert sel.level == 1 and not sel.resample and sel.effective_mpp == 1.0 and sel.lv_per_px == 1.0


def test_select_level_refuses_to_upsample_and_lists_resolutions():
    with pytest.raises(ResolutionError) as exc:
        select_level(requested_mpp=0.972, level_mpps=(16.78, 33.56), tolerance=0.05, source="bm.dcm")
    msg = str(exc.value)
    assert "bm.dcm" in msg and "without upsampling" in msg and "16.78" in msg and "33.56" in msg


def test_build_grid_counts_and_overlapping_strides():
    g = build_grid(width_px=1000, height_px=500, tile_size_px=96, stride_px=96)
    assert (g.n_rows, g.n_cols) == (5, 10)
    g32 = build_grid(width_px=1000, height_px=500, tile_size_px=96, stride_px=32)
    assert (g32.n_rows, g32.n_cols) == ((500 - 96) // 32 + 1, (1000 - 96) // 32 + 1)
    assert g32.hm_offset_px == 32.0 and g.hm_offset_px == 0.0
    origins = g32.px_origin(np.array([[0, 0], [2, 3]]))
    assert origins.tolist() == [[0, 0], [96, 64]]


# -- tissue --------------------------------------------------------------------------
def _thumb_with_box(shape=(200, 300), box=(50, 40, 150, 240), colour=(200, 100, 180)):
    img = np.full(shape + (3,), 240, np.uint8)
    y0, x0, y1, x1 = box
    img[y0:y1, x0:x1] = colour
    return img


def test_detect_tissue_finds_the_box_and_nothing_else():
    thumb = _thumb_with_box()
    t = detect_tissue(thumb, mask_mpp=4.0, config=TissueConfig())
    expected = np.zeros(thumb.shape[:2], bool)
    expected[50:150, 40:240] = True
    mask = t.mask.to_array()
    agreement = (mask == expected).mean()
    assert agreement > 0.99
    assert mask[100, 140] and not mask[10, 10]


def test_detect_tissue_drops_islands_smaller_than_the_area_in_um2():
    thumb = _thumb_with_box()
    thumb[10:13, 10:13] = (200, 100, 180)  # 3x3 px at 4 um/px = 144 um^2 speck
    t = detect_tissue(thumb, mask_mpp=4.0, config=TissueConfig(min_object_area_um2=1000.0))
    assert not t.mask.to_array()[11, 11]
    t2 = detect_tissue(thumb, mask_mpp=4.0, config=TissueConfig(min_object_area_um2=10.0, closing_radius_um=0.0,
                                                                 blur_sigma_um=0.0))
    assert t2.mask.to_array()[11, 11]


def test_all_white_thumbnail_has_no_tissue():
    t = detect_tissue(np.full((100, 100, 3), 250, np.uint8), mask_mpp=4.0, config=TissueConfig())
    assert not t.mask.any()


def test_dark_pixels_are_not_tissue():
    thumb = _thumb_with_box(colour=(5, 5, 5))
    t = detect_tissue(thumb, mask_mpp=4.0, config=TissueConfig())
    assert not t.mask.any()
    assert t.dark_bright.to_array()[100, 100]


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(1000, 0.05), np.full(1000, 0.6)])
    assert 0.05 < otsu_threshold(values) <= 0.6


def test_score_tiles_fraction_and_max_saturation_footprint():
    thumb = _thumb_with_box(box=(0, 0, 100, 50))
    t = detect_tissue(thumb, mask_mpp=4.0, config=dataclasses.replace(TissueConfig(), blur_sigma_um=0.0,
                                                                     closing_radius_um=0.0))
    # store at 1 um/px: a 40 px tile is 10 mask px
    px_xy = np.array([[0, 0], [160, 0], [400, 0], [180, 0]])
    s = score_tiles(t, px_xy=px_xy, tile_size_px=40, px_mpp=1.0)
    assert s.tissue_fraction[0] == pytest.approx(1.0)
    assert s.tissue_fraction[2] == pytest.approx(0.0)
    assert s.tissue_fraction[1] == pytest.approx(1.0)  # mask cols 40..50 are tissue
    assert s.tissue_fraction[3] == pytest.approx(0.5)  # cols 45..55: half tissue
    # footprint of tile 2 (cols 100..110) holds no tissue: the running max must not leak from col 49
    assert s.max_saturation[2] < 0.07 <= s.max_saturation[3]


def test_saturation_gray_and_box_sums_equal_the_float_reference():
    """The memory-lean uint8/int32 paths give exactly the straightforward float results."""
    from wsiscan.tissue import box_counts, gray_of, saturation_of, summed_area_table

    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)
    rgb[:5, :5] = 0  # max == 0: saturation 0, no division by zero
    f = rgb.astype(np.float32)
    mx, mn = f.max(axis=2), f.min(axis=2)
    expected_sat = np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)
    np.testing.assert_array_equal(saturation_of(rgb), expected_sat)
    np.testing.assert_array_equal(gray_of(rgb), f.mean(axis=2))

    mask = rng.random((61, 47)) < 0.3
    y0 = rng.integers(0, 60, 200)
    x0 = rng.integers(0, 46, 200)
    y1 = np.minimum(y0 + rng.integers(1, 20, 200), 61)
    x1 = np.minimum(x0 + rng.integers(1, 20, 200), 47)
    brute = [mask[a:b, c:d].sum() for a, b, c, d in zip(y0, y1, x0, x1, strict=True)]
    np.testing.assert_array_equal(box_counts(summed_area_table(mask), y0, x0, y1, x1), brute)


def test_box_counts_from_the_boxes_rows_equal_the_full_summed_area_table():
    from wsiscan.tissue import box_counts, mask_box_counts, summed_area_table

    rng = np.random.default_rng(8)
    mask = rng.random((97, 61)) < 0.4
    y0, x0 = rng.integers(0, 97, 300), rng.integers(0, 61, 300)
    y1 = np.minimum(y0 + rng.integers(0, 30, 300), 97)  # some empty boxes, some reaching the last row
    x1 = np.minimum(x0 + rng.integers(0, 30, 300), 61)
    full = summed_area_table(mask)
    np.testing.assert_array_equal(mask_box_counts(mask, y0, x0, y1, x1), box_counts(full, y0, x0, y1, x1))
    # broadcast (rows of boxes x columns of boxes), as boxes_near_tissue asks
    ys0, ys1, xs0, xs1 = np.array([0, 10, 50]), np.array([12, 97, 97]), np.array([0, 5]), np.array([61, 9])
    got = mask_box_counts(mask, ys0[:, None], xs0[None, :], ys1[:, None], xs1[None, :])
    assert got.shape == (3, 2)
    np.testing.assert_array_equal(got, box_counts(full, ys0[:, None], xs0[None, :], ys1[:, None], xs1[None, :]))


@pytest.mark.parametrize("size", [1, 2, 5, 24])
def test_window_max_at_equals_scipy_maximum_filter_sampled(size):
    """The per-row-band maximum gives exactly the full-image running maximum (the way
    score_tiles measured it before), at every sampled point, edges included."""
    from scipy import ndimage

    from wsiscan.tissue import window_max_at

    rng = np.random.default_rng(size)
    image = rng.random((83, 67), dtype=np.float32)
    ys = np.concatenate([rng.integers(0, 83, 400), [0, 82, 82, 80]])
    xs = np.concatenate([rng.integers(0, 67, 400), [66, 0, 66, 65]])
    expected = ndimage.maximum_filter(image, size=size, origin=-(size // 2) if size > 1 else 0, mode="nearest")
    got = window_max_at(image, size, ys=ys, xs=xs)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected[ys, xs])
    # the window is [y, y + size) x [x, x + size): the top-left point of a window
    assert got[0] == image[ys[0] : ys[0] + size, xs[0] : xs[0] + size].max()


@pytest.mark.parametrize("dilate", [True, False])
def test_row_runs_equal_scipy_1d_filters(dilate):
    from scipy import ndimage

    from wsiscan.tissue import _row_runs

    rng = np.random.default_rng(int(dilate))
    for cols in (1, 3, 40):
        mask = rng.random((9, cols)) < 0.6
        widths = [0, 1, 2, 3, 4, 7, 16, 50]
        filt = ndimage.maximum_filter1d if dilate else ndimage.minimum_filter1d
        runs = list(_row_runs(mask.copy(), widths, dilate=dilate))
        assert [w for w, _ in runs] == widths
        for w, run in _row_runs(mask, widths, dilate=dilate):  # each run checked before the next reuses its buffer
            expected = filt(mask.view(np.uint8), 2 * w + 1, axis=1, mode="constant", cval=0).view(bool)
            np.testing.assert_array_equal(run, expected, err_msg=f"w={w} cols={cols}")


def test_ink_candidates_leave_out_only_colours_no_ink_rule_takes():
    """detect_ink runs the colour rules only on the pixels its integer pre-test lets through:
    over every one of the 2^24 RGB colours, the same answer as the rules run on every pixel."""
    from wsiscan.tissue import _ink_rules, detect_ink

    for red in range(0, 256, 16):  # 16 reds at a time: 2^20 colours, (256, 4096, 3)
        rgb = np.empty((16, 256, 256, 3), np.uint8)
        rgb[..., 0] = np.arange(red, red + 16, dtype=np.uint8)[:, None, None]
        rgb[..., 1] = np.arange(256, dtype=np.uint8)[None, :, None]
        rgb[..., 2] = np.arange(256, dtype=np.uint8)[None, None, :]
        rgb = rgb.reshape(256, 4096, 3)
        expected = _ink_rules(rgb)
        assert expected.shape == (256, 4096)
        np.testing.assert_array_equal(detect_ink(rgb), expected, err_msg=f"reds {red}..{red + 15}")
    some_ink = _ink_rules(np.array([[[35, 70, 175], [40, 150, 80], [205, 30, 45], [28, 28, 32], [243, 243, 243]]],
                                   np.uint8))
    np.testing.assert_array_equal(some_ink, [[True, True, True, True, False]])  # the markers of test_ink; glass


def test_otsu_with_where_equals_otsu_of_the_selected_values():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.2, 0.03, 3000), rng.normal(0.7, 0.05, 3000)]).clip(0, 1)
    values = values.reshape(600, 10).astype(np.float32)  # more rows than one stripe
    where = rng.random(values.shape) < 0.6
    assert otsu_threshold(values, where=where) == otsu_threshold(values[where])


@pytest.mark.parametrize("bins", [1, 2, 256, 1024])
def test_unit_histogram_equals_numpy_histogram(monkeypatch, bins):
    """The piecewise bincount histogram gives numpy's counts, at bin edges, 0, 1 and outside [0, 1] too."""
    from wsiscan import tissue as tissue_mod

    monkeypatch.setattr(tissue_mod, "_PIECE_PX", 500)  # many pieces
    rng = np.random.default_rng(bins)
    values = rng.random((300, 70), dtype=np.float32)
    edges = np.arange(bins + 1, dtype=np.float32) / bins
    values.flat[: 3 * (bins + 1) : 3] = edges  # exactly on every edge
    values.flat[1 : 3 * (bins + 1) : 3] = np.nextafter(edges, np.float32(-1))  # just below
    values[5, :6] = [0.0, 1.0, -0.0, 1.0000001, -1e-8, np.nan]
    exclude = rng.random(values.shape) < 0.3
    for excluded in ((), (exclude,), (exclude, rng.random(values.shape) < 0.5)):
        keep = np.ones(values.shape, bool)
        for m in excluded:
            keep &= ~m
        expected, _ = np.histogram(values[keep], bins=bins, range=(0.0, 1.0))
        np.testing.assert_array_equal(tissue_mod._unit_histogram(values, bins, exclude=excluded), expected)
    with pytest.raises(ValueError):
        tissue_mod._unit_histogram(values, 100)


def test_piecewise_equals_one_call(monkeypatch):
    from wsiscan import tissue as tissue_mod

    rgb = np.random.default_rng(4).integers(0, 256, (97, 31, 3), dtype=np.uint8)
    for piece_px in (1, 31 * 5, 31 * 7 + 3, 10**6):
        monkeypatch.setattr(tissue_mod, "_PIECE_PX", piece_px)
        for fn in (tissue_mod.saturation_of, tissue_mod.detect_ink, tissue_mod.gray_of):
            expected = fn(rgb)
            out = np.empty_like(expected)
            tissue_mod._piecewise(lambda piece, fn=fn: (fn(piece),), (rgb,), (out,))
            np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape, size", [((1481, 1108, 3), (1000, 750)), ((371, 277, 3), (100, 133)),
                                         ((500, 300), (17, 29)), ((64, 64, 3), (64, 64))])
def test_resize_box_equals_pil_box_resize_of_the_whole_image(shape, size):
    """The stripe-wise downsampling of overlays and QC pictures gives PIL's pixels."""
    from PIL import Image

    from wsiscan.render import resize_box

    image = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    got = resize_box(image, size, stripe_rows=16)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("radius_px", [1.0, 2.5, 3.7, 4.0, 16.0])
def test_disk_dilation_erosion_and_striped_closing_equal_scipy(radius_px):
    """The row-decomposed disk dilation and erosion, and the closing computed stripe by
    stripe from the rows it reaches, give exactly scipy's binary_dilation / binary_erosion /
    binary_closing of the padded mask."""
    from scipy import ndimage

    from wsiscan.tissue import _closed_rows, _Scratch, dilate_or_erode_disk

    rng = np.random.default_rng(int(radius_px * 10))
    masks = [rng.random((120, 97)) < 0.55, ndimage.binary_opening(rng.random((150, 140)) < 0.6),
             np.zeros((30, 40), bool), np.ones((30, 40), bool)]
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = xx**2 + yy**2 <= radius_px**2
    scratch = _Scratch()
    for mask in masks:
        for dilate, reference in ((True, ndimage.binary_dilation), (False, ndimage.binary_erosion)):
            expected = reference(mask, structure=disk, border_value=0)
            np.testing.assert_array_equal(dilate_or_erode_disk(mask, radius_px, dilate=dilate), expected)
            np.testing.assert_array_equal(dilate_or_erode_disk(mask, radius_px, dilate=dilate, scratch=scratch),
                                          expected)
        expected = ndimage.binary_closing(np.pad(mask, r), structure=disk)[r:-r, r:-r]
        rows, cols = mask.shape

        def mask_rows(y0, y1, out, mask=mask):
            out[...] = mask[y0:y1]

        for stripe_rows in (1, 5, 13, rows):
            closed = np.concatenate([_closed_rows(mask_rows, a, min(a + stripe_rows, rows), rows, cols, radius_px,
                                                  scratch).copy() for a in range(0, rows, stripe_rows)])
            np.testing.assert_array_equal(closed, expected, err_msg=f"stripes of {stripe_rows} rows")


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_tissue_in_threaded_stripes_equals_one_call(monkeypatch, threads):
    """The mask (blur, dark/bright, ink, closing) and the tile scores computed in stripes or
    pieces in threads give exactly what one call over the whole image gives."""
    from scipy import ndimage

    from wsiscan import tissue as tissue_mod

    rng = np.random.default_rng(threads)
    rows, cols = 1300, 1100  # above the size from which stripes are used
    blobs = ndimage.gaussian_filter(rng.random((rows, cols)), 12) > 0.5
    thumb = np.full((rows, cols, 3), 240, np.uint8)
    thumb[blobs] = rng.integers(90, 200, (int(blobs.sum()), 3), dtype=np.uint8)
    thumb[rng.random((rows, cols)) < 0.002] = 0  # specks of pen
    px_xy = np.stack(np.meshgrid(np.arange(0, cols - 24, 8), np.arange(0, rows - 24, 8)), -1).reshape(-1, 2) * 4.0
    results = {}
    for n in (1, threads):
        monkeypatch.setattr(tissue_mod, "_threads", lambda n=n: n)
        cfg = TissueConfig(closing_radius_um=16.0)
        t = detect_tissue(thumb, mask_mpp=4.0, config=cfg)
        s = score_tiles(t, px_xy=px_xy, tile_size_px=96, px_mpp=1.0)
        results[n] = (t, s)
    (t1, s1), (tn, sn) = results[1], results[threads]
    assert t1.mask.any() and not t1.mask.to_array().all()
    for a, b in ((t1.mask.to_array(), tn.mask.to_array()), (t1.saturation.to_array(), tn.saturation.to_array()),
                 (t1.dark_bright.to_array(), tn.dark_bright.to_array()),
                 (s1.tissue_fraction, sn.tissue_fraction), (s1.max_saturation, sn.max_saturation)):
        np.testing.assert_array_equal(a, b)
    assert t1.threshold == tn.threshold
