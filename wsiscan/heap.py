"""The C heap of this process (glibc only): keep large buffers off it, and give freed memory back.

glibc raises its mmap threshold after each large free (up to 32 MiB), after which the
chunk and region buffers of the decode threads and the varying patch batches come from
the heap arenas, fragment them and stay resident after they are freed.  Elsewhere (musl,
macOS, Windows) both calls do nothing.

The price of mmap'd buffers is that each one is faulted in page by page when it is first
written and unmapped when freed: a scan that allocated a fresh 1.7 MB chunk per chunk read
spent a third of its system time in page faults.  :class:`BufferPool` hands the same few
buffers out again instead, for the duration of one scan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import threading
import weakref
from typing import Any

import numpy as np

__all__ = ["bound_heap", "release_free_heap", "BufferPool"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter
_HEAP_BOUNDED = False


@functools.cache
def _libc() -> Any:
    """The C library, looked up once: ``find_library`` runs ``ldconfig -p`` in a child process
    (a fork of this process, which may hold a GB by then) on every call."""
    lib = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(lib) if lib else None
    except OSError:
        return None


def _libc_function(name: str) -> Any:
    """glibc's function ``name``, or None where the C library has none."""
    return getattr(_libc(), name, None)


def bound_heap() -> None:
    """Serve allocations from 1 MiB up with mmap, returned to the OS when freed (once per process)."""
    global _HEAP_BOUNDED
    if _HEAP_BOUNDED:
        return
    _HEAP_BOUNDED = True
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def release_free_heap() -> None:
    """Give the memory this process has freed on the heap back to the OS.

    In-process decoding and tissue detection free large temporaries that glibc keeps
    resident; inference would stack on them.  Worker processes return theirs on exit.
    """
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


class BufferPool:
    """Reusable uint8 buffers of up to ``nbytes`` each, for arrays whose lifetime the caller
    does not track (a decoded chunk goes to the unit cutter, perhaps also to a pixel writer).

    :meth:`array` returns an uninitialised array on a pooled buffer; the buffer comes back
    to the pool when the last array or view using it is gone (Python's reference count
    decides, so a buffer is never handed out while anything still reads it).  At most
    ``max_free`` idle buffers are kept, so the pool never holds more than the most arrays
    that were alive at once.  :meth:`close` drops the idle ones and every buffer that
    comes back later: call it when the work that needed them is over.
    """

    def __init__(self, nbytes: int, *, max_free: int) -> None:
        self.nbytes = int(nbytes)
        self.max_free = int(max_free)
        self.allocated = 0  # buffers made (not taken from the pool): the count of fresh memory faulted in
        self._free: list[bytearray] = []
        self._lock = threading.Lock()
        self._closed = False

    def array(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised uint8 array of ``shape``; a plain fresh one when it does not fit a buffer."""
        n = math.prod(shape)
        if n > self.nbytes:
            return np.empty(shape, np.uint8)
        with self._lock:
            buf = self._free.pop() if self._free else None
            if buf is None:
                self.allocated += 1
        if buf is None:
            buf = bytearray(self.nbytes)
        # the root array's base is the bytearray, not an ndarray, so every view taken of the
        # returned array keeps the root alive: the root dies with the last view
        root = np.frombuffer(buf, np.uint8)
        fin = weakref.finalize(root, self._give_back, buf)
        fin.atexit = False
        return root[:n].reshape(shape)

    def _give_back(self, buf: bytearray) -> None:
        with self._lock:
            if not self._closed and len(self._free) < self.max_free:
                self._free.append(buf)

    def close(self) -> None:
        """Free the idle buffers, and from now on every buffer that comes back."""
        with self._lock:
            self._closed = True
            self._free.clear()
