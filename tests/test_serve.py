"""``wsiscan serve`` without a browser: the JSON API, deep-zoom tiles, safety, the patch demo, the CLI.

Results come from the real ``wsiscan predict --model wsiscan/tiny`` (see test_serve_fixtures).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import psutil
import pytest

pytest.importorskip("starlette", reason='the serve extra is not installed (pip install -e ".[serve]")')
pytest.importorskip("httpx", reason="httpx (Starlette's test client) is not installed")

from cli_helpers import assert_one_line_error, run
from PIL import Image
from starlette.testclient import TestClient
from test_serve_fixtures import SLIDE_IDS, LiveServer, make_results, raw_get

from wsiscan.heatmap import HeatmapFrame
from wsiscan.models import tiny_expected_proba
from wsiscan.serve.app import create_app
from wsiscan.serve.deepzoom import CELL_PX, HeatmapDeepZoom, colormap_lut
from wsiscan.serve.patch import resize_patch
from wsiscan.slide import open_slide
from wsiscan.store import open_tile_store

HOSTS = ("127.0.0.1", "localhost", "testserver")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory)


@pytest.fixture(scope="module")
def client(out):
    with TestClient(create_app(out, allowed_hosts=HOSTS)) as c:
        yield c


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# -- index and slide info ----------------------------------------------------------------------------------------
def test_index_api_lists_every_slide_with_status_and_figures(client, out):
    slides = {s["slide_id"]: s for s in client.get("/api/slides").json()["slides"]}
    assert tuple(sorted(slides)) == SLIDE_IDS
    assert slides["broken"]["status"] == "failed" and "broken.svs" in slides["broken"]["error"]
    summary = json.loads((out / "syn-a" / "summary.json").read_text())
    a = slides["syn-a"]
    assert a["status"] == "complete" and a["has_viewer"]
    assert a["max_probability"] == pytest.approx(summary["scores"]["max_probability"])
    assert a["n_regions"] == summary["regions"]["n"] and a["n_tiles"] == summary["tiles"]["n_tiles"]
    assert {"qc.png", "overlay.png", "tumor.geojson", "summary.json"} <= set(a["files"])
    assert client.get("/").status_code == 200 and "wsiscan results" in client.get("/").text


def test_slide_info_places_slide_and_heatmap_in_micrometres(client, out):
    info = client.get("/api/slides/syn-a").json()
    with open_slide(info["slide_path"]) as slide:
        w_px, h_px = slide.info.dimensions_px
        mpp = slide.info.mpp.mpp
    assert info["source"] == "openslide" and info["source_note"] == ""
    assert info["slide_size_um"] == pytest.approx([w_px * mpp, h_px * mpp])
    # the heatmap image spans the cell grid, from the corner of cell (0, 0)
    store = open_tile_store(out / "syn-a" / "store.zarr", mode="r")
    n_rows, n_cols = store.heatmap_level(0).shape
    hm = store.heatmap_meta()
    assert info["heatmap_size_um"] == pytest.approx([n_cols * info["cell_um"], n_rows * info["cell_um"]])
    assert info["heatmap_origin_um"] == pytest.approx((hm["tile_size_px"] - hm["stride_px"]) / 2 * hm["px_mpp"])
    assert len(info["legend"]) == 11 and info["legend"][0] == "#000004"  # inferno
    assert client.get("/api/slides/nope").status_code == 404
    assert client.get("/slide/nope").status_code == 404


# -- deep-zoom tiles ---------------------------------------------------------------------------------------------
def _dzi_size(xml: str) -> tuple[int, int, int, int]:
    root = ET.fromstring(xml)
    size = root[0]
    return int(size.get("Width")), int(size.get("Height")), int(root.get("TileSize")), int(root.get("Overlap"))


def test_slide_tiles_are_the_slide_pixels(client):
    info = client.get("/api/slides/syn-a").json()
    w, h, tile, overlap = _dzi_size(client.get("/dzi/syn-a/slide.dzi").text)
    top = int(np.ceil(np.log2(max(w, h))))
    with open_slide(info["slide_path"], reader="openslide") as slide:
        assert (w, h) == slide.info.dimensions_px
        r = client.get(f"/dzi/syn-a/slide_files/{top}/2_3.jpeg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32)
        x0, y0 = 2 * tile - overlap, 3 * tile - overlap
        want = slide.read_level(level=0, lv_xy=(x0, y0), size_px=(got.shape[1], got.shape[0])).astype(np.float32)
    assert got.shape == (tile + 2 * overlap, tile + 2 * overlap, 3)
    assert np.abs(got - want).mean() < 3.0  # JPEG quality 85
    assert client.get(f"/dzi/syn-a/slide_files/{top + 1}/0_0.jpeg").status_code == 404
    assert client.get(f"/dzi/syn-a/slide_files/{top}/999_0.jpeg").status_code == 404
    assert client.get(f"/dzi/syn-a/slide_files/{top}/0_0.png").status_code == 404
    assert client.get("/dzi/syn-a/other.dzi").status_code == 404


def test_heatmap_tiles_put_each_cell_where_the_geojson_puts_it(client, out):
    """The colour at each cell's centre (placed by HeatmapFrame.cell_to_l0, as predict's GeoJSON is)
    is the colormap of that cell; non-tissue is transparent."""
    info = client.get("/api/slides/syn-a").json()
    store = open_tile_store(out / "syn-a" / "store.zarr", mode="r")
    hm = store.heatmap_meta()
    frame = HeatmapFrame(hm["stride_px"], hm["tile_size_px"], hm["px_mpp"], hm["l0_per_px"])
    cells = store.heatmap_level(0)[...]
    w, h, tile, _ = _dzi_size(client.get("/dzi/syn-a/heatmap.dzi").text)
    top = int(np.ceil(np.log2(max(w, h))))
    image = np.zeros((h, w, 4), np.uint8)
    for row in range(0, int(np.ceil(h / tile))):
        for col in range(0, int(np.ceil(w / tile))):
            r = client.get(f"/dzi/syn-a/heatmap_files/{top}/{col}_{row}.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            t = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
            image[row * tile : row * tile + t.shape[0], col * tile : col * tile + t.shape[1]] = t
    hm_mpp = info["cell_um"] / CELL_PX
    lut = colormap_lut("inferno")
    rr, cc = np.mgrid[0 : cells.shape[0], 0 : cells.shape[1]]
    x_l0, y_l0 = frame.cell_to_l0(rr.ravel(), cc.ravel())
    px = np.floor((x_l0 * info["l0_mpp"] - info["heatmap_origin_um"]) / hm_mpp).astype(int)
    py = np.floor((y_l0 * info["l0_mpp"] - info["heatmap_origin_um"]) / hm_mpp).astype(int)
    values = cells.ravel()
    finite = np.isfinite(values)
    assert finite.sum() > 50 and (~finite).sum() > 50
    got = image[py, px]
    want = lut[np.round(np.where(finite, values, 0) * 255).astype(int)]
    assert np.array_equal(got[finite], want[finite])
    assert (got[~finite][:, 3] == 0).all()
    # a cell's square is CELL_PX wide: one px inside its edges still has its colour, one px outside does not
    r0, c0 = np.argwhere(np.isfinite(cells))[0]
    x_edge = c0 * CELL_PX
    y_mid = py[r0 * cells.shape[1] + c0]
    assert np.array_equal(image[y_mid, x_edge], lut[int(round(cells[r0, c0] * 255))])
    assert not np.array_equal(image[y_mid, x_edge - 1], lut[int(round(cells[r0, c0] * 255))])


class _CountingArray:
    """A heatmap level that records every slice read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.reads = data, data.shape, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_heatmap_tiles_read_only_the_cells_under_them_from_the_right_level():
    rng = np.random.default_rng(0)
    level0 = rng.random((600, 800)).astype(np.float32)
    level0[:100] = np.nan
    levels = [level0]
    while max(levels[-1].shape) > 64:  # NaN-aware 2 x 2 means, as heatmap.build_pyramid makes them
        a = levels[-1]
        p = np.full((a.shape[0] + a.shape[0] % 2, a.shape[1] + a.shape[1] % 2), np.nan, np.float32)
        p[: a.shape[0], : a.shape[1]] = a
        v = p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2)
        with warnings.catch_warnings():  # all-NaN blocks are NaN ("mean of empty slice")
            warnings.simplefilter("ignore", RuntimeWarning)
            levels.append(np.nanmean(v, axis=(1, 3)).astype(np.float32))
    arrays = [_CountingArray(a) for a in levels]
    frame = HeatmapFrame(stride_px=32, tile_size_px=96, px_mpp=1.0, l0_per_px=2.0)
    gen = HeatmapDeepZoom(arrays, frame)
    top = gen.level_count - 1
    lut = colormap_lut("inferno")
    # finest level: one tile = 256 / CELL_PX = 32 x 32 cells of level 0
    t = np.asarray(gen.get_tile(top, (3, 5)))
    (rows, cols), = arrays[0].reads
    assert rows.stop - rows.start <= 33 and cols.stop - cols.start <= 33
    cx, cy = 3 * 256 + 100, 5 * 256 + 100  # a px of the tile -> its cell, by hand: 8 px per cell
    c, r = cx // 8, cy // 8
    assert np.array_equal(t[100, 100], lut[int(round(level0[r, c] * 255))])
    # 4 levels coarser: each tile px spans 2 level-0 cells -> level 1, only the columns under tile 1
    for a in arrays:
        a.reads.clear()
    gen.get_tile(top - 4, (1, 0))
    assert not arrays[0].reads and len(arrays[1].reads) == 1 and not arrays[2].reads
    (rows, cols), = arrays[1].reads
    assert cols.start >= 250 and cols.stop <= levels[1].shape[1] and rows.start == 0


