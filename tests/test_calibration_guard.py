"""Guarded calibration (issue 12): a temperature is fitted only on a validation set of at
least MIN_CALIBRATION_PATCHES (and MIN_CALIBRATION_PER_CLASS of each class) and kept only
when it lowers the validation ECE; otherwise T = 1 and a one-line warning."""

from __future__ import annotations

import numpy as np
import pytest

from wsiscan import metrics as M
from wsiscan import train
from wsiscan.testing_pcam import write_pcam_h5


def _overconfident(n: int, seed: int = 0, factor: float = 4.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return np.column_stack([np.zeros(n), factor * z]), labels


def test_two_patches_keep_t_1_with_a_warning():
    logits = np.array([[0.0, 3.0], [0.0, -3.0]])
    c = M.guarded_temperature(logits, np.array([1, 0]))
    assert c.temperature == 1.0 and c.fitted_temperature is None
    assert c.warning.startswith("calibration skipped: 2 validation patches") and "\n" not in c.warning
    assert str(M.MIN_CALIBRATION_PATCHES) in c.warning


def test_one_class_only_is_not_enough():
    logits, _ = _overconfident(500)
    c = M.guarded_temperature(logits, np.ones(500, np.int64))
    assert c.temperature == 1.0 and "per class" in c.warning


def test_a_large_overconfident_set_is_calibrated_and_ece_drops():
    logits, labels = _overconfident(2000)
    c = M.guarded_temperature(logits, labels)
    assert c.warning is None and c.temperature == pytest.approx(4.0, rel=0.25)
    assert c.ece_after < c.ece_before


def test_a_temperature_that_raises_ece_is_refused(monkeypatch):
    logits, labels = _overconfident(2000, factor=1.0)  # already calibrated
    monkeypatch.setattr(M, "fit_temperature", lambda *a, **k: 0.095)  # the bad fit the issue saw
    c = M.guarded_temperature(logits, labels)
    assert c.temperature == 1.0 and c.fitted_temperature == 0.095
    assert c.warning.startswith("calibration not kept: the fitted temperature 0.095")
    assert c.ece_after == c.ece_before


def test_train_stores_the_guarded_temperature_and_warns(tmp_path):
    data = write_pcam_h5(tmp_path / "pcam", n_per_split={"train": 64, "valid": 24, "test": 8})
    cfg = train.load_train_config(None, arch="smallcnn", weights="none", batch_size=32, workers=0, epochs=1)
    lines: list[str] = []
    result = train.fit(cfg, data, tmp_path / "run", log=lines.append)
    assert result.temperature == 1.0
    warnings = [ln for ln in lines if ln.startswith("wsiscan: warning: calibration skipped: 24 validation patches")]
    assert len(warnings) == 1
    from wsiscan.models import load_checkpoint

    _, spec = load_checkpoint(tmp_path / "run" / "best.pt")
    assert spec.temperature == 1.0 and spec.metrics["calibration_warning"] == warnings[0].split("warning: ", 1)[1]
