"""Helpers shared by the CLI tests: run a command in-process, check a one-line error, make a result."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from wsiscan.cli import main


def run(*args):
    """Invoke ``wsiscan ARGS...`` in-process (stdout and stderr kept apart)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    """Exit code 1, no traceback, exactly one stderr line starting 'wsiscan: error: ' with each needle."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsiscan: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def make_result(tmp: Path, slide, *, keep_pixels: bool = True) -> Path:
    """OUT folder of `wsiscan predict` on ``slide`` with the tiny deterministic model (saved in ``tmp``)."""
    from wsiscan.models import ModelSpec, build_model, save_checkpoint

    spec = ModelSpec(arch="tiny")
    ckpt = tmp / "tiny.pt"
    save_checkpoint(ckpt, build_model(spec), spec)
    out = tmp / "out"
    # --keep-pixels: the viewer's store copy (used when the slide file is gone) exists only when kept
    res = run("predict", slide, "-o", out, "--model", ckpt, "-q", "--keep-pixels" if keep_pixels else "--no-keep-pixels")
    assert res.exit_code == 0, res.output
    return out
