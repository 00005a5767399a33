"""Shared fixtures: synthetic slides (made with tifffile), the real data folder, markers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from wsiscan.testing import write_synthetic_slide, write_tiled_tiff

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSISCAN_SHARED_DATA", REPO.parent / "shared" / "data"))
SLIDES = SHARED_DATA / "slides"


def pytest_collection_modifyitems(config, items):
    missing_data = not SLIDES.is_dir()
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
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
