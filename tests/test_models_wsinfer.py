"""WSInfer-format models (TorchScript + config.json, 3 classes): predict from a folder and from the HF cache."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
import zarr
from cli_helpers import assert_one_line_error, run
from hub_cache import WSINFER_CONFIG, fill_hf_cache, write_wsinfer_folder

from wsiscan import models as M


@pytest.fixture(autouse=True)
def _offline_homes(offline_model_homes, monkeypatch):
    """Own model homes and no network (conftest), and an own WSInfer zoo registry file."""
    monkeypatch.setenv("WSINFER_ZOO_REGISTRY", str(offline_model_homes / "zoo.json"))


@pytest.fixture(scope="module")
def folder_result(tmp_path_factory, synthetic_slide):
    """One predict run with a 3-class WSInfer folder (shared: it is the slow part)."""
    root = tmp_path_factory.mktemp("wsinfer")
    folder = write_wsinfer_folder(root / "three-class")
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSISCAN_HOME", str(root / "home"))
        r = run("predict", synthetic_slide.path, "-o", out, "--model", folder, "-q", "--device", "cpu",
                "--threshold", "0.4", "--stride-px", 64, "--keep-pixels")
    assert r.exit_code == 0, r.output
    return folder, out / "synthetic"


def _by_hand(folder, patch_uint8: np.ndarray) -> np.ndarray:
    """WSInfer's recipe, written out: Resize (antialiased bilinear), ToTensor, Normalize, TorchScript, softmax."""
    cfg = json.loads((folder / "config.json").read_text())
    size = cfg["transform"][0]["arguments"]["size"]
    mean, std = (torch.tensor(cfg["transform"][2]["arguments"][k]).view(3, 1, 1) for k in ("mean", "std"))
    x = torch.from_numpy(np.ascontiguousarray(patch_uint8)).permute(2, 0, 1).float() / 255.0
    x = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = (x - mean) / std
    net = torch.jit.load(str(folder / "torchscript_model.pt"))
    with torch.inference_mode():
        return torch.softmax(net(x[None]), dim=1)[0].numpy()


def test_three_classes_give_three_channels_matching_the_torchscript_by_hand(folder_result):
    folder, result = folder_result
    g = zarr.open_group(str(result / "store.zarr"), mode="r")
    heat = g["heatmap/0"][...]
    grid = g["grids/s64"]
    rc = grid["rc"][...]
    assert heat.shape[0] == 3 and heat.shape[1:] == (grid.attrs["wsiscan"]["n_rows"], grid.attrs["wsiscan"]["n_cols"])
    pixels = g["pixels"]
    worst = 0.0
    for r, c in rc:
        want = _by_hand(folder, pixels[r * 64 : r * 64 + 64, c * 64 : c * 64 + 64])
        worst = max(worst, float(np.abs(heat[:, r, c] - want).max()))
    assert worst < 1e-4, worst
    assert len(rc) > 50
    tissue = np.zeros(heat.shape[1:], bool)
    tissue[rc[:, 0], rc[:, 1]] = True
    assert np.all(np.isnan(heat[:, ~tissue])) and np.allclose(heat[:, tissue].sum(axis=0), 1.0, atol=1e-5)
    assert heat[:, tissue].std(axis=1).min() > 1e-3, "channels should vary over the slide"


