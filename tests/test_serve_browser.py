"""``wsiscan serve`` in a real headless Chromium (Debian's chromium + chromium-driver, through Selenium).

The server runs on 127.0.0.1 in this process; results come from the real ``wsiscan predict
--model wsiscan/tiny`` (test_serve_fixtures).  Screenshots go to the test's tmp folder, and
also to $WSISCAN_SCREENSHOT_DIR when it is set.  Skips with the reason when Chromium, its
driver or Selenium is missing, or the browser does not start.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason='the serve extra is not installed (pip install -e ".[serve]")')
pytest.importorskip("selenium", reason="selenium is not installed (it is in the dev extra)")

from PIL import Image
from test_serve_fixtures import SLIDE_IDS, LiveServer, make_results

from wsiscan.heatmap import HeatmapFrame, tumour_regions
from wsiscan.models import tiny_expected_proba
from wsiscan.serve.app import create_app
from wsiscan.serve.deepzoom import colormap_lut
from wsiscan.serve.patch import resize_patch
from wsiscan.store import open_tile_store
from wsiscan.testing import BACKGROUND

WINDOW_PX = (1300, 850)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--force-device-scale-factor=1", "--hide-scrollbars", f"--window-size={WINDOW_PX[0]},{WINDOW_PX[1]}")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory)


@pytest.fixture(scope="module")
def server(out):
    live = LiveServer(create_app(out))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("Chromium or its driver is not installed (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    profile = tempfile.mkdtemp(prefix="wsiscan-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium did not start: {str(exc).splitlines()[0]}")
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, js: str, *, timeout_s: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(js)
        if value:
            return value
        if time.monotonic() > deadline:
            logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
            raise AssertionError(f"timed out waiting for {what or js}; browser log: {logs[-5:]}")
        time.sleep(0.1)


def _save(png: bytes, tmp_path: Path, name: str) -> np.ndarray:
    (tmp_path / name).write_bytes(png)
    folder = os.environ.get("WSISCAN_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


_LOADED = """const s = window.wsiscan; if (!s || !s.state.ready || !s.viewer) return false;
const w = s.viewer.world; if (w.getItemCount() !== 2) return false;
for (let i = 0; i < 2; i++) if (!w.getItemAt(i).getFullyLoaded()) return false;
return !s.viewer.viewport.getZoom(true) ? false : Math.abs(s.viewer.viewport.getZoom(true) - s.viewer.viewport.getZoom(false)) < 1e-9;"""


def _settle(driver) -> None:
    """Wait until both images are fully loaded at the current view, and two frames are drawn."""
    _wait(driver, _LOADED, what="the slide and heatmap tiles")
    driver.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(done));")
    _wait(driver, _LOADED, what="the slide and heatmap tiles after drawing")


def _open_viewer(driver, server, slide_id: str) -> dict:
    driver.get(f"{server.url}/slide/{slide_id}")
    _settle(driver)
    return driver.execute_script("return window.wsiscan.state.info")


def _set_slider(driver, element_id: str, value: int) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input', {bubbles: true}));", element_id, value)


def _view_um(driver, rect_um) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Fit the view to rect_um (x, y, w, h); returns (um of the viewer's px (0, 0), um per px (x, y), size)."""
    driver.execute_script("const v = window.wsiscan.viewer; const r = arguments[0];"
                          "v.viewport.fitBounds(new OpenSeadragon.Rect(r[0], r[1], r[2], r[3]), true);", list(rect_um))
    _settle(driver)
    m = driver.execute_script(
        "const v = window.wsiscan.viewer; const el = document.getElementById('viewer');"
        "const a = v.viewport.viewerElementToViewportCoordinates(new OpenSeadragon.Point(0, 0));"
        "const b = v.viewport.viewerElementToViewportCoordinates(new OpenSeadragon.Point(el.clientWidth, el.clientHeight));"
        "return [a.x, a.y, b.x, b.y, el.clientWidth, el.clientHeight];")
    w, h = int(m[4]), int(m[5])
    origin = np.array(m[:2])
    per_px = np.array([(m[2] - m[0]) / w, (m[3] - m[1]) / h])
    return origin, per_px, (w, h)


def _viewer_shot(driver, tmp_path: Path, name: str) -> np.ndarray:
    from selenium.webdriver.common.by import By

    return _save(driver.find_element(By.ID, "viewer").screenshot_as_png, tmp_path, name)


