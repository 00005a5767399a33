"""wsiscan.models and `wsiscan models`: offline, CPU, a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from wsiscan import models as M
from wsiscan.errors import CheckpointError, OfflineError, UnknownModelError, WsiscanError


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own model cache and never touches the network."""
    monkeypatch.setenv("WSISCAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TIATOOLBOX_HOME", str(tmp_path / "tia"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


# ----------------------------------------------------------------- TIAToolbox


class TiaCNNModel(nn.Module):
    """TIAToolbox's CNNModel as its source describes it (vanilla.py)."""

    def __init__(self, arch: str, num_classes: int = 2) -> None:
        super().__init__()
        backbone = getattr(torchvision.models, arch)(weights=None)
        self.feat_extract = nn.Sequential(*list(backbone.children())[:-2])
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(backbone.fc.in_features, num_classes)

    def forward(self, imgs):
        feat = torch.flatten(self.pool(self.feat_extract(imgs)), 1)
        return torch.softmax(self.classifier(feat), -1)


def _randomised_tia_model(arch: str) -> TiaCNNModel:
    """Random weights, and BN statistics/affine far from their defaults so they matter."""
    gen = torch.Generator().manual_seed(1)
    model = TiaCNNModel(arch)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.num_batches_tracked.fill_(123)
        # scale the head so logits differ by a few units between inputs: softmax neither
        # saturates nor stays flat, and any conversion error shows in the probabilities
        model.eval()
        probe = torch.rand(8, 3, 96, 96, generator=gen)
        logits = model.classifier(torch.flatten(model.pool(model.feat_extract(probe)), 1))
        diff = logits[:, 1] - logits[:, 0]
        scale = 2.0 / float((diff - diff.mean()).std().clamp_min(1e-12))
        model.classifier.weight.mul_(scale)
        model.classifier.bias.copy_(torch.tensor([0.0, -float(diff.mean()) * scale]))
    return model


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_tiatoolbox_conversion_matches_original(arch):
    tia = _randomised_tia_model(arch)
    converted = M.convert_tiatoolbox_state_dict(tia.state_dict(), arch)
    spec = M.tiatoolbox_spec(arch)
    ours = M.build_model(spec)
    ours.load_state_dict(converted, strict=True)
    ours.eval()
    x01 = torch.rand(6, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = tia(x01)
        got_all = torch.softmax(ours(M.normalise(x01, spec)), dim=1)
        got = M.predict_proba(ours, spec, x01)
    assert got.dtype == torch.float32 and got.shape == (6,)
    assert (expected[:, 1].max() - expected[:, 1].min()) > 1e-3  # the test can tell models apart
    assert torch.max(torch.abs(got_all - expected)).item() <= 1e-5
    assert torch.max(torch.abs(got - expected[:, 1])).item() <= 1e-5


def test_tiatoolbox_spec_values():
    spec = M.tiatoolbox_spec("resnet34")
    assert spec.class_names == ("normal", "tumor") and spec.positive_class == 1
    assert spec.mean is None and spec.std is None
    assert spec.patch_size_px == 96 and spec.input_mpp == 1.0


def test_conversion_unwraps_containers_and_module_prefix():
    sd = TiaCNNModel("resnet18").state_dict()
    plain = M.convert_tiatoolbox_state_dict(sd, "resnet18")
    wrapped = M.convert_tiatoolbox_state_dict(
        {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "resnet18"
    )
    assert plain.keys() == wrapped.keys()
    assert all(torch.equal(plain[k], wrapped[k]) for k in plain)
    assert "conv1.weight" in plain and "fc.weight" in plain and "layer4.1.bn2.running_var" in plain


def test_conversion_rejects_foreign_keys_and_shapes():
    sd = TiaCNNModel("resnet18").state_dict()
    with pytest.raises(CheckpointError, match="unexpected key 'feat_extract.9.weight'"):
        M.convert_tiatoolbox_state_dict({**sd, "feat_extract.9.weight": torch.zeros(1)}, "resnet18")
    with pytest.raises(CheckpointError, match="missing key 'layer1.2"):
        M.convert_tiatoolbox_state_dict(sd, "resnet34")  # resnet18 weights, resnet34 arch
    bad = dict(sd)
    bad["classifier.weight"] = torch.zeros(2, 256)
    with pytest.raises(CheckpointError, match="shape mismatch for 'fc.weight'"):
        M.convert_tiatoolbox_state_dict(bad, "resnet18")
    with pytest.raises(CheckpointError, match="supports resnet18"):
        M.convert_tiatoolbox_state_dict(sd, "smallcnn")


# ------------------------------------------------------------------- spec


def test_spec_round_trip_and_json():
    spec = M.ModelSpec(
        arch="smallcnn", mean=[0.7, 0.5, 0.6], std=[0.2, 0.2, 0.2], temperature=1.5,
        name="x", provenance={"sha256": "ab", "cfg": {"lr": 0.1}}, metrics={"auc": 0.9},
    )
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert M.ModelSpec.from_dict(d) == spec
    assert spec.mean == (0.7, 0.5, 0.6)
    hash(spec)  # usable as a cache key despite its dict fields


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"arch": "vgg16"}, "unknown arch 'vgg16'"),
        ({"positive_class": 2}, "positive_class"),
        ({"mean": [0.5, 0.5, 0.5]}, "both be set"),
        ({"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}, "std must be > 0"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "3 finite numbers"),
        ({"patch_size_px": 4}, "patch_size_px"),
        ({"input_mpp": 40.0}, "input_mpp"),
        ({"temperature": 0.0}, "temperature"),
        ({"class_names": ["tumor"]}, "at least 2"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_spec_validation(change, fragment):
    d = M.ModelSpec(arch="resnet18").to_dict() | change
    with pytest.raises(CheckpointError, match=fragment):
        M.ModelSpec.from_dict(d)


def test_every_arch_builds_and_predicts():
    x01 = torch.rand(2, 3, 96, 96)
    for arch in M.ARCHITECTURES:
        if arch in ("resnet101", "resnet152"):
            continue  # same code path as resnet50, slower to build
        spec = M.ModelSpec(arch=arch)
        model = M.build_model(spec).eval()
        with torch.inference_mode():
            p = M.predict_proba(model, spec, x01)
        assert p.shape == (2,) and p.dtype == torch.float32
        assert torch.all((p >= 0) & (p <= 1))
    small = sum(p.numel() for p in M.build_model(M.ModelSpec(arch="smallcnn")).parameters())
    assert small < 1_000_000


def test_normalise_and_temperature():
    spec = M.ModelSpec(arch="tiny", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((1, 3, 4, 4), 0.75, dtype=torch.float64)
    out = M.normalise(x, spec)
    assert out.dtype == torch.float64 and torch.allclose(out, torch.ones_like(out))
    with pytest.raises(TypeError, match="divide by 255"):
        M.normalise(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), spec)
    # temperature divides the logits: tiny's logit difference 10*(0.5 - 0) = 5 at T=2 -> 2.5
    hot = M.ModelSpec(arch="tiny", temperature=2.0)
    p = M.predict_proba(M.build_model(hot), hot, torch.zeros(1, 3, 96, 96))
    assert p.item() == pytest.approx(1 / (1 + np.exp(-2.5)), abs=1e-6)


def test_tiny_model_matches_numpy_reference():
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(16, 96, 96, 3), dtype=np.uint8)
    patches[:4, 32:64, 32:64] = rng.integers(0, 60, size=(4, 32, 32, 3))  # dark centres
    patches[4:8, 32:64, 32:64] = rng.integers(200, 256, size=(4, 32, 32, 3))  # pale centres
    spec = M.ModelSpec(arch="tiny")
    model = M.build_model(spec).eval()
    x01 = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        got = M.predict_proba(model, spec, x01).numpy()
    expected = np.array([M.tiny_expected_proba(p) for p in patches])
    assert np.max(np.abs(got - expected)) <= 1e-6
    assert got[:4].min() > 0.9 and got[4:8].max() < 0.1
    assert "k" in model.state_dict() and model.state_dict()["k"].item() == 10.0


# ------------------------------------------------------------ checkpoints


def _smallcnn(tmp_path: Path) -> tuple[nn.Module, M.ModelSpec, Path]:
    spec = M.ModelSpec(arch="smallcnn", name="small", metrics={"auc": 0.5},
                       provenance={"trained_on": "nothing"}, temperature=1.3)
    return M.build_model(spec), spec, tmp_path / "deep" / "dir" / "small.pt"


def test_save_load_round_trip_is_atomic(tmp_path):
    model, spec, path = _smallcnn(tmp_path)
    model.eval()
    M.save_checkpoint(path, model, spec, extra={"epoch": 3})
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["small.pt"]  # no temp file left
    loaded, spec2 = M.load_checkpoint(path)
    assert spec2 == spec and not loaded.training
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    payload = M.read_checkpoint(path)
    assert payload["format"] == "wsiscan-checkpoint" and payload["format_version"] == 1
    assert payload["epoch"] == 3
    # overwriting in place also leaves only the final file
    M.save_checkpoint(path, model, spec)
    assert [p.name for p in path.parent.iterdir()] == ["small.pt"]
    with pytest.raises(ValueError, match="reserved"):
        M.save_checkpoint(path, model, spec, extra={"spec": {}})


def test_save_refuses_model_that_does_not_match_spec(tmp_path):
    model = M.build_model(M.ModelSpec(arch="smallcnn"))
    with pytest.raises(CheckpointError, match="do not match arch 'resnet18'"):
        M.save_checkpoint(tmp_path / "x.pt", model, M.ModelSpec(arch="resnet18"))
    assert not any(tmp_path.iterdir())


def _payload(spec: M.ModelSpec, state_dict: dict) -> dict:
    return {"format": "wsiscan-checkpoint", "format_version": 1,
            "spec": spec.to_dict(), "state_dict": state_dict}


def _write_bad(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"bad-{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        model, spec, good = _smallcnn(tmp_path)
        M.save_checkpoint(good, model, spec)
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "wrong_format":
        spec = M.ModelSpec(arch="tiny")
        torch.save(_payload(spec, M.build_model(spec).state_dict()) | {"format": "other-tool"}, path)
    elif kind == "bare_state_dict":
        torch.save(M.build_model(M.ModelSpec(arch="tiny")).state_dict(), path)
    elif kind == "future_version":
        spec = M.ModelSpec(arch="tiny")
        torch.save(_payload(spec, M.build_model(spec).state_dict()) | {"format_version": 2}, path)
    elif kind == "unknown_arch":
        spec = M.ModelSpec(arch="tiny")
        payload = _payload(spec, M.build_model(spec).state_dict())
        payload["spec"]["arch"] = "vgg16"
        torch.save(payload, path)
    elif kind == "resnet18_as_resnet34":
        sd = M.build_model(M.ModelSpec(arch="resnet18")).state_dict()
        torch.save(_payload(M.ModelSpec(arch="resnet34"), sd), path)
    elif kind == "pickled_module":
        torch.save(M.build_model(M.ModelSpec(arch="tiny")), path)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("random", "cannot be read as a PyTorch file"),
        ("truncated", "cannot be read as a PyTorch file"),
        ("empty", "cannot be read as a PyTorch file"),
        ("wrong_format", "not a wsiscan checkpoint: its format is 'other-tool'"),
        ("bare_state_dict", "bare state dict"),
        ("future_version", "upgrade wsiscan"),
        ("unknown_arch", "unknown arch 'vgg16'"),
        ("resnet18_as_resnet34", "missing key 'layer1.2."),
        ("pickled_module", "pickled Python objects"),
    ],
)
def test_bad_checkpoints_give_one_line_errors(kind, fragment, tmp_path):
    path = _write_bad(kind, tmp_path)
    with pytest.raises(CheckpointError) as info:
        M.load_checkpoint(path)
    message = str(info.value)
    assert path.name in message
    assert fragment in message
    assert "\n" not in message


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        M.load_checkpoint(tmp_path / "nope.pt")


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert M.file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ----------------------------------------------------------- registry


def test_registry_lists_tiatoolbox_models():
    names = [e.name for e in M.list_models()]
    for arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
        assert f"tiatoolbox/{arch}-pcam" in names
    entry = M.get_registry_entry("tiatoolbox/resnet18-pcam")
    assert entry.source == "hf://TIACentre/TIAToolbox_pretrained_weights/resnet18-pcam.pth"
    assert entry.hf_repo_id == "TIACentre/TIAToolbox_pretrained_weights"
    assert entry.hf_filename == "resnet18-pcam.pth"
    assert entry.patch_size_px == 96 and entry.input_mpp == 1.0


def test_cache_dir_follows_wsiscan_home(tmp_path, monkeypatch):
    assert M.cache_dir() == tmp_path / "home" / "models"
    assert M.cached_checkpoint_path("tiatoolbox/resnet18-pcam").name == "tiatoolbox--resnet18-pcam.pt"
    monkeypatch.delenv("WSISCAN_HOME")
    assert M.cache_dir() == Path.home() / ".cache" / "wsiscan" / "models"


def test_resolve_unknown_name_lists_registered():
    with pytest.raises(UnknownModelError) as info:
        M.resolve_model("resnet18-pcam")
    message = str(info.value)
    assert "neither an existing checkpoint file, a WSInfer model folder nor a registered model" in message
    assert "tiatoolbox/resnet18-pcam, tiatoolbox/resnet34-pcam" in message
    assert "did you mean 'tiatoolbox/resnet18-pcam'" in message
    assert isinstance(info.value, KeyError)


def test_resolve_existing_path(tmp_path):
    model, spec, path = _smallcnn(tmp_path)
    M.save_checkpoint(path, model, spec)
    assert M.resolve_model(str(path)) == path
    _, spec2, sha = M.load_model(path)
    assert spec2 == spec and sha == M.file_sha256(path)


def test_resolve_registry_name_offline_says_what_to_do():
    with pytest.raises(OfflineError) as info:
        M.resolve_model("tiatoolbox/resnet18-pcam")
    message = str(info.value)
    assert "wsiscan models pull tiatoolbox/resnet18-pcam" in message
    assert "--model" in message
    assert str(M.hf_cache_dir()) in message and str(M.tiatoolbox_models_dir()) in message
    assert "\n" not in message
    assert isinstance(info.value, ConnectionError)


def _fake_hub(tmp_path: Path, monkeypatch, arch: str = "resnet18"):
    """A TIAToolbox-layout .pth in the standard Hugging Face cache, as `hf download` leaves it."""
    from hub_cache import fill_hf_cache

    tia = _randomised_tia_model(arch)
    import io

    buf = io.BytesIO()
    torch.save(tia.state_dict(), buf)
    snapshot = fill_hf_cache(tmp_path / "hf" / "hub", "TIACentre/TIAToolbox_pretrained_weights",
                             {"resnet18-pcam.pth": buf.getvalue(), "resnet34-pcam.pth": buf.getvalue()})
    return tia, snapshot / f"{arch}-pcam.pth"


def test_pull_converts_records_provenance_and_caches(tmp_path, monkeypatch):
    tia, source = _fake_hub(tmp_path, monkeypatch)
    path = M.pull_model("tiatoolbox/resnet18-pcam")
    assert path.parent == M.cache_dir() and path.name.startswith("tiatoolbox--resnet18-pcam--")
    assert sorted(p.name for p in M.cache_dir().iterdir()) == [path.name]
    assert M.resolve_model("tiatoolbox/resnet18-pcam") == path
    model, spec, sha = M.load_model("tiatoolbox/resnet18-pcam")
    assert sha == M.file_sha256(path)
    prov = spec.provenance
    assert prov["source_sha256"] == M.file_sha256(source)
    assert prov["hf_repo_id"] == "TIACentre/TIAToolbox_pretrained_weights"
    assert prov["hf_filename"] == "resnet18-pcam.pth"
    assert prov["downloaded_at"] and prov["licence"]
    assert spec.name == "tiatoolbox/resnet18-pcam" and spec.input_mpp == 1.0
    x01 = torch.rand(4, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(M.predict_proba(model, spec, x01), tia(x01)[:, 1], atol=1e-5)


def test_pull_rejects_weights_of_another_architecture(tmp_path, monkeypatch):
    _fake_hub(tmp_path, monkeypatch, arch="resnet18")  # resnet18 weights under resnet34's name too
    with pytest.raises(CheckpointError, match="does not convert"):
        M.pull_model("tiatoolbox/resnet34-pcam")
    assert M.find_cached_checkpoint("tiatoolbox/resnet34-pcam") is None


def test_pull_unknown_name():
    with pytest.raises(UnknownModelError, match="registered: tiatoolbox/resnet18-pcam"):
        M.pull_model("unknown/x")


def test_builtin_tiny_needs_no_network():
    model, spec, _ = M.load_model("wsiscan/tiny")
    assert spec.arch == "tiny"
    patch = np.zeros((96, 96, 3), dtype=np.uint8)
    x01 = torch.zeros(1, 3, 96, 96)
    assert M.predict_proba(model, spec, x01).item() == pytest.approx(M.tiny_expected_proba(patch), abs=1e-6)


# ----------------------------------------------------------------- CLI


def _cli(*args: str):
    from wsiscan.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _stderr(result) -> str:
    return getattr(result, "stderr", None) or result.output


def test_cli_models_list():
    result = _cli("models", "list")
    assert result.exit_code == 0, result.output
    for e in M.list_models():
        assert e.name in result.output
    data = json.loads(_cli("models", "list", "--json").output)
    assert [m["name"] for m in data["models"]] == [e.name for e in M.list_models()]
    assert data["cache_dir"] == str(M.cache_dir())


def test_cli_models_info_path_and_json(tmp_path):
    model, spec, path = _smallcnn(tmp_path)
    M.save_checkpoint(path, model, spec)
    result = _cli("models", "info", str(path))
    assert result.exit_code == 0, result.output
    assert "smallcnn" in result.output and "normal, tumor" in result.output
    assert M.file_sha256(path) in result.output
    data = json.loads(_cli("models", "info", str(path), "--json").output)
    assert data["spec"] == spec.to_dict() and data["sha256"] == M.file_sha256(path)


def test_cli_models_info_uncached_registry_name_does_not_download():
    result = _cli("models", "info", "tiatoolbox/resnet50-pcam", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cached"] is False and data["registry"]["arch"] == "resnet50"


def test_cli_models_info_bad_file(tmp_path):
    path = _write_bad("random", tmp_path)
    result = _cli("models", "info", str(path))
    assert result.exit_code == 1
    lines = _stderr(result).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsiscan: error:") and path.name in lines[0]


def test_cli_models_pull_unknown():
    result = _cli("models", "pull", "unknown/x")
    assert result.exit_code == 1
    lines = _stderr(result).strip().splitlines()
    assert len(lines) == 1 and "'unknown/x' is not a registered model" in lines[0]
    assert "Traceback" not in result.output


def test_cli_models_pull_offline():
    result = _cli("models", "pull", "tiatoolbox/resnet18-pcam")
    assert result.exit_code == 1
    lines = _stderr(result).strip().splitlines()
    assert len(lines) == 1
    assert "wsiscan models pull tiatoolbox/resnet18-pcam" in lines[0] and "--model" in lines[0]
    assert "Traceback" not in result.output


def test_cli_models_pull_with_fake_hub(tmp_path, monkeypatch):
    _fake_hub(tmp_path, monkeypatch)
    result = _cli("models", "pull", "tiatoolbox/resnet18-pcam")
    assert result.exit_code == 0, result.output
    assert "tiatoolbox--resnet18-pcam--" in result.output and "from Hugging Face cache" in result.output
    listing = _cli("models", "list", "--json").output
    cached = {m["name"]: m["cached"] for m in json.loads(listing)["models"]}
    assert cached["tiatoolbox/resnet18-pcam"] is True and cached["tiatoolbox/resnet50-pcam"] is False


def test_errors_are_wsiscan_errors():
    assert issubclass(CheckpointError, WsiscanError) and issubclass(OfflineError, WsiscanError)


def test_damaged_cached_model_suggests_pull_force():
    cached = M.cached_checkpoint_path("tiatoolbox/resnet18-pcam")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"wsiscan models pull tiatoolbox/resnet18-pcam --force"):
        M.load_model("tiatoolbox/resnet18-pcam")
