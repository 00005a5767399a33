"""The C heap of this process (glibc only): keep large buffers off it, and give freed memory back.

glibc raises its mmap threshold after each large free (up to 32 MiB), after which the
chunk and region buffers of the decode threads and the varying patch batches come from
the heap arenas, fragment them and stay resident after they are freed.  Elsewhere (musl,
macOS, Windows) both calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

__all__ = ["bound_heap", "release_free_heap"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter
_HEAP_BOUNDED = False


def _libc_function(name: str) -> Any:
    """glibc's function ``name``, or None where the C library has none."""
    lib = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(lib), name) if lib else None
    except (OSError, AttributeError):  # not glibc
        return None


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
