"""Shared fixtures: synthetic slides (made with tifffile), the real data folder, markers."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsiscan.testing import write_synthetic_slide, write_tiled_tiff

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSISCAN_SHARED_DATA", REPO.parent / "shared" / "data"))
SLIDES = SHARED_DATA / "slides"


# `make test` runs the suite on pytest-xdist workers with `--dist loadfile`: each test file on one
# worker, so a module-scoped fixture is built once.  These files also share one worker: the napari
# tests that worker's Xvfb display and QApplication, the serve and browser tests the results
# test_serve_fixtures.make_results builds once per process.
SHARED_WORKER_FILES = {"test_napari", "test_explain_napari", "test_serve", "test_serve_browser"}
# Work units handed out first, longest first, so that no long file starts last and runs alone
# at the end (xdist would otherwise order them by their number of tests).
LONG_UNITS_FIRST = ("test_soak", "gui-and-serve", "test_train", "test_cli_errors_13", "test_reliability",
                    "test_distributed", "test_bench", "test_reliability_swap", "test_integrity", "test_explain",
                    "test_predict")


def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadfile``: one work unit per test file, the SHARED_WORKER_FILES one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "gui-and-serve" if Path(path).stem in SHARED_WORKER_FILES else path

        def _assign_work_unit(self, node):
            for name in reversed(LONG_UNITS_FIRST):
                for scope in [s for s in self.workqueue if Path(s).stem == name]:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    missing_data = not SLIDES.is_dir()
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    for item in items:
        if "realdata" in item.keywords and missing_data:
            item.add_marker(pytest.mark.skip(reason=f"real data folder {SHARED_DATA} is absent"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    if not SLIDES.is_dir():
        pytest.skip(f"real data folder {SLIDES} is absent")
    return SLIDES


@pytest.fixture
def offline_model_homes(tmp_path, monkeypatch):
    """Own wsiscan, Hugging Face and TIAToolbox homes for one test, and no network."""
    monkeypatch.setenv("WSISCAN_HOME", str(tmp_path / "wsiscan"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("TIATOOLBOX_HOME", str(tmp_path / "tia"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint of the deterministic tiny model (``tiny_expected_proba`` predicts its output)."""
    from wsiscan.models import ModelSpec, build_model, save_checkpoint

    p = tmp_path_factory.mktemp("models") / "tiny.pt"
    spec = ModelSpec(arch="tiny", name="tiny", input_mpp=0.972, patch_size_px=96)
    save_checkpoint(p, build_model(spec), spec)
    return p


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory):
    """4096 x 3072 px at 0.486 um/px (2x finer than PCam's 0.972), two tissue boxes, 2 levels."""
    path = tmp_path_factory.mktemp("slides") / "synthetic.tif"
    return write_synthetic_slide(path)


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    """Negative fixtures: each a file that must be refused with a clear message."""
    d = tmp_path_factory.mktemp("bad")
    out = {}
    out["missing"] = d / "does-not-exist.svs"
    rnd = d / "random.svs"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    out["random"] = rnd
    import tifffile

    stripped = d / "stripped.tif"
    tifffile.imwrite(stripped, np.full((600, 800, 3), 200, np.uint8), photometric="rgb")
    out["stripped"] = stripped
    from PIL import Image

    png = d / "image.png"
    Image.fromarray(np.full((300, 400, 3), 180, np.uint8)).save(png)
    out["png"] = png
    box = ((256, 256, 1800, 1500),)
    out["no_mpp"] = write_tiled_tiff(d / "no-mpp.tif", dimensions_px=(2048, 2048), mpp=None, boxes=box)
    out["dpi72"] = write_tiled_tiff(d / "dpi72.tif", dimensions_px=(2048, 2048), mpp=None, resolution_dpi=72, boxes=box)
    out["coarse"] = write_tiled_tiff(d / "coarse.tif", dimensions_px=(1024, 1024), mpp=4.0, downsamples=(1,), boxes=((100, 100, 900, 900),))
    out["white"] = write_tiled_tiff(d / "white.tif", dimensions_px=(2048, 2048), mpp=0.5, white=True)
    return out


# -- the napari tests' display (test_napari.py, test_explain_napari.py) -----------------------------
def _die_with_parent() -> None:
    """In the child: get SIGTERM when pytest dies, even by a crash, so no Xvfb is left behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _start_xvfb() -> subprocess.Popen:
    """Xvfb on a free display number (it writes the number to -displayfd); sets DISPLAY."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    os.close(write_fd)
    number = b""
    try:
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], 15)
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                proc.kill()
                pytest.skip("Xvfb did not start (no display number within 15 s)")
            number += chunk
    finally:
        os.close(read_fd)
    os.environ["DISPLAY"] = f":{number.decode().strip()}"
    return proc


def _qt_can_start() -> str:
    """Why Qt cannot open a window on $DISPLAY ("" if it can), probed in a child process:
    a missing xcb library or an unreachable display makes Qt abort the whole process."""
    code = "from qtpy.QtWidgets import QApplication, QWidget; app = QApplication([]); QWidget().show(); app.processEvents()"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "Qt did not start within 120 s"
    if proc.returncode == 0:
        return ""
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    return f"Qt cannot open a window on {os.environ.get('DISPLAY')} (exit {proc.returncode}: {last})"


@pytest.fixture(scope="session")
def display():
    """One display for the whole session: napari's QApplication outlives a test module, and Qt
    exits the process when the X server it is connected to goes away."""
    pytest.importorskip("napari", reason='napari is not installed (pip install -e ".[viewer]")')
    pytest.importorskip("qtpy", reason='no Qt binding (pip install -e ".[viewer]")')
    # Mesa's software OpenGL (what Xvfb gives) and triton each carry an LLVM: triton loaded
    # after a GL context segfaults (torchvision imports it via torch._dynamo), loaded before it
    # is fine.  Load it now, as a session that ran the model tests first already has.
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
    proc = None
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        if shutil.which("Xvfb") is None:
            pytest.skip("no DISPLAY and no Xvfb to make one (apt-get install xvfb; .ci/run does)")
        proc = _start_xvfb()
    try:
        why = _qt_can_start()
        if why:
            pytest.skip(why)
        yield os.environ.get("DISPLAY")
    finally:
        if proc is not None:
            os.environ.pop("DISPLAY", None)
            proc.terminate()
            proc.wait(timeout=10)
