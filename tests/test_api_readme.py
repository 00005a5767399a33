"""The README's Python examples (sections "Models" and "Python API") run as written, offline."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from hub_cache import fill_hf_cache, tia_pth_bytes

from wsiscan import models as M
from wsiscan.testing import write_synthetic_slide

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def python_blocks(title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", _section(title), flags=re.S)


@pytest.fixture
def readme_dir(tmp_path, monkeypatch):
    """A working folder as the examples assume: slide.tif, TIAToolbox's resnet18 in the HF cache, no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WSISCAN_HOME", str(tmp_path / "wsiscan"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TIATOOLBOX_HOME", str(tmp_path / "tia"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_synthetic_slide(tmp_path / "slide.tif")
    fill_hf_cache(tmp_path / "hf" / "hub", "TIACentre/TIAToolbox_pretrained_weights",
                  {"resnet18-pcam.pth": tia_pth_bytes(seed=5)[0]})
    return tmp_path


def test_readme_has_the_examples():
    assert len(python_blocks("Python API")) >= 4
    assert len(python_blocks("Models")) >= 1


def test_python_api_examples_run(readme_dir):
    namespace: dict = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in python_blocks("Python API"):
            exec(compile(block, "README.md (Python API)", "exec"), namespace)
    printed = out.getvalue().splitlines()
    # what the comments in the examples claim
    assert printed[0] == "(4096, 3072) 0.486 openslide-properties", printed[0]
    assert printed[1].split()[1:] == ["96", "1.0", "openslide-properties"], printed[1]
    assert sum("p(tumour) = " in line for line in printed) == 16
    assert "True" in printed and printed[-1].endswith(" True")
    result = namespace["result"]
    assert (readme_dir / "out" / "slide" / "summary.json").is_file() and result.slide_id == "slide"
    # the callable's heatmap is its darkness score, cell by cell
    dark = namespace["dark_result"].heatmap().values
    import numpy as np

    plan, patches = namespace["plan"], namespace["patches"]
    for patch, value in zip(patches, namespace["dark"], strict=True):
        assert dark[patch.rc] == pytest.approx(value, abs=1e-5)
        assert value == pytest.approx(1 - patch.image.mean() / 255, abs=1e-5)
    assert np.isfinite(dark).sum() == plan.n_tiles


def test_models_examples_run(readme_dir):
    namespace: dict = {"__name__": "readme"}
    try:
        for block in python_blocks("Models"):
            exec(compile(block, "README.md (Models)", "exec"), namespace)
        spec = M.ModelSpec(arch="mine", class_names=("a", "b", "c"))
        assert M.build_model(spec)(__import__("torch").rand(2, 3, 96, 96)).shape == (2, 3)
    finally:
        M.unregister_model("mine")
