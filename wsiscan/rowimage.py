"""Whole-slide pictures kept off the heap, read and written in row stripes.

A slide's mask-resolution pictures grow with the slide: at 4 um/px a 100,000 px slide
scanned at 0.25 um/px is 6,250 px square, 117 MB as RGB and 156 MB as float32 saturation.
Held whole, they made predict's peak memory grow with the slide.  A :class:`RowImage`
larger than :data:`RAM_LIMIT_BYTES` lives in an unlinked temporary file instead (so a
killed run leaves nothing behind), and a pass over it holds one stripe at a time: memory
is then bounded by the stripe, whatever the slide's size.  The rows just written or read
stay in the kernel's page cache, which gives them up under pressure; they are not this
process's memory.  Smaller images stay in memory, where a file would only cost time.

The temporary files go where :func:`tempfile.gettempdir` says (``TMPDIR``); when that disk
is full, the write fails with :class:`~wsiscan.errors.OutputError` naming the folder.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from wsiscan.errors import OutputError

__all__ = ["RAM_LIMIT_BYTES", "STRIPE_BYTES", "RowImage", "WorkingFile", "as_row_image", "working_file_error"]

RAM_LIMIT_BYTES = 4 << 20  # an image up to this size is kept in memory
STRIPE_BYTES = 4 << 20  # the default stripe of :meth:`RowImage.stripes`


def working_file_error(exc: OSError, nbytes: int, *, folder: str | None = None) -> OutputError:
    """The one-line error for a temporary working file of ``nbytes`` that cannot be written
    in ``folder`` (the temporary folder): it names the folder and TMPDIR, not the output."""
    folder = folder or tempfile.gettempdir()
    why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return OutputError(f"{folder}: cannot keep a {nbytes / 1e6:.0f} MB working file of the slide there "
                       f"({why}); free some space or set TMPDIR to a folder on a larger disk")


class WorkingFile:
    """An unlinked temporary file in the temporary folder (``TMPDIR``), written and read at
    byte offsets from any thread: the storage of a large :class:`RowImage`, and of the
    decoded chunks a scan parks (``scan._ChunkSpill``).  ``nbytes``: its size up front
    (sparse: unwritten bytes read as zeros).  Failing to create or write it is one line
    naming the folder (:func:`working_file_error`); it leaves nothing behind when closed or
    when the process is killed."""

    def __init__(self, *, prefix: str, nbytes: int = 0) -> None:
        self.folder = tempfile.gettempdir()
        self.nbytes = nbytes
        self._lock = threading.Lock()  # only where the platform has no positional reads/writes
        self._file: Any = None
        try:
            self._file = tempfile.TemporaryFile(prefix=prefix, dir=self.folder)
            if nbytes:
                os.ftruncate(self._file.fileno(), nbytes)
        except OSError as exc:
            self.close()
            raise working_file_error(exc, nbytes, folder=self.folder) from exc

    def write_at(self, offset: int, data: np.ndarray) -> None:
        """Write the bytes of ``data`` from byte ``offset`` on (all of them, or an error)."""
        view = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        start = offset
        try:
            while len(view):
                done = self._pwrite(view, offset)
                if done == 0:  # a regular file takes nothing only when its disk is full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view, offset = view[done:], offset + done
        except OSError as exc:
            raise working_file_error(exc, max(self.nbytes, start + data.nbytes), folder=self.folder) from exc

    def _pwrite(self, view: memoryview, offset: int) -> int:
        fd = self._file.fileno()
        if hasattr(os, "pwrite"):
            return os.pwrite(fd, view, offset)
        with self._lock:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.write(fd, view)

    def read_into(self, offset: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (C-contiguous) with the bytes from byte ``offset`` on; returns it."""
        buffer = out.reshape(-1).view(np.uint8).data
        while len(buffer):
            done = self._pread_into(buffer, offset)
            if done == 0:
                raise OSError(errno.EIO, f"short read of a working file at byte {offset}")
            buffer, offset = buffer[done:], offset + done
        return out

    def _pread_into(self, buffer: memoryview, offset: int) -> int:
        fd = self._file.fileno()
        if hasattr(os, "preadv"):
            return os.preadv(fd, [buffer], offset)
        with self._lock:
            os.lseek(fd, offset, os.SEEK_SET)
            return self._file.readinto(buffer)

    def close(self) -> None:
        """Give the file back (again: nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class RowImage:
    """An image of ``shape`` (rows first) and ``dtype``, all zeros until rows are written.

    Rows are written with :meth:`write_rows` and read with :meth:`rows` (both thread-safe
    for distinct rows), or visited with :meth:`stripes`.  Close it (or use it as a context
    manager) to give its file back; a closed image cannot be read.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, *, ram_limit_bytes: int | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if not self.shape or min(self.shape) < 0:
            raise ValueError(f"RowImage shape must have rows and no negative side, not {self.shape}")
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.nbytes = self.row_bytes * self.shape[0]
        limit = RAM_LIMIT_BYTES if ram_limit_bytes is None else ram_limit_bytes
        self._array: np.ndarray | None = None
        self._file: WorkingFile | None = None
        if self.nbytes <= limit:
            self._array = np.zeros(self.shape, self.dtype)
        else:
            self._file = WorkingFile(prefix="wsiscan-rows-", nbytes=self.nbytes)
        self.closed = False

    @classmethod
    def from_array(cls, array: np.ndarray, *, ram_limit_bytes: int | None = None) -> RowImage:
        """A RowImage holding a copy of ``array``."""
        array = np.asarray(array)
        image = cls(array.shape, array.dtype, ram_limit_bytes=ram_limit_bytes)
        for y0, y1 in image.stripe_bounds():
            image.write_rows(y0, array[y0:y1])
        return image

    @classmethod
    def wrap(cls, array: np.ndarray) -> RowImage:
        """An in-memory RowImage whose rows are ``array`` itself (no copy; writes go to it)."""
        image = cls((0,) + np.shape(array)[1:], np.asarray(array).dtype)
        image._array = np.asarray(array)
        image.shape = image._array.shape
        image.nbytes = image.row_bytes * image.shape[0]
        return image

    @property
    def in_memory(self) -> bool:
        """Whether the rows are held in memory (a small image) rather than in a temporary file."""
        return self._array is not None

    def _check(self, y0: int, y1: int) -> None:
        if self.closed:
            raise ValueError("RowImage is closed")
        if not 0 <= y0 <= y1 <= self.shape[0]:
            raise IndexError(f"rows {y0}:{y1} outside 0:{self.shape[0]}")

    def write_rows(self, y0: int, rows: np.ndarray) -> None:
        """Write ``rows`` (n rows of this image's row shape) from row ``y0`` on."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} do not fit an image of rows {self.row_shape}")
        y1 = y0 + rows.shape[0]
        self._check(y0, y1)
        if self._array is not None:
            self._array[y0:y1] = rows
            return
        assert self._file is not None
        self._file.write_at(y0 * self.row_bytes, rows)

    def rows(self, y0: int, y1: int, *, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``y0:y1``: a read-only view of an in-memory image, else a new array (or ``out``)."""
        self._check(y0, y1)
        if self._array is not None:
            if out is not None:
                out[...] = self._array[y0:y1]
                return out
            view = self._array[y0:y1]
            view.flags.writeable = False
            return view
        shape = (y1 - y0,) + self.row_shape
        if out is None:
            out = np.empty(shape, self.dtype)
        elif out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {self.dtype} array of shape {shape}")
        assert self._file is not None
        return self._file.read_into(y0 * self.row_bytes, out)

    def stripe_rows(self, stripe_bytes: int = STRIPE_BYTES) -> int:
        """Rows in a stripe of about ``stripe_bytes`` (at least one)."""
        return max(1, stripe_bytes // max(1, self.row_bytes))

    def stripe_bounds(self, rows_per_stripe: int | None = None) -> Iterator[tuple[int, int]]:
        """(y0, y1) of consecutive stripes covering the image."""
        step = rows_per_stripe or self.stripe_rows()
        for y0 in range(0, self.shape[0], step):
            yield y0, min(y0 + step, self.shape[0])

    def stripes(self, rows_per_stripe: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(y0, rows) of consecutive stripes, each read when it is reached."""
        for y0, y1 in self.stripe_bounds(rows_per_stripe):
            yield y0, self.rows(y0, y1)

    def to_array(self) -> np.ndarray:
        """The whole image as one array (a copy): for small images and tests."""
        if self._array is not None:
            self._check(0, 0)
            return self._array.copy()
        return self.rows(0, self.shape[0])

    def count_nonzero(self) -> int:
        """Number of nonzero elements, stripe by stripe."""
        return sum(int(np.count_nonzero(rows)) for _, rows in self.stripes())

    def any(self) -> bool:
        """Whether any element is nonzero (stops at the first stripe that has one)."""
        return any(bool(np.any(rows)) for _, rows in self.stripes())

    def close(self) -> None:
        """Give the image's memory or file back (again: nothing)."""
        self.closed = True
        self._array = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RowImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        where = "memory" if self.in_memory else "file"
        return f"RowImage(shape={self.shape}, dtype={self.dtype}, in {where})"

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        # numpy would otherwise take a RowImage for a 0-d object array (np.count_nonzero(image)
        # is then 1, image & mask fails): a caller must say which rows it reads
        raise TypeError("a RowImage is read in row stripes: use .rows(), .stripes() or .to_array()")

    def __reduce__(self) -> Any:
        # a temporary file does not travel to another process: the rows go as one array
        return RowImage.from_array, (self.to_array(),)


def as_row_image(image: RowImage | np.ndarray) -> RowImage:
    """``image`` as a RowImage: itself, or an array wrapped without a copy."""
    return image if isinstance(image, RowImage) else RowImage.wrap(image)
