"""Score all the tissue (issue 12): the grid reaches the slide's right and bottom edges (the
last tiles padded with glass) and the keep rule (any tissue) puts every tissue pixel of the
mask in a scored tile, at strides 96 and 32, on real slides and on a synthetic slide whose
tissue lies only along its right and bottom edges."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from cli_helpers import run

from wsiscan.config import load_config
from wsiscan.grid import build_grid, tile_coverage
from wsiscan.testing import write_synthetic_slide
from wsiscan.tiling import plan_tiling


@pytest.fixture(scope="module")
def edge_slide(tmp_path_factory):
    """3001 x 2203 px at 0.486 um/px (odd sizes: partial last tiles), tissue only in a band
    along the right edge and one along the bottom edge."""
    w, h = 3001, 2203
    path = tmp_path_factory.mktemp("edge") / "edges.tif"
    return write_synthetic_slide(path, dimensions_px=(w, h), boxes=((w - 260, 0, w, h), (0, h - 230, w, h)))


def _brute_coverage(plan) -> float:
    """Share of mask pixels whose centre lies in a kept tile, tile by tile (no shortcuts)."""
    mask = plan.tissue.mask.to_array()
    covered = np.zeros_like(mask)
    scale = plan.geometry.effective_mpp / plan.tissue.mask_mpp
    centres_x = np.arange(mask.shape[1]) + 0.5
    centres_y = np.arange(mask.shape[0]) + 0.5
    t = plan.grid.tile_size_px
    for x0, y0 in plan.grid.px_origin(plan.kept_rc):
        xs = (centres_x >= x0 * scale) & (centres_x < (x0 + t) * scale)
        ys = (centres_y >= y0 * scale) & (centres_y < (y0 + t) * scale)
        covered[np.ix_(ys, xs)] = True
    return float((mask & covered).sum() / mask.sum())


def _check(plan) -> None:
    assert plan.tissue.mask.count_nonzero() > 0
    assert plan.scored_tissue_fraction >= 0.99, plan.scored_tissue_fraction
    assert _brute_coverage(plan) == pytest.approx(plan.scored_tissue_fraction, abs=1e-9)
    # the grid reaches the slide's far edges
    g, geo = plan.grid, plan.geometry
    assert (g.n_cols - 1) * g.stride_px + g.tile_size_px >= geo.slide_width_px
    assert (g.n_rows - 1) * g.stride_px + g.tile_size_px >= geo.slide_height_px
    assert (g.n_cols - 1) * g.stride_px + g.tile_size_px <= geo.width_px  # inside the padded store


@pytest.mark.parametrize("stride", [96, 32])
def test_edge_tissue_is_all_scored(edge_slide, stride):
    plan = plan_tiling(edge_slide.path, load_config(), stride_px=stride)
    _check(plan)
    # tissue reaches the slide's last mask column and row, and those are scored
    mask = plan.tissue.mask.to_array()
    assert mask[:, -1].any() and mask[-1, :].any()
    unscored = plan.unscored_tissue.to_array()
    assert not unscored[:, -1].any() and not unscored[-1, :].any()


@pytest.mark.realdata
@pytest.mark.parametrize("stride", [96, 32])
@pytest.mark.parametrize("name,slide_mpp", [("CMU-1-Small-Region.svs", None), ("TCGA-CR-7395-01A-01-TS1.svs", 0.25)])
def test_real_tissue_is_all_scored(shared_slides, name, slide_mpp, stride):
    plan = plan_tiling(shared_slides / name, load_config().replace("slide", slide_mpp=slide_mpp), stride_px=stride)
    _check(plan)


@pytest.mark.realdata
def test_half_tissue_rule_leaves_tissue_unscored_and_qc_shows_it(shared_slides, tmp_path):
    """The old rule (>= 50 % tissue) left about a tenth of CMU unscored; qc.png paints it red."""
    r = run("tile", shared_slides / "CMU-1-Small-Region.svs", "-o", tmp_path, "--min-tissue", "0.5", "-q")
    assert r.exit_code == 0, r.output
    from PIL import Image

    from wsiscan.store import open_tile_store

    store = open_tile_store(tmp_path / "CMU-1-Small-Region" / "store.zarr", mode="r")
    share = store.grid(96).attrs["scored_tissue_fraction"]
    assert 0.80 < share < 0.97, share
    qc = np.asarray(Image.open(tmp_path / "CMU-1-Small-Region" / "qc.png").convert("RGB")).astype(int)
    red = (qc[..., 0] > 150) & (qc[..., 1] < 80) & (qc[..., 2] < 80)
    assert red.sum() > 100, "unscored tissue is painted red"
    r = run("tile", shared_slides / "CMU-1-Small-Region.svs", "-o", tmp_path / "all", "-q")
    store = open_tile_store(tmp_path / "all" / "CMU-1-Small-Region" / "store.zarr", mode="r")
    assert store.grid(96).attrs["scored_tissue_fraction"] == 1.0
    assert store.meta["ink_area_mm2"] == 0.0 and store.meta["tissue_area_mm2"] == pytest.approx(0.614128)


def test_cli_tile_pads_the_last_tiles_with_glass(edge_slide, tmp_path):
    r = run("tile", edge_slide.path, "-o", tmp_path, "--stride-px", "32", "-q")
    assert r.exit_code == 0, r.output
    from wsiscan.store import open_tile_store

    store = open_tile_store(tmp_path / "edges" / "store.zarr", mode="r")
    geo = store.meta["geometry"]
    assert geo["pad_px"] == 96 and geo["width_px"] == geo["pad_px"] + 3001 // 2
    assert store.grid(32).attrs["scored_tissue_fraction"] >= 0.99
    # the padding reads as glass
    pixels = store.pixels
    assert (pixels[:, geo["width_px"] - 90 :] == 255).all()


def test_grid_without_padding_stays_inside_and_tile_coverage_matches_geometry():
    g = build_grid(width_px=1000, height_px=500, tile_size_px=96, stride_px=96)
    assert g.n_cols == 10 and (g.n_cols - 1) * 96 + 96 <= 1000  # no glass: the last partial column is dropped
    g = build_grid(width_px=1000, height_px=500, tile_size_px=96, stride_px=96, pad_px=96)
    assert g.n_cols == 11 and g.n_rows == 6
    cov = tile_coverage((4, 4), mask_mpp=2.0, px_mpp=1.0, px_xy=np.array([[2, 2]]), tile_size_px=4)
    # the tile spans store px [2, 6) = mask px [1, 3): centres 1.5 and 2.5 mask px are inside
    assert cov.tolist() == [[False] * 4, [False, True, True, False], [False, True, True, False], [False] * 4]


def test_tile_coverage_over_the_tiles_edges_equals_a_full_difference_image():
    """The edge-compressed coverage gives exactly the full-size difference image's answer
    (the straightforward way: +1/-1 at every tile's corners, summed over the whole mask)."""
    rng = np.random.default_rng(11)
    rows, cols, scale = 211, 173, 0.2571  # mask px per store px
    for n_tiles, tile_px in ((1, 96), (40, 96), (300, 37), (0, 96)):
        px_xy = rng.integers(-200, 1000, (n_tiles, 2)).astype(np.float64)
        got = tile_coverage((rows, cols), mask_mpp=1.0 / scale, px_mpp=1.0, px_xy=px_xy, tile_size_px=tile_px)

        def edge(v, limit):
            return np.clip(np.ceil(v * scale - 0.5 - 1e-9), 0, limit).astype(np.int64)

        diff = np.zeros((rows + 1, cols + 1), np.int32)
        x0, x1 = edge(px_xy[:, 0], cols), edge(px_xy[:, 0] + tile_px, cols)
        y0, y1 = edge(px_xy[:, 1], rows), edge(px_xy[:, 1] + tile_px, rows)
        for a, b, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
            np.add.at(diff, (a, b), sign)
        expected = diff.cumsum(axis=0).cumsum(axis=1)[:rows, :cols] > 0
        assert got.shape == expected.shape and got.dtype == bool
        np.testing.assert_array_equal(got, expected)
        assert expected.any() == (n_tiles > 0)


def _random_tiles(rng, n_tiles, *, low=-200, high=1000):
    return rng.integers(low, high, (n_tiles, 2)).astype(np.float64)


def test_tile_coverage_rows_of_any_stripe_equal_the_whole_coverage():
    """TileCoverage.rows (a stripe at a time, from the edge table) gives the rows of the whole
    tile_coverage, for stripes that start and end anywhere (inside a cell, on an edge, one row)."""
    from wsiscan.grid import TileCoverage

    rng = np.random.default_rng(5)
    rows, cols, scale = 187, 151, 0.3127
    for n_tiles, tile_px in ((0, 96), (1, 96), (25, 96), (200, 29)):
        px_xy = _random_tiles(rng, n_tiles)
        kwargs = dict(mask_mpp=1.0 / scale, px_mpp=1.0, px_xy=px_xy, tile_size_px=tile_px)
        whole = tile_coverage((rows, cols), **kwargs)
        table = TileCoverage((rows, cols), **kwargs)
        for step in (1, 7, 64, rows):
            got = np.concatenate([table.rows(y0, min(y0 + step, rows)) for y0 in range(0, rows, step)])
            np.testing.assert_array_equal(got, whole)
        assert table.rows(5, 5).shape == (0, cols)
        with pytest.raises(IndexError):
            table.rows(0, rows + 1)


@pytest.mark.parametrize("fill", ["random", "empty", "full"])
def test_unscored_tissue_stripe_by_stripe_equals_the_whole_array(fill):
    """tissue & ~coverage made a stripe at a time, from a mask kept in a file, gives the
    whole-array answer whatever the stripes."""
    from wsiscan.grid import TileCoverage
    from wsiscan.rowimage import RowImage
    from wsiscan.tiling import unscored_tissue

    rng = np.random.default_rng(8)
    rows, cols, scale = 203, 166, 0.25
    mask = {"random": rng.random((rows, cols)) < 0.4, "empty": np.zeros((rows, cols), bool),
            "full": np.ones((rows, cols), bool)}[fill]
    px_xy = _random_tiles(rng, 30, high=700)
    kwargs = dict(mask_mpp=1.0 / scale, px_mpp=1.0, px_xy=px_xy, tile_size_px=96)
    want = mask & ~tile_coverage((rows, cols), **kwargs)
    assert fill != "random" or 0 < want.sum() < mask.sum()  # tiles cover some tissue, not all
    table = TileCoverage((rows, cols), **kwargs)
    for step in (1, 13, 100, None):
        with RowImage.from_array(mask, ram_limit_bytes=0) as in_file:
            got = unscored_tissue(in_file, table, rows_per_stripe=step)
            assert got.dtype == bool and got.shape == (rows, cols)
            np.testing.assert_array_equal(got.to_array(), want)
        np.testing.assert_array_equal(unscored_tissue(mask, table, rows_per_stripe=step).to_array(), want)


@pytest.mark.parametrize("stride", [96, 32])
def test_plan_with_pictures_in_files_equals_the_whole_array_plan(synthetic_slide, monkeypatch, stride):
    """Every picture of the plan in a temporary file (no RAM limit): the thumbnail is
    read_thumbnail's, the unscored tissue and scored share are the whole-array computation."""
    from wsiscan import rowimage
    from wsiscan.slide import open_slide

    cfg = load_config()
    monkeypatch.setattr(rowimage, "RAM_LIMIT_BYTES", 0)
    plan = plan_tiling(synthetic_slide.path, cfg, stride_px=stride)
    assert not plan.thumbnail.in_memory and not plan.unscored_tissue.in_memory
    with open_slide(synthetic_slide.path) as slide:
        np.testing.assert_array_equal(plan.thumbnail.to_array(), slide.read_thumbnail(mpp=cfg.tissue.mask_mpp))
    mask = plan.tissue.mask.to_array() if hasattr(plan.tissue.mask, "to_array") else plan.tissue.mask
    covered = tile_coverage(mask.shape, mask_mpp=plan.tissue.mask_mpp, px_mpp=plan.geometry.effective_mpp,
                            px_xy=plan.grid.px_origin(plan.kept_rc), tile_size_px=plan.grid.tile_size_px)
    unscored = mask & ~covered
    np.testing.assert_array_equal(plan.unscored_tissue.to_array(), unscored)
    assert plan.scored_tissue_fraction == 1.0 - unscored.sum() / mask.sum()
    clone = pickle.loads(pickle.dumps(plan))  # a RowImage travels as its rows
    np.testing.assert_array_equal(clone.thumbnail.to_array(), plan.thumbnail.to_array())
    np.testing.assert_array_equal(clone.unscored_tissue.to_array(), unscored)
    plan.close_pictures()
    assert plan.thumbnail.closed and plan.unscored_tissue.closed


def test_a_plan_without_tiles_reports_the_masks_share(tmp_path):
    """The no-tissue error gives the mask's share of the thumbnail, counted stripe by stripe."""
    from wsiscan.errors import NoTissueError

    blank = write_synthetic_slide(tmp_path / "blank.tif", dimensions_px=(2048, 2048), boxes=())
    with pytest.raises(NoTissueError, match=r"0\.0% of the thumbnail above it"):
        plan_tiling(blank.path, load_config())
