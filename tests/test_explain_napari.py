"""The "Grad-CAM of hotspot" panel in a real napari (under Xvfb when there is no display)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_napari import napari_viewer, result_dir, viewer  # noqa: F401 - the napari fixtures (display: conftest)

pytestmark = [pytest.mark.napari, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_selecting_a_hotspot_shows_its_top_patches(viewer, result_dir, tmp_path):  # noqa: F811 - fixtures
    from qtpy.QtWidgets import QApplication
    from wsiscan_napari._explain_widget import HotspotExplainPanel
    from wsiscan_napari._widget import open_review, save_window_screenshot

    from wsiscan.models import tiny_expected_proba
    from wsiscan.slide_pixels import open_store_pixels
    from wsiscan.store import open_tile_store

    review = open_review(viewer, result_dir)
    panel = viewer.window.dock_widgets["Grad-CAM of hotspot"]
    try:
        assert isinstance(panel, HotspotExplainPanel) and panel.review is review
        assert len(review.hotspots) > 0
        panel.n_patches.setValue(3)
        review.table.setCurrentCell(0, 0)  # the user selects the first hotspot
        for _ in range(5):
            QApplication.instance().processEvents()
        panels = panel.panels
        assert 1 <= len(panels) <= 3 and not panel.pictures.pixmap().isNull()
        assert "hotspot #1" in panel.status.text()
        # the patches are the region's highest-probability cells, re-read from the store: the
        # tiny model's probability of each patch is its heatmap cell, and the hotspot's max
        hotspot = review.hotspots[0]
        assert panels[0]["probability"] == pytest.approx(hotspot.max_probability, abs=1e-5)
        store = open_tile_store(result_dir / "store.zarr", mode="r")
        for p in panels:
            o = p["origin"]
            assert p["probability"] == pytest.approx(o["heatmap_probability"], abs=1e-5)
            stride = json.loads((result_dir / "summary.json").read_text())["tiles"]["stride_px"]
            size = store.heatmap_meta()["tile_size_px"]
            # predict kept no pixels (its default): the patch as predict decoded it from the slide file
            patch = open_store_pixels(store).read_px(px_box=(o["col"] * stride, o["row"] * stride,
                                                             o["col"] * stride + size, o["row"] * stride + size))
            assert p["probability"] == pytest.approx(tiny_expected_proba(patch), abs=1e-5)
            assert p["picture"].ndim == 3 and p["picture"].shape[2] == 3
        shot = save_window_screenshot(viewer, tmp_path / "hotspot-gradcam.png")
        target = os.environ.get("WSISCAN_SCREENSHOT_DIR")
        if target:  # to look at it: WSISCAN_SCREENSHOT_DIR=/some/folder pytest ...
            import shutil

            shutil.copy(shot, target)
        from PIL import Image

        assert np.asarray(Image.open(shot)).shape[1] >= 1000
    finally:
        review.detach()
        for name in ("Grad-CAM of hotspot", "Heatmap review"):
            viewer.window.remove_dock_widget(viewer.window.dock_widgets[name].parent())