def test_moved_slide_is_shown_from_the_tile_store_with_the_reason(client, out):
    info = client.get("/api/slides/syn-moved").json()
    assert info["source"] == "store"
    assert "syn-moved.tif" in info["source_note"] and "not found" in info["source_note"]
    store = open_tile_store(out / "syn-moved" / "store.zarr", mode="r")
    w, h, tile, overlap = _dzi_size(client.get("/dzi/syn-moved/slide.dzi").text)
    assert (h, w) == store.pixels.shape[:2]
    assert info["slide_size_um"][0] == pytest.approx(w * store.heatmap_meta()["px_mpp"])
    top = int(np.ceil(np.log2(max(w, h))))
    r = client.get(f"/dzi/syn-moved/slide_files/{top}/1_1.jpeg")
    got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32)
    x0 = tile - overlap
    want = store.read_px(px_box=(x0, x0, x0 + got.shape[1], x0 + got.shape[0])).astype(np.float32)
    assert np.abs(got - want).mean() < 3.0
    coarse = client.get("/dzi/syn-moved/slide_files/5/0_0.jpeg")  # from the thumbnail
    assert coarse.status_code == 200


def test_no_kept_pixels_and_no_slide_file_is_said_plainly(tmp_path):
    """predict's default keeps no pixels: with the slide file gone the viewer says so, not a blank slide."""
    from wsiscan.testing import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "syn-bare.tif", dimensions_px=(3072, 2048)).path
    r = run("predict", slide, "-o", tmp_path / "out", "--model", "wsiscan/tiny", "-q")
    assert r.exit_code == 0, r.output
    slide.unlink()
    with TestClient(create_app(tmp_path / "out", allowed_hosts=HOSTS)) as c:
        info = c.get("/api/slides/syn-bare").json()
        assert info["source"] == "store"
        note = info["source_note"]
        assert note.startswith("pixels not kept and slide file missing") and "syn-bare.tif" in note
        assert "not found" in note and "--keep-pixels" in note
        assert c.get("/dzi/syn-bare/slide_files/5/0_0.jpeg").status_code == 200  # the thumbnail still shows


