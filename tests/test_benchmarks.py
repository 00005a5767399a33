"""The benchmark scripts run end to end on tiny inputs (benchmarks/ is on the test path, see pyproject)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from wsiscan_bench import make_slide

from wsiscan.config import load_config
from wsiscan.slide import open_slide
from wsiscan.tiling import plan_tiling

SOURCE_NAME = "CMU-1-Small-Region.svs"

pytestmark = pytest.mark.realdata  # the benchmark slide is made from the tissue of a real slide


@pytest.fixture(scope="module")
def tiny_slide(shared_slides, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.tif"
    info = make_slide.make_benchmark_slide(path, width_px=2048, height_px=2048, seed=1,
                                           source=shared_slides / SOURCE_NAME, workers=2)
    return path, info


def test_benchmark_slide_is_a_pyramid_at_025_mpp_with_tissue(tiny_slide):
    path, info = tiny_slide
    assert info["path"] == str(path) and info["file_size_bytes"] == path.stat().st_size
    assert not path.with_name(path.name + ".partial").exists()
    assert 0.2 <= info["tissue_fraction"] <= 0.4 and info["n_islands"] > 0
    with open_slide(path) as slide:
        si = slide.info
        assert si.vendor == "generic-tiff"
        assert si.mpp is not None and si.mpp.mpp == pytest.approx(0.25, rel=1e-3)
        assert si.mpp.source == "openslide-properties"
        assert [lv.dimensions_px for lv in si.levels] == [(2048, 2048), (512, 512), (128, 128), (32, 32)]
        assert [round(lv.downsample) for lv in si.levels] == [1, 4, 16, 64]
        thumb = slide.read_thumbnail(mpp=4.0)
    # glass is light grey, tissue is darker and coloured
    assert thumb.min() < 150 and (thumb.reshape(-1, 3).mean(axis=1) > 230).mean() > 0.4
    plan = plan_tiling(path, load_config())
    assert plan.n_tiles > 0


def test_benchmark_slide_is_deterministic_and_can_be_aperio(shared_slides, tmp_path):
    import openslide  # to compare raw pixels level by level

    kwargs = dict(width_px=1536, height_px=1024, seed=5, source=shared_slides / SOURCE_NAME)
    generic = make_slide.make_benchmark_slide(tmp_path / "a.tif", workers=1, **kwargs)
    aperio = make_slide.make_benchmark_slide(tmp_path / "b.svs", workers=2, aperio=True, **kwargs)
    with open_slide(aperio["path"]) as slide:
        assert slide.info.vendor == "aperio"
        assert slide.info.mpp.mpp == pytest.approx(0.25, rel=1e-3)
        assert slide.info.objective_power == 40
    # same seed: the same pixels, whatever the number of workers or the flavour of TIFF
    a, b = openslide.OpenSlide(generic["path"]), openslide.OpenSlide(aperio["path"])
    try:
        assert a.level_count == b.level_count == 4
        for level in range(4):
            size = a.level_dimensions[level]
            assert np.array_equal(np.asarray(a.read_region((0, 0), level, size)),
                                  np.asarray(b.read_region((0, 0), level, size))), level
    finally:
        a.close()
        b.close()


def test_bench_tile_writes_its_report(tiny_slide, tmp_path):
    import bench_tile
    out = tmp_path / "report.json"
    rc = bench_tile.main(["--slide", str(tiny_slide[0]), "--out", str(out), "--work-dir", str(tmp_path / "work"),
                          "--workers", "2", "--naive-max-tiles", "5"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("device", "versions", "command", "slide", "tiling", "wsiscan", "naive", "naive_parallel", "ratio"):
        assert key in report, key
    assert report["device"]["cores_logical"] >= 1 and report["device"]["cpu_model"]
    assert report["versions"]["wsiscan"]
    assert report["slide"]["dimensions_px"] == [2048, 2048] and report["slide"]["mpp"] == pytest.approx(0.25, rel=1e-3)
    ws, naive = report["wsiscan"], report["naive"]
    assert ws["n_tiles"] > 0 and ws["tiles_per_s"] > 0 and ws["decoded_mb_per_s"] > 0 and ws["peak_rss_mib"] > 0
    assert naive["n_tiles"] == ws["n_tiles"] and naive["n_tiles_timed"] == min(5, ws["n_tiles"])
    assert naive["extrapolated"] == (ws["n_tiles"] > 5) and naive["tiles_per_s"] > 0
    assert report["naive_parallel"]["workers"] == 2
    assert report["ratio"]["tiles_per_s_vs_naive"] > 0
    assert report["ratio"]["tiles_per_s_vs_naive_parallel"] > 0


def test_rss_timeline_samples_main_process_and_children(tmp_path):
    import rss_timeline
    out = tmp_path / "tl.json"
    child = "import time; y = bytes(range(256)) * 240_000; time.sleep(1.5)"  # 61 MB, written
    code = ("import subprocess, sys; x = bytes(range(256)) * 320_000; "  # 82 MB, written
            f"subprocess.run([sys.executable, '-c', {child!r}]); print('done', flush=True)")
    assert rss_timeline.main([str(out), "--", sys.executable, "-c", code]) == 0
    report = json.loads(out.read_text())
    assert report["rc"] == 0 and report["lines"][-1][1] == "done"
    assert max(s[1] for s in report["samples"]) >= 75  # the 80 MB held by the main process
    assert max(s[2] for s in report["samples"]) >= 55  # the child's 60 MB, counted apart
