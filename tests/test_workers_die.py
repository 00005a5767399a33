"""Spawned decode workers and multiprocessing's resource tracker end when the parent is killed -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from wsiscan.testing import write_tiled_tiff
from wsiscan.workers import die_with_parent

REPO = Path(__file__).resolve().parents[1]

# `wsiscan tile` with process workers on a small slide: the chunk count from which tile
# decodes in spawned processes is lowered to 1 for this run only
_TILE_WITH_PROCESSES = (
    "import sys, wsiscan.decode as d; d.PROCESS_MIN_CHUNKS = 1; "
    "from wsiscan.cli import main; main(sys.argv[1:])"
)


def test_die_with_parent_outside_a_worker_does_nothing():
    die_with_parent()  # the test process has no multiprocessing parent: no signal armed, no thread
    assert os.getpid() > 0


def _holders(proc: psutil.Process, path: Path) -> list[psutil.Process]:
    out = []
    for child in proc.children(recursive=True):
        try:
            if any(f.path == str(path) for f in child.open_files()):
                out.append(child)
        except psutil.Error:
            continue
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc to see the workers' open files")
def test_workers_and_resource_tracker_die_with_a_killed_parent(tmp_path):
    slide = write_tiled_tiff(tmp_path / "many-chunks.tif", dimensions_px=(6144, 6144), mpp=0.972,
                             downsamples=(1, 4), boxes=((0, 0, 6144, 6144),))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", _TILE_WITH_PROCESSES, "tile", str(slide), "-o",
                               str(tmp_path / "out"), "--workers", "2", "-q"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = psutil.Process(parent.pid)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and parent.poll() is None:
            # a worker past its initialiser holds the slide open; the other may still be starting
            # (spawn) on a loaded machine, and is among the children all the same
            if _holders(proc, slide):
                children = proc.children(recursive=True)
                break
            time.sleep(0.05)
        if not children:
            pytest.fail(f"no decode workers seen (exit {parent.poll()}): {parent.stderr.read().decode()[-2000:]}")
        assert any("resource_tracker" in " ".join(c.cmdline()) for c in children), [c.cmdline() for c in children]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running after kill -9 of the parent: {[c.cmdline() for c in alive]}"
    finally:
        for p in [proc, *children]:
            try:
                p.kill()
            except psutil.Error:
                pass
        parent.wait(10)
