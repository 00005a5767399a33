"""Soak: 20 kill -9 points chosen at random during `predict --model wsiscan/tiny`, each followed by
a rerun that must give a result bit-identical to an uninterrupted run.

The slide has many pixel and heatmap chunks (supertiles of 192 px, heatmap chunks of 4 x 4 cells
at stride 32).  Each kill point is a kind of run and a stage, drawn with a seeded generator
(the seed is printed; set WSISCAN_SOAK_SEED to replay one):

* kinds: a first run into an empty OUT (built in place); ``--overwrite`` over a finished result
  (built in a fresh staging folder); a plain rerun over a finished result (a staging copy);
* stages: planning (a random instant before the store appears), scanning (a random instant after
  the first heatmap chunk), outputs (after the last heatmap chunk: pyramid, overlay, GeoJSON,
  summary) and the swap itself (at each of its steps: the run is held there and killed).

After each kill the previous finished result must still be byte-identical unless the swap had
already put the new one in place; the rerun (the same command, or for an ``--overwrite`` the same
command without it, which resumes the staging folder) must exit 0 and leave a result equal to the
uninterrupted run's: every heatmap level bit for bit, summary.json but for timings and the
counters of resumed work, tumor.geojson, overlay.png and qc.png byte for byte.

Runs are started by a launcher process that has imported wsiscan, torch and every library a run
uses once and forks one child per command (as multiprocessing's forkserver does), so each run costs
no interpreter start and no import; the child runs the CLI's ``main`` and is killed with SIGKILL.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    Launcher,
    assert_no_leftovers,
    assert_same_result,
    heatmap_chunks,
    is_running,
    tree_hashes,
)

from wsiscan.staging import staging_dir
from wsiscan.testing import write_synthetic_slide

N_KILLS = 20
CONFIG = "tile:\n  supertile_px: 192\n  stride_px: 32\npredict:\n  heatmap_chunk_cells: 4\n  loader_workers: 0\n"
SWAP_STEPS = ("journal_written", "old_in_trash", "new_in_place", "trash_left")


def _poll_until(pid: int, ready, timeout_s: float = 300) -> float | None:
    """Seconds until ``ready()`` while ``pid`` runs; None when it ended first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if ready():
            return time.monotonic() - t0
        if not is_running(pid):
            return None
        time.sleep(0.01)
    raise AssertionError("the run neither reached the stage nor ended")


def _stage_times(pid: int, slide_dir: Path) -> tuple[float, float | None, list[float]]:
    """When the store appeared, when summary.json appeared, and when each heatmap chunk was written
    (seconds from now), watching a running first run."""
    t0 = time.monotonic()
    t_store, times = None, []
    while True:
        now = time.monotonic() - t0
        if t_store is None and (slide_dir / "store.zarr").exists():
            t_store = now
        n = heatmap_chunks(slide_dir)
        times.extend([now] * (n - len(times)))
        if (slide_dir / "summary.json").exists():
            assert t_store is not None
            return t_store, now, times
        if not is_running(pid):
            return t_store or now, None, times
        time.sleep(0.01)


