"""The slide-folder lifecycle through the CLI: one writer per slide, replace never destroy.

Every case runs `wsiscan predict --model wsiscan/tiny` (or `heatmap`) into an OUT that already
holds another slide's finished result ("keep"), and checks that every file under keep's folder
is byte-identical afterwards.  A failing command must exit 1 with exactly one stderr line and
no traceback.  The cases are those of issue 13 that concern the slide folder: concurrent runs
on one slide at different strides, a run held off by a live lock (and one that waits for it),
another host's lock, kill -9 during a first run and during an --overwrite, `--overwrite --tta`
into a folder with read-only parts, and `heatmap --threshold` failing midway.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run
from reliability_helpers import (
    Launcher,
    assert_no_leftovers,
    assert_same_result,
    heatmap_chunks,
    is_running,
    one_error_line,
    start_lock_holder,
    subprocess_env,
    tree_hashes,
    wsiscan_cmd,
)

from wsiscan.slide_lock import WAIT_ENV, lock_path
from wsiscan.staging import staging_dir
from wsiscan.testing import write_synthetic_slide

# many heatmap chunks, so a kill lands between two of them
CONFIG = "tile:\n  supertile_px: 192\npredict:\n  heatmap_chunk_cells: 6\n  loader_workers: 0\n"
MODEL = ("--model", "wsiscan/tiny", "--device", "cpu", "-q")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The slides, the config, reference results at stride 96 and 32, and an OUT holding keep's result."""
    root = tmp_path_factory.mktemp("reliability")
    slide = write_synthetic_slide(root / "s.tif").path
    keep = write_synthetic_slide(root / "keep.tif", boxes=((500, 400, 3000, 2500),)).path
    config = root / "c.yaml"
    config.write_text(CONFIG)
    refs = {}
    for stride in (96, 32):
        r = run("predict", slide, "-o", root / f"ref{stride}", "--config", config, "--stride-px", stride, *MODEL)
        assert r.exit_code == 0, r.output
        refs[stride] = root / f"ref{stride}" / "s"
    template = root / "template"
    assert run("predict", keep, "-o", template, "--config", config, *MODEL).exit_code == 0
    return {"slide": slide, "config": config, "refs": refs, "template": template}


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    """The commands that must be real processes (run together, or killed with SIGKILL) are children
    of one launcher that has imported torch and wsiscan once (reliability_helpers.LAUNCHER)."""
    launcher = Launcher(tmp_path_factory.mktemp("launched"))
    yield launcher
    launcher.close()


def seeded_out(env: dict, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh OUT holding keep's finished result, and the hashes of every file of it."""
    out = tmp_path / "out"
    shutil.copytree(env["template"], out)
    return out, tree_hashes(out / "keep")


def predict_args(env: dict, out: Path, *extra: object) -> list[object]:
    return ["predict", env["slide"], "-o", out, "--config", env["config"], *MODEL, *extra]


def test_two_runs_at_two_strides_on_one_slide(env, launcher, tmp_path):
    """Started together into one OUT: one finishes, the other is refused in one line; the result
    is exactly the winner's (its summary and heatmap agree with an uninterrupted run at its stride)."""
    out, keep = seeded_out(env, tmp_path)
    started = {stride: launcher.start(predict_args(env, out, "--stride-px", stride)) for stride in (32, 96)}
    done = {stride: (launcher.wait(pid), Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text())
            for stride, (pid, log) in started.items()}
    assert sorted(code for code, _, _ in done.values()) == [0, 1], done
    winner = next(stride for stride, (code, _, _) in done.items() if code == 0)
    loser_line = one_error_line(done[({32, 96} - {winner}).pop()][2])
    # refused by the lock while the winner ran, or by the finished result it left
    assert f"on host {socket.gethostname()}" in loser_line or "another model or settings" in loser_line, loser_line
    summary = json.loads((out / "s" / "summary.json").read_text())
    assert summary["tiles"]["stride_px"] == winner
    assert_same_result(out / "s", env["refs"][winner])
    assert_no_leftovers(out, "s")
    assert tree_hashes(out / "keep") == keep


def test_a_live_run_is_named_and_a_waiting_run_follows_it(env, tmp_path, monkeypatch):
    monkeypatch.setenv(WAIT_ENV, "0")  # --wait-lock sets it for the rest of the process
    out, keep = seeded_out(env, tmp_path)
    holder = start_lock_holder(out, "s", 4.0)
    try:
        r = run(*predict_args(env, out))
        assert_one_line_error(r, f"pid {holder.pid} on host {socket.gethostname()}", "--wait-lock")
        assert not (out / "s").exists()
        r = run(*predict_args(env, out, "--wait-lock", 120))
        assert r.exit_code == 0, r.output
        assert holder.poll() is not None, "the run waited until the holder let go"
    finally:
        holder.wait(60)
    assert_same_result(out / "s", env["refs"][96])
    assert_no_leftovers(out, "s")
    assert tree_hashes(out / "keep") == keep


def test_wait_lock_is_checked_as_a_usage_error(env, tmp_path):
    r = run(*predict_args(env, tmp_path / "out", "--wait-lock", -1))
    assert r.exit_code == 2 and "--wait-lock" in r.output


def test_another_host_s_lock_is_refused_and_cleared_by_deleting_it(env, tmp_path):
    out, keep = seeded_out(env, tmp_path)
    path = lock_path(out, "s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "gpu-node-3", "pid": 777, "process_start": None,
                                "command": "wsiscan predict s.svs", "started_at": time.time()}))
    r = run(*predict_args(env, out))
    assert_one_line_error(r, "pid 777 on host gpu-node-3", f"delete {path}")
    path.unlink()
    assert run(*predict_args(env, out)).exit_code == 0
    assert_same_result(out / "s", env["refs"][96])
    assert tree_hashes(out / "keep") == keep


