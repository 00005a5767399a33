"""Your own networks: register_model makes ModelSpec(arch=...) run through predict, train and evaluate; timm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from cli_helpers import run
from torch import nn

import wsiscan
from wsiscan import models as M
from wsiscan import train
from wsiscan.errors import CheckpointError, ConfigError
from wsiscan.testing_pcam import write_pcam_h5


class Mine(nn.Module):
    """A small custom network: two convolutions and a linear head named ``head`` (not ``fc``)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture
def mine():
    wsiscan.register_model("mine", lambda spec: Mine(spec.num_classes))
    yield "mine"
    M.unregister_model("mine")


def test_unregistered_arch_is_refused_then_accepted(mine):
    M.unregister_model("mine")
    with pytest.raises(CheckpointError, match="unknown arch 'mine'.*register_model"):
        M.ModelSpec(arch="mine")
    wsiscan.register_model("mine", lambda spec: Mine(spec.num_classes))
    spec = M.ModelSpec(arch="mine", class_names=("a", "b", "c"))
    assert isinstance(M.build_model(spec), Mine) and M.build_model(spec).head.out_features == 3
    assert "mine" in M.list_architectures()


def test_register_refuses_builtin_and_duplicates_and_works_as_decorator(mine):
    with pytest.raises(ValueError, match="choose a new name"):
        wsiscan.register_model("resnet18", lambda spec: Mine(2))
    with pytest.raises(ValueError, match="registered already"):
        wsiscan.register_model("mine", lambda spec: Mine(3))

    @wsiscan.register_model("mine2")
    def make(spec):
        return Mine(spec.num_classes)

    try:
        assert isinstance(M.build_model(M.ModelSpec(arch="mine2")), Mine)
    finally:
        M.unregister_model("mine2")
    wsiscan.register_model("broken", lambda spec: "not a module")
    try:
        with pytest.raises(CheckpointError, match="returned a str, not an nn.Module"):
            M.build_model(M.ModelSpec(arch="broken"))
    finally:
        M.unregister_model("broken")


def test_registered_network_trains_evaluates_and_predicts(mine, tmp_path, synthetic_slide):
    data = write_pcam_h5(tmp_path / "pcam", n_per_split={"train": 64, "valid": 24, "test": 24})
    cfg = train.load_train_config(None, arch="mine", weights="none", batch_size=32, workers=0, epochs=2,
                                  head_lr_mult=1.0, warmup_epochs=0.5, early_stopping_patience=0)
    result = train.fit(cfg, data, tmp_path / "run")
    best = tmp_path / "run" / "best.pt"
    model, spec = M.load_checkpoint(best)
    assert spec.arch == "mine" and isinstance(model, Mine) and result.epochs_run == 2
    report = train.evaluate_model(str(best), data, "test", tmp_path / "eval", device="cpu", workers=0)
    assert report["model"]["arch"] == "mine" and 0.0 <= report["metrics"]["auc"] <= 1.0
    r = run("predict", synthetic_slide.path, "-o", tmp_path / "out", "--model", best, "-q", "--device", "cpu",
            "--keep-pixels")
    assert r.exit_code == 0, r.output
    heat = zarr.open_group(str(tmp_path / "out" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    assert heat.ndim == 2 and np.isfinite(heat).sum() > 50
    # the heatmap is this network's output: check one patch by hand
    g = zarr.open_group(str(tmp_path / "out" / "synthetic" / "store.zarr"), mode="r")
    r0, c0 = g["grids/s96"]["rc"][0]
    patch = g["pixels"][r0 * 96 : r0 * 96 + 96, c0 * 96 : c0 * 96 + 96]
    x = torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        want = M.predict_proba(model, spec, x).item()
    assert heat[r0, c0] == pytest.approx(want, abs=1e-5)
    summary = json.loads((tmp_path / "out" / "synthetic" / "summary.json").read_text())
    assert summary["models"][0]["spec"]["arch"] == "mine"


def test_train_config_refuses_unknown_arch():
    with pytest.raises(ConfigError, match="train.arch must be one of .*timm:<name>"):
        train.load_train_config(None, arch="nope", weights="none")


def test_timm_architecture():
    pytest.importorskip("timm", reason="timm is the optional extra wsiscan[timm]")
    spec = M.ModelSpec(arch="timm:resnet10t", class_names=("a", "b", "c"), patch_size_px=64)
    model = M.build_model(spec).eval()
    with torch.inference_mode():
        assert M.predict_class_proba(model, spec, torch.rand(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(CheckpointError, match="timm:no-such-net"):
        M.build_model(M.ModelSpec(arch="timm:no-such-net"))