@pytest.mark.slow
def test_twenty_kill_9_points_each_rerun_bit_identical(tmp_path):
    seed = int(os.environ.get("WSISCAN_SOAK_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"soak seed {seed} (WSISCAN_SOAK_SEED={seed} replays it)")
    rng = random.Random(seed)
    slide = write_synthetic_slide(tmp_path / "s.tif", dimensions_px=(3072, 2048), mpp=0.486).path
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    logs = tmp_path / "logs"
    logs.mkdir()
    launcher = Launcher(logs)
    try:
        def args(out: Path, *extra: str) -> list[str]:
            return ["predict", str(slide), "-o", str(out), "--config", str(config), "--model", "wsiscan/tiny",
                    "--device", "cpu", "-q", *extra]

        # the uninterrupted run, timed stage by stage
        ref_out = tmp_path / "ref"
        pid, log = launcher.start(args(ref_out))
        ref_dir = ref_out / "s"
        t_store, t_summary, times = _stage_times(pid, ref_dir)
        assert launcher.wait(pid) == 0, Path(f"{log}.err").read_text()
        n_chunks = heatmap_chunks(ref_dir)
        assert t_summary is not None and len(times) == n_chunks, "every heatmap chunk was seen as it was written"
        t_scan, t_outputs = times[-1] - times[0], t_summary - times[-1]
        print(f"uninterrupted: store after {t_store:.2f} s, scan {t_scan:.2f} s ({n_chunks} heatmap chunks), "
              f"outputs {t_outputs:.2f} s")
        assert n_chunks >= 20, "the slide should have many heatmap chunks"

        stages = {"first": ("plan", "scan", "outputs"), "overwrite": ("plan", "scan", "outputs", *SWAP_STEPS),
                  "plain": ("plan", "outputs", *SWAP_STEPS)}
        points = [(kind, stage) for kind, ss in stages.items() for stage in ss]
        points = (points * 2)[:N_KILLS]
        rng.shuffle(points)
        out = tmp_path / "out"
        final, staged = out / "s", staging_dir(out, "s")
        kills = []
        after_swap = 0
        for i, (kind, stage) in enumerate(points):
            if kind == "first":
                shutil.rmtree(out, ignore_errors=True)
            elif not (final / "summary.json").exists():
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(ref_dir, final)
            before = tree_hashes(final) if final.exists() else None
            run_args = args(out, "--overwrite") if kind == "overwrite" else args(out)
            work = final if kind == "first" else staged
            swap = stage if stage in SWAP_STEPS else None
            delay = 0.0
            # a kill point that came after the end is drawn again, earlier; an outputs stage too short for
            # the poll to catch (a loaded machine) is killed, last, where the run is held as its outputs begin
            for shrink in (1.0, 0.25, 0.05, 0.0, None):
                if shrink is None and stage != "outputs":
                    continue
                hold = "outputs_start" if shrink is None else swap
                pid, log = launcher.start(run_args, swap_step=hold)
                if hold:
                    reached = _poll_until(pid, lambda log=log: Path(f"{log}.held").exists())
                elif stage == "plan":
                    delay = rng.uniform(0.0, t_store) * shrink
                    reached = 0.0
                elif stage == "scan":
                    delay = rng.uniform(0.0, 0.9 * t_scan) * shrink
                    reached = _poll_until(pid, lambda work=work: heatmap_chunks(work) >= 1)
                else:
                    delay = rng.uniform(0.0, 0.9 * t_outputs) * shrink
                    reached = _poll_until(pid, lambda work=work: heatmap_chunks(work) >= n_chunks
                                          and not (work / "summary.json").exists())
                if reached is not None and not hold:
                    time.sleep(delay)
                alive = is_running(pid)
                if alive:
                    os.kill(pid, signal.SIGKILL)
                code = launcher.wait(pid)
                if alive and code == -signal.SIGKILL:
                    break
                assert code == 0, Path(f"{log}.err").read_text()
            else:
                raise AssertionError(f"kill point {i} ({kind}, {stage}) came after the end of the run each time")
            kills.append((kind, stage, round(delay, 3)))
            # after the kill: the old result untouched unless the swap had put the new one in place
            if before is not None:
                if stage == "old_in_trash":
                    assert not final.exists()
                elif tree_hashes(final) != before:
                    # changed only by the swap: a kill after it (held there, or late, while the process
                    # exits) finds the new result complete
                    assert stage != "journal_written", f"kill point {i} ({kind}, {stage}) changed the old result"
                    assert_same_result(final, ref_dir)
                    after_swap += 1
            rerun = run_args if kind != "overwrite" or rng.random() < 0.5 else args(out)
            pid, log = launcher.start(rerun)
            assert launcher.wait(pid) == 0, Path(f"{log}.err").read_text()
            assert_same_result(final, ref_dir)
            assert_no_leftovers(out, "s")
        print("kill points (kind, stage, delay s):", kills, f"({after_swap} found the new result swapped in)")
        assert len(kills) == N_KILLS and {s for _, s, _ in kills} == {s for ss in stages.values() for s in ss}
    finally:
        launcher.close()