# -- the index -----------------------------------------------------------------------------------------------
def test_index_lists_every_slide(browser, server, tmp_path):
    browser.get(server.url + "/")
    _wait(browser, "return document.querySelectorAll('#slides tbody tr').length === 4", what="the index rows")
    ids = browser.execute_script("return [...document.querySelectorAll('#slides tbody tr')].map(r => r.dataset.slide)")
    assert tuple(ids) == SLIDE_IDS
    failed = browser.execute_script(
        "return document.querySelector('tr[data-slide=broken] .error').textContent")
    assert "broken.svs" in failed
    _wait(browser, "return [...document.querySelectorAll('img.qc')].every(i => i.complete && i.naturalWidth > 0)",
          what="the QC thumbnails")
    assert browser.execute_script("return document.querySelectorAll('img.qc').length") == 3
    links = browser.execute_script("return [...document.querySelectorAll('a.slide-link')].map(a => a.textContent)")
    assert links == ["syn-a", "syn-b", "syn-moved"]
    _save(browser.get_screenshot_as_png(), tmp_path, "wt15-index.png")


# -- the viewer: slide and heatmap aligned -----------------------------------------------------------------------
def _cells_and_frame(out: Path, slide_id: str):
    store = open_tile_store(out / slide_id / "store.zarr", mode="r")
    hm = store.heatmap_meta()
    frame = HeatmapFrame(hm["stride_px"], hm["tile_size_px"], hm["px_mpp"], hm["l0_per_px"])
    return store.heatmap_level(0)[...], frame


def _is_tissue(rgb: np.ndarray) -> np.ndarray:
    """Synthetic tissue is pink/purple (channels far apart); glass is a flat light grey."""
    rgb = rgb.astype(np.int32)
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > 25


