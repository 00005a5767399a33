"""`wsiscan predict` on Dask distributed: a real LocalCluster of 2 worker processes on CPU.

Results equal the single-process run's, a SIGKILLed worker's slide is retried on
another worker and resumes from its chunks, a corrupt slide is recorded once, and a
rerun does no work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import run

distributed = pytest.importorskip("distributed")

from wsiscan.config import load_config
from wsiscan.predict import SlideJob, expand_slide_inputs, load_models, resolution_config
from wsiscan.testing import write_synthetic_slide


def heatmap(out: Path, slide_id: str) -> np.ndarray:
    return zarr.open_group(str(out / slide_id / "store.zarr"), mode="r")["heatmap/0"][...]


def manifest_by_id(out: Path) -> dict[str, dict]:
    return {e["slide_id"]: e for e in json.loads((out / "manifest.json").read_text())["slides"]}


@pytest.fixture(scope="module")
def slides(synthetic_slide, tmp_path_factory) -> list[Path]:
    """Three slides: the shared synthetic one, another layout, and a copy under another name."""
    d = tmp_path_factory.mktemp("dslides")
    other = write_synthetic_slide(d / "wide.tif", dimensions_px=(3072, 2048),
                                  boxes=((256, 256, 1400, 1800), (1800, 300, 2900, 1200))).path
    copy = d / "copy.tif"
    shutil.copy(synthetic_slide.path, copy)
    return [synthetic_slide.path, other, copy]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def reference(slides, tiny_ckpt, tmp_path_factory) -> Path:
    """The single-process run (no --workers, no --scheduler) of the same slides."""
    out = tmp_path_factory.mktemp("ref")
    r = run("predict", *slides, "-o", out, "--model", tiny_ckpt, "-q")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def cluster_run(slides, tiny_ckpt, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("dask")
    r = run("predict", *slides, "-o", out, "--model", tiny_ckpt, "-q", "--scheduler", client.scheduler.address)
    return out, r


def test_cluster_results_equal_the_single_process_run(cluster_run, reference, slides, client):
    out, r = cluster_run
    assert r.exit_code == 0, r.output
    assert "slides on 2 Dask workers" in r.output and "dashboard:" in r.output
    assert "[3/3]" in r.output and "patches/s" in r.output
    entries = manifest_by_id(out)
    workers = set(client.scheduler_info()["workers"])
    assert set(entries) == {"synthetic", "wide", "copy"}
    for slide_id, e in entries.items():
        assert e["status"] == "complete" and not e["skipped"] and e["error"] is None
        assert e["attempts"] == 1 and e["retries"] == 0 and e["worker"] in workers and e["workers"] == [e["worker"]]
        assert e["n_tiles"] > 0 and e["timings_s"]["total_s"] > 0 and e["seconds"] > 0
        summary = json.loads((out / slide_id / "summary.json").read_text())
        ref = json.loads((reference / slide_id / "summary.json").read_text())
        assert e["model_hash"] == summary["model_hash"] == ref["model_hash"]
        assert e["config_hash"] == summary["config_hash"] == ref["config_hash"]
        assert summary["scores"] == ref["scores"] and summary["models"] == ref["models"]
        assert np.array_equal(heatmap(out, slide_id), heatmap(reference, slide_id), equal_nan=True)
        assert sorted(p.name for p in (out / slide_id).iterdir()) == sorted(p.name for p in (reference / slide_id).iterdir())
        assert json.loads((out / slide_id / "tumor.geojson").read_text()) == \
            json.loads((reference / slide_id / "tumor.geojson").read_text())
    # each worker loaded the model once, in its plugin, and kept it for its slides
    loaded = client.run(lambda dask_worker: sorted(n for n, p in dask_worker.plugins.items()
                                                   if n.startswith("wsiscan-models-") and p._loaded is not None))
    assert all(len(names) == 1 for names in loaded.values()), loaded
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["complete"] == 3 and totals["failed"] == totals["pending"] == 0 and totals["patches_per_s"] > 0
    assert not (out / ".wsiscan-attempts").exists(), "the run's attempt markers are removed at the end"


def test_rerun_skips_finished_unchanged_slides_without_work(cluster_run, slides, tiny_ckpt, client, tmp_path):
    finished, first = cluster_run
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"  # a copy (times kept): the shared run's output stays as it was for the other tests
    shutil.copytree(finished, out)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    r = run("predict", *slides, "-o", out, "--model", tiny_ckpt, "-q", "--scheduler", client.scheduler.address)
    assert r.exit_code == 0, r.output
    assert "Dask workers" not in r.output, "nothing to do: no client, no task"
    assert {p: p.stat().st_mtime_ns for p in files} == files, "a finished, unchanged slide is not touched"
    for e in manifest_by_id(out).values():
        assert e["status"] == "complete" and e["skipped"] and e["attempts"] == 0 and e["scored_this_run"] == 0

    # another threshold is another result: rerun, but the heatmap chunks are reused
    r = run("predict", slides[0], "-o", out, "--model", tiny_ckpt, "-q", "--scheduler", client.scheduler.address,
            "--threshold", "0.4")
    assert r.exit_code == 0, r.output
    e = manifest_by_id(out)["synthetic"]
    assert not e["skipped"] and e["attempts"] == 1 and e["scored_this_run"] == 0 and e["resumed_tiles"] == e["n_tiles"]


def test_corrupt_slide_fails_once_and_others_complete_from_a_csv(slides, bad_inputs, tiny_ckpt, client, tmp_path):
    listing = tmp_path / "slides.csv"
    listing.write_text(f"slide,slide_mpp\n{slides[1]},\n{bad_inputs['random']},\n{bad_inputs['no_mpp']},0.5\n")
    out = tmp_path / "out"
    r = run("predict", listing, "-o", out, "--model", tiny_ckpt, "-q", "--scheduler", client.scheduler.address)
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("wsiscan: error:")]
    assert len(errors) == 1 and "random.svs" in errors[0], r.stderr
    entries = manifest_by_id(out)
    bad = entries["random"]
    assert bad["status"] == "failed" and bad["attempts"] == 1 and bad["error_type"] == "SlideOpenError"
    assert "random.svs" in bad["error"] and not (out / "random" / "summary.json").exists()
    assert entries["wide"]["status"] == entries["no-mpp"]["status"] == "complete"
    assert entries["no-mpp"]["slide_mpp"] == 0.5
    summary = json.loads((out / "no-mpp" / "summary.json").read_text())
    assert summary["mpp"]["base_mpp"] == 0.5 and summary["config"]["slide"]["slide_mpp"] == 0.5


def test_slide_inputs_csv_globs_and_bad_lists(slides, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,slide_mpp\n{slides[0].name},0.49\n\n")
    shutil.copy(slides[0], tmp_path / slides[0].name)
    jobs = expand_slide_inputs([listing, str(Path(slides[2]).parent / "*.tif"), slides[2]])
    assert jobs[0] == SlideJob(tmp_path / slides[0].name, 0.49), "relative to the CSV's folder"
    assert [j.path.name for j in jobs[1:]] == ["copy.tif", "wide.tif"], "sorted, each file once"
    assert expand_slide_inputs([tmp_path / "none-*.svs"]) == [SlideJob(tmp_path / "none-*.svs")]

    bad = tmp_path / "bad.csv"
    bad.write_text("file,mpp\na.svs,0.5\n")
    r = run("predict", bad, "-o", tmp_path / "o", "--model", "wsiscan/tiny")
    assert r.exit_code == 1 and r.stderr.startswith("wsiscan: error: ") and "'slide' or 'path' column" in r.stderr
    assert "found columns: file, mpp" in r.stderr
    bad.write_text("slide,slide_mpp\na.svs,fine\n")
    r = run("predict", bad, "-o", tmp_path / "o", "--model", "wsiscan/tiny")
    assert r.exit_code == 1 and "line 2: slide_mpp must be a positive number" in r.stderr


def test_usage_and_connection_errors(slides, tiny_ckpt, tmp_path):
    r = run("predict", slides[0], "-o", tmp_path, "--model", tiny_ckpt, "--workers", "2", "--scheduler", "tcp://x:1")
    assert r.exit_code == 2 and "give one" in r.output
    r = run("predict", slides[0], "-o", tmp_path, "--model", tiny_ckpt, "--workers", "0")
    assert r.exit_code == 2
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        r = run("predict", slides[0], "-o", tmp_path, "--model", tiny_ckpt, "-q", "--scheduler", "tcp://127.0.0.1:9")
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in lines[0], r.stderr


def test_workers_refuse_a_checkpoint_that_differs_from_the_clients(client, tiny_ckpt):
    from wsiscan.distributed import ModelPlugin
    from wsiscan.errors import CheckpointError

    with pytest.raises(CheckpointError, match="sha256 differs"):
        client.register_plugin(ModelPlugin([str(tiny_ckpt)], ["0" * 64], device="cpu"))


@pytest.mark.slow
def test_local_cluster_from_the_workers_option(slides, reference, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    r = run("predict", slides[0], slides[1], "-o", out, "--model", tiny_ckpt, "-q", "--workers", "2")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["cluster"] == "local cpu cluster" and m["n_workers"] == 2
    for slide_id in ("synthetic", "wide"):
        assert np.array_equal(heatmap(out, slide_id), heatmap(reference, slide_id), equal_nan=True)


_KEY = re.compile(r"^wsiscan-predict-(.+)-\d{8}T\d{6}-[0-9a-f]{8}$")


@pytest.mark.slow
def test_a_killed_worker_s_slide_is_retried_elsewhere_and_resumes(synthetic_slide, tiny_ckpt, client, tmp_path):
    """SIGKILL a worker process mid-slide: the slide is retried, resumes, and every result is right."""
    from wsiscan.distributed import predict_many

    cfg_file = tmp_path / "slow.yaml"  # small chunks and stride 32: many chunk files, slides of a few seconds
    cfg_file.write_text("tile:\n  stride_px: 32\n  supertile_px: 192\npredict:\n  heatmap_chunk_cells: 6\n"
                        "  loader_workers: 0\n")
    models = load_models([str(tiny_ckpt)])
    cfg = resolution_config(load_config(cfg_file).replace("predict", device="cpu"), models.spec, target_mpp=None,
                            tile_size_px=None)
    ref = tmp_path / "ref"
    r = run("predict", synthetic_slide.path, "-o", ref, "--model", tiny_ckpt, "--config", cfg_file, "-q",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    paths = []
    for i in range(4):  # copies: the same expected heatmap for each
        paths.append(tmp_path / f"k{i}.tif")
        shutil.copy(synthetic_slide.path, paths[-1])
    out = tmp_path / "out"
    killed: dict[str, str] = {}
    stop = threading.Event()

    def kill_one_worker_mid_slide() -> None:
        while not stop.is_set() and not killed:
            pids = client.run(os.getpid)
            for addr, keys in client.processing().items():
                for key in keys:
                    m = _KEY.match(str(key))
                    chunks = out / (m.group(1) if m else "?") / "store.zarr" / "heatmap" / "0" / "c"
                    if m and chunks.is_dir() and sum(1 for f in chunks.rglob("*") if f.is_file()) >= 2 \
                            and not (out / m.group(1) / "summary.json").exists() and addr in pids:
                        os.kill(pids[addr], signal.SIGKILL)
                        killed.update(slide_id=m.group(1), worker=addr)
                        return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_worker_mid_slide, daemon=True)
    killer.start()
    try:
        manifest = predict_many([SlideJob(p) for p in paths], out, cfg, models, client=client, retries=2,
                                worker_device="cpu")
    finally:
        stop.set()
        killer.join(10)
    assert killed, "no worker could be killed mid-slide (the slides ran too fast)"
    entries = {e["slide_id"]: e for e in manifest["slides"]}
    victim = entries[killed["slide_id"]]
    assert victim["attempts"] == 2 and victim["retries"] == 1 and victim["workers"][0] == killed["worker"]
    assert victim["worker"] != killed["worker"], "the retry ran on another worker process"
    assert manifest["totals"]["retried"] == 1 and manifest["totals"]["complete"] == 4
    assert victim["resumed_tiles"] > 0, "the retry resumes from the heatmap chunks the dead worker wrote"
    assert victim["scored_this_run"] + victim["resumed_tiles"] == victim["n_tiles"]
    want = heatmap(ref, "synthetic")
    for slide_id, e in entries.items():
        assert e["status"] == "complete", e
        assert np.array_equal(heatmap(out, slide_id), want, equal_nan=True), slide_id
        assert (out / slide_id / "summary.json").exists()
    saved = manifest_by_id(out)
    assert saved[killed["slide_id"]]["attempts"] == 2


@pytest.mark.slow
def test_gpu_cluster_without_dask_cuda_pins_one_gpu_per_worker():
    """No GPU needed: the per-worker CUDA_VISIBLE_DEVICES of the fallback cluster reach the workers."""
    from wsiscan.distributed import LocalClusterPlan, connect, start_local_cluster

    plan = LocalClusterPlan(n_workers=2, kind="cuda", gpus=("3", "5"), worker_device="cuda", torch_threads=None)
    with start_local_cluster(plan, retries=1, dashboard_address=":0") as cluster, connect(cluster) as c:
        seen = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        failures = c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    assert sorted(seen.values()) == ["3", "5"]
    assert failures == 1


def test_a_slide_locked_by_another_run_fails_on_its_worker_naming_the_holder(slides, tiny_ckpt, client, tmp_path):
    """Workers score through predict_slide, so they take the slide lock: a live holder is named."""
    from reliability_helpers import start_lock_holder

    out = tmp_path / "out"
    holder = start_lock_holder(out, "wide", 600)
    try:
        r = run("predict", slides[1], slides[0], "-o", out, "--model", tiny_ckpt, "-q",
                "--scheduler", client.scheduler.address)
    finally:
        holder.kill()
        holder.wait()
    assert r.exit_code == 1, r.output
    entries = manifest_by_id(out)
    assert entries["wide"]["status"] == "failed" and entries["wide"]["attempts"] == 1
    assert f"pid {holder.pid} on host {socket.gethostname()}" in entries["wide"]["error"]
    assert entries["synthetic"]["status"] == "complete"
    assert not (out / "wide").exists()