def test_class_axis_names_and_regions_per_class(folder_result):
    _, result = folder_result
    g = zarr.open_group(str(result / "store.zarr"), mode="r")
    ome = g["heatmap"].attrs["ome"]
    axes = [a["name"] for a in ome["multiscales"][0]["axes"]]
    assert axes == ["c", "y", "x"]
    assert [ch["label"] for ch in ome["omero"]["channels"]] == WSINFER_CONFIG["class_names"]
    for ds in ome["multiscales"][0]["datasets"]:
        assert g[f"heatmap/{ds['path']}"].shape[0] == 3 and len(ds["coordinateTransformations"][0]["scale"]) == 3
    assert g["heatmap"].attrs["wsiscan"]["class_names"] == WSINFER_CONFIG["class_names"]
    # a generic OME-Zarr reader sees a channel axis and the class names
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(str(result / "store.zarr" / "heatmap")))())[0]
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert node.metadata["channel_names"] == WSINFER_CONFIG["class_names"]
    np.testing.assert_array_equal(np.asarray(node.data[0]), g["heatmap/0"][...])
    summary = json.loads((result / "summary.json").read_text())
    assert summary["classes"]["names"] == WSINFER_CONFIG["class_names"]
    assert summary["classes"]["positive_class"] == "tumor"  # named so in config.json
    spec = summary["models"][0]["spec"]
    assert (spec["arch"], spec["patch_size_px"], spec["input_mpp"], spec["input_size_px"]) == \
        ("torchscript", 64, 0.972, 40)
    geo = json.loads((result / "tumor.geojson").read_text())
    classes = {f["properties"]["classification"]["name"] for f in geo["features"]}
    per_class = summary["classes"]["per_class"]
    assert classes == {n for n in per_class if per_class[n]["n_regions"] > 0} and len(classes) >= 2
    assert summary["regions"]["n"] == len(geo["features"]) == sum(v["n_regions"] for v in per_class.values())