def _kill_when(launcher: Launcher, pid: int, ready, what: str, timeout_s: float = 180) -> None:
    """SIGKILL the launched run ``pid`` (and every process of its session) once ``ready()``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and is_running(pid) and not ready():
        time.sleep(0.005)
    assert is_running(pid), f"the run ended before {what}"
    os.killpg(pid, signal.SIGKILL)
    assert launcher.wait(pid) == -signal.SIGKILL



def test_kill_9_during_a_first_run_then_a_rerun_takes_over_the_lock_and_finishes(env, launcher, tmp_path):
    out, keep = seeded_out(env, tmp_path)
    pid, _ = launcher.start(predict_args(env, out, "--stride-px", 32))
    _kill_when(launcher, pid, lambda: heatmap_chunks(out / "s") >= 3, "3 heatmap chunks were written")
    assert not (out / "s" / "summary.json").exists()
    r = run(*predict_args(env, out, "--stride-px", 32))
    assert r.exit_code == 0, r.output
    assert f"taking over the lock left by pid {pid} on host {socket.gethostname()}" in r.stderr
    assert json.loads((out / "s" / "summary.json").read_text())["tiles"]["resumed_tiles"] > 0
    assert_same_result(out / "s", env["refs"][32])
    assert_no_leftovers(out, "s")
    assert tree_hashes(out / "keep") == keep


@pytest.mark.parametrize("rerun", ["same command", "without --overwrite"])
def test_kill_9_during_an_overwrite_leaves_the_finished_result_byte_identical(env, launcher, tmp_path, rerun):
    out, keep = seeded_out(env, tmp_path)
    shutil.copytree(env["refs"][96], out / "s")
    before = tree_hashes(out / "s")
    args = predict_args(env, out, "--stride-px", 32, "--overwrite")
    pid, _ = launcher.start(args)
    _kill_when(launcher, pid, lambda: heatmap_chunks(staging_dir(out, "s")) >= 3, "3 heatmap chunks were written")
    assert tree_hashes(out / "s") == before, "the finished result changed before its replacement was complete"
    r = run(*(args if rerun == "same command" else args[:-1]))
    assert r.exit_code == 0, r.output
    resumed = json.loads((out / "s" / "summary.json").read_text())["tiles"]["resumed_tiles"]
    assert (resumed > 0) == (rerun == "without --overwrite"), "--overwrite starts afresh; a plain rerun resumes"
    assert_same_result(out / "s", env["refs"][32])
    assert_no_leftovers(out, "s")
    assert tree_hashes(out / "keep") == keep


def test_overwrite_rebuilds_damaged_pixels_from_the_slide(env, tmp_path):
    """A result whose store has a damaged chunk is rebuilt by --overwrite, reading nothing of it."""
    out, keep = seeded_out(env, tmp_path)
    shutil.copytree(env["refs"][96], out / "s")
    store = out / "s" / "store.zarr"
    chunks = [f for f in store.rglob("*") if f.is_file() and "c" in f.relative_to(store).parts]
    assert chunks
    for chunk in chunks:  # every chunk of every array garbage
        chunk.write_bytes(os.urandom(chunk.stat().st_size))
    r = run(*predict_args(env, out, "--overwrite"))
    assert r.exit_code == 0, r.output
    assert_same_result(out / "s", env["refs"][96])
    assert tree_hashes(out / "keep") == keep


# -- as a user that is not root: permissions only bind such a user -------------------------------
NOBODY = 65534


def _as_nobody_or_skip(folder: Path) -> list[str]:
    """The command prefix that runs as user nobody, with ``folder`` made theirs; skip where impossible."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return []
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot stop root")
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    for p in [folder, *folder.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    probe = subprocess.run([*prefix, *wsiscan_cmd("--version")], capture_output=True, text=True,
                           env=subprocess_env(), cwd=folder)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run wsiscan here: {probe.stderr.strip()[-200:]}")
    return prefix


def _nobody_run(prefix: list[str], folder: Path, *args: object) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "HOME": str(folder), "WSISCAN_HOME": str(folder / "home")}
    return subprocess.run([*prefix, *wsiscan_cmd(*args)], capture_output=True, text=True, env=env, cwd=folder)


