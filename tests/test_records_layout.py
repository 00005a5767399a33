"""The outer layer: result records (summary.json, manifest entries), the layout's atomic
writers, and the one slide loop writing the same manifest entries for tile and predict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run

from wsiscan.errors import RecordError
from wsiscan.layout import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    atomic_path,
    is_result_folder,
    json_default,
    write_geojson_atomic,
    write_json_atomic,
    write_png_atomic,
)
from wsiscan.records import SCHEMA_VERSION, ManifestEntry, RunTotals, SlideFigures, SlideSummary, read_summary

# a summary.json of the shape predict wrote before schema_version existed (trimmed to what readers use)
OLD_SUMMARY = {
    "slide": {"path": "/data/a.svs", "size_bytes": 10, "mtime_ns": 1, "quick_sha256": "ab"},
    "slide_id": "a",
    "mpp": {"base_mpp": 0.25, "source": "openslide-properties"},
    "resolution": {"target_mpp": 0.972, "effective_mpp": 0.97},
    "scores": {"max_probability": 0.9, "top_k_mean_probability": 0.8, "tumour_area_mm2": 1.5, "threshold": 0.5},
    "regions": {"n": 2, "threshold": 0.5, "top": []},
    "areas": {"tissue_area_mm2": 12.0, "region_area_mm2": 1.25},
    "smoke_model": False,
    "exports": {"tumor.geojson": {"threshold": 0.5}},
    "tiles": {"n_tiles": 40, "scored_this_run": 30, "resumed_tiles": 10, "pixel_chunks_written": 3,
              "pixel_chunks_resumed": 1},
    "timings_s": {"total_s": 2.5},
    "models": [{"model": "wsiscan/tiny", "sha256": "cd", "spec": {"arch": "tiny"}}],
    "model_hash": "mh", "config_hash": "ch",
    "config": {"predict": {"threshold": 0.4, "min_region_area_um2": 100.0, "top_k": 10}},
    "outputs": {"overlay": "overlay.png"},
    "a_key_of_a_later_version": [1, 2],
}


def test_old_summary_reads_and_round_trips_with_a_version():
    s = SlideSummary.from_json(OLD_SUMMARY)
    assert (s.n_tiles, s.n_regions, s.max_probability, s.effective_mpp) == (40, 2, 0.9, 0.97)
    assert s.model_names == ["wsiscan/tiny"] and s.total_s == 2.5 and s.threshold == 0.5
    assert s.region_settings() == {"threshold": 0.4, "top_k": 10, "min_region_area_um2": 100.0}
    out = s.to_json()
    assert out["schema_version"] == SCHEMA_VERSION == 1
    assert {k: v for k, v in out.items() if k != "schema_version"} == {
        **OLD_SUMMARY, "precision": None, "batch_size": None}
    assert SlideSummary.from_json(out) == s and s["tiles"]["n_tiles"] == 40 and "areas" in s
    f = s.figures()
    assert (f.scored_this_run, f.resumed_tiles, f.pixel_chunks_written, f.tumour_area_mm2) == (30, 10, 3, 1.5)
    with pytest.raises(TypeError):
        s.scores["max_probability"] = 0.1  # a record is read-only all the way down


@pytest.mark.parametrize("change, needles", [
    ({"schema_version": 99}, ["newer wsiscan", "schema 99", "upgrade wsiscan"]),
    ({"tiles": {}}, ["tiles.n_tiles", "rerun `wsiscan predict`"]),
    ({"scores": None}, ["no scores", "rerun"]),
    ({"slide_id": None}, ["no slide_id"]),
])
def test_a_summary_of_unknown_shape_is_refused_naming_the_file(tmp_path, change, needles):
    path = tmp_path / SUMMARY_NAME
    path.write_text(json.dumps({**OLD_SUMMARY, **change}))
    with pytest.raises(RecordError) as err:
        read_summary(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    for needle in needles:
        assert needle in message, message
    path.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        read_summary(tmp_path)  # the slide folder works too
    with pytest.raises(RecordError, match="no summary"):
        read_summary(tmp_path / "other" / SUMMARY_NAME)


def test_manifest_entry_and_totals():
    figures = SlideFigures(n_tiles=5, effective_mpp=0.97, scored_this_run=4, timings_s={"total_s": 1.0})
    e = ManifestEntry(slide="/x/a.svs", slide_id="a", worker="local", workers=("local",), attempts=1)
    done = e.complete(figures, seconds=1.0)
    j = done.to_json()
    assert j["status"] == "complete" and j["n_tiles"] == 5 and j["timings_s"] == {"total_s": 1.0}
    assert j["workers"] == ["local"] and "host" not in j and j["max_probability"] is None
    assert ManifestEntry.from_json(j) == done
    failed = e.failed(ValueError("a.svs: broken"))
    assert failed.to_json()["error_type"] == "ValueError" and failed.figures is None
    skipped = e.complete(figures, skipped=True, finished=None)  # a skipped slide did not finish in this run
    assert skipped.finished is None and e.failed(ValueError("x"), finished=3.0).finished == 3.0
    t = RunTotals.of([done, failed, skipped, e], elapsed_s=2.0)
    assert (t.slides, t.complete, t.skipped, t.failed, t.pending, t.patches_scored) == (4, 2, 1, 1, 1, 8)
    assert t.slides_per_s == 1.5
    with pytest.raises(ValueError, match="status"):
        ManifestEntry(slide="x", slide_id="x", status="done")


def test_atomic_writers_replace_or_leave_the_old_file(tmp_path):
    from PIL import Image

    path = tmp_path / "a.json"
    write_json_atomic({"n": np.int64(3), "v": np.float32(0.5), "t": (1, 2), "p": Path("x"),
                       "a": np.arange(2)}, path)
    assert json.loads(path.read_text()) == {"n": 3, "v": 0.5, "t": [1, 2], "p": "x", "a": [0, 1]}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json_atomic({"bad": object()}, path)
    assert json.loads(path.read_text())["n"] == 3  # the old file is intact
    with pytest.raises(TypeError):
        json_default(object())
    with pytest.raises(ValueError, match="FeatureCollection"):
        write_geojson_atomic({"type": "Feature"}, tmp_path / "r.geojson")
    png = tmp_path / "p.png"
    write_png_atomic(Image.new("RGB", (4, 3), "red"), png)
    with pytest.raises(RuntimeError), atomic_path(png) as tmp:
        tmp.write_bytes(b"half a picture")
        raise RuntimeError("killed while writing")
    assert Image.open(png).size == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "p.png"]  # no temporary left


def _entries(out: Path) -> dict[str, dict]:
    return {e["slide_id"]: e for e in json.loads((out / MANIFEST_NAME).read_text())["slides"]}


def test_tile_and_predict_write_the_same_manifest_entries(synthetic_slide, bad_inputs, tiny_ckpt, tmp_path):
    tiled, scored = tmp_path / "tiled", tmp_path / "scored"
    r = run("tile", bad_inputs["random"], synthetic_slide.path, "-o", tiled, "-q")
    assert r.exit_code == 1 and "1 of 2 slides failed" in r.stderr
    manifest = json.loads((tiled / MANIFEST_NAME).read_text())
    assert manifest["command"] == "tile" and manifest["totals"]["complete"] == 1 and manifest["totals"]["failed"] == 1
    tile_entries = _entries(tiled)
    ok, bad = tile_entries["synthetic"], tile_entries["random"]
    assert ok["status"] == "complete" and ok["n_tiles"] > 0 and ok["pixel_chunks_written"] > 0
    assert ok["slide"] == os.path.abspath(synthetic_slide.path) and ok["worker"] == "local" and ok["attempts"] == 1
    assert ok["max_probability"] is None and ok["model_hash"] is None
    assert bad["status"] == "failed" and "random.svs" in bad["error"] and bad["error_type"]

    r = run("predict", bad_inputs["random"], synthetic_slide.path, "-o", scored, "--model", tiny_ckpt, "-q")
    assert r.exit_code == 1
    pred_entries = _entries(scored)
    assert set(pred_entries["synthetic"]) == set(ok) and set(pred_entries["random"]) == set(bad)
    p = pred_entries["synthetic"]
    assert p["n_tiles"] == ok["n_tiles"] and p["max_probability"] is not None and p["model_hash"]
    summary = read_summary(scored / "synthetic")
    assert p["max_probability"] == summary.max_probability and summary.schema_version == SCHEMA_VERSION
    assert json.loads((scored / "synthetic" / SUMMARY_NAME).read_text())["schema_version"] == SCHEMA_VERSION
    assert is_result_folder(scored / "synthetic") and not is_result_folder(tiled / "synthetic")


def test_heatmap_refuses_a_summary_of_a_newer_version(synthetic_slide, tiny_ckpt, tmp_path):
    assert run("predict", synthetic_slide.path, "-o", tmp_path, "--model", tiny_ckpt, "-q").exit_code == 0
    path = tmp_path / "synthetic" / SUMMARY_NAME
    data = json.loads(path.read_text())
    data.pop("schema_version")  # as predict wrote it before the field: still read
    path.write_text(json.dumps(data))
    r = run("heatmap", tmp_path / "synthetic", "--threshold", "0.3", "--no-png")
    assert r.exit_code == 0, r.output
    assert read_summary(path).threshold == 0.3 and json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    path.write_text(json.dumps({**data, "schema_version": 7}))
    before = path.read_bytes()
    r = run("heatmap", tmp_path / "synthetic", "--threshold", "0.4", "--no-png")
    assert_one_line_error(r, str(path), "schema 7", "upgrade wsiscan")
    assert path.read_bytes() == before


def test_a_failed_single_slide_tile_writes_no_manifest(bad_inputs, tmp_path):
    r = run("tile", bad_inputs["random"], "-o", tmp_path / "out", "-q")
    assert r.exit_code == 1 and not (tmp_path / "out").exists()


def test_many_slides_into_a_file_fail_in_one_line(synthetic_slide, bad_inputs, tmp_path):
    out = tmp_path / "a-file"
    out.write_text("keep me")
    r = run("tile", synthetic_slide.path, bad_inputs["random"], "-o", out, "-q")
    assert_one_line_error(r, str(out), "is a file", "-o/--out")
    assert out.read_text() == "keep me"