def test_source_openslide_refuses_a_moved_slide_clearly(out):
    with TestClient(create_app(out, source="openslide", allowed_hosts=HOSTS)) as c:
        r = c.get("/api/slides/syn-moved")
        assert r.status_code == 409
        msg = r.json()["error"]
        assert "syn-moved.tif" in msg and "not found" in msg and "--source store" in msg
        assert c.get("/api/slides/syn-a").json()["source"] == "openslide"
    with TestClient(create_app(out, source="store", allowed_hosts=HOSTS)) as c:
        assert c.get("/api/slides/syn-a").json()["source"] == "store"


# -- regions -----------------------------------------------------------------------------------------------------
def test_regions_follow_the_threshold_as_predict_exports_them(client, out):
    geo = json.loads((out / "syn-a" / "tumor.geojson").read_text())
    at_predict = client.get("/api/slides/syn-a/regions", params={"threshold": 0.5}).json()
    assert at_predict["n"] == len(geo["features"]) > 0
    got_area = sorted(r["area_mm2"] for r in at_predict["regions"])
    want_area = sorted(f["properties"]["measurements"]["area_mm2"] for f in geo["features"])
    assert got_area == pytest.approx(want_area)
    l0_mpp = client.get("/api/slides/syn-a").json()["l0_mpp"]
    ring0 = np.asarray(geo["features"][0]["geometry"]["coordinates"][0]) * l0_mpp
    assert np.allclose(np.asarray(at_predict["regions"][0]["rings_um"][0]), ring0)
    low = client.get("/api/slides/syn-a/regions", params={"threshold": 0.3}).json()
    high = client.get("/api/slides/syn-a/regions", params={"threshold": 0.58}).json()
    assert low["area_mm2"] > at_predict["area_mm2"] > high["area_mm2"]
    assert client.get("/api/slides/syn-a/regions", params={"threshold": "x"}).status_code == 400
    assert client.get("/api/slides/syn-a/regions", params={"threshold": 1.5}).status_code == 400


