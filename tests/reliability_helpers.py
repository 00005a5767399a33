"""Helpers of the reliability and soak tests: hashing a result folder, comparing two results,
holding a slide's lock from another process, running the CLI as a subprocess or as a child of
a launcher that has imported everything once."""

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


# The launcher: a process that has imported everything a `wsiscan` run uses and forks one child
# per command (as multiprocessing's forkserver does), so a run costs no interpreter start and no
# import.  Each child is a real process of its own (its own session, so os.killpg reaches the
# processes it starts): it runs the CLI's ``main`` as `python -m wsiscan` would, an unexpected
# exception printing its traceback, and is killed with a real SIGKILL where a test asks.
# It reads one JSON request per line; "run" forks a child running the CLI (with its stdout/stderr
# in files, optionally held at a step of the swap for the soak) and answers its pid; "wait"
# answers a child's exit status (negative: killed by that signal).
LAUNCHER = textwrap.dedent(r"""
    import json, os, sys, time, traceback
    # everything a run imports, imported once here before any fork, so that a child spends its
    # time in the run (planning, scanning, outputs) and not in imports (torchvision alone pulls in
    # torch._dynamo: about 4 s of a 6 s run)
    import torch, torchvision  # noqa: F401
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.patches, matplotlib.pyplot  # noqa: F401
    import openslide, shapely, shapely.geometry  # noqa: F401
    import wsiscan.cli, wsiscan.cli.predict, wsiscan.heatmap, wsiscan.inference, wsiscan.manifest  # noqa: F401
    import wsiscan.predict, wsiscan.runner, wsiscan.scan, wsiscan.staging  # noqa: F401

    def hold_swap_at(step, marker):
        staging = wsiscan.staging
        real_rename, real_remove = os.rename, staging._remove_tree
        calls = []

        def hold():
            open(marker, "w").close()
            time.sleep(3600)

        def rename(src, dst):
            if not (os.path.isdir(src) and ".wsiscan" in str(src) + str(dst)):
                return real_rename(src, dst)  # a file written atomically, not a step of the swap
            calls.append(src)
            if (step, len(calls)) in (("journal_written", 1), ("old_in_trash", 2)):
                hold()
            real_rename(src, dst)
            if (step, len(calls)) == ("new_in_place", 2):
                hold()

        def remove(path):
            if step == "trash_left" and "trash" in str(path):
                hold()
            real_remove(path)

        os.rename = rename
        staging._remove_tree = remove

    def hold_outputs_at_start(marker):
        # hold the run where its outputs begin (every heatmap chunk written, the pyramid not yet)
        real_build = wsiscan.predict.build_pyramid

        def build_pyramid(*args, **kwargs):
            open(marker, "w").close()
            time.sleep(3600)
            return real_build(*args, **kwargs)

        wsiscan.predict.build_pyramid = build_pyramid

    for line in sys.stdin:
        req = json.loads(line)
        if "wait" in req:
            _, status = os.waitpid(req["wait"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            print(json.dumps({"code": code}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()
                for fd, name in ((1, "stdout"), (2, "stderr")):
                    f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(f, fd)
                    os.close(f)
                if req.get("swap_step") == "outputs_start":
                    hold_outputs_at_start(req["marker"])
                elif req.get("swap_step"):
                    hold_swap_at(req["swap_step"], req["marker"])
                try:
                    wsiscan.cli.main.main(args=req["args"], prog_name="wsiscan", standalone_mode=True)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
""")


class Launcher:
    """The launcher process (see LAUNCHER): ``start`` a `wsiscan` command, ``wait`` for its exit
    status; each command's stdout and stderr land in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=subprocess_env())
        self.n = 0

    def _ask(self, req: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, args: list, swap_step: str | None = None) -> tuple[int, Path]:
        """Fork a child running ``wsiscan ARGS``: its pid, and the stem of its ``.out`` / ``.err`` files."""
        self.n += 1
        log = self.folder / f"run{self.n}"
        req = {"args": [str(a) for a in args], "stdout": f"{log}.out", "stderr": f"{log}.err", "swap_step": swap_step,
               "marker": f"{log}.held"}
        return self._ask(req)["pid"], log

    def wait(self, pid: int) -> int:
        """The child's exit status (negative: killed by that signal), once it has ended."""
        return self._ask({"wait": pid})["code"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def is_running(pid: int) -> bool:
    """Whether the launcher's child ``pid`` still runs (one that exited is a zombie until the
    launcher reaps it: read its state)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def heatmap_chunks(slide_dir: Path) -> int:
    """Heatmap chunks written so far to the level 0 of ``slide_dir``'s store (a run's progress)."""
    c = slide_dir / "store.zarr" / "heatmap" / "0" / "c"
    return sum(1 for f in c.rglob("*") if f.is_file()) if c.is_dir() else 0
