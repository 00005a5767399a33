"""`wsiscan predict`: exact heatmaps with the tiny model, outputs, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from cli_helpers import assert_one_line_error, run

from wsiscan.config import load_config
from wsiscan.models import ModelSpec, build_model, save_checkpoint, tiny_expected_proba
from wsiscan.testing import write_synthetic_slide


@pytest.fixture(scope="session")
def resnet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("models") / "resnet18-random.pt"
    spec = ModelSpec(arch="resnet18", name="random resnet18", input_mpp=0.972)
    save_checkpoint(p, build_model(spec), spec)
    return p


def expected_heatmap(store_path, stride):
    g = zarr.open_group(str(store_path), mode="r")
    grid = g[f"grids/s{stride}"]
    a = grid.attrs["wsiscan"]
    expected = np.full((a["n_rows"], a["n_cols"]), np.nan)
    pixels = g["pixels"]
    for r, c in grid["rc"][...]:
        y, x = r * stride, c * stride
        expected[r, c] = tiny_expected_proba(pixels[y : y + 96, x : x + 96])
    return expected


@pytest.mark.parametrize("stride", [96, 32])
def test_tiny_model_heatmap_is_exact_cell_by_cell(synthetic_slide, tiny_ckpt, tmp_path, stride):
    # --keep-pixels: the expected values are computed from the pixels the store keeps
    r = run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q", "--stride-px", stride,
            "--device", "cpu", "--keep-pixels")
    assert r.exit_code == 0, r.output
    store = tmp_path / "synthetic" / "store.zarr"
    got = zarr.open_group(str(store), mode="r")["heatmap/0"][...]
    want = expected_heatmap(store, stride)
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), "tissue / non-tissue cells differ"
    assert np.nanmax(np.abs(got - want)) <= 1e-5
    assert np.nanmax(want) - np.nanmin(want) > 0.1, "the synthetic slide should give varied probabilities"


def test_outputs_geojson_ome_zarr_and_summary(synthetic_slide, tiny_ckpt, tmp_path):
    r = run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q", "--threshold", "0.5")
    assert r.exit_code == 0, r.output
    d = tmp_path / "synthetic"
    for name in ("overlay.png", "tumor.geojson", "summary.json", "qc.png"):
        assert (d / name).stat().st_size > 100, name
    summary = json.loads((d / "summary.json").read_text())
    cells = zarr.open_group(str(d / "store.zarr"), mode="r")["heatmap/0"][...]
    assert summary["scores"]["max_probability"] == pytest.approx(float(np.nanmax(cells)))
    assert summary["mpp"]["source"] == "openslide-properties"
    assert summary["models"][0]["sha256"] and summary["versions"]["torch"]
    assert set(summary["timings_s"]) >= {"pixels_s", "inference_s", "outputs_s", "total_s"}

    # GeoJSON: valid polygons inside the slide, one per region, with QuPath's fields
    from shapely.geometry import shape

    gj = json.loads((d / "tumor.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    n_pos = int((cells >= 0.5).sum())
    assert n_pos > 0 and len(gj["features"]) == summary["regions"]["n"] >= 1
    w, h = synthetic_slide.dimensions_px
    for f in gj["features"]:
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.area > 0
        minx, miny, maxx, maxy = geom.bounds
        assert 0 <= minx and 0 <= miny and maxx <= w and maxy <= h
        props = f["properties"]
        assert props["classification"]["name"] == "Tumor"
        assert 0.5 <= props["measurements"]["mean_probability"] <= props["measurements"]["max_probability"] <= 1
    # tumour area: cells above threshold x cell area
    cell_um = 96 * 0.972
    assert summary["scores"]["tumour_area_mm2"] == pytest.approx(n_pos * cell_um**2 / 1e6)

    # a generic OME-Zarr reader sees the heatmap in micrometres
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(str(d / "store.zarr" / "heatmap")))())[0]
    transforms = node.metadata["coordinateTransformations"][0]
    assert transforms[0]["scale"] == pytest.approx([cell_um, cell_um])
    assert transforms[1]["translation"] == pytest.approx([cell_um / 2, cell_um / 2])
    assert node.metadata["axes"][0]["unit"] == "micrometer"
    assert np.array_equal(np.asarray(node.data[0]), cells, equal_nan=True)


def test_geojson_regions_land_on_high_probability_cells(tmp_path):
    """A hand-made heatmap: the polygon must cover exactly the positive cells, in level-0 px."""
    from shapely.geometry import Point, shape

    from wsiscan.heatmap import HeatmapFrame, geojson_collection, tumour_regions

    cells = np.full((10, 12), 0.1, np.float32)
    cells[2:5, 3:7] = 0.9  # 3 x 4 block
    cells[8, 0] = np.nan
    frame = HeatmapFrame(stride_px=96, tile_size_px=96, px_mpp=0.972, l0_per_px=2.0)
    regions = tumour_regions(cells, frame, threshold=0.5, min_area_um2=0, simplify_tolerance_um=0)
    assert len(regions) == 1
    geom = shape(geojson_collection(regions, slide_name="x", threshold=0.5)["features"][0]["geometry"])
    # cell (r, c) spans level-0 x in [c*96*2, (c+1)*96*2)
    assert geom.bounds == pytest.approx((3 * 192, 2 * 192, 7 * 192, 5 * 192), abs=1e-6)
    assert geom.area == pytest.approx(12 * 192**2)
    assert geom.contains(Point(4.5 * 192, 3.5 * 192))
    assert regions[0]["mean_probability"] == pytest.approx(0.9)


def test_overlay_outlines_exactly_the_regions_exported_to_geojson():
    """A 1-cell island above the threshold is too small for the GeoJSON, so it gets no outline either."""
    from wsiscan.heatmap import HeatmapFrame, region_cells, tumour_regions

    cells = np.full((10, 12), 0.1, np.float32)
    cells[2:5, 3:7] = 0.9  # 12 cells: kept
    cells[8, 10] = 0.95  # 1 cell: below the minimum area
    cells[0, 0] = np.nan
    frame = HeatmapFrame(stride_px=96, tile_size_px=96, px_mpp=0.972, l0_per_px=2.0)
    min_area = 5 * frame.cell_um**2
    kept = region_cells(cells, frame, threshold=0.5, min_area_um2=min_area)
    assert kept.sum() == 12 and kept[2:5, 3:7].all() and not kept[8, 10]
    regions = tumour_regions(cells, frame, threshold=0.5, min_area_um2=min_area, simplify_tolerance_um=0)
    assert [r["n_cells"] for r in regions] == [int(kept.sum())]
    assert region_cells(cells, frame, threshold=0.5, min_area_um2=0).sum() == 13


def test_overlay_pictures_are_the_pixels_imshow_draws():
    """overlay.png hands matplotlib its picture and heatmap as RGBA already at the axes' size
    (heatmap._add_pixels): the same array and position as imshow's own resampling makes of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from wsiscan import heatmap

    rng = np.random.default_rng(0)
    oh, ow = 53, 71
    base = rng.integers(0, 256, (oh, ow, 3), dtype=np.uint8)
    cells = rng.random((6, 9)).astype(np.float32)
    cells[1, 2] = np.nan
    cc, rr = np.arange(ow) // 8 - 1, np.arange(oh) // 8  # a column of pixels left of the heatmap, one row below it
    picture = np.full((oh, ow), np.nan, np.float32)
    inside = np.ix_((rr >= 0) & (rr < 6), (cc >= 0) & (cc < 9))
    picture[inside] = cells[np.clip(rr, 0, 5)][:, np.clip(cc, 0, 8)][inside]
    for fast, ref in (
        (lambda ax: heatmap._add_pixels(ax, np.dstack([base, np.full((oh, ow), 255, np.uint8)]), alpha=None,
                                        cmap=None, norm=None),
         lambda ax: ax.imshow(base, interpolation="nearest")),
        (lambda ax: heatmap._add_pixels(ax, heatmap._heat_rgba(cells, rr, cc, cmap="inferno", norm=Normalize(0, 1),
                                                               alpha=0.55), alpha=0.55, cmap="inferno",
                                        norm=Normalize(0, 1)),
         lambda ax: ax.imshow(np.ma.masked_invalid(picture), cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55,
                              interpolation="nearest")),
    ):
        made = []
        for draw in (fast, ref):
            fig = plt.figure(figsize=(ow / 100 + 1.6, oh / 100 + 1.3), dpi=100)
            ax = fig.add_axes((0.2 / (ow / 100 + 1.6), 0.2 / (oh / 100 + 1.3), ow / 100 / (ow / 100 + 1.6),
                               oh / 100 / (oh / 100 + 1.3)))
            im = draw(ax)
            ax.set_xlim(-0.5, ow - 0.5)
            ax.set_ylim(oh - 0.5, -0.5)
            renderer = fig.canvas.get_renderer()
            made.append(im.make_image(renderer, renderer.get_image_magnification()))
            # at another scale (never in overlay.png) matplotlib resamples the picture itself
            assert im.make_image(renderer, 2.0)[0].shape == (2 * oh, 2 * ow, 4)
            plt.close(fig)
        (a, ax0, ay0, _), (b, bx0, by0, _) = made
        assert (ax0, ay0) == (bx0, by0) and a.shape == b.shape == (oh, ow, 4)
        assert np.array_equal(a, b)


