"""`wsiscan bench --smoke`: the report's schema (keys, types, ratios), never the speed."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from wsiscan.cli import main


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _number(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One `wsiscan bench --smoke` run (the slow part: every test that reads it is marked slow)."""
    d = tmp_path_factory.mktemp("bench")
    out = d / "x.json"
    result = CliRunner().invoke(main, ["bench", "--smoke", "--device", "cpu", "-q", "--work-dir", str(d / "work"),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wrote" in result.output and "end to end, stride 96 px" in result.output
    return json.loads(out.read_text())


@pytest.mark.slow  # the smoke run behind `report` takes about a minute
def test_report_header(report):
    assert report["benchmark"] == "wsiscan-bench" and report["schema_version"] == 1 and report["smoke"] is True
    assert isinstance(report["command"], str) and report["command"]
    assert report["repeats"] == 1
    assert report["versions"]["torch"] and report["versions"]["wsiscan"]
    dev = report["device"]
    assert dev["type"] == "cpu" and isinstance(dev["name"], str) and dev["name"]
    assert dev["cores_usable"] >= 1 and dev["cuda"] is None
    assert _number(report["load_avg_1m"]["start"]) and _number(report["load_avg_1m"]["end"])
    slide = report["slide"]
    assert slide["dimensions_px"] == [2048, 1536] and slide["mpp"] == pytest.approx(0.486, rel=1e-3)
    assert report["options"]["smoke"] is True and report["options"]["device"] == "cpu"
    assert set(report["section_seconds"]) == {"tiling", "feed", "decode", "tissue_mask", "model", "end_to_end"}
    assert isinstance(report["notes"], list) and all(isinstance(n, str) for n in report["notes"])


@pytest.mark.slow  # the smoke run behind `report` takes about a minute
def test_feed_rate_streams_every_kept_patch_without_the_model(report):
    (f,) = report["feed"]  # one per stride
    (t,) = report["tiling"]
    assert f["stride_px"] == 96 and f["n_patches"] == t["n_tiles"], "every kept patch reaches the device"
    assert f["chunks_decoded"] == t["chunks_needed"] and f["workers"] >= 1
    assert _positive(f["seconds"]) and _positive(f["patches_per_s"]) and _positive(f["decoded_mb_per_s"])
    assert f["patches_per_s"] == pytest.approx(f["n_patches"] / f["seconds"])


@pytest.mark.slow  # the smoke run behind `report` takes about a minute
def test_decode_figures_compare_openslide_and_raw_tiles(report):
    dc = report["decode"]
    assert dc["n_chunks"] >= 1 and dc["openslide"]["reader"] == "openslide"
    for name in ("openslide", "raw"):
        assert _positive(dc[name]["seconds"]) and _positive(dc[name]["region_mb_per_s"]), name
    # the smoke slide is JPEG-tiled and its level is read raw, with the reason absent
    assert dc["raw"]["reader"] == "tifffile-jpeg" and dc["why_openslide"] is None
    assert _positive(dc["ratio"]["raw_vs_openslide"])
    if "raw_glass_skip" in dc:
        assert dc["raw_glass_skip"]["decoded_mb"] <= dc["raw"]["decoded_mb"]


@pytest.mark.slow  # the smoke run behind `report` takes about a minute
def test_tiling_figures_and_ratios(report):
    (t,) = report["tiling"]  # one per stride
    assert t["stride_px"] == 96
    ws, nv = t["wsiscan"], t["naive"]
    assert t["n_tiles"] > 0 and ws["decoded_bytes"] > 0 and 0 < t["chunks_needed"] <= t["chunks_total"]
    for key in ("seconds", "pixels_seconds", "tiles_per_s", "decoded_mb_per_s", "pixels_tiles_per_s",
                "pixels_decoded_mb_per_s", "peak_rss_mb", "wall_s"):
        assert _positive(ws[key]), key
    for key in ("seconds", "seconds_timed", "tiles_per_s", "decoded_mb_per_s", "peak_rss_mb"):
        assert _positive(nv[key]), key
    assert nv["n_tiles"] == t["n_tiles"] and nv["extrapolated"] == (nv["n_tiles_timed"] < nv["n_tiles"])
    assert len(ws["runs_seconds"]) == len(nv["runs_seconds_timed"]) == 1
    r = t["ratio"]
    assert r["tiles_per_s_vs_naive"] == pytest.approx(ws["tiles_per_s"] / nv["tiles_per_s"])
    assert r["pixels_tiles_per_s_vs_naive"] == pytest.approx(ws["pixels_tiles_per_s"] / nv["tiles_per_s"])
    assert r["decoded_bytes_vs_naive"] == pytest.approx(ws["decoded_bytes"] / nv["decoded_bytes"])
    assert r["tiles_per_s_vs_before"] is None  # no --compare-src
    tm = report["tissue_mask"]
    assert _positive(tm["wsiscan"]["seconds"]) and _positive(tm["naive"]["seconds"])
    assert tm["wsiscan"]["shape"] == tm["naive"]["shape"]
    assert tm["ratio"]["speedup_vs_naive"] == pytest.approx(tm["naive"]["seconds"] / tm["wsiscan"]["seconds"])


@pytest.mark.slow  # the smoke run behind `report` takes about a minute
def test_model_figures_and_ratios(report):
    (m,) = report["model"]
    assert m["arch"] == "resnet18" and m["batch_size"] == 8 and m["patch_size_px"] == 96
    ws, nv = m["wsiscan"], m["naive"]
    assert ws["precision"] == "fp32" and ws["channels_last"] is True  # CPU: fp32, channels_last
    assert nv["precision"] == "fp32" and nv["channels_last"] is False
    for run in (ws, nv):
        assert _positive(run["patches_per_s"]) and run["n_patches"] == 2 * 8
        assert run["gpu"] is None and run["peak_gpu_memory_mb"] is None  # no CUDA: null, not zero
    assert m["ratio"]["patches_per_s_vs_naive"] == pytest.approx(ws["patches_per_s"] / nv["patches_per_s"])


@pytest.mark.slow  # the smoke run behind `report` takes about a minute
def test_end_to_end_figures_and_ratios(report):
    (e,) = report["end_to_end"]
    assert e["stride_px"] == 96
    ws, nv = e["wsiscan"], e["naive"]
    assert ws["n_patches"] == nv["n_patches"] == e["n_patches"] == report["tiling"][0]["n_tiles"]
    for run in (ws, nv):
        for key in ("wall_s", "s_per_slide", "patches_per_s", "peak_rss_mb"):
            assert _positive(run[key]), key
        assert run["patches_per_s"] == pytest.approx(run["n_patches"] / run["wall_s"])
        assert run["gpu"] is None and run["gpu_utilisation_mean_percent"] is None and run["peak_gpu_memory_mb"] is None
    assert set(ws["stage_timings_s"]) >= {"pixels_s", "inference_s", "outputs_s", "total_s"}
    r = e["ratio"]
    assert r["speedup_vs_naive"] == pytest.approx(nv["wall_s"] / ws["wall_s"])
    assert r["peak_rss_vs_naive"] == pytest.approx(ws["peak_rss_mb"] / nv["peak_rss_mb"])
    assert r["speedup_vs_before"] is None
    assert report["peak_rss_mb"] == ws["peak_rss_mb"] and report["peak_gpu_memory_mb"] is None


def test_bad_options_are_usage_errors(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--smoke", "--repeats", "0"])
    assert result.exit_code == 2 and "--repeats" in result.output
    result = CliRunner().invoke(main, ["bench", "--size", "huge"])
    assert result.exit_code == 2


def test_compare_src_contender_imports_the_given_tree_even_from_the_repository_root(tmp_path, monkeypatch):
    """`python -m`/`-c` put the working folder first on sys.path: run from a checkout, a
    --compare-src contender once silently imported that checkout's wsiscan instead."""
    import shutil
    from pathlib import Path

    from wsiscan_bench.runner import check_compare_src

    from wsiscan.errors import ConfigError

    repo = Path(__file__).resolve().parents[1]
    before = tmp_path / "before"
    shutil.copytree(repo / "wsiscan", before / "wsiscan", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(repo)
    assert check_compare_src(before) == (before / "wsiscan").resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="--compare-src"):
        check_compare_src(tmp_path / "empty")


def test_compare_src_without_a_wsiscan_package_is_one_line(tmp_path):
    from cli_helpers import assert_one_line_error, run

    (tmp_path / "empty").mkdir()
    result = run("bench", "--compare-src", tmp_path / "empty", "--smoke", "-q", "--work-dir", tmp_path / "w",
                 "-o", tmp_path / "x.json")
    assert_one_line_error(result, "--compare-src", str(tmp_path / "empty"), "holds a wsiscan/ package")
    assert not (tmp_path / "x.json").exists()


def _wsiscan_without_benchmarks_on_path(cwd, *args):
    """`python -m wsiscan ARGS` in ``cwd`` with only the wsiscan package importable (as installed)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import wsiscan

    env = {**os.environ, "PYTHONPATH": str(Path(wsiscan.__file__).resolve().parents[1]), "PYTHONSAFEPATH": "1"}
    return subprocess.run([sys.executable, "-m", "wsiscan", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_bench_outside_a_checkout_says_how_to_get_one_in_one_line(tmp_path):
    proc = _wsiscan_without_benchmarks_on_path(tmp_path, "bench", "--smoke", "-o", str(tmp_path / "x.json"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsiscan: error: "), proc.stderr
    assert "source checkout" in lines[0] and str(tmp_path) in lines[0] and "clone the wsiscan repository" in lines[0]
    assert not (tmp_path / "x.json").exists()


def test_bench_inside_a_checkout_finds_the_benchmarks_package(tmp_path):
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    proc = _wsiscan_without_benchmarks_on_path(benchmarks, "bench", "--help")  # a sub-folder of the checkout
    assert proc.returncode == 0, proc.stderr
    assert "Usage: python -m wsiscan bench [OPTIONS]" in proc.stdout and "--naive-max-tiles" in proc.stdout