@pytest.fixture
def nobody_folder():
    """A folder another user can reach (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="wsiscan-nobody-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_overwrite_tta_into_a_folder_with_read_only_parts(env, nobody_folder):
    """A read-only heatmap group no longer stops --overwrite --tta after deleting summary.json: the
    new result is built beside the old one and swapped in.  A read-only slide folder (which cannot be
    moved aside) is refused in one line before any work, and the old result stays byte-identical."""
    work = nobody_folder
    out, keep = seeded_out(env, work)
    shutil.copytree(env["refs"][96], out / "s")
    shutil.copy(env["slide"], work / "s.tif")
    shutil.copy(env["config"], work / "c.yaml")
    prefix = _as_nobody_or_skip(work)
    args = ["predict", work / "s.tif", "-o", out, "--config", work / "c.yaml", *MODEL, "--overwrite", "--tta"]

    (out / "s").chmod(0o555)
    before = tree_hashes(out / "s")
    r = _nobody_run(prefix, work, *args)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr)
    assert f"{out / 's'}: permission denied: the slide folder is not writable" in line, line
    assert not (out / ".wsiscan" / "partial" / "s").exists()  # refused before anything was built
    assert tree_hashes(out / "s") == before

    (out / "s").chmod(0o755)
    (out / "s" / "store.zarr" / "heatmap").chmod(0o555)
    r = _nobody_run(prefix, work, *args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "s" / "summary.json").read_text())
    assert summary["config"]["predict"]["tta"] is True
    assert_no_leftovers(out, "s")
    assert tree_hashes(out / "keep") == keep


def test_heatmap_threshold_failing_midway_keeps_the_summary(env, tmp_path):
    out, keep = seeded_out(env, tmp_path)
    shutil.copytree(env["refs"][96], out / "s")
    summary = (out / "s" / "summary.json").read_bytes()
    (out / "s" / "overlay.png").unlink()
    (out / "s" / "overlay.png").mkdir()  # the overlay cannot be replaced: the command fails after the GeoJSON
    r = subprocess.run(wsiscan_cmd("heatmap", out / "s", "--threshold", "0.3"), capture_output=True, text=True,
                       env=subprocess_env())
    assert r.returncode != 0
    assert json.loads((out / "s" / "tumor.geojson").read_text())["properties"]["threshold"] == 0.3, \
        "the failure came midway, after the GeoJSON"
    assert (out / "s" / "summary.json").read_bytes() == summary
    assert_no_leftovers(out, "s")
    assert tree_hashes(out / "keep") == keep


# -- failures in the middle of a rebuild: the finished result stays byte-identical ----------------
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own, so that a run can fill it up; skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a full disk here: {r.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_midway_leaves_the_finished_result_byte_identical(env, small_disk):
    out, keep = seeded_out(env, small_disk)
    shutil.copytree(env["refs"][96], out / "s")
    before = tree_hashes(out / "s")
    used = shutil.disk_usage(small_disk).used
    subprocess.run(["mount", "-o", f"remount,size={used + (400 << 10)}", str(small_disk)], check=True)
    args = predict_args(env, out, "--stride-px", 32, "--overwrite")
    r = subprocess.run(wsiscan_cmd(*args), capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 1, r.stderr
    assert tree_hashes(out / "s") == before, "the full disk cost the finished result"
    assert tree_hashes(out / "keep") == keep
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert_same_result(out / "s", env["refs"][32])
    assert_no_leftovers(out, "s")
    assert "Traceback" not in r.stderr, r.stderr
    one_error_line(r.stderr)


def test_a_decode_error_midway_leaves_the_finished_result_byte_identical(env, tmp_path):
    out, keep = seeded_out(env, tmp_path)
    shutil.copytree(env["refs"][96], out / "s")
    before = tree_hashes(out / "s")
    damaged = tmp_path / "damaged" / "s.tif"
    damaged.parent.mkdir()
    data = bytearray(env["slide"].read_bytes())
    for at in range(len(data) // 5, len(data) // 2, 997):  # level 0's tiles, not the header or level 1
        data[at] ^= 0xFF
    damaged.write_bytes(bytes(data))
    r = subprocess.run(wsiscan_cmd("predict", damaged, "-o", out, "--config", env["config"], *MODEL, "--overwrite"),
                       capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 1, r.stderr
    assert staging_dir(out, "s").is_dir(), "the error came while the new result was being built"
    assert tree_hashes(out / "s") == before, "the decode error cost the finished result"
    assert tree_hashes(out / "keep") == keep
    assert "Traceback" not in r.stderr, r.stderr
    one_error_line(r.stderr)
