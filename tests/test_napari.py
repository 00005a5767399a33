"""The napari plugin in a real napari (under Xvfb when there is no display).

One viewer for the module (startup costs seconds); each test clears its layers.  Skips
with the reason when napari, a Qt binding or a display cannot be had.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from wsiscan_napari import _layers as L

# napari's dependencies (npe2, pydantic v1-style models) warn on import: not ours to fix
pytestmark = [pytest.mark.napari, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def napari_viewer(display):
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1000, 800)
    yield viewer
    viewer.close()


@pytest.fixture
def viewer(napari_viewer):
    napari_viewer.layers.clear()
    yield napari_viewer
    napari_viewer.layers.clear()


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory, synthetic_slide) -> Path:
    """`wsiscan predict` on the synthetic slide with the tiny deterministic model (predict's default:
    no pixels kept)."""
    from cli_helpers import make_result

    out = make_result(tmp_path_factory.mktemp("napari"), synthetic_slide.path, keep_pixels=False)
    return out / synthetic_slide.path.stem


def _process_events(n: int = 10) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    for _ in range(n):
        app.processEvents()


def _render(viewer) -> np.ndarray:
    """Draw until the multiscale level settles; the canvas as (rows, cols, 4) uint8."""
    _process_events()
    viewer.screenshot(canvas_only=True, flash=False)
    _process_events()
    return viewer.screenshot(canvas_only=True, flash=False)


def _world_to_screen(viewer, shot: np.ndarray, yx_um: np.ndarray) -> np.ndarray:
    cam = viewer.scene.camera
    cy, cx = cam.center[-2:]
    h, w = shot.shape[:2]
    ys = (yx_um[:, 0] - cy) * cam.zoom + h / 2
    xs = (yx_um[:, 1] - cx) * cam.zoom + w / 2
    return np.stack([ys, xs], axis=1).round().astype(int)


def _open(viewer, path) -> tuple:
    layers = viewer.open(str(path), plugin="wsiscan")
    slide = next(lyr for lyr in layers if lyr.metadata["wsiscan"]["role"] == "slide")
    heatmap = next(lyr for lyr in layers if lyr.metadata["wsiscan"]["role"] == "heatmap")
    return slide, heatmap


def _widget(viewer):
    dock, widget = viewer.window.add_plugin_dock_widget("wsiscan", "Heatmap review")
    return dock, widget


def _close(viewer, dock, widget) -> None:
    widget.detach()
    viewer.window.remove_dock_widget(dock)


def test_reader_layers_in_um(viewer, result_dir, synthetic_slide):
    from napari.layers import Image

    slide, heatmap = _open(viewer, result_dir.parent)  # OUT with one slide
    assert isinstance(slide, Image) and isinstance(heatmap, Image)
    assert slide.multiscale and slide.rgb and not heatmap.multiscale
    mpp = synthetic_slide.mpp
    np.testing.assert_allclose(slide.scale, (mpp, mpp))
    np.testing.assert_allclose(slide.translate, (mpp / 2, mpp / 2))
    ome = json.loads((result_dir / "store.zarr/heatmap/zarr.json").read_text())["attributes"]["ome"]
    transforms = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    np.testing.assert_allclose(heatmap.scale, transforms[0]["scale"])
    np.testing.assert_allclose(heatmap.translate, transforms[1]["translation"])
    assert heatmap.colormap.name == "inferno"
    assert tuple(heatmap.contrast_limits) == (0.0, 1.0)
    assert 0 < heatmap.opacity < 1
    assert all(str(u) == "micrometer" for u in (*slide.units, *heatmap.units))
    # both layers span the slide: the heatmap's last cell starts inside the slide and reaches its
    # edge (the last tiles are padded with glass, issue 12)
    w, h = synthetic_slide.dimensions_px
    hm_end = np.asarray(heatmap.translate) + (np.asarray(heatmap.data.shape) - 0.5) * heatmap.scale
    assert (hm_end - np.asarray(heatmap.scale) < np.array([h, w]) * mpp + 1e-6).all()
    assert (hm_end >= np.array([h, w]) * mpp - 1e-6).all()
    # napari offers this reader for the folder (`napari OUTDIR` lists it; --plugin wsiscan picks it)
    from npe2 import PluginManager

    readers = PluginManager.instance().iter_compatible_readers([str(result_dir)])
    assert "wsiscan" in {r.plugin_name for r in readers}


def test_threshold_hotspot_and_export(viewer, result_dir, tmp_path):
    from shapely.geometry import shape

    _open(viewer, result_dir)
    dock, w = _widget(viewer)
    try:
        summary = json.loads((result_dir / "summary.json").read_text())
        assert w.threshold == summary["regions"]["threshold"]
        assert len(w.regions) == summary["regions"]["n"] > 0
        shapes = w.regions_layer
        assert shapes.nshapes == len(L.region_rings_um(w.regions, l0_mpp=w.result.l0_mpp))
        assert w.table.rowCount() == len(w.hotspots) == len(w.regions)
        texts = [w.summary_form.itemAt(i).widget().text() for i in range(w.summary_form.count())]
        assert f"{summary['scores']['max_probability']:.3f}" in texts
        # issue 12: the summary's area names, the colour legend, the smoke-model mark
        assert {"tissue area (mask):", "scored area (scored tiles):", "tumour area (cells p ≥ 0.50):",
                "region area (p ≥ 0.50):"} <= set(texts)
        assert w.smoke_label.isVisibleTo(w) == L.is_smoke_result(summary)
        assert "cyan" in w.legend_label.text()
        assert "region area" in w.regions_label.text() and "tumour area" in w.regions_label.text()

        # move the slider: the debounced update thresholds live
        area_05 = sum(r["area_mm2"] for r in w.regions)
        w.slider.setValue(35)
        for _ in range(50):
            _process_events(2)
            if w.threshold == pytest.approx(0.35):
                break
            time.sleep(0.01)
        assert w.threshold == pytest.approx(0.35)
        assert sum(r["area_mm2"] for r in w.regions) > area_05
        assert shapes.nshapes == len(L.region_rings_um(w.regions, l0_mpp=w.result.l0_mpp))
        assert "0.35" in shapes.name

        # click a hotspot: centred on it and zoomed in so that it fills the view
        viewer.reset_view()
        zoom_before = viewer.scene.camera.zoom
        w.table.cellClicked.emit(1, 0)
        hs = w.hotspots[1]
        np.testing.assert_allclose(viewer.scene.camera.center[-2:], hs.centre_um)
        assert viewer.scene.camera.zoom > zoom_before
        y0, x0, y1, x1 = hs.bbox_um
        ch, cw = viewer.canvas.size
        assert (y1 - y0) * viewer.scene.camera.zoom <= ch and (x1 - x0) * viewer.scene.camera.zoom <= cw

        # export the current threshold's regions: read back, same polygons
        out = w.export_geojson(tmp_path / "review.geojson")
        back = L.read_geojson_geometries(out)
        assert len(back) == len(w.regions)
        for g, r in zip(back, w.regions, strict=True):
            assert g.equals(shape(r["geometry"]))
        data = json.loads(out.read_text())
        predicted = json.loads((result_dir / "tumor.geojson").read_text())
        assert data["properties"]["threshold"] == pytest.approx(0.35)
        assert set(data["features"][0]["properties"]) == set(predicted["features"][0]["properties"])
        # and at predict's own threshold the export is predict's file
        w.set_threshold(summary["regions"]["threshold"])
        assert json.loads(w.export_geojson(tmp_path / "again.geojson").read_text()) == predicted

        # a result opened later takes over the panel
        _, heatmap2 = _open(viewer, result_dir)
        assert w.heatmap_layer is heatmap2 and w.threshold == summary["regions"]["threshold"]
    finally:
        _close(viewer, dock, w)


def test_screenshot_shows_overlay_on_tissue_only(viewer, result_dir, synthetic_slide, tmp_path):
    slide, heatmap = _open(viewer, result_dir)
    viewer.reset_view()
    with_overlay = _render(viewer)
    heatmap.visible = False
    without = _render(viewer)
    heatmap.visible = True
    heatmap.opacity = 1.0
    opaque = _render(viewer)

    cells = np.asarray(heatmap.data)
    rows, cols = np.mgrid[0 : cells.shape[0], 0 : cells.shape[1]]
    centres = np.stack([rows.ravel(), cols.ravel()], axis=1) * heatmap.scale + heatmap.translate
    px = _world_to_screen(viewer, with_overlay, centres)
    h, w = with_overlay.shape[:2]
    inside = (px[:, 0] >= 0) & (px[:, 0] < h) & (px[:, 1] >= 0) & (px[:, 1] < w)
    assert inside.all()
    tissue = np.isfinite(cells.ravel())
    diff = np.abs(with_overlay[px[:, 0], px[:, 1], :3].astype(int) - without[px[:, 0], px[:, 1], :3]).sum(axis=1)
    assert (diff[tissue] > 20).mean() > 0.95, "the overlay must colour the tissue"
    assert (diff[~tissue] <= 3).all(), "non-tissue (NaN) cells must stay transparent"
    # opaque, each tissue cell shows its probability's inferno colour
    expected = heatmap.colormap.map(cells.ravel()[tissue])[:, :3] * 255
    got = opaque[px[tissue, 0], px[tissue, 1], :3].astype(float)
    assert np.abs(got - expected).max() < 12
    # the slide under it is in place: glass (243) at cell centres outside the tissue boxes
    l0_y, l0_x = (centres / synthetic_slide.mpp).T
    in_box = np.zeros(len(centres), bool)
    for bx0, by0, bx1, by1 in synthetic_slide.tissue_boxes_l0:
        in_box |= (l0_x >= bx0 - 8) & (l0_x < bx1 + 8) & (l0_y >= by0 - 8) & (l0_y < by1 + 8)
    # (cell centres of the last row and column may lie past the slide's edge: glass padding, issue 12)
    sw, sh = synthetic_slide.dimensions_px
    on_glass = ~in_box & (l0_x < sw) & (l0_y < sh)
    glass = without[px[on_glass, 0], px[on_glass, 1], :3].astype(int)
    assert on_glass.sum() > 10 and np.abs(glass - 243).max() <= 3
    assert (np.abs(without[px[in_box & tissue, 0], px[in_box & tissue, 1], :3].astype(int) - 243).max(axis=1) > 20).all()

    # the widget's screenshot button writes the canvas
    dock, wdg = _widget(viewer)
    try:
        path = wdg.save_screenshot(tmp_path / "shot.png")
        from PIL import Image as PILImage

        assert PILImage.open(path).size[0] > 100
    finally:
        _close(viewer, dock, wdg)


def test_zooming_in_reads_only_visible_tiles(viewer, result_dir, synthetic_slide):
    slide, heatmap = _open(viewer, result_dir)
    pyramid = slide.metadata["wsiscan"]["pyramid"]
    viewer.reset_view()
    _render(viewer)
    n_levels = len(slide.data)
    assert pyramid.reads[0] == 0, "the whole-slide view must not touch level 0"
    assert set(pyramid.reads) <= set(range(1, n_levels))

    # zoom to 2 screen px per level-0 px on a block corner inside the first tissue box
    mpp = synthetic_slide.mpp
    centre_px = np.array([2, 2]) * L.CHUNK_PX
    bx0, by0, bx1, by1 = synthetic_slide.tissue_boxes_l0[0]
    assert bx0 < centre_px[1] < bx1 and by0 < centre_px[0] < by1
    cam = viewer.scene.camera
    cam.center = tuple(centre_px * mpp)
    cam.zoom = 2.0 / mpp
    shot = _render(viewer)
    assert slide.data_level == 0
    ch, cw = shot.shape[:2]
    half = np.array([ch, cw]) / cam.zoom / 2 / mpp  # half the view in level-0 px
    lo = np.maximum(centre_px - half, 0) // L.CHUNK_PX
    hi = np.minimum(centre_px + half, np.array(slide.data[0].shape[:2]) - 1) // L.CHUNK_PX
    visible = int(np.prod(hi - lo + 1))
    total = math.prod(len(c) for c in slide.data[0].chunks[:2])
    assert 1 <= pyramid.reads[0] <= visible < total, (dict(pyramid.reads), visible, total)
    # the view shows the slide's real pixels there: tissue, not glass
    assert with_tissue(shot)


def with_tissue(shot: np.ndarray) -> bool:
    rgb = shot[..., :3].astype(int)
    return bool((np.abs(rgb - 243).max(axis=-1) > 20).mean() > 0.5)


def test_wsiscan_view_screenshot(display, result_dir, tmp_path):
    from click.testing import CliRunner

    from wsiscan.cli import main

    shot = tmp_path / "view.png"
    res = CliRunner().invoke(main, ["view", str(result_dir), "--threshold", "0.4", "--screenshot", str(shot)])
    assert res.exit_code == 0, res.output
    from PIL import Image as PILImage

    img = np.asarray(PILImage.open(shot).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 600
