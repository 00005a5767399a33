"""Helpers of the reliability and soak tests: hashing a result folder, comparing two results,
holding a slide's lock from another process, running the CLI as a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import zarr

# counters of how a result was made (this run or an earlier one), not of the result itself
RUN_DEPENDENT = {
    "timings_s": None, "throughput": None,
    "tiles": ("scored_this_run", "resumed_tiles", "pixel_chunks_written", "pixel_chunks_resumed"),
    "store": ("pixel_chunks_decoded",),
}

HOLDER = textwrap.dedent("""
    import sys, time
    from wsiscan.slide_lock import acquire_slide_lock
    lock = acquire_slide_lock(sys.argv[1], sys.argv[2], wait_s=0)
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
    lock.release()
""")


def start_lock_holder(out: Path, slide_id: str, hold_s: float) -> subprocess.Popen:
    """Another process holding ``OUT/<slide_id>``'s lock for ``hold_s`` seconds (started and locked on return)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), slide_id, str(hold_s)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex), and every folder (-> 'dir')."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def result_figures(slide_dir: Path) -> dict:
    """summary.json without the counters of how the result was made (see RUN_DEPENDENT)."""
    summary = json.loads((slide_dir / "summary.json").read_text())
    for block, keys in RUN_DEPENDENT.items():
        if keys is None:
            summary.pop(block, None)
        else:
            for key in keys:
                summary[block].pop(key, None)
    return summary


def heatmap_levels(slide_dir: Path) -> list[np.ndarray]:
    g = zarr.open_group(str(slide_dir / "store.zarr" / "heatmap"), mode="r")
    levels, k = [], 0
    while str(k) in g:
        levels.append(g[str(k)][...])
        k += 1
    return levels


def assert_same_result(slide_dir: Path, ref_dir: Path) -> None:
    """Bit-identical heatmap (every level), summary (but for timings and run counters) and exports."""
    got, ref = heatmap_levels(slide_dir), heatmap_levels(ref_dir)
    assert len(got) == len(ref) and len(ref) > 0
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), "the heatmap differs from the uninterrupted run's"
    assert result_figures(slide_dir) == result_figures(ref_dir)
    for name in ("tumor.geojson", "overlay.png", "qc.png"):
        assert (slide_dir / name).read_bytes() == (ref_dir / name).read_bytes(), name


def assert_no_leftovers(out: Path, slide_id: str) -> None:
    """No staging folder, swap record, trash or lock left: OUT/.wsiscan is gone."""
    work = out / ".wsiscan"
    assert not work.exists(), sorted(str(p.relative_to(work)) for p in work.rglob("*"))


def wsiscan_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "wsiscan", *map(str, args)]


def one_error_line(stderr: str) -> str:
    """The single stderr line of a failed command (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsiscan: error: "), stderr
    return lines[0]


def subprocess_env() -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout first on the path."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
