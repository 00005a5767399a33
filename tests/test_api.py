"""The public API: patches are predict's pixels, scores are predict's values, a result's heatmap is in um."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hub_cache import WSINFER_CONFIG, write_wsinfer_folder

import wsiscan
from wsiscan import models as M


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory, synthetic_slide, tiny_ckpt):
    out = tmp_path_factory.mktemp("api")
    return wsiscan.score_slide(synthetic_slide.path, out, model=str(tiny_ckpt), device="cpu", stride_px=96,
                               keep_pixels=True)


def test_public_names_resolve_and_import_stays_light():
    assert all(hasattr(wsiscan, name) for name in wsiscan.__all__)
    assert (Path(wsiscan.__file__).parent / "py.typed").is_file()
    code = "import sys, wsiscan; print('torch' in sys.modules, 'zarr' in sys.modules, 'openslide' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


def test_iter_patches_are_the_pixels_predict_scored(tiny_result, synthetic_slide, tiny_ckpt):
    _, spec, _ = wsiscan.load_model(tiny_ckpt)
    plan = wsiscan.plan_slide(synthetic_slide.path, model=spec, stride_px=96)
    assert plan.n_tiles == tiny_result.summary["tiles"]["n_tiles"]
    store = zarr.open_group(str(tiny_result.slide_dir / "store.zarr"), mode="r")
    pixels, grid = store["pixels"], store["grids/s96"]
    stored_l0 = {tuple(rc): tuple(xy) for rc, xy in zip(grid["rc"][...], grid["l0_xy"][...], strict=True)}
    n = 0
    for patch in wsiscan.iter_patches(plan):
        r, c = patch.rc
        np.testing.assert_array_equal(patch.image, pixels[r * 96 : r * 96 + 96, c * 96 : c * 96 + 96])
        assert patch.l0_xy == stored_l0[patch.rc]
        n += 1
    assert n == plan.n_tiles > 50


def test_score_patches_match_the_heatmap_and_the_closed_form(tiny_result, synthetic_slide, tiny_ckpt):
    net, spec, _ = wsiscan.load_model(tiny_ckpt)
    plan = wsiscan.plan_slide(synthetic_slide.path, model=spec, stride_px=96)
    heat = tiny_result.heatmap().values
    for patch, probs in wsiscan.score_patches(wsiscan.iter_patches(plan), net, spec=spec, batch_size=7):
        assert probs.shape == (2,)
        assert probs[1] == pytest.approx(heat[patch.rc], abs=1e-5)
        assert probs[1] == pytest.approx(M.tiny_expected_proba(patch.image), abs=1e-5)


def test_heatmap_geometry_in_um(tiny_result):
    hm = tiny_result.heatmap()
    frame = tiny_result.frame
    assert hm.cell_um == pytest.approx(96 * frame.px_mpp) and hm.scored_class == "tumor"
    x_um, y_um = hm.centres_um()
    grid = zarr.open_group(str(tiny_result.slide_dir / "store.zarr"), mode="r")["grids/s96"]
    for (r, c), (x0, y0) in zip(grid["rc"][:20], grid["l0_xy"][:20], strict=True):
        # the cell centre is the tile centre (stride = tile): level-0 corner + half a tile, in um
        assert x_um[c] == pytest.approx(x0 * tiny_result.l0_mpp + hm.cell_um / 2, abs=tiny_result.l0_mpp)
        assert y_um[r] == pytest.approx(y0 * tiny_result.l0_mpp + hm.cell_um / 2, abs=tiny_result.l0_mpp)
        assert hm.at_um(x_um[c] + 0.4 * hm.cell_um, y_um[r] - 0.4 * hm.cell_um) == hm.values[r, c]
    assert np.isnan(hm.at_um(-hm.cell_um, -hm.cell_um))
    ome = zarr.open_group(str(tiny_result.slide_dir / "store.zarr"), mode="r")["heatmap"].attrs["ome"]
    t = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert t[0]["scale"] == pytest.approx([hm.cell_um] * 2) and t[1]["translation"] == pytest.approx([hm.origin_um] * 2)


def test_regions_and_summary(tiny_result):
    regions = tiny_result.regions()
    assert len(regions) == tiny_result.summary["regions"]["n"]
    assert all(r.class_name == "Tumor" and r.geometry["type"] in ("Polygon", "MultiPolygon") for r in regions)
    again = tiny_result.regions_at(tiny_result.threshold)
    assert [round(r["area_mm2"], 9) for r in again] == [round(r.area_mm2, 9) for r in regions]


def test_score_slide_with_a_network_in_memory_equals_its_checkpoint(tmp_path, synthetic_slide):
    torch.manual_seed(2)
    spec = wsiscan.ModelSpec(arch="smallcnn", input_mpp=0.972)
    net = wsiscan.build_model(spec).eval()
    in_memory = wsiscan.score_slide(synthetic_slide.path, tmp_path / "a", model=net, spec=spec, device="cpu")
    wsiscan.save_checkpoint(tmp_path / "net.pt", net, spec)
    from_file = wsiscan.score_slide(synthetic_slide.path, tmp_path / "b", model=str(tmp_path / "net.pt"),
                                    device="cpu")
    np.testing.assert_array_equal(in_memory.heatmap().values, from_file.heatmap().values)
    assert np.isfinite(in_memory.heatmap().values).sum() > 50


def test_multiclass_result_and_napari_layers_one_per_class(tmp_path, synthetic_slide):
    from wsiscan_napari._layers import layer_data

    folder = write_wsinfer_folder(tmp_path / "m")
    result = wsiscan.score_slide(synthetic_slide.path, tmp_path / "out", model=str(folder), device="cpu",
                                 threshold=0.4, stride_px=64)
    hm = result.heatmap()
    names = tuple(WSINFER_CONFIG["class_names"])
    assert hm.class_names == names and hm.values.shape[0] == 3 and hm.scored_class == "tumor"
    np.testing.assert_array_equal(hm.scored(), hm.values[1])
    assert {r.class_name for r in result.regions()} <= set(names)
    layers = layer_data(result.slide_dir, source="store")
    heat = [(d, k) for d, k, _ in layers if k["metadata"]["wsiscan"]["role"] in ("heatmap", "class-heatmap")]
    assert len(heat) == 3 and layers[-1][1]["metadata"]["wsiscan"]["role"] == "heatmap"  # scored class on top
    for data, kwargs in heat:
        name = kwargs["metadata"]["wsiscan"]["class_name"]
        np.testing.assert_array_equal(data, hm.channel(name))
        assert kwargs["visible"] == (name == "tumor") and name in kwargs["name"]
        assert kwargs["scale"] == pytest.approx((hm.cell_um, hm.cell_um))
    with pytest.raises(KeyError, match="the classes are stroma, tumor, lymphocytes"):
        hm.channel("necrosis")


def test_two_class_napari_layers_unchanged(tiny_result):
    from wsiscan_napari._layers import layer_data

    layers = layer_data(tiny_result.slide_dir, source="store")
    assert [k["metadata"]["wsiscan"]["role"] for _, k, _ in layers] == ["slide", "heatmap"]
    assert layers[1][1]["name"].endswith("tumour probability")


def test_api_errors(tmp_path, tiny_result, synthetic_slide):
    with pytest.raises(wsiscan.StoreError, match="not a wsiscan result"):
        wsiscan.open_result(tmp_path)
    with pytest.raises(wsiscan.StoreError, match="heatmap level 9 does not exist"):
        tiny_result.heatmap(9)
    net = wsiscan.build_model(wsiscan.ModelSpec(arch="tiny"))
    with pytest.raises(wsiscan.ConfigError, match="needs its spec"):
        next(wsiscan.score_patches([], net))
    with pytest.raises(wsiscan.ConfigError, match="needs its spec"):
        wsiscan.score_slide(synthetic_slide.path, tmp_path / "o", model=net)
    spec = wsiscan.ModelSpec(arch="external", class_names=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"must return \(N,\) or \(N, 3\) probabilities"):
        wsiscan.score_slide(synthetic_slide.path, tmp_path / "o", model=lambda x: x[:, :2, 0, 0], spec=spec,
                            device="cpu")
    with pytest.raises(wsiscan.CheckpointError, match="'external' has no architecture to build"):
        wsiscan.build_model(spec)
