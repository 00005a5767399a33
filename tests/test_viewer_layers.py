"""The napari plugin's pure functions (viewer_plugin/wsiscan_napari/_layers.py), without a viewer."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import make_result
from click.testing import CliRunner
from wsiscan_napari import _layers as L
from wsiscan_napari._reader import get_reader

from wsiscan.cli import main
from wsiscan.testing import synthetic_tissue

REAL_SLIDE = Path(__file__).resolve().parents[1].parent / "shared/data" / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory, synthetic_slide) -> Path:
    out = make_result(tmp_path_factory.mktemp("viewer-layers"), synthetic_slide.path)
    return out / synthetic_slide.path.stem


@pytest.fixture(scope="module")
def result(result_dir):
    return L.open_result(result_dir)


def test_no_kept_pixels_and_no_slide_file_is_said_plainly(tmp_path, synthetic_slide):
    """predict's default keeps no pixels: with the slide file gone, the slide layer says so."""
    import shutil

    slide = tmp_path / "gone" / synthetic_slide.path.name
    slide.parent.mkdir()
    shutil.copy(synthetic_slide.path, slide)
    out = make_result(tmp_path, slide, keep_pixels=False)
    slide.unlink()
    res = L.open_result(out / slide.stem)
    assert not res.pixels_kept
    pyramid = L.open_pixel_pyramid(res)
    assert pyramid.kind == "store"
    assert "pixels not kept and slide file missing" in pyramid.description and "not found" in pyramid.description
    assert "--keep-pixels" in pyramid.description


# -- finding results: the reader's None contract ---------------------------------------------------------
def test_find_result_accepts_slide_folder_out_folder_and_store(result_dir):
    assert L.find_result(result_dir) == result_dir
    assert L.find_result(result_dir.parent) == result_dir  # OUT with one slide
    assert L.find_result(result_dir / L.STORE_NAME) == result_dir
    assert get_reader(str(result_dir)) is not None
    assert get_reader([str(result_dir)]) is not None


