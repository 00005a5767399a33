"""No positive cell lost, one vocabulary of areas, and `heatmap --threshold` keeping
summary.json and the exports in agreement (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run

from wsiscan.config import load_config
from wsiscan.heatmap import HeatmapFrame, tumour_regions
from wsiscan.results import SUMMARY_AREA_KEYS, area_summary


def _isolated_cells():
    cells = np.full((20, 24), 0.1, np.float32)
    singles = [(1, 1), (5, 20), (10, 10), (18, 3), (15, 15)]
    for r, c in singles:
        cells[r, c] = 0.9
    cells[3:6, 5:9] = 0.8  # one 12-cell region
    cells[0, 12:] = np.nan  # no tissue
    return cells, len(singles) + 1


@pytest.mark.parametrize("stride", [96, 32])
def test_every_isolated_positive_cell_is_exported_and_areas_add_up(stride):
    cells, n_regions = _isolated_cells()
    pc = load_config().predict
    frame = HeatmapFrame(stride_px=stride, tile_size_px=96, px_mpp=0.972, l0_per_px=2.0)
    regions = tumour_regions(cells, frame, threshold=pc.threshold, min_area_um2=pc.min_region_area_um2,
                             simplify_tolerance_um=pc.simplify_tolerance_um)
    assert len(regions) == n_regions  # a single cell (0.0087 mm2 at stride 96) is a region
    a = area_summary(cells, frame, regions, threshold=pc.threshold, tissue_area_mm2=1.0, ink_area_mm2=0.0,
                     scored_tissue_fraction=1.0)
    assert a["n_dropped_cells"] == 0 and a["n_tumour_cells"] == a["n_region_cells"] == 17
    # the exported polygons' area is exactly the positive cells' area
    assert a["region_area_mm2"] == pytest.approx(a["tumour_area_mm2"], rel=1e-12)
    assert a["scored_area_mm2"] == pytest.approx(np.isfinite(cells).sum() * frame.cell_um**2 / 1e6, rel=1e-12)


def test_a_minimum_region_counts_what_it_drops():
    cells, _ = _isolated_cells()
    frame = HeatmapFrame(stride_px=96, tile_size_px=96, px_mpp=0.972, l0_per_px=2.0)
    regions = tumour_regions(cells, frame, threshold=0.5, min_area_um2=10000.0, simplify_tolerance_um=0)
    a = area_summary(cells, frame, regions, threshold=0.5, tissue_area_mm2=None, ink_area_mm2=None,
                     scored_tissue_fraction=None)
    assert len(regions) == 1 and a["n_dropped_cells"] == 5
    assert a["n_tumour_cells"] == a["n_region_cells"] + a["n_dropped_cells"]
    assert a["tumour_area_mm2"] == pytest.approx(a["region_area_mm2"] + a["dropped_area_mm2"], rel=1e-12)


def test_simplified_polygons_are_what_every_picture_draws():
    """With a simplification tolerance, the overlay draws the GeoJSON's (simplified) polygons."""
    from wsiscan import heatmap

    cells = np.full((30, 30), 0.1, np.float32)
    yy, xx = np.mgrid[:30, :30]
    cells[(yy - 15) ** 2 + (xx - 15) ** 2 < 80] = 0.9
    frame = HeatmapFrame(stride_px=32, tile_size_px=96, px_mpp=0.972, l0_per_px=2.0)
    regions = tumour_regions(cells, frame, threshold=0.5, min_area_um2=0, simplify_tolerance_um=60)
    drawn = []
    import matplotlib.axes
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    # every cyan line added over the picture (the axes that shows images; the colour bar's
    # threshold mark is cyan too), however it is added (ax.plot adds through add_line, the
    # outlines are one LineCollection)
    real_add_line, real_add_artist = matplotlib.axes.Axes.add_line, matplotlib.axes.Axes.add_artist
    real_add_collection = matplotlib.axes.Axes.add_collection

    def seen(ax, artist):
        if isinstance(artist, Line2D) and artist.get_color() == "cyan" and ax.get_images():
            drawn.append(np.asarray(artist.get_xydata()))
        if isinstance(artist, LineCollection) and ax.get_images():
            assert matplotlib.colors.same_color(artist.get_colors(), "cyan")
            drawn.extend(np.asarray(seg) for seg in artist.get_segments())

    def spy_line(self, line):
        seen(self, line)
        return real_add_line(self, line)

    def spy_artist(self, artist):
        seen(self, artist)
        return real_add_artist(self, artist)

    def spy_collection(self, collection, *args, **kwargs):
        seen(self, collection)
        return real_add_collection(self, collection, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "add_line", spy_line)
        mp.setattr(matplotlib.axes.Axes, "add_artist", spy_artist)
        mp.setattr(matplotlib.axes.Axes, "add_collection", spy_collection)
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            thumb = np.full((300, 300, 3), 230, np.uint8)
            heatmap.render_overlay(thumb, cells, frame, thumb_mpp=0.972 * 3, threshold=0.5, title="t",
                                   path=Path(d) / "o.png", regions=regions)
    rings = heatmap._rings(regions)
    assert len(drawn) == len(rings) >= 1
    l0_per_out = 0.972 * 3 / 0.972 * 2.0
    for got, ring in zip(drawn, rings, strict=True):
        assert np.allclose(got, np.asarray(ring) / l0_per_out - 0.5)


