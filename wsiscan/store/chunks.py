"""Chunk integrity of the tile store: crash-atomic writes and checked reads.

:class:`AtomicLocalStore` writes every key to a temporary file beside it and renames it
into place.  :class:`StoredArray` wraps each array of the store: a read that meets a
damaged chunk raises :class:`DamagedChunkError` naming the array, the chunk and the fix,
and the heatmap's levels also refuse values that are no probabilities.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from ..errors import DamagedChunkError

__all__ = ["HEATMAP", "AtomicLocalStore", "StoredArray", "put_atomic", "selection_box", "sweep_partial_writes"]

HEATMAP = "heatmap"  # the heatmap group: its arrays hold probabilities
_PARTIAL = ".partial-"  # temporary chunk files: .<key name>.partial-<pid>-<random>
# how far outside [0, 1] a stored probability may lie: float32 rounding of a model's
# softmax or of an ensemble's mean, never a damaged chunk's garbage
_ROUNDING_SLACK = 1e-6


class AtomicLocalStore(LocalStore):
    """A zarr LocalStore whose every write is crash-atomic.

    A key's bytes go to a temporary file in the key's own folder, which is then renamed
    over the key: readers and a run resumed after a kill see the old chunk or the new
    one, never a torn one, and a rewrite never modifies the old file's inode (a
    hard-linked copy of the store keeps its own bytes).  The temporary name carries the
    writer's pid, so :func:`sweep_partial_writes` can remove those a killed run left.
    """

    async def set(self, key: str, value: Buffer) -> None:
        await self._put_atomic(key, value, exclusive=False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        try:
            await self._put_atomic(key, value, exclusive=True)
        except FileExistsError:
            pass

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._check_writable()
        put_atomic(self.root / key, value, exclusive=False)

    async def _put_atomic(self, key: str, value: Buffer, *, exclusive: bool) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"set(): value must be a zarr Buffer, not {type(value).__name__}")
        await asyncio.to_thread(put_atomic, self.root / key, value, exclusive=exclusive)


def put_atomic(path: Path, value: Buffer, *, exclusive: bool) -> None:
    """Write ``value`` to a temporary file beside ``path``, then rename it into place
    (``exclusive``: link it, so an existing ``path`` is kept and FileExistsError raised)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_PARTIAL}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(value.as_numpy_array().data)
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sweep_partial_writes(root: Path) -> int:
    """Remove the temporary chunk files of writers that no longer run (killed mid-write).

    Files of a live process (this one, a decode worker, a concurrent run) are kept.
    Returns how many were removed.  It walks every chunk folder of the store, so a run
    calls it once, when it marks the store complete.
    """
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.startswith(".") or _PARTIAL not in name:
                continue
            pid_text = name.rsplit(_PARTIAL, 1)[1].split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def selection_box(shape: tuple[int, ...], selection: Any) -> list[tuple[int, int, bool]] | None:
    """(start, stop, kept) per dimension of a basic selection (ints, unit-step slices, at most
    one Ellipsis; ``kept`` is False where an int drops the dimension); None for any other."""
    sel = selection if isinstance(selection, tuple) else (selection,)
    ellipses = [i for i, item in enumerate(sel) if item is Ellipsis]
    if len(ellipses) > 1:
        return None
    if ellipses:
        i = ellipses[0]
        sel = sel[:i] + (slice(None),) * (len(shape) - len(sel) + 1) + sel[i + 1 :]
    sel = sel + (slice(None),) * (len(shape) - len(sel))
    if len(sel) != len(shape):
        return None
    box = []
    for item, n in zip(sel, shape, strict=True):
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            index = int(item) + (n if item < 0 else 0)
            box.append((index, index + 1, False))
        elif isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step != 1:
                return None
            box.append((start, max(start, stop), True))
        else:
            return None
    return box


class StoredArray:
    """One array of a tile store, read and written like the zarr array it wraps.

    A read that meets a damaged chunk (checksum mismatch, or bytes the codecs cannot
    decode) raises :class:`DamagedChunkError` naming the array, the chunk and the fix.
    An array of ``probabilities`` (the heatmap's levels) also refuses, the same way,
    values outside [0, 1]; NaN (a cell without a scored tile) is allowed.
    """

    def __init__(self, array: zarr.Array[Any], *, store_path: Path, probabilities: bool = False) -> None:
        self._array = array
        self.store_path = store_path
        self.probabilities = probabilities

    @property
    def name(self) -> str:
        """``<store path>/<array path>``, e.g. ``OUT/slide/store.zarr/heatmap/0``."""
        return f"{self.store_path}/{self._array.path}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._array.chunks)

    @property
    def ndim(self) -> int:
        return len(self._array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self._array.dtype)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._array.attrs)

    @property
    def checksummed(self) -> bool:
        """Whether the array's chunks carry a CRC-32C (schema 2 stores, and arrays added to older ones)."""
        return any(isinstance(c, Crc32cCodec) for c in self._array.compressors)

    def __getitem__(self, selection: Any) -> np.ndarray:
        try:
            data = np.asarray(self._array[selection])
        except (ValueError, RuntimeError) as exc:  # zarr's checksum and Blosc errors
            raise self._damaged(selection, exc) from exc
        if self.probabilities:
            self._check_probabilities(data, selection)
        return data

    def __setitem__(self, selection: Any, value: Any) -> None:
        self._array[selection] = value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def _fix(self) -> str:
        if self._array.path.startswith(HEATMAP):
            return "rerun `wsiscan predict` on the slide with --overwrite to rebuild it"
        return "rerun `wsiscan predict` (or `wsiscan tile`) on the slide with --overwrite to rebuild it from the slide"

    def _error(self, chunk: tuple[int, ...] | None, why: str) -> DamagedChunkError:
        where = self.name if chunk is None else f"{self.name} chunk {chunk}"
        return DamagedChunkError(f"{where} is damaged ({why}): {self._fix()}")

    def _damaged(self, selection: Any, exc: Exception) -> Exception:
        """The error for a failed read: the first chunk under ``selection`` that fails on its
        own, or ``exc`` itself when none does (the failure was not a damaged chunk)."""
        box = selection_box(self.shape, selection)
        if box is None:
            return exc
        ranges = [range(a // c, (b - 1) // c + 1) for (a, b, _), c in zip(box, self.chunks, strict=True)]
        for chunk in itertools.product(*ranges):
            try:
                self._array.blocks[chunk]
            except (ValueError, RuntimeError) as chunk_exc:
                text = str(chunk_exc)
                why = "checksum mismatch" if "checksum" in text else f"cannot be decoded: {text}"
                return self._error(tuple(int(i) for i in chunk), why)
        return exc

    def _check_probabilities(self, data: np.ndarray, selection: Any) -> None:
        bad = ~((data >= -_ROUNDING_SLACK) & (data <= 1.0 + _ROUNDING_SLACK)) & ~np.isnan(data)
        if not bad.any():
            return
        first = np.argwhere(bad)[0]
        value = float(data[tuple(first)])
        box = selection_box(self.shape, selection)
        chunk = None
        if box is not None:
            rest = iter(int(i) for i in first)
            index = [a + next(rest) if kept else a for a, _, kept in box]
            chunk = tuple(i // c for i, c in zip(index, self.chunks, strict=True))
        raise self._error(chunk, f"holds {value:.6g}, not a probability in [0, 1]")
