"""Model sources, offline: the standard Hugging Face cache, TIAToolbox's folder, --from FILE, pinned hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from cli_helpers import assert_one_line_error, run
from hub_cache import fill_hf_cache, tia_pth_bytes

from wsiscan import models as M
from wsiscan.errors import CheckpointError, OfflineError

NAME = "tiatoolbox/resnet18-pcam"
REPO = "TIACentre/TIAToolbox_pretrained_weights"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _offline_homes(offline_model_homes):
    """Own wsiscan, Hugging Face and TIAToolbox homes per test, and no network (conftest)."""


@pytest.fixture(scope="module")
def tia_file() -> tuple[bytes, torch.nn.Module]:
    return tia_pth_bytes(seed=3)


def _pinned(monkeypatch, **changes) -> M.RegistryEntry:
    entry = dataclasses.replace(M.get_registry_entry(NAME), **changes)
    monkeypatch.setitem(M.registry._REGISTRY, NAME, entry)
    return entry


def _stdout_lines(result) -> list[str]:
    return [ln for ln in result.stdout.splitlines() if ln.strip()]


def test_prefilled_hf_cache_serves_pull_offline(tmp_path, tia_file):
    data, tia = tia_file
    snapshot = fill_hf_cache(tmp_path / "hf" / "hub", REPO, {"resnet18-pcam.pth": data}, commit=COMMIT)
    sha = hashlib.sha256(data).hexdigest()
    r = run("models", "pull", NAME)
    assert r.exit_code == 0, r.output
    lines = _stdout_lines(r)
    assert lines[0] == f"{NAME}: from Hugging Face cache {snapshot / 'resnet18-pcam.pth'} @ {COMMIT} (sha256 {sha})"
    path = M.pull_model(NAME)
    assert lines[1] == f"{NAME}: ready at {path}"
    # wsiscan's converted copy is in its own cache, keyed by revision and source hash
    assert path.parent == M.cache_dir() and path.name == f"tiatoolbox--resnet18-pcam--{COMMIT[:12]}--{sha[:16]}.pt"
    model, spec, _ = M.load_model(NAME)
    assert spec.provenance["source_sha256"] == sha and spec.provenance["hf_revision"] == COMMIT
    assert spec.provenance["source_origin"] == "Hugging Face cache"
    x01 = torch.rand(3, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(M.predict_proba(model, spec, x01), tia(x01)[:, 1], atol=1e-5)
    listing = json.loads(run("models", "list", "--json").stdout)
    row = next(m for m in listing["models"] if m["name"] == NAME)
    assert row["cached"] is True and row["source"] == "Hugging Face cache"


def test_hf_cache_serves_predict_offline(tmp_path, tia_file, synthetic_slide):
    fill_hf_cache(tmp_path / "hf" / "hub", REPO, {"resnet18-pcam.pth": tia_file[0]}, commit=COMMIT)
    r = run("predict", synthetic_slide.path, "-o", tmp_path / "out", "--model", NAME, "-q", "--device", "cpu")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "out" / "synthetic" / "summary.json").read_text())
    assert summary["models"][0]["spec"]["provenance"]["hf_revision"] == COMMIT
    assert summary["resolution"]["effective_mpp"] == pytest.approx(1.0, rel=0.03)


def test_tiatoolbox_folder_serves_pull_and_predict(tmp_path, tia_file, synthetic_slide):
    data, _ = tia_file
    tia = tmp_path / "tia" / "models" / "resnet18-pcam.pth"
    tia.parent.mkdir(parents=True)
    tia.write_bytes(data)
    r = run("models", "pull", NAME)
    assert r.exit_code == 0, r.output
    assert _stdout_lines(r)[0] == f"{NAME}: from TIAToolbox folder {tia} (sha256 {hashlib.sha256(data).hexdigest()})"
    r = run("predict", synthetic_slide.path, "-o", tmp_path / "out", "--model", NAME, "-q", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert zarr.open_group(str(tmp_path / "out" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"].ndim == 2


def test_pull_from_file_registers_a_hand_brought_copy(tmp_path, tia_file):
    data, _ = tia_file
    brought = tmp_path / "usb" / "weights.pth"
    brought.parent.mkdir()
    brought.write_bytes(data)
    r = run("models", "pull", NAME, "--from", brought)
    assert r.exit_code == 0, r.output
    assert f"from --from {brought} {brought} (sha256 {hashlib.sha256(data).hexdigest()})" in r.stdout
    brought.unlink()  # the converted copy now serves the name, offline, without the source
    pulled = M.fetch_model(NAME)
    assert pulled.origin == "wsiscan cache" and pulled.path.is_file()
    assert M.load_model(NAME)[1].provenance["source_origin"] == f"--from {brought}"


def test_pinned_hash_mismatch_is_refused_in_one_line(tmp_path, tia_file, monkeypatch):
    _pinned(monkeypatch, sha256="f" * 64)
    fill_hf_cache(tmp_path / "hf" / "hub", REPO, {"resnet18-pcam.pth": tia_file[0]}, commit=COMMIT)
    r = run("models", "pull", NAME)
    assert_one_line_error(r, "is pinned to " + "f" * 64, hashlib.sha256(tia_file[0]).hexdigest(), "Hugging Face cache")
    assert not list(M.cache_dir().glob("*.pt")), "nothing converted from a refused file"
    brought = tmp_path / "w.pth"
    brought.write_bytes(tia_file[0])
    assert_one_line_error(run("models", "pull", NAME, "--from", brought), "is pinned to", str(brought))
    assert_one_line_error(run("predict", tmp_path / "x.tif", "--model", NAME, "-o", tmp_path / "o"), "is pinned to")


def test_pinned_hash_and_revision_are_honoured(tmp_path, tia_file, monkeypatch):
    data, _ = tia_file
    other, _ = tia_pth_bytes(seed=4)
    hub = tmp_path / "hf" / "hub"
    fill_hf_cache(hub, REPO, {"resnet18-pcam.pth": data}, commit=COMMIT, ref=None)
    fill_hf_cache(hub, REPO, {"resnet18-pcam.pth": other}, commit="b" * 40)  # main moved on
    _pinned(monkeypatch, revision=COMMIT, sha256=hashlib.sha256(data).hexdigest())
    pulled = M.fetch_model(NAME)
    assert pulled.revision == COMMIT and pulled.source_sha256 == hashlib.sha256(data).hexdigest()


def test_offline_without_any_copy_says_every_place_in_one_line(tmp_path):
    r = run("models", "pull", NAME)
    assert_one_line_error(r, "HF_HUB_OFFLINE is set", str(tmp_path / "hf" / "hub"), str(tmp_path / "tia" / "models"),
                          "--from FILE", "hf download")
    with pytest.raises(OfflineError):
        M.resolve_model(NAME)


def test_download_goes_to_the_standard_cache_without_local_dir(tmp_path, tia_file, monkeypatch):
    import huggingface_hub

    from wsiscan.models import hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout_s=3.0: True)
    calls = []

    def fake_download(**kwargs):  # writes what the real one writes: a snapshot in cache_dir
        calls.append(kwargs)
        snap = fill_hf_cache(Path(kwargs["cache_dir"]), kwargs["repo_id"], {kwargs["filename"]: tia_file[0]},
                             commit=COMMIT)
        return str(snap / kwargs["filename"])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    pulled = M.fetch_model(NAME)
    assert pulled.origin == "download" and pulled.revision == COMMIT
    assert "local_dir" not in calls[0] and calls[0]["cache_dir"] == tmp_path / "hf" / "hub"
    assert M.fetch_model(NAME).origin == "Hugging Face cache" and len(calls) == 1  # now served locally
    M.fetch_model(NAME, force=True)
    assert len(calls) == 2 and calls[1]["force_download"] is True


def test_from_missing_file_and_unconvertible_file(tmp_path):
    assert_one_line_error(run("models", "pull", NAME, "--from", tmp_path / "nope.pth"), "no such file")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not weights")
    assert_one_line_error(run("models", "pull", NAME, "--from", junk), str(junk))
    assert not list(M.cache_dir().glob("*.pt"))


def test_entry_without_a_hub_file_is_refused_in_one_line(tmp_path, tia_file, monkeypatch):
    _pinned(monkeypatch, source="https://example.org/resnet18-pcam.pth")
    assert_one_line_error(run("models", "pull", NAME), "names no file in its source", "--from FILE")
    r = run("models", "list")
    assert r.exit_code == 0 and NAME in r.stdout
    brought = tmp_path / "w.pth"
    brought.write_bytes(tia_file[0])
    assert run("models", "pull", NAME, "--from", brought).exit_code == 0


def test_converted_cache_is_reused_and_damage_suggests_force(tmp_path, tia_file):
    fill_hf_cache(tmp_path / "hf" / "hub", REPO, {"resnet18-pcam.pth": tia_file[0]}, commit=COMMIT)
    path = M.pull_model(NAME)
    mtime = path.stat().st_mtime_ns
    assert M.pull_model(NAME) == path and path.stat().st_mtime_ns == mtime
    path.write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match=f"wsiscan models pull {NAME} --force"):
        M.load_model(NAME)


def test_registry_entries_describe_pins_and_sources():
    entry = M.get_registry_entry(NAME)
    d = entry.to_dict()
    assert d["kind"] == "tiatoolbox" and "revision" in d and "sha256" in d
    assert entry.tiatoolbox_file == "resnet18-pcam.pth"
    assert np.all([e.kind in ("tiatoolbox", "builtin", "wsinfer") for e in M.list_models()])