# -- files and safety ----------------------------------------------------------------------------------------------
def test_only_result_files_are_served(client, out):
    r = client.get("/files/syn-a/qc.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (out / "syn-a" / "qc.png").read_bytes()
    assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/files/syn-a/store.zarr", "/files/syn-a/zarr.json", "/files/nope/qc.png", "/files/syn-a/summary.wav",
                 "/files/manifest.json", "/files/syn-a/.summary.json.tmp"):
        assert client.get(path).status_code == 404, path


@pytest.mark.parametrize("raw_path", [
    "/files/../../../../etc/passwd",
    "/files/syn-a/../../../../../etc/passwd",
    "/files/syn-a/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/files/%2e%2e/%2e%2e/etc/passwd",
    "/files/..%2fsyn-a/qc.png",
    "/static/../../../../../etc/passwd",
    "/static/..%2f..%2f..%2fapp.py",
    "/static/%2e%2e/app.py",
    "/dzi/..%2fsyn-a/slide.dzi",
    "/api/slides/..%2f..%2fetc",
    "/slide/..%2f..%2f",
    "//etc/passwd",
])
def test_path_traversal_is_refused(live, raw_path):
    status, body = raw_get(live.port, raw_path)
    assert status in (400, 404), (raw_path, status, body[:200])
    assert b"root:" not in body and b"create_app" not in body


def test_links_out_of_the_results_folder_are_not_followed(out, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "summary.json").write_text('{"scores": {"max_probability": 0.9}}')
    (outside / "qc.png").write_bytes(b"secret")
    own = tmp_path / "out"
    shutil.copytree(out / "syn-b", own / "syn-b")
    os.symlink(outside, own / "evil")  # a slide folder that is a link out of OUT
    (own / "syn-b" / "qc.png").unlink()
    os.symlink(outside / "qc.png", own / "syn-b" / "qc.png")  # a result file that is a link out of its folder
    with TestClient(create_app(own, allowed_hosts=HOSTS)) as c:
        assert [s["slide_id"] for s in c.get("/api/slides").json()["slides"]] == ["syn-b"]
        assert c.get("/files/evil/summary.json").status_code == 404
        assert c.get("/files/syn-b/qc.png").status_code == 404
        assert c.get("/files/syn-b/summary.json").status_code == 200


def test_other_hosts_and_writes_are_refused_and_nothing_changes(client, out):
    before = _tree_state(out)
    assert client.get("/api/slides", headers={"host": "evil.example"}).status_code == 400
    for method in ("post", "put", "delete", "patch"):
        for path in ("/api/slides", "/files/syn-a/summary.json", "/dzi/syn-a/slide.dzi", "/"):
            assert getattr(client, method)(path).status_code == 405, (method, path)
    client.get("/api/slides/syn-a")
    client.get("/api/slides/syn-a/regions", params={"threshold": 0.2})
    client.get("/dzi/syn-a/heatmap_files/3/0_0.png")
    assert _tree_state(out) == before


# -- patch demo --------------------------------------------------------------------------------------------------
def _patch(size_px: int, value: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(value, 20, (size_px, size_px, 3)), 0, 255).astype(np.uint8)


def test_patch_demo_classifies_with_the_chosen_model(client):
    models = client.get("/api/models").json()
    assert "wsiscan/tiny" in [m["name"] for m in models["models"]] and models["gradcam"] is True
    for size_px, value in ((96, 60), (96, 200), (250, 90)):
        rgb = _patch(size_px, value)
        r = client.post("/api/classify", data={"model": "wsiscan/tiny"},
                        files={"file": ("p.png", _png(rgb), "image/png")})
        assert r.status_code == 200, r.text
        j = r.json()
        want = tiny_expected_proba(resize_patch(rgb, 96))
        assert j["probability"] == pytest.approx(want, abs=1e-5)
        assert j["class"] == ("tumor" if want >= 0.5 else "normal")
        assert j["resized"] == (size_px != 96) and j["input_size_px"] == [size_px, size_px]
        # the tiny model reads only the centre third of the patch: its map (saliency, through
        # wsiscan.explain) is bright there and dark elsewhere
        cam = np.asarray(Image.open(io.BytesIO(base64.b64decode(j["gradcam_png_base64"]))).convert("L"), float)
        assert cam.shape == (96, 96) and j["gradcam_note"] == ""
        assert cam[36:60, 36:60].mean() > cam[:28].mean() + 60
    assert client.get("/patch").status_code == 200


