"""OUT/manifest.json accumulates (issue 12): each run merges its slides into it by slide
folder, and a single-process run writes every documented field."""

from __future__ import annotations

import json
import os

from cli_helpers import run

from wsiscan.manifest import merge_manifest
from wsiscan.testing import write_synthetic_slide

TOP_FIELDS = ("command", "run_id", "models", "model_hash", "config_hash", "versions", "started", "finished",
              "totals", "slides", "runs")
TOTALS = ("slides", "complete", "skipped", "failed", "pending", "retried", "patches_scored", "elapsed_s",
          "slides_per_s", "patches_per_s")


def test_second_predict_keeps_the_first_slides_entry(synthetic_slide, tiny_ckpt, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    other = write_synthetic_slide(tmp_path / "in" / "other.tif", dimensions_px=(2048, 1536))
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # a relative slide path must be recorded absolute
    rel = os.path.relpath(synthetic_slide.path, tmp_path)
    assert run("predict", rel, "-o", out, "--model", tiny_ckpt, "-q").exit_code == 0
    first = json.loads((out / "manifest.json").read_text())
    assert all(k in first for k in TOP_FIELDS) and all(k in first["totals"] for k in TOTALS)
    assert first["finished"] >= first["started"] and first["totals"]["complete"] == 1
    entry = first["slides"][0]
    assert entry["slide"] == str(synthetic_slide.path.resolve()) and os.path.isabs(entry["slide"])
    assert entry["run_id"] == first["run_id"] and entry["status"] == "complete"
    assert run("predict", other.path, "-o", out, "--model", tiny_ckpt, "-q").exit_code == 0
    second = json.loads((out / "manifest.json").read_text())
    assert {e["slide_id"] for e in second["slides"]} == {"synthetic", "other"}
    assert second["run_id"] != first["run_id"] and [r["run_id"] for r in second["runs"]] == [first["run_id"],
                                                                                              second["run_id"]]
    assert second["totals"]["slides"] == 1  # totals are the latest run's
    # scoring the first slide again replaces its entry, it is not listed twice
    assert run("predict", synthetic_slide.path, "-o", out, "--model", tiny_ckpt, "-q").exit_code == 0
    third = json.loads((out / "manifest.json").read_text())
    ids = [e["slide_id"] for e in third["slides"]]
    assert sorted(ids) == ["other", "synthetic"] and len(third["runs"]) == 3
    assert next(e for e in third["slides"] if e["slide_id"] == "synthetic")["run_id"] == third["run_id"]
    assert not list(out.glob(".manifest.json.tmp*"))


def test_merge_ignores_an_unreadable_or_foreign_manifest():
    run_m = {"run_id": "r2", "command": "predict", "slides": [{"slide_id": "a", "slide": "/x/a.svs"}]}
    assert merge_manifest({}, run_m)["slides"] == [{"slide_id": "a", "slide": "/x/a.svs", "run_id": "r2"}]
    prev = {"run_id": "r1", "slides": [{"slide_id": "a", "run_id": "r1"}, {"slide_id": "b", "run_id": "r1"}, "junk"],
            "runs": [{"run_id": "r1"}]}
    merged = merge_manifest(prev, run_m)
    assert [(e["slide_id"], e["run_id"]) for e in merged["slides"]] == [("b", "r1"), ("a", "r2")]
    assert [r["run_id"] for r in merged["runs"]] == ["r1", "r2"]
