"""The slide lock and the staging swap, piece by piece (wsiscan.slide_lock, wsiscan.staging).

The whole commands are run in tests/test_reliability.py and tests/test_soak.py; here each
guarantee is pinned down on its own: a live holder refuses or makes a run wait, a killed
holder's lock is taken over (and says so), another host's lock is refused with the way to
clear it, and a swap stopped at any step is finished by the next run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from reliability_helpers import start_lock_holder

from wsiscan import staging
from wsiscan.errors import OutputError, SlideLockedError, StoreExistsError
from wsiscan.slide_lock import acquire_slide_lock, lock_path
from wsiscan.staging import recover_swap, slide_build, staging_dir


def test_a_live_holder_is_named_and_a_run_can_wait_for_it(tmp_path):
    holder = start_lock_holder(tmp_path, "s", 2.0)
    try:
        with pytest.raises(SlideLockedError) as info:
            acquire_slide_lock(tmp_path, "s", wait_s=0)
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and "--wait-lock" in message
        t0 = time.monotonic()
        with acquire_slide_lock(tmp_path, "s", wait_s=30):  # the holder lets go after 2 s
            assert time.monotonic() - t0 < 25
            assert json.loads(lock_path(tmp_path, "s").read_text())["pid"] == os.getpid()
    finally:
        holder.wait(30)
    assert not (tmp_path / ".wsiscan").exists(), "a released lock leaves nothing behind"


def test_two_holders_in_one_process_exclude_each_other(tmp_path):
    with acquire_slide_lock(tmp_path, "s", wait_s=0):
        with pytest.raises(SlideLockedError, match=f"pid {os.getpid()}"):
            acquire_slide_lock(tmp_path, "s", wait_s=0)
    with acquire_slide_lock(tmp_path, "s", wait_s=0):
        pass


def test_a_killed_holder_s_lock_is_taken_over_and_said_so(tmp_path, capsys):
    holder = start_lock_holder(tmp_path, "s", 600)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads(lock_path(tmp_path, "s").read_text())["pid"] == holder.pid, "the dead holder's record stays"
    with acquire_slide_lock(tmp_path, "s", wait_s=0):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsiscan: warning: ")
    assert f"taking over the lock left by pid {holder.pid} on host {socket.gethostname()}" in lines[0]


def test_another_host_s_lock_is_refused_until_its_file_is_deleted(tmp_path):
    path = lock_path(tmp_path, "s")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "scanner-node-7", "pid": 4242, "process_start": None,
                                "command": "wsiscan predict s.svs", "started_at": time.time()}))
    with pytest.raises(SlideLockedError) as info:
        acquire_slide_lock(tmp_path, "s", wait_s=0)
    message = str(info.value)
    assert "pid 4242 on host scanner-node-7" in message and f"delete {path}" in message
    path.unlink()
    with acquire_slide_lock(tmp_path, "s", wait_s=0):
        pass


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_and_new(out: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    final, staged = out / "s", staging_dir(out, "s")
    (final / "store.zarr").mkdir(parents=True)
    (final / "summary.json").write_text("old")
    (final / "store.zarr" / "chunk").write_bytes(b"old pixels")
    (staged / "store.zarr").mkdir(parents=True)
    (staged / "summary.json").write_text("new")
    (staged / "store.zarr" / "chunk").write_bytes(b"new pixels")
    return _tree(final), _tree(staged)


class _Killed(BaseException):
    """Stands for the process dying at that instant: nothing after it runs."""


@pytest.mark.parametrize("step", ["journal", "old_to_trash", "new_to_final", "journal_removed", "trash_removed"])
def test_a_swap_stopped_at_any_step_is_finished_by_the_next_run(tmp_path, monkeypatch, step):
    old, new = _old_and_new(tmp_path)
    renames = []
    real_rename, real_remove, real_unlink = os.rename, staging._remove_tree, Path.unlink

    def rename(src, dst):
        renames.append(src)
        if step == ("old_to_trash", "new_to_final")[len(renames) - 1]:
            raise _Killed
        real_rename(src, dst)

    def unlink(self, *a, **k):
        if step == "journal_removed" and self.name == "s.swap":
            raise _Killed
        real_unlink(self, *a, **k)

    def remove(path):
        if step == "trash_removed":
            raise _Killed
        real_remove(path)

    def journal(data, path):
        if step == "journal":
            raise _Killed
        Path(path).write_text(json.dumps(data))

    monkeypatch.setattr(staging.os, "rename", rename)
    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(staging, "_remove_tree", remove)
    monkeypatch.setattr(staging, "write_json_atomic", journal)
    lock = acquire_slide_lock(tmp_path, "s", wait_s=0)
    build = staging.SlideBuild(tmp_path, "s", staging_dir(tmp_path, "s"), True, lock)
    with pytest.raises(_Killed):
        build.commit()
    monkeypatch.undo()
    final = tmp_path / "s"
    # what a reader sees after the kill: the old result, the new one, or (only between the
    # two renames) neither, with both kept for the next run
    seen = _tree(final) if final.exists() else None
    assert seen in (old, new) or (seen is None and step == "new_to_final")
    if step in ("journal", "old_to_trash"):
        assert seen == old
    with acquire_slide_lock(tmp_path, "s", wait_s=0):
        recover_swap(tmp_path, "s")
    expected = old if step == "journal" else new  # no .swap record: the staging build is resumed, not swapped
    assert _tree(final) == expected
    assert not (tmp_path / ".wsiscan" / "trash" / "s").exists()
    assert not (tmp_path / ".wsiscan" / "partial" / "s.swap").exists()
    assert staging_dir(tmp_path, "s").exists() == (step == "journal")


def test_a_build_beside_a_finished_result_leaves_it_untouched_until_the_swap(tmp_path):
    final = tmp_path / "s"
    (final / "store.zarr").mkdir(parents=True)
    (final / "summary.json").write_text("old")
    (final / "store.zarr" / "chunk").write_bytes(b"old pixels")
    old = _tree(final)
    with pytest.raises(RuntimeError):
        with slide_build(tmp_path, "s", overwrite=False) as build:
            assert build.staged and build.dir == staging_dir(tmp_path, "s")
            assert (build.dir / "store.zarr" / "chunk").stat().st_ino == (final / "store.zarr" / "chunk").stat().st_ino
            (build.dir / "summary.json").unlink()  # what a run does: remove, write anew, rename over
            tmp = build.dir / "store.zarr" / ".chunk.tmp"
            tmp.write_bytes(b"new pixels")
            os.replace(tmp, build.dir / "store.zarr" / "chunk")
            raise RuntimeError("the run fails here")
    assert _tree(final) == old, "a failed build changes nothing of the finished result"
    with slide_build(tmp_path, "s", overwrite=False) as build:  # resumed from the staging folder
        assert _tree(build.dir) == {"store.zarr/chunk": b"new pixels"}
        (build.dir / "summary.json").write_text("new")
    assert _tree(final) == {"store.zarr/chunk": b"new pixels", "summary.json": b"new"}
    with slide_build(tmp_path, "s", overwrite=True) as build:
        assert _tree(build.dir) == {}, "--overwrite reuses nothing of the old result"
        (build.dir / "summary.json").write_text("fresh")
    assert _tree(final) == {"summary.json": b"fresh"}
    assert not staging_dir(tmp_path, "s").exists() and not (tmp_path / ".wsiscan" / "trash" / "s").exists()


def test_a_refused_run_names_the_slide_folder_and_leaves_no_staging_copy(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "summary.json").write_text("old")
    with pytest.raises(StoreExistsError) as info:
        with slide_build(tmp_path, "s", overwrite=False) as build:
            raise StoreExistsError(f"{build.dir / 'store.zarr'}: holds a heatmap made with another model")
    assert str(info.value).startswith(f"{tmp_path / 's' / 'store.zarr'}: holds")
    assert not staging_dir(tmp_path, "s").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: the refusal cannot be provoked")
def test_an_unwritable_out_is_one_error(tmp_path):
    (tmp_path / "s").mkdir()
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="choose another -o/--out"):
            with slide_build(tmp_path, "s", overwrite=False):
                pass
    finally:
        tmp_path.chmod(0o755)


def test_heatmap_s_lock_finishes_an_interrupted_swap_and_leaves_a_missing_folder_alone(tmp_path):
    staged = staging_dir(tmp_path, "s")
    staged.mkdir(parents=True)
    (staged / "summary.json").write_text("new")
    (tmp_path / ".wsiscan" / "partial" / "s.swap").write_text("{}")  # killed between the two renames
    release = staging.lock_result_folder(tmp_path / "s")
    with pytest.raises(SlideLockedError):
        acquire_slide_lock(tmp_path, "s", wait_s=0)
    release()
    assert (tmp_path / "s" / "summary.json").read_text() == "new" and not staged.exists()
    staging.lock_result_folder(tmp_path / "nowhere" / "s")()
    assert not (tmp_path / "nowhere").exists()