def test_patch_demo_rejects_what_is_not_a_small_image(client):
    cases = [
        (("notes.txt", b"hello, not an image", "text/plain"), 400, "not an image"),
        (("empty.png", b"", "image/png"), 400, "empty"),
        (("big.png", _png(np.zeros((2100, 300, 3), np.uint8)), "image/png"), 413, "larger than the 2048 x 2048 px"),
        (("huge.bin", b"\0" * (9 * 2**20), "application/octet-stream"), 413, "MiB"),
    ]
    for upload, status, needle in cases:
        r = client.post("/api/classify", data={"model": "wsiscan/tiny"}, files={"file": upload})
        assert r.status_code == status, (upload[0], r.status_code, r.text)
        assert needle in r.json()["error"], r.json()
    r = client.post("/api/classify", data={"model": "/etc/passwd"}, files={"file": ("p.png", _png(_patch(96, 9)))})
    assert r.status_code == 400 and "not offered" in r.json()["error"]
    r = client.post("/api/classify", data={"model": "wsiscan/tiny"})
    assert r.status_code == 400 and "no file" in r.json()["error"]


def test_speech_wav_is_served(client):
    if shutil.which("espeak-ng") is None and shutil.which("espeak") is None:
        pytest.skip("espeak-ng is not installed")
    r = client.get("/api/slides/syn-a/speech.wav")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert r.content[:4] == b"RIFF" and len(r.content) > 20_000


# -- the command -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(out):
    server = LiveServer(create_app(out))
    yield server
    server.stop()


def test_cli_refuses_a_missing_or_empty_folder(tmp_path):
    assert_one_line_error(run("serve", tmp_path / "nope"), "nope", "no such folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("serve", tmp_path / "empty"), "empty", "no wsiscan results", "wsiscan predict")


def test_cli_without_the_serve_extra_says_how_to_install_it(out, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed: importing it raises ImportError
    assert_one_line_error(run("serve", out), "needs the serve extra", 'pip install -e ".[serve]"')


def test_concurrent_first_requests_open_the_slide_once(out, monkeypatch):
    import threading

    from wsiscan.serve import views

    opened = []
    real = views.open_view
    monkeypatch.setattr(views, "open_view", lambda *a, **k: opened.append(a[1]) or real(*a, **k))
    cache = views.ViewCache(out)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("syn-b"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opened == ["syn-b"] and len({id(v) for v in got}) == 1


def test_cli_refuses_a_port_in_use(out):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_one_line_error(run("serve", out, "--port", port), f"127.0.0.1:{port}", "in use", "--port")
    assert run("serve", out, "--port", 70000).exit_code == 2
    assert_one_line_error(run("serve", out, "--host", "no-such-host.invalid"), "--host", "not an address")


def test_cli_socket_is_tcp_so_responses_are_not_delayed():
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets made with proto IPPROTO_TCP;
    with proto 0 every keep-alive response waited ~40 ms for the browser's delayed ACK."""
    from wsiscan.cli.serve import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_keep_alive_responses_are_not_held_back(live):
    """Ten requests on one connection, as a browser makes them: no ~40 ms stall per response."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        times_s = []
        for _ in range(10):
            start = time.perf_counter()
            conn.request("GET", "/static/wsiscan.css")
            assert conn.getresponse().read()
            times_s.append(time.perf_counter() - start)
        assert sorted(times_s)[5] < 0.03, times_s  # 44 ms each with the stall, ~2 ms without
    finally:
        conn.close()


def test_cli_serves_on_loopback_by_default(out):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "wsiscan", "serve", str(out), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("wsiscan serve: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, body = raw_get(port, "/api/slides")
        assert status == 200 and len(json.loads(body)["slides"]) == len(SLIDE_IDS)
        # listening on the loopback interface only
        conns = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                 and c.status == "LISTEN"]
        assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
