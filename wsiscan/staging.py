"""Replace, never destroy: where a run builds a slide's results, and how they are swapped in.

Every run that writes ``OUT/<slide-id>/`` holds the slide's lock (:mod:`wsiscan.slide_lock`)
and builds in one of two places:

* **in place**, in ``OUT/<slide-id>/`` itself, when that folder does not exist yet (a first
  run; a killed first run leaves it without ``summary.json`` and its rerun resumes there
  through a staging copy, below);
* **in staging**, ``OUT/.wsiscan/partial/<slide-id>/``, whenever ``OUT/<slide-id>/`` exists.
  Without ``--overwrite`` the staging folder starts as a hard-link copy of the slide folder
  (every file the run writes is written to a new file and renamed over, so the linked
  files of the old result are never changed) and the run resumes from what is there.
  With ``--overwrite`` it starts empty, so nothing of the old result is reused (the
  pixels are decoded again from the slide: this is how a damaged store is repaired).
  A staging folder left by a failed or killed run is resumed by the next run without
  ``--overwrite``; ``--overwrite`` empties it first.

A staging build is swapped in only once the run has finished:

1. ``OUT/.wsiscan/partial/<slide-id>.swap`` is written (the staging folder is complete);
2. ``OUT/<slide-id>`` is renamed to ``OUT/.wsiscan/trash/<slide-id>``;
3. the staging folder is renamed to ``OUT/<slide-id>``;
4. the ``.swap`` record is removed, then the trash.

A run killed anywhere in this sequence leaves either the old folder or the new one at
``OUT/<slide-id>`` (or, between steps 2 and 3, neither, with both kept); the next run on
the slide (under the lock) finishes the swap from the ``.swap`` record before anything
else, and removes any trash left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from .errors import DamagedChunkError, OutputError, StoreExistsError
from .layout import WORK_DIR, staging_dir, swap_journal_path, trash_dir, write_json_atomic
from .slide_lock import SlideLock, acquire_slide_lock

__all__ = ["WORK_DIR", "SlideBuild", "slide_build", "staging_dir", "recover_swap", "lock_result_folder"]

_T = TypeVar("_T")


def _io_error(path: Path, what: str, exc: OSError) -> OutputError:
    why = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
    return OutputError(f"{path}: cannot {what} ({why}); the previous result is unchanged; "
                       f"free space or fix the permissions and rerun")


def _remove_tree(path: Path) -> None:
    """Remove a folder of results this run replaces or discards, also where a folder inside it
    was made read-only (its owner may always make it writable again)."""

    def writable_and_retry(func: Callable[..., object], failed: str, exc_info: tuple) -> None:
        if not isinstance(exc_info[1], PermissionError):
            raise exc_info[1]
        parent = os.path.dirname(failed)
        os.chmod(parent, os.stat(parent).st_mode | 0o700)
        func(failed)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=writable_and_retry)  # onexc from Python 3.12 on
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover_swap(out_dir: str | Path, slide_id: str) -> None:
    """Finish a swap a killed run left half done, and remove trash (call under the lock)."""
    out_dir = Path(out_dir)
    final, staged = out_dir / slide_id, staging_dir(out_dir, slide_id)
    journal, trash = swap_journal_path(out_dir, slide_id), trash_dir(out_dir, slide_id)
    try:
        if journal.exists():
            if staged.is_dir():
                print(f"wsiscan: warning: {final}: finishing the swap of a complete result that an earlier run "
                      f"was stopped in", file=sys.stderr, flush=True)
                _swap_in(final, staged, trash)
            journal.unlink()
        if trash.exists() or trash.is_symlink():
            _remove_tree(trash)
    except OSError as exc:
        raise _io_error(final, "finish the interrupted swap of its results", exc) from exc


def lock_result_folder(result_dir: str | Path) -> Callable[[], None]:
    """Lock ``OUT/<slide-id>`` for a command that rewrites files inside it (``heatmap``), after
    finishing any swap a killed run left half done; returns the function that releases it.
    A folder that is not there (and is no slide folder of an OUT) is left alone: the
    command's own error names it."""
    result_dir = Path(result_dir)
    if not (result_dir.is_dir() or (result_dir.parent / WORK_DIR).is_dir()):
        return lambda: None
    lock = acquire_slide_lock(result_dir.parent, result_dir.name)
    try:
        recover_swap(result_dir.parent, result_dir.name)
    except BaseException:
        lock.release()
        raise
    return lock.release


def _swap_in(final: Path, staged: Path, trash: Path) -> None:
    if final.exists() or final.is_symlink():
        if trash.exists() or trash.is_symlink():
            _remove_tree(trash)
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(final, trash)
    os.rename(staged, final)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copy2(src, dst)


