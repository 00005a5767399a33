"""One writer per slide folder: an advisory lock beside the output folder.

A run that writes ``OUT/<slide-id>/`` (``tile``, ``predict``, ``heatmap``, a Dask worker's
slide) first takes ``OUT/.wsiscan/locks/<slide-id>.lock``.  The lock file lives outside
the slide folder, so the folder can be swapped (:mod:`wsiscan.staging`) while it is held.

* The lock is a ``fcntl.flock`` on that file, which the kernel drops when its holder
  dies, however it dies (``kill -9`` included).  The holder writes who it is into the
  file (host, pid, the process's start time, command, start of the run) and removes it
  on release.
* A file that names a holder but whose flock is free was left by a run that was killed
  on this host: the lock is taken over and one line on stderr says whose it was.
* A free flock on a file that names another host cannot be judged (flock is not shared
  between hosts on every network file system): the run is refused, naming that host; if
  that run has ended, deleting the lock file clears it.
* A held lock: the run waits up to ``WSISCAN_WAIT_LOCK_S`` seconds (the CLI's
  ``--wait-lock``; default 0), then is refused in one line naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import OutputError, SlideLockedError
from .layout import WORK_DIR, WORK_SUBDIRS, lock_path

__all__ = ["WORK_DIR", "prune_work_dirs", "WAIT_ENV", "LockHolder", "SlideLock", "acquire_slide_lock", "lock_path", "wait_seconds"]

WAIT_ENV = "WSISCAN_WAIT_LOCK_S"
_POLL_S = 0.2


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a slide's lock."""

    host: str
    pid: int
    process_start: str | None  # /proc/<pid>/stat start time (clock ticks since boot), where readable
    command: str
    started_at: float  # epoch seconds

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"pid {self.pid} on host {self.host} (`{self.command}`, since {since})"

    @classmethod
    def me(cls) -> LockHolder:
        command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)) or "python"
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()), command[:300], time.time())


def _process_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the command name may hold spaces


def wait_seconds() -> float:
    """How long to wait for a held lock: ``WSISCAN_WAIT_LOCK_S`` (seconds, default 0)."""
    text = os.environ.get(WAIT_ENV, "").strip()
    try:
        value = float(text) if text else 0.0
    except ValueError:
        value = -1.0
    if not value >= 0:
        from .errors import ConfigError

        raise ConfigError(f"{WAIT_ENV}={text!r}: give a number of seconds >= 0")
    return value


def _read_holder(fd: int) -> LockHolder | None:
    try:
        raw = os.pread(fd, 1 << 16, 0)
        data = json.loads(raw.decode()) if raw.strip() else None
        return LockHolder(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class SlideLock:
    """A held slide lock; :meth:`release` (or process death) frees it."""

    def __init__(self, path: Path, fd: int, holder: LockHolder) -> None:
        self.path, self._fd, self.holder = path, fd, holder

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Remove the lock file (while still holding it: a run waiting on it then sees that
        the path is gone or names another file, and opens it again), then drop the flock and
        remove ``OUT/.wsiscan`` if nothing else is in it."""
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = -1
        prune_work_dirs(self.path.parent.parent.parent)

    def __enter__(self) -> SlideLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def prune_work_dirs(out_dir: Path) -> None:
    """Remove the empty folders of ``OUT/.wsiscan`` (a run leaves none behind once done)."""
    work = out_dir / WORK_DIR
    for folder in (*(work / name for name in WORK_SUBDIRS), work):
        try:
            folder.rmdir()
        except OSError:
            pass


def _open_locked(path: Path) -> tuple[int, bool]:
    """(fd, locked): the lock file opened, and whether its flock was taken (non-blocking)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # another run removed the empty lock folder just now
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd, False
        except BaseException:
            os.close(fd)
            raise
        try:  # a lock file deleted by hand while we waited: lock the file now at that path
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd, True
        except FileNotFoundError:
            pass
        os.close(fd)


def acquire_slide_lock(out_dir: str | Path, slide_id: str, *, wait_s: float | None = None) -> SlideLock:
    """Take the lock of ``OUT/<slide_id>``, waiting up to ``wait_s`` (default :func:`wait_seconds`).

    Raises :class:`SlideLockedError` naming the holder when it stays held, or when the file
    names a holder on another host.
    """
    path = lock_path(out_dir, slide_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot create the lock folder ({exc.strerror}); "
                          f"choose another -o/--out") from exc
    wait_s = wait_seconds() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    me = LockHolder.me()
    while True:
        try:
            fd, locked = _open_locked(path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot open the slide's lock file ({exc.strerror}); "
                              f"choose another -o/--out") from exc
        previous = _read_holder(fd)
        if locked:
            break
        os.close(fd)
        if time.monotonic() >= deadline:
            who = previous.describe() if previous else "another process"
            raise SlideLockedError(
                f"{Path(out_dir) / slide_id}: another run is writing this slide's results: {who}; wait for it "
                f"to finish, pass --wait-lock SECONDS to wait, or choose another -o/--out")
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
    if previous is not None and previous.host != me.host:
        os.close(fd)
        raise SlideLockedError(
            f"{path}: the slide is locked by {previous.describe()}, which cannot be checked from host {me.host}; "
            f"if that run has ended, delete {path} and rerun")
    if previous is not None:
        print(f"wsiscan: warning: {Path(out_dir) / slide_id}: taking over the lock left by {previous.describe()}, "
              f"which has ended", file=sys.stderr, flush=True)
    data = json.dumps(asdict(me)).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return SlideLock(path, fd, me)
