"""Worker processes die with their parent.

wsiscan's worker processes (the spawned decode workers of ``tile``, torch DataLoader
workers of ``train``, ``evaluate`` and ``bench``) call :func:`die_with_parent` first thing.
Without it, a parent killed with SIGKILL (or by the OOM killer) leaves its workers running:
each holds a slide handle and some hundred MB, and multiprocessing's resource tracker
stays alive as long as any of them holds its pipe.

Two mechanisms, so that one failing leaves the other:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` asks the kernel to send SIGTERM when the
  parent ends, even while the worker is busy in C code.  The kernel ties this to the parent
  *thread* that started the worker; wsiscan starts its pools from the thread that waits on
  them, which outlives them.
* Everywhere: a daemon thread waits on the parent's process sentinel
  (:func:`multiprocessing.parent_process`) and ends the worker when the parent is gone.

When the workers end, the resource tracker loses its last writer, reads end-of-file and
exits by itself (after unlinking any semaphores the run leaked), so it needs nothing more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading

__all__ = ["die_with_parent", "torch_worker_init"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _set_pdeathsig(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` when the parent ends; False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # readable once the parent has ended
    os._exit(1)  # no cleanup: the parent that would collect the results is gone


def die_with_parent() -> None:
    """Make this worker process end when its parent does (see the module docstring).

    Call it from a worker initialiser.  Outside a multiprocessing child it does nothing.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    _set_pdeathsig(signal.SIGTERM)
    if not parent.is_alive():
        os._exit(1)  # the parent ended before the signal was armed
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is not None:
        threading.Thread(target=_watch_parent, args=(sentinel,), name="wsiscan-parent-watch", daemon=True).start()


def torch_worker_init(worker_id: int) -> None:
    """A torch DataLoader ``worker_init_fn``: the worker dies with its parent."""
    die_with_parent()
