"""Score all the tissue (issue 12): the grid reaches the slide's right and bottom edges (the
last tiles padded with glass) and the keep rule (any tissue) puts every tissue pixel of the
mask in a scored tile, at strides 96 and 32, on real slides and on a synthetic slide whose
tissue lies only along its right and bottom edges."""

from __future__ import annotations

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
    assert not plan.unscored_tissue[:, -1].any() and not plan.unscored_tissue[-1, :].any()


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