@dataclass
class SlideBuild:
    """Where one run writes a slide's results (``dir``), and the swap that publishes them."""

    out_dir: Path
    slide_id: str
    dir: Path
    staged: bool
    lock: SlideLock
    _done: bool = field(default=False, repr=False)
    _handed_over: bool = field(default=False, repr=False)

    @property
    def final_dir(self) -> Path:
        return self.out_dir / self.slide_id

    def final_path(self, path: str | Path) -> Path:
        """Where a file of the build will be once it is swapped in."""
        return self.final_dir / Path(path).relative_to(self.dir)

    def commit(self) -> None:
        """Swap a finished staging build in (see the module's steps) and release the lock."""
        if self._done:
            return
        try:
            if self.staged:
                journal, trash = swap_journal_path(self.out_dir, self.slide_id), trash_dir(self.out_dir, self.slide_id)
                try:
                    write_json_atomic({"slide_id": self.slide_id, "staging": str(self.dir)}, journal)
                    try:
                        _swap_in(self.final_dir, self.dir, trash)
                    except OSError:  # refused (a read-only folder...): put back what moved, forget the swap
                        if not self.final_dir.exists() and trash.exists():
                            os.rename(trash, self.final_dir)
                        journal.unlink()
                        raise
                    journal.unlink()
                except OSError as exc:
                    raise _io_error(self.final_dir, "swap the new results in", exc) from exc
                try:
                    _remove_tree(trash)
                except OSError:
                    pass  # the next run on the slide removes it
        finally:
            self.release()

    def release(self) -> None:
        self._done = True
        self.lock.release()

    def committing(self, finish: Callable[[], _T]) -> Callable[[], _T]:
        """``finish`` followed by :meth:`commit`; the lock is released whatever happens."""
        self._handed_over = True

        def run() -> _T:
            try:
                value = finish()
            except BaseException:
                self.release()
                raise
            self.commit()
            return value

        return run


def _user_paths(exc: BaseException, build: SlideBuild) -> BaseException:
    """The same error naming the slide folder, not the staging folder the run was writing."""
    text = str(exc)
    if not build.staged or str(build.dir) not in text:
        return exc
    try:
        clone = type(exc)(text.replace(str(build.dir), str(build.final_dir)))
    except Exception:  # an error type that takes other arguments keeps its own message
        return exc
    return clone


@contextmanager
def slide_build(out_dir: str | Path, slide_id: str, *, overwrite: bool,
                wait_lock_s: float | None = None) -> Iterator[SlideBuild]:
    """Lock the slide, finish any interrupted swap, and choose where this run builds.

    On a normal exit the build is committed (swapped in, lock released), unless the body
    handed it to :meth:`SlideBuild.committing` for a later ``finish``; on an error the
    lock is released and the staging folder kept for the next run to resume, except when
    the error is a refusal (:class:`StoreExistsError`, or :class:`DamagedChunkError` for a
    damaged store) of a staging copy this run made.
    """
    out_dir = Path(out_dir)
    lock = acquire_slide_lock(out_dir, slide_id, wait_s=wait_lock_s)
    try:
        recover_swap(out_dir, slide_id)
        build, seeded = _prepare(out_dir, slide_id, overwrite=overwrite, lock=lock)
    except BaseException:
        lock.release()
        raise
    try:
        yield build
    except (StoreExistsError, DamagedChunkError) as exc:  # a refusal: the copy this run made holds nothing new
        build.release()
        if seeded:
            try:
                _remove_tree(build.dir)
            except OSError:
                pass  # the refusal is the error to report; --overwrite (its fix) removes the leftover copy
        raise _user_paths(exc, build) from exc
    except BaseException as exc:
        build.release()
        clone = _user_paths(exc, build)
        if clone is exc:
            raise
        raise clone from exc
    if not build._handed_over:
        build.commit()


def _prepare(out_dir: Path, slide_id: str, *, overwrite: bool, lock: SlideLock) -> tuple[SlideBuild, bool]:
    final, staged = out_dir / slide_id, staging_dir(out_dir, slide_id)
    if final.is_dir() and not os.access(final, os.W_OK | os.X_OK):  # the swap moves it aside: it must be writable
        raise OutputError(f"{final}: permission denied: the slide folder is not writable, so its result cannot be "
                          f"replaced; make it writable (chmod u+w) or choose another -o/--out")
    created = False
    try:
        if overwrite and (staged.exists() or staged.is_symlink()):
            _remove_tree(staged)  # --overwrite reuses nothing
        if staged.is_dir():
            return SlideBuild(out_dir, slide_id, staged, True, lock), False
        if not (final.exists() or final.is_symlink()):
            if overwrite:  # a fresh build that becomes the slide folder only when complete
                staged.mkdir(parents=True)
                return SlideBuild(out_dir, slide_id, staged, True, lock), False
            return SlideBuild(out_dir, slide_id, final, False, lock), False
        if not final.is_dir():
            raise OutputError(f"{final}: is a file, not a slide's result folder; move it or choose another -o/--out")
        staged.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            staged.mkdir()
            return SlideBuild(out_dir, slide_id, staged, True, lock), False
        created = True
        shutil.copytree(final, staged, symlinks=True, copy_function=_link_or_copy)
        return SlideBuild(out_dir, slide_id, staged, True, lock), True
    except OSError as exc:
        if created:
            shutil.rmtree(staged, ignore_errors=True)
        raise _io_error(staged, "prepare the folder the new results are built in", exc) from exc
