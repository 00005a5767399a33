"""Training, evaluation, metrics and the `wsiscan train` / `wsiscan evaluate` commands."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wsiscan import metrics as M
from wsiscan import train
from wsiscan.cli import main
from wsiscan.errors import CheckpointError, ConfigError, OfflineError, StoreExistsError
from wsiscan.models import ModelSpec, build_model, load_checkpoint, predict_proba, read_checkpoint, save_checkpoint
from wsiscan.testing_pcam import write_kaggle_folder, write_pcam_h5

SHARED_DATA = Path(os.environ.get("WSISCAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared/data"))
KAGGLE_SAMPLE = SHARED_DATA / "pcam-kaggle-sample"
REPO = Path(__file__).resolve().parents[1]

# A quick CPU recipe: small CNN, single learning rate, few epochs.
FAST = dict(arch="smallcnn", weights="none", batch_size=32, workers=0, lr=2e-3, head_lr_mult=1.0,
            warmup_epochs=0.5, early_stopping_patience=0)


def _fast(**overrides) -> train.TrainConfig:
    return train.load_train_config(None, **{**FAST, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_pcam_h5(tmp_path_factory.mktemp("pcam"), n_per_split={"train": 256, "valid": 96, "test": 64})


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return write_pcam_h5(tmp_path_factory.mktemp("small"), n_per_split={"train": 64, "valid": 24, "test": 24})


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("wsiscan: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# ---------------------------------------------------------------------------------------
# Metrics by hand


def test_metrics_match_a_hand_computation():
    probs = np.array([0.1, 0.42, 0.35, 0.82])
    labels = np.array([0, 0, 1, 1])
    m = M.compute_metrics(probs, labels)
    # pairs (pos, neg): (0.35 > 0.1) yes, (0.35 > 0.42) no, (0.82 > both) yes, yes -> 3/4
    assert m["auc"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]  # [[tn, fp], [fn, tp]] at 0.5
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(1.0) and m["f1"] == pytest.approx(2 / 3)
    # confidences 0.9, 0.58, 0.65, 0.82 fall in four different bins of 15; correct 1, 1, 0, 1
    assert m["ece"] == pytest.approx((0.1 + 0.42 + 0.65 + 0.18) / 4)
    # two bins: all in (0.5, 1]: |0.75 - mean confidence 0.7375|
    assert M.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.0125)


def test_auc_handles_ties_and_matches_pairwise_counting():
    assert M.binary_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert M.binary_auc([0.2, 0.3], [1, 1]) is None
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, 300) / 10.0  # many ties
    labels = rng.integers(0, 2, 300)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert M.binary_auc(scores, labels) == pytest.approx(pairwise)
    fpr, tpr, _ = M.roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise)


def test_temperature_scaling_recovers_an_overconfident_factor():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = np.stack([np.zeros_like(true_logit), 3.0 * true_logit], axis=1)  # 3x overconfident
    t = M.fit_temperature(logits, labels)
    assert 2.7 < t < 3.3
    before = M.expected_calibration_error(M.softmax(logits)[:, 1], labels)
    after = M.expected_calibration_error(M.softmax(logits, t)[:, 1], labels)
    assert after < before / 3


def test_plots_are_written(tmp_path):
    probs, labels = np.array([0.1, 0.42, 0.35, 0.82]), np.array([0, 0, 1, 1])
    for path in (M.plot_roc(probs, labels, tmp_path / "roc.png"),
                 M.plot_reliability(probs, labels, tmp_path / "rel.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# Configuration and augmentation


def test_config_precedence_and_errors(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  arch: resnet34\n  epochs: 7\n  lr: 0.001\npredict:\n  tta: true\n")
    cfg = train.load_train_config(recipe, epochs=3)
    assert (cfg.arch, cfg.epochs, cfg.lr, cfg.batch_size) == ("resnet34", 3, 0.001, 128)
    recipe.write_text("train:\n  arch: resnet18\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown key train.learning_rate"):
        train.load_train_config(recipe)
    with pytest.raises(ConfigError, match="train.strategy"):
        train.load_train_config(None, strategy="partial")
    with pytest.raises(ConfigError, match="no ImageNet weights for arch 'logreg'"):
        train.load_train_config(None, arch="logreg")
    for name in ("pcam-resnet18", "pcam-resnet34", "pcam-linear-probe", "pcam-smallcnn", "pcam-logreg"):
        train.load_train_config(REPO / "configs" / f"{name}.yaml")


def test_augmentation_is_reproducible_and_bounded():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3), dtype=np.uint8))
    cfg = train.load_train_config(None)
    a = train.augment_batch(images, cfg, torch.Generator().manual_seed(5))
    b = train.augment_batch(images, cfg, torch.Generator().manual_seed(5))
    assert a.shape == (8, 3, 96, 96) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    off = train.load_train_config(None, hflip=False, vflip=False, rot90=False, color_jitter=0.0, hed_jitter=0.0,
                                  crop_px=96)
    plain = train.augment_batch(images, off, torch.Generator())
    assert torch.equal(plain, images.permute(0, 3, 1, 2).float() / 255)
    # HED jitter of (almost) zero strength round-trips RGB -> HED -> RGB
    hed = train.load_train_config(None, hflip=False, vflip=False, rot90=False, color_jitter=0.0, hed_jitter=1e-9,
                                  crop_px=96)
    bright = images.clamp_min(1)
    assert torch.allclose(train.augment_batch(bright, hed, torch.Generator()),
                          bright.permute(0, 3, 1, 2).float() / 255, atol=1e-5)
    resize = train.load_train_config(None, crop_px=90, crop_mode="resize")
    assert train.augment_batch(images, resize, torch.Generator()).shape == (8, 3, 96, 96)
    geometric = train.load_train_config(None, color_jitter=0.0, hed_jitter=0.0, crop_px=96)
    out = train.augment_batch(images, geometric, torch.Generator().manual_seed(1))
    for i in range(8):  # each output is one of the 8 dihedral views of its input
        views = train.dihedral_views(plain[i : i + 1])
        assert any(torch.equal(out[i : i + 1], v) for v in views)


# ---------------------------------------------------------------------------------------
# Training


def _learn_and_shuffle(cfg: train.TrainConfig, data: Path, tmp_path: Path) -> tuple[train.FitResult, train.FitResult]:
    result = train.fit(cfg, data, tmp_path / "real")
    shuffled = write_pcam_h5(tmp_path / "shuffled", n_per_split={"train": 256, "valid": 96, "test": 8},
                             shuffle_labels=True)
    noise = train.fit(cfg, shuffled, tmp_path / "noise")
    assert result.finished and result.val_metrics["auc"] >= 0.9
    assert noise.val_metrics["auc"] < 0.75
    assert result.val_metrics["auc"] - noise.val_metrics["auc"] > 0.2
    return result, noise


@pytest.mark.slow
def test_small_cnn_learns_and_beats_shuffled_labels(data, tmp_path):
    _learn_and_shuffle(_fast(epochs=3), data, tmp_path)


def test_training_learns_and_beats_shuffled_labels(data, tmp_path):
    """The pixel logistic-regression baseline through the whole pipeline (seconds on CPU)."""
    cfg = train.load_train_config(REPO / "configs" / "pcam-logreg.yaml", epochs=3, batch_size=32, workers=0,
                                  lr=1e-3)
    result, _ = _learn_and_shuffle(cfg, data, tmp_path)

    # best.pt is a plain wsiscan checkpoint with calibration, provenance and metrics
    model, spec = load_checkpoint(tmp_path / "real" / "best.pt")
    assert spec.arch == "logreg" and spec.patch_size_px == 96 and spec.input_mpp == pytest.approx(0.972)
    # 96 validation patches are too few to trust a temperature (issue 12's guard): T = 1, said why
    assert spec.temperature == pytest.approx(result.temperature) == 1.0
    assert spec.metrics["calibration_warning"].startswith("calibration skipped: 96 validation patches")
    assert spec.mean == train.IMAGENET_MEAN and spec.std == train.IMAGENET_STD
    assert spec.provenance["seed"] == 0 and spec.provenance["data"]["layout"] == "official"
    assert spec.provenance["versions"]["torch"] == torch.__version__
    assert spec.metrics["val"]["auc"] == pytest.approx(result.val_metrics["auc"])
    assert {"ece_before", "ece_after", "temperature", "best_epoch"} <= set(spec.metrics)
    with torch.inference_mode():
        p = predict_proba(model, spec, torch.rand(2, 3, 96, 96))
    assert p.shape == (2,)
    run = tmp_path / "real"
    assert {"best.pt", "last.pt", "log.csv", "metrics.json", "config.yaml", "tensorboard"} <= {
        p.name for p in run.iterdir()}
    assert len((run / "log.csv").read_text().splitlines()) == 4
    assert "optimizer" not in read_checkpoint(run / "best.pt")
    assert "optimizer" in read_checkpoint(run / "last.pt")


def test_resume_gives_the_same_result_as_an_uninterrupted_run(small_data, tmp_path):
    cfg = _fast(epochs=4)
    straight = train.fit(cfg, small_data, tmp_path / "straight")
    part = train.fit(cfg, small_data, tmp_path / "resumed", stop_after_epoch=2)
    assert not part.finished and part.epochs_run == 2
    with pytest.raises(StoreExistsError, match="add --resume"):
        train.fit(cfg, small_data, tmp_path / "resumed")
    with pytest.raises(ConfigError, match="train.lr"):
        train.fit(_fast(epochs=4, lr=1e-3), small_data, tmp_path / "resumed", resume=True)
    resumed = train.fit(cfg, small_data, tmp_path / "resumed", resume=True)
    assert resumed.val_metrics == straight.val_metrics
    assert resumed.temperature == straight.temperature
    for name in ("best.pt", "last.pt"):
        a = read_checkpoint(tmp_path / "straight" / name)["state_dict"]
        b = read_checkpoint(tmp_path / "resumed" / name)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    log_a = (tmp_path / "straight" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    strip = [lambda rows: [",".join(r.split(",")[:11]) for r in rows]]  # drop timing columns
    assert strip[0](log_a) == strip[0](log_b)


def test_linear_strategy_trains_only_the_head(small_data, tmp_path):
    spec = ModelSpec(arch="smallcnn", mean=train.IMAGENET_MEAN, std=train.IMAGENET_STD)
    torch.manual_seed(3)
    start = build_model(spec)
    save_checkpoint(tmp_path / "start.pt", start, spec)
    train.fit(_fast(epochs=1, strategy="linear", weights=str(tmp_path / "start.pt")), small_data, tmp_path / "run")
    _, trained_spec = load_checkpoint(tmp_path / "run" / "last.pt")
    after = read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    before = start.state_dict()
    backbone = [k for k in before if not k.startswith("fc.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone if "num_batches" not in k)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert trained_spec.provenance["weights"].startswith("file ")


def test_imagenet_offline_raises_a_one_line_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    model = build_model(ModelSpec(arch="resnet18"))
    with pytest.raises(OfflineError, match="ImageNet weights for resnet18 cannot be fetched.*--weights none"):
        train.load_initial_weights(model, "resnet18", "imagenet")
    monkeypatch.setenv("WSISCAN_OFFLINE", "1")
    with pytest.raises(OfflineError, match="WSISCAN_OFFLINE"):
        train.load_initial_weights(model, "resnet18", "imagenet")


def test_imagenet_weights_load_through_the_weights_api(monkeypatch):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url",
                        lambda *a, **k: reference.state_dict())
    model = build_model(ModelSpec(arch="resnet18"))
    description = train.load_initial_weights(model, "resnet18", "imagenet")
    assert description.startswith("imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.weight.shape == (2, 512)  # new head


def test_weights_from_a_tiatoolbox_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(num_classes=2)
    prefixes = {"conv1.": "feat_extract.0.", "bn1.": "feat_extract.1.", "layer1.": "feat_extract.4.",
                "layer2.": "feat_extract.5.", "layer3.": "feat_extract.6.", "layer4.": "feat_extract.7.",
                "fc.": "classifier."}
    tia = {new + k[len(old):]: v for k, v in reference.state_dict().items()
           for old, new in prefixes.items() if k.startswith(old)}
    torch.save(tia, tmp_path / "resnet18-pcam.pth")
    model = build_model(ModelSpec(arch="resnet18"))
    train.load_initial_weights(model, "resnet18", str(tmp_path / "resnet18-pcam.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.fc.weight, reference.fc.weight)
    with pytest.raises(CheckpointError, match="another --arch"):
        train.load_initial_weights(build_model(ModelSpec(arch="smallcnn")), "smallcnn",
                                   str(tmp_path / "resnet18-pcam.pth"))


# ---------------------------------------------------------------------------------------
# Command line


def test_cli_train_then_evaluate_kaggle_layout(tmp_path):
    data = write_kaggle_folder(tmp_path / "kaggle", n=120)
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(main, ["train", "--data", str(data), "--out", str(run), "--arch", "smallcnn",
                                  "--weights", "none", "--epochs", "2", "--batch-size", "32", "--workers", "0",
                                  "--lr", "0.002", "--head-lr-mult", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.output and (run / "best.pt").is_file() and (run / "split.csv").is_file()
    result = runner.invoke(main, ["evaluate", "--model", str(run / "best.pt"), "--data", str(data),
                                  "--split", "test", "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = run / "eval-test"
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "test" and report["data"]["split_file"] == str(run / "split.csv")
    test_ids = [line.split(",")[0] for line in (run / "split.csv").read_text().splitlines()[2:]
                if line.endswith(",test")]
    assert report["metrics"]["n"] == len(test_ids) == 12
    for png in ("roc.png", "reliability.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # metrics.json agrees with predictions.csv recomputed by hand
    rows = [line.split(",") for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(test_ids)
    probs, labels = np.array([float(r[2]) for r in rows]), np.array([int(r[1]) for r in rows])
    assert report["metrics"]["auc"] == pytest.approx(M.binary_auc(probs, labels), abs=1e-5)
    tta = runner.invoke(main, ["evaluate", "--model", str(run / "best.pt"), "--data", str(data), "--tta",
                               "-o", str(tmp_path / "tta"), "--workers", "0", "--no-progress"])
    assert tta.exit_code == 0, tta.output
    assert json.loads((tmp_path / "tta" / "metrics.json").read_text())["tta"] is True


def test_cli_resume_and_existing_run(small_data, tmp_path):
    runner = CliRunner()
    args = ["train", "--data", str(small_data), "--out", str(tmp_path / "run"), "--arch", "smallcnn",
            "--weights", "none", "--epochs", "2", "--batch-size", "32", "--workers", "0", "--no-progress"]
    first = runner.invoke(main, [*args, "--stop-after-epoch", "1"])
    assert first.exit_code == 0 and "continue with --resume" in first.output
    line = _one_line_error(runner.invoke(main, args))
    assert "holds a training run already" in line and "--resume" in line
    # --resume alone takes the run's own settings
    resumed = runner.invoke(main, ["train", "--data", str(small_data), "--out", str(tmp_path / "run"), "--resume",
                                   "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "best epoch" in resumed.output


def test_cli_train_without_tensorboard_logs_to_csv_and_says_so(small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(small_data), "--out", str(run), "--arch", "logreg",
                                       "--weights", "none", "--epochs", "1", "--batch-size", "32", "--workers", "0",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "tensorboard is not installed: logging to log.csv only" in result.output
    assert "pip install 'wsiscan[tensorboard]'" in result.output
    assert (run / "best.pt").is_file() and len((run / "log.csv").read_text().splitlines()) == 2
    assert not (run / "tensorboard").exists()


def test_cli_imagenet_offline(small_data, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    result = CliRunner().invoke(main, ["train", "--data", str(small_data), "--out", str(tmp_path / "run"),
                                       "--weights", "imagenet", "--workers", "0", "--no-progress"])
    line = _one_line_error(result)
    assert "ImageNet weights for resnet18 cannot be fetched" in line and "--weights none" in line


def _broken_official(root: Path, problem: str) -> Path:
    import h5py

    from wsiscan import pcam

    write_pcam_h5(root, n_per_split={"train": 8, "valid": 6, "test": 6})
    if problem == "missing-x":
        pcam.official_path(root, "train", "x").unlink()
    elif problem == "missing-y":
        pcam.official_path(root, "valid", "y").unlink()
    elif problem == "lengths":
        with h5py.File(pcam.official_path(root, "train", "y"), "w") as f:
            f.create_dataset("y", data=np.zeros((3, 1, 1, 1), np.uint8))
    elif problem == "shape":
        with h5py.File(pcam.official_path(root, "train", "x"), "w") as f:
            f.create_dataset("x", data=np.zeros((8, 96, 96), np.uint8))
    return root


@pytest.mark.parametrize("problem, expected", [
    ("missing-x", "missing camelyonpatch_level_2_split_train_x.h5"),
    ("missing-y", "missing camelyonpatch_level_2_split_valid_y.h5"),
    ("lengths", "holds 8 images but camelyonpatch_level_2_split_train_y.h5 holds 3 labels"),
    ("shape", "images have shape (8, 96, 96) uint8, expected (N, 96, 96, 3)"),
])
def test_cli_bad_official_data(tmp_path, problem, expected):
    root = _broken_official(tmp_path / "d", problem)
    result = CliRunner().invoke(main, ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--arch",
                                       "smallcnn", "--weights", "none", "--workers", "0", "--no-progress"])
    assert expected in _one_line_error(result)


@pytest.mark.parametrize("problem, expected", [
    ("no-csv", "train_labels.csv not found"),
    ("no-tif", "have no .tif, first 00000000feedface.tif"),
])
def test_cli_bad_kaggle_data(tmp_path, monkeypatch, problem, expected):
    monkeypatch.setenv("WSISCAN_HOME", str(tmp_path / "home"))  # wsiscan/tiny is materialised there
    root = write_kaggle_folder(tmp_path / "k", n=10)
    if problem == "no-csv":
        (root / "train_labels.csv").unlink()
    else:
        with open(root / "train_labels.csv", "a") as f:
            f.write("00000000feedface,1\n")
    for command in (["train", "--out", str(tmp_path / "run"), "--arch", "smallcnn", "--weights", "none"],
                    ["evaluate", "--model", "wsiscan/tiny", "--split", "all"]):
        result = CliRunner().invoke(main, [*command, "--data", str(root), "--workers", "0", "--no-progress"])
        assert expected in _one_line_error(result)


def test_cli_config_errors(small_data, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  epocs: 3\n")
    result = CliRunner().invoke(main, ["train", "--config", str(recipe), "--data", str(small_data),
                                       "--out", str(tmp_path / "run")])
    line = _one_line_error(result)
    assert "bad.yaml" in line and "train.epocs" in line


def test_evaluate_a_converted_tiatoolbox_model(small_data, tmp_path):
    from wsiscan.models import tiatoolbox_spec

    spec = tiatoolbox_spec("resnet18")  # RGB in [0, 1], 1.0 um/px, no normalisation
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tia.pt", build_model(spec), spec)
    notes: list[str] = []
    report = train.evaluate_model(str(tmp_path / "tia.pt"), small_data, "test", tmp_path / "eval", workers=0,
                                  log=notes.append)
    assert report["model"]["name"] == "tiatoolbox/resnet18-pcam" and report["metrics"]["n"] == 24
    assert report["model"]["input_mpp"] == 1.0 and notes == []  # 1.0 vs 0.972 um/px: within 5 %


# ---------------------------------------------------------------------------------------
# Real patches


@pytest.mark.realdata
@pytest.mark.skipif(not KAGGLE_SAMPLE.is_dir(), reason=f"real data folder {KAGGLE_SAMPLE} is absent")
def test_real_patches_flow_through_evaluate(tmp_path):
    spec = ModelSpec(arch="resnet18", mean=train.IMAGENET_MEAN, std=train.IMAGENET_STD, name="random resnet18")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "random.pt", build_model(spec), spec)
    report = train.evaluate_model(str(tmp_path / "random.pt"), KAGGLE_SAMPLE, "all", tmp_path / "eval", workers=0)
    m = report["metrics"]
    assert (m["n"], m["n_tumor"]) == (15, 5)
    assert sum(map(sum, m["confusion_matrix"])) == 15 and m["auc"] is not None
    assert (tmp_path / "eval" / "roc.png").is_file() and (tmp_path / "eval" / "reliability.png").is_file()
    result = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "random.pt"), "--data",
                                       str(KAGGLE_SAMPLE), "--split", "all", "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "n=15" in result.output