def test_heatmap_threshold_updates_summary_and_exports_agree(synthetic_slide, tiny_ckpt, tmp_path):
    r0 = run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q")
    assert r0.exit_code == 0 and "NOT A TUMOUR CLASSIFIER" in r0.stderr
    d = tmp_path / "synthetic"
    from PIL import Image

    top = np.asarray(Image.open(d / "overlay.png").convert("RGB"))[:40].astype(int)  # the red mark above the caption
    assert ((top[..., 0] > 150) & (top[..., 1] < 60) & (top[..., 2] < 60)).sum() > 200
    before = json.loads((d / "summary.json").read_text())
    assert set(SUMMARY_AREA_KEYS) <= set(before["areas"])
    assert before["areas"]["scored_tissue_fraction"] >= 0.99 and before["smoke_model"] is True
    gj = json.loads((d / "tumor.geojson").read_text())
    assert "NOT A TUMOUR CLASSIFIER" in gj["properties"]["warning"]
    assert all(f["properties"]["name"].startswith("[smoke test, not a tumour classifier]") for f in gj["features"])
    for t in (0.3, 0.7):
        r = run("heatmap", d, "--threshold", t)
        assert r.exit_code == 0, r.output
        s = json.loads((d / "summary.json").read_text())
        gj = json.loads((d / "tumor.geojson").read_text())
        assert s["regions"]["threshold"] == s["scores"]["threshold"] == s["areas"]["threshold"] == t
        assert s["regions"]["n"] == len(gj["features"]) and gj["properties"]["threshold"] == t
        assert s["exports"] == {"tumor.geojson": {"threshold": t}, "overlay.png": {"threshold": t}}
        area = sum(f["properties"]["area_mm2"] for f in gj["features"])
        assert s["areas"]["region_area_mm2"] == pytest.approx(area, rel=1e-12)
        assert s["areas"]["tumour_area_mm2"] == pytest.approx(s["areas"]["region_area_mm2"], rel=1e-9)
        # what does not depend on the threshold is kept
        assert s["areas"]["tissue_area_mm2"] == before["areas"]["tissue_area_mm2"]
        assert s["tiles"] == before["tiles"]
    # --no-geojson: the summary says the GeoJSON is still at the older threshold
    r = run("heatmap", d, "--threshold", 0.5, "--no-geojson", "--no-png")
    s = json.loads((d / "summary.json").read_text())
    assert r.exit_code == 0 and s["exports"]["tumor.geojson"] == {"threshold": 0.7} and s["regions"]["threshold"] == 0.5


def test_heatmap_on_an_unreadable_summary_is_one_line(synthetic_slide, tiny_ckpt, tmp_path):
    assert run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q").exit_code == 0
    (tmp_path / "synthetic" / "summary.json").write_text("{not json")
    assert_one_line_error(run("heatmap", tmp_path / "synthetic", "--threshold", 0.3), "summary.json", "predict")