def test_zoo_name_from_the_hf_cache_gives_the_same_heatmap(folder_result, synthetic_slide, tmp_path):
    folder, result = folder_result
    files = {n: (folder / n).read_bytes() for n in ("config.json", "torchscript_model.pt")}
    snapshot = fill_hf_cache(tmp_path / "hf" / "hub", "lab/three-class", files, commit="c" * 40)
    (tmp_path / "zoo.json").write_text(json.dumps({"models": {"three-class.test": {
        "description": "3-class test model", "hf_repo_id": "lab/three-class", "hf_revision": "main"}}}))
    r = run("models", "pull", "three-class.test")
    assert r.exit_code == 0, r.output
    assert f"from Hugging Face cache {snapshot / 'torchscript_model.pt'} @ {'c' * 40}" in r.stdout
    r = run("predict", synthetic_slide.path, "-o", tmp_path / "out", "--model", "wsinfer/three-class.test", "-q",
            "--device", "cpu", "--threshold", "0.4", "--stride-px", 64)
    assert r.exit_code == 0, r.output
    got = zarr.open_group(str(tmp_path / "out" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    want = zarr.open_group(str(result / "store.zarr"), mode="r")["heatmap/0"][...]
    np.testing.assert_array_equal(got, want)


def test_wsinfer_spec_maps_every_field():
    spec = M.wsinfer_spec(WSINFER_CONFIG)
    assert spec.class_names == ("stroma", "tumor", "lymphocytes") and spec.positive_class == 1
    assert (spec.patch_size_px, spec.input_mpp, spec.input_size_px) == (64, 0.972, 40)
    assert spec.mean == (0.7, 0.6, 0.7) and spec.std == (0.15, 0.2, 0.1)
    two = dict(WSINFER_CONFIG, num_classes=2, class_names=["notumor", "tumor"], transform=[{"name": "ToTensor"}])
    spec2 = M.wsinfer_spec(two)
    assert spec2.positive_class == 1 and spec2.mean is None and spec2.input_size_px is None


def test_pulled_folder_from_file_serves_offline(tmp_path):
    folder = write_wsinfer_folder(tmp_path / "brought")
    r = run("models", "pull", "wsinfer/breast-tumor-resnet34.tcga-brca", "--from", folder)
    assert r.exit_code == 0, r.output
    pulled = M.fetch_model("breast-tumor-resnet34.tcga-brca")
    assert pulled.origin == "wsiscan cache" and M.is_wsinfer_folder(pulled.path)
    model, spec, sha = M.load_model("breast-tumor-resnet34.tcga-brca")
    assert spec.num_classes == 3 and isinstance(model, torch.jit.ScriptModule) and len(sha) == 64


@pytest.mark.parametrize("change, needle", [
    ({"spec_version": "2.0"}, "spec_version '2.0' is not supported"),
    ({"class_names": ["a", "b"]}, "must list num_classes=3 names"),
    ({"transform": [{"name": "RandomCrop"}]}, "is not one of Resize, ToTensor, Normalize"),
    ({"num_classes": 1, "class_names": ["tumor"]}, "single-output (sigmoid) model is not supported"),
    ({"architecture": None, "spacing_um_px": -1}, "spacing_um_px must be a positive number"),
])
def test_bad_config_is_one_line(tmp_path, change, needle):
    cfg = copy.deepcopy(WSINFER_CONFIG)
    cfg.update(change)
    folder = write_wsinfer_folder(tmp_path / "bad", cfg)
    r = run("predict", tmp_path / "slide.tif", "-o", tmp_path / "out", "--model", folder)
    assert_one_line_error(r, needle, "config.json")
    assert not (tmp_path / "out").exists()


def test_folder_without_torchscript_and_damaged_torchscript(tmp_path):
    folder = write_wsinfer_folder(tmp_path / "m")
    (folder / "torchscript_model.pt").unlink()
    assert_one_line_error(run("models", "info", folder), "not a WSInfer model", "torchscript_model.pt")
    (folder / "torchscript_model.pt").write_bytes(b"not torchscript")
    assert_one_line_error(run("models", "info", folder), "not a TorchScript file")


def test_models_info_describes_a_wsinfer_folder(tmp_path):
    folder = write_wsinfer_folder(tmp_path / "m")
    r = run("models", "info", folder, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["spec"]["arch"] == "torchscript" and data["spec"]["class_names"] == WSINFER_CONFIG["class_names"]
    from wsiscan.models.wsinfer import wsinfer_sha256

    assert data["sha256"] == wsinfer_sha256(folder)


def test_bad_zoo_registry_file_is_one_line(tmp_path):
    (tmp_path / "zoo.json").write_text('{"models": {"x": {"description": "no repo"}}}')
    assert_one_line_error(run("models", "list"), str(tmp_path / "zoo.json"), "hf_repo_id", "fix or remove it")


def test_uncached_zoo_model_offline(tmp_path):
    r = run("models", "info", "wsinfer/lung-tumor-resnet34.tcga-luad", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["cached"] is False and data["registry"]["kind"] == "wsinfer"
    assert data["registry"]["source"] == "hf://kaczmarj/lung-tumor-resnet34.tcga-luad/torchscript_model.pt"
    assert_one_line_error(run("predict", tmp_path / "s.tif", "--model", "lung-tumor-resnet34.tcga-luad"),
                          "kaczmarj/lung-tumor-resnet34.tcga-luad", "HF_HUB_OFFLINE is set", "hf download")


def test_rerun_resumes_every_multiclass_chunk(folder_result, synthetic_slide, tmp_path):
    folder, result = folder_result
    before = zarr.open_group(str(result / "store.zarr"), mode="r")["heatmap/0"][...]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSISCAN_HOME", str(tmp_path / "home"))
        r = run("predict", synthetic_slide.path, "-o", result.parent, "--model", folder, "-q", "--device", "cpu",
                "--threshold", "0.4", "--stride-px", 64, "--keep-pixels")
    assert r.exit_code == 0, r.output
    tiles = json.loads((result / "summary.json").read_text())["tiles"]
    assert tiles["scored_this_run"] == 0 and tiles["resumed_tiles"] == tiles["n_tiles"] > 0
    np.testing.assert_array_equal(zarr.open_group(str(result / "store.zarr"), mode="r")["heatmap/0"][...], before)


def test_pull_from_the_wrong_kind_of_copy(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"x")
    assert_one_line_error(run("models", "pull", "wsinfer/lung-tumor-resnet34.tcga-luad", "--from", weights),
                          "is a WSInfer model; give its folder with config.json and torchscript_model.pt")
    folder = write_wsinfer_folder(tmp_path / "m")
    assert_one_line_error(run("models", "pull", "tiatoolbox/resnet18-pcam", "--from", folder),
                          "is a folder", "resnet18-pcam.pth")