def test_inference_resumes_from_written_heatmap_chunks(synthetic_slide, tiny_ckpt, tmp_path, monkeypatch):
    from wsiscan import store as store_mod
    from wsiscan.predict import load_models, predict_slide

    cfg = load_config().replace("predict", heatmap_chunk_cells=8)
    cfg = cfg.replace("tile", stride_px=32)
    models = load_models([str(tiny_ckpt)])
    ref = predict_slide(synthetic_slide.path, tmp_path / "ref", cfg, models, device=torch.device("cpu"), progress=False)

    calls = {"n": 0}
    original = store_mod.TileStore.write_heatmap_chunk

    def dying_write(self, ci, cj, data):
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        original(self, ci, cj, data)

    monkeypatch.setattr(store_mod.TileStore, "write_heatmap_chunk", dying_write)
    with pytest.raises(KeyboardInterrupt):
        predict_slide(synthetic_slide.path, tmp_path / "b", cfg, models, device=torch.device("cpu"), progress=False)
    monkeypatch.setattr(store_mod.TileStore, "write_heatmap_chunk", original)
    again = predict_slide(synthetic_slide.path, tmp_path / "b", cfg, models, device=torch.device("cpu"), progress=False)
    assert 0 < again["tiles"]["resumed_tiles"] < ref["tiles"]["n_tiles"]
    assert again["tiles"]["scored_this_run"] + again["tiles"]["resumed_tiles"] == ref["tiles"]["n_tiles"]
    a = zarr.open_group(str(tmp_path / "ref" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    b = zarr.open_group(str(tmp_path / "b" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.slow
def test_predict_resumes_after_kill_9(tiny_ckpt, tmp_path):
    """The killed run is a real process killed with SIGKILL; the reference and the resuming run are
    the same command run in this process (the CLI in-process, so no interpreter start)."""
    slide = write_synthetic_slide(tmp_path / "s.tif", dimensions_px=(6144, 4096), mpp=0.486)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tile:\n  stride_px: 32\n  supertile_px: 192\npredict:\n  heatmap_chunk_cells: 6\n  loader_workers: 0\n")
    args = ["predict", str(slide.path), "--model", str(tiny_ckpt), "--config", str(cfg), "-q", "--decode-workers", "1"]
    cmd = [sys.executable, "-m", "wsiscan", *args]
    ref = run(*args, "-o", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output
    out = tmp_path / "killed"
    hm_dir = out / "s" / "store.zarr" / "heatmap" / "0" / "c"
    proc = subprocess.Popen(cmd + ["-o", str(out)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if hm_dir.exists() and sum(1 for f in hm_dir.rglob("*") if f.is_file()) >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "s" / "summary.json").exists(), "the run finished before it could be killed"
    resumed = run(*args, "-o", out)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((out / "s" / "summary.json").read_text())
    assert summary["tiles"]["resumed_tiles"] > 0
    a = zarr.open_group(str(tmp_path / "ref" / "s" / "store.zarr"), mode="r")["heatmap/0"][...]
    b = zarr.open_group(str(out / "s" / "store.zarr"), mode="r")["heatmap/0"][...]
    assert np.array_equal(a, b, equal_nan=True)


def test_rerun_does_no_work_and_heatmap_command_reexports(synthetic_slide, tiny_ckpt, tmp_path):
    assert run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q").exit_code == 0
    r = run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q")
    assert r.exit_code == 0
    summary = json.loads((tmp_path / "synthetic" / "summary.json").read_text())
    assert summary["tiles"]["scored_this_run"] == 0 and summary["tiles"]["pixel_chunks_written"] == 0
    from PIL import Image

    overlay = tmp_path / "synthetic" / "overlay.png"
    size_first = Image.open(overlay).size
    r = run("heatmap", tmp_path / "synthetic", "--threshold", "0.3")
    assert r.exit_code == 0, r.output
    gj = json.loads((tmp_path / "synthetic" / "tumor.geojson").read_text())
    assert gj["properties"]["threshold"] == 0.3
    # the re-export draws on the same sharp overview as predict (a small slide's mask
    # thumbnail is 498 px wide; the overview stored with the tiles is 1,000)
    g = zarr.open_group(str(tmp_path / "synthetic" / "store.zarr"), mode="r")
    assert max(g["overview"].shape[:2]) == 1000 and max(g["thumbnail"].shape[:2]) < 1000
    assert Image.open(overlay).size == size_first


def test_tta_is_invariant_for_the_symmetric_tiny_model(synthetic_slide, tiny_ckpt, tmp_path):
    # the tiny model averages a centred square: every flip/rotation gives the same value
    a = run("predict", synthetic_slide.path, "-o", tmp_path / "a", "--model", tiny_ckpt, "-q")
    b = run("predict", synthetic_slide.path, "-o", tmp_path / "b", "--model", tiny_ckpt, "-q", "--tta")
    assert a.exit_code == 0 and b.exit_code == 0
    ha = zarr.open_group(str(tmp_path / "a" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    hb = zarr.open_group(str(tmp_path / "b" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    assert np.nanmax(np.abs(ha - hb)) < 1e-5


def test_ensemble_averages_probabilities(synthetic_slide, tiny_ckpt, resnet_ckpt, tmp_path):
    for name, models in (("t", [tiny_ckpt]), ("r", [resnet_ckpt]), ("e", [tiny_ckpt, resnet_ckpt])):
        args = [a for m in models for a in ("--model", m)]
        assert run("predict", synthetic_slide.path, "-o", tmp_path / name, "-q", *args).exit_code == 0
    h = {n: zarr.open_group(str(tmp_path / n / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
         for n in "tre"}
    assert np.nanmax(np.abs(h["e"] - (h["t"] + h["r"]) / 2)) < 1e-5


# -- bad input ------------------------------------------------------------------------
def test_unknown_model_name(synthetic_slide, tmp_path):
    assert_one_line_error(run("predict", synthetic_slide.path, "-o", tmp_path, "--model", "resnet9000-pcam"),
                          "resnet9000-pcam", "wsiscan models list")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_mismatched_checkpoints(synthetic_slide, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(4000))
    assert_one_line_error(run("predict", synthetic_slide.path, "-o", tmp_path / "o", "--model", bad), "bad.pt")
    # weights of a resnet18 under a resnet34 spec
    mismatched = tmp_path / "mismatched.pt"
    torch.save({"format": "wsiscan-checkpoint", "format_version": 1,
                "spec": ModelSpec(arch="resnet34").to_dict(),
                "state_dict": build_model(ModelSpec(arch="resnet18")).state_dict()}, mismatched)
    assert_one_line_error(run("predict", synthetic_slide.path, "-o", tmp_path / "o", "--model", mismatched),
                          "mismatched.pt")
    assert not (tmp_path / "o").exists()


def test_model_resolution_the_slide_cannot_provide(synthetic_slide, tmp_path):
    fine = tmp_path / "fine.pt"
    spec = ModelSpec(arch="tiny", input_mpp=0.25)
    save_checkpoint(fine, build_model(spec), spec)
    assert_one_line_error(run("predict", synthetic_slide.path, "-o", tmp_path / "o", "--model", fine),
                          "cannot provide 0.25 um/px", "level 0: 0.486")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_a_gpu(synthetic_slide, tiny_ckpt, tmp_path):
    assert_one_line_error(run("predict", synthetic_slide.path, "-o", tmp_path / "o", "--model", tiny_ckpt,
                              "--device", "cuda"), "no usable CUDA GPU", "--device cpu")
    assert not (tmp_path / "o").exists()


def test_output_folder_with_another_slides_result_is_untouched(synthetic_slide, bad_inputs, tiny_ckpt, tmp_path):
    assert run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q").exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "synthetic").glob("*.*") if p.is_file()}
    other = tmp_path / "elsewhere" / "synthetic.tif"
    other.parent.mkdir()
    other.write_bytes(bad_inputs["no_mpp"].read_bytes())
    r = run("predict", other, "-o", tmp_path, "--model", tiny_ckpt, "-q", "--slide-mpp", "0.5")
    assert_one_line_error(r, "another slide", "--overwrite")
    assert {p: p.read_bytes() for p in before} == before


def test_other_model_in_same_folder_is_refused_then_overwritten(synthetic_slide, tiny_ckpt, resnet_ckpt, tmp_path):
    assert run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q").exit_code == 0
    r = run("predict", synthetic_slide.path, "-o", tmp_path, "--model", resnet_ckpt, "-q")
    assert_one_line_error(r, "another model", "--overwrite")
    r = run("predict", synthetic_slide.path, "-o", tmp_path, "--model", resnet_ckpt, "-q", "--overwrite")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "synthetic" / "summary.json").read_text())
    assert summary["models"][0]["spec"]["arch"] == "resnet18"
    assert summary["tiles"]["pixel_chunks_written"] == 0, "the pixels of the same slide should be reused"


def test_many_slides_failure_is_recorded_and_others_finish(synthetic_slide, bad_inputs, tiny_ckpt, tmp_path):
    r = run("predict", bad_inputs["random"], synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q")
    assert r.exit_code == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    status = {os.path.basename(s["slide"]): s["status"] for s in manifest["slides"]}
    assert status == {"random.svs": "failed", "synthetic.tif": "complete"}
    assert (tmp_path / "synthetic" / "summary.json").exists()


# -- real slide ------------------------------------------------------------------------
@pytest.mark.realdata
def test_cmu_small_region_end_to_end_with_random_resnet18(shared_slides, resnet_ckpt, tmp_path):
    r = run("predict", shared_slides / "CMU-1-Small-Region.svs", "-o", tmp_path, "--model", resnet_ckpt, "-q")
    assert r.exit_code == 0, r.output
    d = tmp_path / "CMU-1-Small-Region"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["resolution"]["level"] == 0 and summary["resolution"]["resampled"]
    assert 40 <= summary["tiles"]["n_tiles"] <= 120
    cells = zarr.open_group(str(d / "store.zarr"), mode="r")["heatmap/0"][...]
    assert np.isfinite(cells).sum() == summary["tiles"]["n_tiles"]
    assert ((cells[np.isfinite(cells)] >= 0) & (cells[np.isfinite(cells)] <= 1)).all()


@pytest.mark.gpu
def test_cuda_matches_cpu(synthetic_slide, resnet_ckpt, tmp_path):
    for dev in ("cpu", "cuda"):
        r = run("predict", synthetic_slide.path, "-o", tmp_path / dev, "--model", resnet_ckpt, "-q", "--device", dev)
        assert r.exit_code == 0, r.output
    a = zarr.open_group(str(tmp_path / "cpu" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    b = zarr.open_group(str(tmp_path / "cuda" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    assert np.nanmax(np.abs(a - b)) < 0.02  # bf16 on the GPU


def test_store_pictures_wait_for_qc_png_however_it_ends():
    """predict writes the store's pictures after qc.png is drawn, not beside it (each holds
    tens of MB of stripes for a large slide); a failed qc.png does not stop them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from wsiscan.predict import _After

    release = threading.Event()

    def qc():
        release.wait(5)
        raise OSError("qc.png failed")

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(qc)
        later = _After(pool, first).submit(lambda x: (first.done(), x), 7)
        assert not later.done()
        release.set()
        assert later.result(timeout=5) == (True, 7)
        assert isinstance(first.exception(), OSError)