def test_reader_returns_none_for_anything_else(tmp_path, synthetic_slide, result_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    fake = tmp_path / "fake" / L.STORE_NAME
    fake.mkdir(parents=True)
    (fake / "zarr.json").write_text("{not json")
    other = tmp_path / "otherzarr" / L.STORE_NAME
    other.mkdir(parents=True)
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    two = tmp_path / "two"
    for name in ("a", "b"):
        (two / name / L.STORE_NAME).mkdir(parents=True)
        (two / name / L.STORE_NAME / "zarr.json").write_text((result_dir / L.STORE_NAME / "zarr.json").read_text())
    for path in (tmp_path / "missing", empty, fake.parent, other.parent, two, synthetic_slide.path,
                 str(synthetic_slide.path), [str(empty), str(result_dir)], [], 42, None):
        assert get_reader(path) is None, path
        if isinstance(path, (str, Path)):
            assert L.find_result(path) is None


# -- layer data ----------------------------------------------------------------------------------------------
def test_heatmap_layer_in_um_matches_ome_zarr(result):
    data, kwargs, kind = L.heatmap_layer(result)
    assert kind == "image"
    ome = result.store.group["heatmap"].attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert list(kwargs["scale"]) == pytest.approx(ome[0]["scale"])
    assert list(kwargs["translate"]) == pytest.approx(ome[1]["translation"])
    assert kwargs["contrast_limits"] == (0.0, 1.0)
    assert kwargs["colormap"] == "inferno"
    np.testing.assert_array_equal(data, result.store.heatmap_level(0)[...])
    assert np.isnan(data).any() and np.isfinite(data).any()
    # cell (r, c) covers store px [c*stride, (c+1)*stride) at offset 0: its centre in um
    f = result.frame
    assert kwargs["translate"][0] == pytest.approx((f.offset_px + f.stride_px / 2) * f.px_mpp)


def test_slide_layer_is_a_lazy_pyramid_in_um(result, synthetic_slide):
    pyramid = L.open_pixel_pyramid(result)
    assert pyramid.kind == "openslide"
    levels, kwargs, kind = L.slide_layer(result, pyramid)
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    mpp = synthetic_slide.mpp
    assert kwargs["scale"] == pytest.approx((mpp, mpp))
    assert kwargs["translate"] == pytest.approx((mpp / 2, mpp / 2))
    w, h = synthetic_slide.dimensions_px
    assert levels[0].shape == (h, w, 3)
    for k, a in enumerate(levels):
        assert a.shape == (math.ceil(h / 2**k), math.ceil(w / 2**k), 3)
        assert a.dtype == np.uint8
    assert max(levels[-1].shape[:2]) <= L.MIN_LEVEL_SIDE_PX < max(levels[-2].shape[:2])
    assert sum(pyramid.reads.values()) == 0  # building the layer read nothing


def test_reads_only_the_blocks_asked_for(result, synthetic_slide):
    pyramid = L.open_pixel_pyramid(result)
    levels = L.pyramid_arrays(pyramid, chunk_px=256)
    n_blocks0 = math.prod(len(c) for c in levels[0].chunks[:2])
    # a 300 x 200 px view straddling a block corner: 4 blocks of level 0, nothing else
    x0, y0 = 1100, 900  # x 1100-1400 spans blocks 4-5, y 900-1100 blocks 3-4
    view = levels[0][y0 : y0 + 200, x0 : x0 + 300].compute()
    assert dict(pyramid.reads) == {0: 4} and n_blocks0 == 192
    expected = synthetic_tissue(y0, y0 + 200, x0, x0 + 300, boxes=synthetic_slide.tissue_boxes_l0)
    np.testing.assert_array_equal(view, expected)  # zlib: lossless, exactly the slide's pixels
    # the overview (384 x 512 px): its 2 x 2 blocks of 256 px and nothing more
    levels[-1].compute()
    assert pyramid.reads[len(levels) - 1] == 4 and sum(pyramid.reads.values()) == 8


def test_pyramid_levels_are_area_means(result, synthetic_slide):
    pyramid = L.open_pixel_pyramid(result)
    levels = L.pyramid_arrays(pyramid)
    lvl0 = levels[0][:512, :512].compute().astype(np.float64)
    lvl1 = levels[1][:256, :256].compute().astype(np.float64)
    means = lvl0.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(lvl1 - means).max() <= 1.0
    # level 2 (4x) comes from the slide's own 4x level
    assert pyramid.native[1].downsample == pytest.approx(4.0)


def test_store_copy_is_used_when_the_slide_file_is_gone(result):
    moved = dataclasses.replace(result, slide_path=Path("/nowhere/synthetic.tif"))
    pyramid = L.open_pixel_pyramid(moved)
    assert pyramid.kind == "store" and "not found" in pyramid.description
    assert pyramid.mpp == pytest.approx(result.frame.px_mpp)
    store_levels = L.pyramid_arrays(pyramid)
    slide_levels = L.pyramid_arrays(L.open_pixel_pyramid(result))
    # the store is the slide at 2x its base resolution (0.972 um/px): same pixels as slide level 1
    np.testing.assert_array_equal(store_levels[0][200:400, 300:700].compute(),
                                  slide_levels[1][200:400, 300:700].compute())
    levels, kwargs, _ = L.slide_layer(moved, pyramid)
    assert kwargs["scale"] == pytest.approx((result.frame.px_mpp,) * 2)
    with pytest.raises(L.StoreError, match="not found"):
        L.open_pixel_pyramid(moved, source="openslide")


# -- regions, hotspots, export --------------------------------------------------------------------------------
def _shapes(features):
    from shapely.geometry import shape

    return [shape(f["geometry"]) for f in features]


def test_regions_at_predicts_threshold_are_predicts_regions(result, result_dir, tmp_path):
    regions = L.threshold_regions(result, result.cells(), result.threshold)
    predicted = json.loads((result_dir / "tumor.geojson").read_text())
    assert len(regions) == len(predicted["features"]) == result.summary["regions"]["n"] > 0
    out = L.export_geojson(result, regions, tmp_path / "export.geojson", threshold=result.threshold)
    exported = json.loads(out.read_text())
    assert exported == predicted  # same writer, same schema, same values
    back = L.read_geojson_geometries(out)
    for a, b in zip(back, _shapes(predicted["features"]), strict=True):
        assert a.equals(b)


def test_export_round_trips_at_any_threshold(result, tmp_path):
    from shapely.geometry import shape

    for threshold in (0.3, 0.45):
        regions = L.threshold_regions(result, result.cells(), threshold)
        path = L.export_geojson(result, regions, tmp_path / f"t{threshold}.geojson", threshold=threshold)
        data = json.loads(path.read_text())
        assert data["properties"]["threshold"] == threshold
        assert {f["properties"]["classification"]["name"] for f in data["features"]} == {"Tumor"}
        back = L.read_geojson_geometries(path)
        assert len(back) == len(regions)
        for g, r in zip(back, regions, strict=True):
            assert g.equals(shape(r["geometry"]))
            assert g.area == pytest.approx(shape(r["geometry"]).area)


def test_lower_threshold_gives_more_area(result):
    cells = result.cells()
    areas = [sum(r["area_mm2"] for r in L.threshold_regions(result, cells, t)) for t in (0.2, 0.4, 0.5, 0.55)]
    assert areas == sorted(areas, reverse=True) and areas[0] > areas[-1]
    assert L.threshold_regions(result, cells, 1.0) == []


def test_region_rings_are_in_um_yx(result):
    regions = L.threshold_regions(result, result.cells(), 0.4)
    rings = L.region_rings_um(regions, l0_mpp=result.l0_mpp)
    n_rings = sum(len(p) for r in regions for p in L._polygons(r["geometry"]))
    assert len(rings) == n_rings > 0
    ring0 = np.asarray(regions[0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(rings[0], ring0[:-1, ::-1] * result.l0_mpp)
    h_px, w_px = result.store.pixels.shape[:2]
    allpts = np.concatenate(rings)
    assert (allpts >= 0).all()
    assert (allpts[:, 0] <= h_px * result.frame.px_mpp).all() and (allpts[:, 1] <= w_px * result.frame.px_mpp).all()


def test_hotspots_ranked_by_max_or_mean(result):
    regions = L.threshold_regions(result, result.cells(), 0.4)
    by_max = L.rank_hotspots(regions, l0_mpp=result.l0_mpp, by="max")
    by_mean = L.rank_hotspots(regions, l0_mpp=result.l0_mpp, by="mean", top_n=2)
    assert [h.rank for h in by_max] == list(range(1, len(regions) + 1))
    assert [h.max_probability for h in by_max] == sorted((r["max_probability"] for r in regions), reverse=True)
    assert len(by_mean) == min(2, len(regions))
    assert by_mean[0].mean_probability == max(r["mean_probability"] for r in regions)
    for h in by_max:
        y0, x0, y1, x1 = h.bbox_um
        assert y0 < h.centre_um[0] < y1 and x0 < h.centre_um[1] < x1
        assert h.area_mm2 == regions[h.region_index]["area_mm2"]
    with pytest.raises(ValueError, match="max"):
        L.rank_hotspots(regions, l0_mpp=1.0, by="median")


def test_view_for_bbox_frames_the_box():
    centre, zoom = L.view_for_bbox((100.0, 200.0, 300.0, 1000.0), (600, 800), margin=1.0, min_extent_um=0)
    assert centre == (200.0, 600.0)
    assert zoom == pytest.approx(1.0)  # 800 px across 800 um
    _, zoom_small = L.view_for_bbox((0.0, 0.0, 1.0, 1.0), (600, 800), margin=1.0, min_extent_um=100)
    assert zoom_small == pytest.approx(6.0)


def test_summary_rows(result):
    rows = dict(L.summary_rows(result.summary))
    assert rows["max probability"] == f"{result.summary['scores']['max_probability']:.3f}"
    assert rows["model"] == "tiny.pt"
    assert L.summary_rows({}) == [("summary", "summary.json missing")]


# -- the CLI command's failure paths -------------------------------------------------------------------------------
def test_view_without_the_viewer_extra_says_how_to_install(result_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "napari", None)  # import napari -> ImportError
    res = CliRunner().invoke(main, ["view", str(result_dir)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[viewer]"' in lines[0]


def test_view_refuses_a_folder_without_a_result(tmp_path):
    res = CliRunner().invoke(main, ["view", str(tmp_path)])
    assert res.exit_code == 1
    assert "not a wsiscan result" in res.output and "wsiscan predict" in res.output


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # napari's dependencies warn on import
def test_view_without_a_display_says_what_to_do(result_dir, monkeypatch):
    pytest.importorskip("napari")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    res = CliRunner().invoke(main, ["view", str(result_dir)])
    assert res.exit_code == 1 and "xvfb-run" in res.output


@pytest.mark.realdata
def test_real_slide_layers_align(tmp_path):
    """CMU-1-Small-Region: the heatmap covers the slide's tissue, in the slide's um frame."""
    if not REAL_SLIDE.is_file():
        pytest.skip(f"{REAL_SLIDE} is absent")
    out = make_result(tmp_path, REAL_SLIDE)
    result = L.open_result(out)
    (levels, skw, _), (cells, hkw, _) = L.layer_data(out)
    pyramid = skw["metadata"]["wsiscan"]["pyramid"]
    assert pyramid.kind == "openslide" and skw["scale"][0] == pytest.approx(result.l0_mpp)
    slide_h_um = levels[0].shape[0] * skw["scale"][0]
    slide_w_um = levels[0].shape[1] * skw["scale"][1]
    hm_y1 = hkw["translate"][0] + (cells.shape[0] - 0.5) * hkw["scale"][0]
    hm_x1 = hkw["translate"][1] + (cells.shape[1] - 0.5) * hkw["scale"][1]
    # the last row and column of cells reach past the slide's edge by less than one cell (the
    # last tiles are padded with glass, issue 12), and no further
    assert hm_y1 - 0.5 * hkw["scale"][0] < slide_h_um + 1e-6 and hm_x1 - 0.5 * hkw["scale"][1] < slide_w_um + 1e-6
    assert hm_y1 + 0.5 * hkw["scale"][0] >= slide_h_um - 1e-6 and hm_x1 + 0.5 * hkw["scale"][1] >= slide_w_um - 1e-6
    # scored cells sit on tissue: darker than glass in the slide's own pixels
    overview = levels[2].compute().astype(np.float64).mean(axis=-1)
    px_um = skw["scale"][0] * 4
    rr, cc = np.nonzero(np.isfinite(cells))
    ys = ((hkw["translate"][0] + rr * hkw["scale"][0]) / px_um).astype(int)
    xs = ((hkw["translate"][1] + cc * hkw["scale"][1]) / px_um).astype(int)
    tissue = overview[ys, xs].mean()
    assert tissue < 215, tissue
    assert pyramid.reads[2] == math.prod(len(c) for c in levels[2].chunks[:2])