def test_viewer_draws_slide_and_heatmap_aligned(browser, server, out, tmp_path):
    """Screenshot pixels against the truth at a known region (the corner of a tissue box): with the
    heatmap at opacity 0 the slide's tissue/glass edges are where the synthetic slide has them; at
    opacity 1 every tissue cell shows its colormap colour exactly inside its square, and the slide
    shows through the non-tissue cells."""
    info = _open_viewer(browser, server, "syn-a")
    cells, frame = _cells_and_frame(out, "syn-a")
    l0_mpp = info["l0_mpp"]
    box_l0 = (4096 // 8, 3072 // 6)  # top-left corner of the first tissue box of write_synthetic_slide
    corner_um = np.array(box_l0) * l0_mpp
    origin, per_px, (w, h) = _view_um(browser, (corner_um[0] - 150, corner_um[1] - 120, 520, 340))
    assert 0.3 < per_px[0] < 0.8 and abs(per_px[0] - per_px[1]) < 1e-6 * per_px[0]

    # the navigator (top right) would cover part of the view: hide it while comparing pixels
    browser.execute_script("window.wsiscan.viewer.navigator.element.style.visibility = 'hidden'")
    ys, xs = np.mgrid[20 : h - 60 : 3, 150 : w - 20 : 3]  # clear of the zoom buttons and the scale bar
    um_x, um_y = origin[0] + (xs + 0.5) * per_px[0], origin[1] + (ys + 0.5) * per_px[1]

    # 1. the slide alone: tissue exactly inside the box, 2 screen px of tolerance at its edges
    _set_slider(browser, "opacity", 0)
    _settle(browser)
    shot = _viewer_shot(browser, tmp_path, "wt15-viewer-slide-only.png")[ys, xs]
    lx, ly = um_x / l0_mpp, um_y / l0_mpp
    inside = (lx >= box_l0[0]) & (ly >= box_l0[1])
    margin_l0 = 2 * per_px[0] / l0_mpp
    clear = (np.abs(lx - box_l0[0]) > margin_l0) & (np.abs(ly - box_l0[1]) > margin_l0)
    tissue = _is_tissue(shot)
    assert inside[clear].any() and (~inside[clear]).any()
    assert (tissue[clear] == inside[clear]).mean() > 0.999, (tissue[clear] != inside[clear]).sum()
    glass_diff = np.abs(shot[clear & ~inside].astype(int) - BACKGROUND).max(axis=-1)
    assert np.percentile(glass_diff, 99) <= 3 and glass_diff.max() <= 15  # the slide's glass (JPEG rings at edges)

    # 2. the heatmap at opacity 1: the cell colours, exactly, inside each cell's square
    _set_slider(browser, "opacity", 100)
    _settle(browser)
    shot = _viewer_shot(browser, tmp_path, "wt15-viewer-heatmap-opaque.png")[ys, xs]
    fx = (um_x / frame.px_mpp - frame.offset_px) / frame.stride_px  # cell coordinates, cell c = [c, c + 1)
    fy = (um_y / frame.px_mpp - frame.offset_px) / frame.stride_px
    col, row = np.floor(fx).astype(int), np.floor(fy).astype(int)
    on_grid = (col >= 0) & (row >= 0) & (col < cells.shape[1]) & (row < cells.shape[0])
    margin_cells = 2 * per_px[0] / frame.cell_um
    away = (np.abs(fx - np.round(fx)) > margin_cells) & (np.abs(fy - np.round(fy)) > margin_cells)
    value = np.full(col.shape, np.nan, np.float32)
    value[on_grid] = cells[row[on_grid], col[on_grid]]
    scored = np.isfinite(value) & away
    lut = colormap_lut("inferno")
    want = lut[np.round(np.nan_to_num(value) * 255).astype(int)][..., :3].astype(int)
    diff = np.abs(shot.astype(int) - want).max(axis=-1)
    assert scored.sum() > 2000 and (~np.isfinite(value) & away).sum() > 2000
    assert (diff[scored] <= 2).mean() > 0.995, np.percentile(diff[scored], [50, 99, 100])
    # where no cell was scored the slide shows through: glass outside the box, tissue inside it
    unscored = ~np.isfinite(value) & away & clear
    assert (_is_tissue(shot[unscored]) == inside[unscored]).mean() > 0.999
    # and a misplaced heatmap would fail: the same check one cell to the right finds other colours
    shifted = np.full(col.shape, np.nan, np.float32)
    ok = on_grid & (col + 1 < cells.shape[1])
    shifted[ok] = cells[row[ok], col[ok] + 1]
    want_shifted = lut[np.round(np.nan_to_num(shifted) * 255).astype(int)][..., :3].astype(int)
    both = scored & np.isfinite(shifted)
    assert (np.abs(shot.astype(int) - want_shifted).max(axis=-1)[both] <= 2).mean() < 0.5

    # 3. the whole slide for the report
    browser.execute_script("window.wsiscan.viewer.navigator.element.style.visibility = 'visible'")
    _set_slider(browser, "opacity", 50)
    browser.execute_script("window.wsiscan.viewer.viewport.goHome(true)")
    _settle(browser)
    _save(browser.get_screenshot_as_png(), tmp_path, "wt15-viewer.png")


def test_threshold_slider_changes_the_outlines(browser, server, out, tmp_path):
    _open_viewer(browser, server, "syn-a")
    cells, frame = _cells_and_frame(out, "syn-a")
    summary = json.loads((out / "syn-a" / "summary.json").read_text())
    pc = summary["config"]["predict"]
    counts = {}
    for t in (0.3, 0.55):
        _set_slider(browser, "threshold", round(t * 100))
        _wait(browser, f"return window.wsiscan.state.regionsThreshold === {t}", what=f"regions at {t}")
        _settle(browser)
        state = browser.execute_script("return [window.wsiscan.state.regions.length, window.wsiscan.state.drawnRings,"
                                       "document.querySelectorAll('#regions tbody tr').length,"
                                       "document.getElementById('regions-summary').textContent]")
        want = tumour_regions(cells, frame, threshold=t, min_area_um2=pc["min_region_area_um2"],
                              simplify_tolerance_um=pc["simplify_tolerance_um"])
        assert state[0] == state[2] == len(want), (t, state)
        assert state[3].startswith(f"{len(want)} region(s)")
        shot = _viewer_shot(browser, tmp_path, f"wt15-threshold-{round(t * 100)}.png").astype(int)
        cyan = (shot[..., 0] < 90) & (shot[..., 1] > 200) & (shot[..., 2] > 200)
        counts[t] = (len(want), int(cyan.sum()), state[1])
    assert counts[0.3][0] != counts[0.55][0] or counts[0.3][2] != counts[0.55][2]
    assert counts[0.3][1] > 200 and counts[0.3][1] != counts[0.55][1], counts


def test_clicking_a_region_flies_to_it(browser, server):
    _open_viewer(browser, server, "syn-a")
    before = browser.execute_script("return window.wsiscan.viewer.viewport.getZoom(true)")
    region = browser.execute_script("return window.wsiscan.state.regions[0]")
    browser.execute_script("document.querySelector('#regions tbody tr').click()")
    _settle(browser)
    bounds = browser.execute_script("const b = window.wsiscan.viewer.viewport.getBounds(true); return [b.x, b.y, b.width, b.height]")
    x0, y0, x1, y1 = region["bbox_um"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert abs(bounds[0] + bounds[2] / 2 - cx) < 0.05 * bounds[2] and abs(bounds[1] + bounds[3] / 2 - cy) < 0.05 * bounds[3]
    assert bounds[0] <= x0 and bounds[0] + bounds[2] >= x1
    assert browser.execute_script("return window.wsiscan.viewer.viewport.getZoom(true)") > before
    scale = browser.execute_script("return document.querySelector('#scalebar .label').textContent")
    assert scale.endswith("µm") or scale.endswith("mm")


def test_moved_slide_shows_the_store_copy_and_says_why(browser, server, tmp_path):
    info = _open_viewer(browser, server, "syn-moved")
    assert info["source"] == "store"
    note = browser.execute_script("const n = document.getElementById('source-note'); return n.hidden ? '' : n.textContent")
    assert "tile store" in note and "syn-moved.tif" in note and "not found" in note
    shot = _save(browser.get_screenshot_as_png(), tmp_path, "wt15-viewer-moved.png")
    assert _is_tissue(shot).sum() > 5000  # the store's pixels are drawn


def test_missing_slide_with_source_openslide_is_a_clear_message(browser, out):
    strict = LiveServer(create_app(out, source="openslide"))
    try:
        browser.get(f"{strict.url}/slide/syn-moved")
        message = _wait(browser, "const m = document.getElementById('viewer-message');"
                                 "return m.className === 'error' ? m.textContent : ''", what="the error message")
    finally:
        strict.stop()
    assert "syn-moved.tif" in message and "not found" in message and "--source store" in message


def test_read_aloud_fetches_the_spoken_summary(browser, server):
    if shutil.which("espeak-ng") is None and shutil.which("espeak") is None:
        pytest.skip("espeak-ng is not installed")
    info = _open_viewer(browser, server, "syn-b")
    browser.execute_script("document.getElementById('read-aloud').click()")
    _wait(browser, "return document.getElementById('speech-audio').src.startsWith('blob:')", what="the WAV")
    text = browser.execute_script("return document.getElementById('speech-text').textContent")
    assert text.startswith(info["speech_text"]) and info["speech_text"].startswith("Slide syn-b.")


# -- the patch demo -------------------------------------------------------------------------------------------------
def test_patch_page_classifies_an_uploaded_patch(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(3)
    rgb = np.clip(rng.normal(70, 25, (160, 160, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "patch.png"
    Image.fromarray(rgb).save(path)
    browser.get(server.url + "/patch")
    _wait(browser, "return [...document.querySelectorAll('#model option')].some(o => o.value === 'wsiscan/tiny')",
          what="the model list")
    browser.execute_script("document.getElementById('model').value = 'wsiscan/tiny'")
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "classify").click()
    result = _wait(browser, "return window.wsiscanPatch.result", what="the classification")
    want = tiny_expected_proba(resize_patch(rgb, 96))
    assert result["probability"] == pytest.approx(want, abs=1e-5) and result["class"] == "tumor" and want > 0.5
    shown = browser.execute_script("return document.getElementById('result-prob').textContent")
    assert f"{want:.4f}" in shown
    _wait(browser, "const i = document.getElementById('preview'); return i.complete && i.naturalWidth === 160",
          what="the preview")
    _save(browser.get_screenshot_as_png(), tmp_path, "wt15-patch.png")
    # not an image: a clear message on the page
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "classify").click()
    error = _wait(browser, "return window.wsiscanPatch.error", what="the error")
    assert "notes.txt" in error and "not an image" in error
    assert "not an image" in browser.find_element(By.ID, "patch-message").text
    assert not browser.find_element(By.ID, "patch-result").is_displayed()  # the earlier result is gone
    _save(browser.get_screenshot_as_png(), tmp_path, "wt15-patch-error.png")


# -- safety -----------------------------------------------------------------------------------------------------------
def test_requests_outside_the_results_folder_are_refused(browser, server):
    browser.get(server.url + "/")
    paths = ["/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/files/syn-a/..%2f..%2f..%2f..%2fetc%2fpasswd",
             "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/app.py", "/files/syn-a/store.zarr%2fzarr.json",
             "/dzi/%2e%2e/slide.dzi"]
    got = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(arguments[0].map(p => fetch(p).then(r => r.text().then(t => [p, r.status, t.slice(0, 200)]))))"
        ".then(done);", paths)
    for path, status, body in got:
        assert status in (400, 404), (path, status, body)
        assert "root:" not in body and "create_app" not in body and "zarr_format" not in body
    browser.get(server.url + "/static/../../../../../../etc/passwd")  # the browser sends /etc/passwd
    assert "root:x:0" not in browser.page_source
    assert browser.execute_script("return fetch('/files/syn-a/qc.png').then(r => r.status)") == 200
