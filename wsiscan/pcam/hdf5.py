"""The official PCam HDF5 files: H5PatchDataset, their checks, and finding or decompressing them (imports h5py)."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError
from ..layout import atomic_path
from .dataset import PATCH_SHAPE, Log, PatchDataset

OFFICIAL_PREFIX = "camelyonpatch_level_2_split_"


class H5PatchDataset(PatchDataset):
    """One split of the official PCam HDF5 files, read lazily.

    The images file is opened on first access in each process (DataLoader workers get
    their own handle: HDF5 handles must not cross a fork), never loaded whole.
    """

    layout = "official"

    def __init__(self, x_path: Path, y_path: Path, *, meta_path: Path | None = None, split: str = "") -> None:
        self.x_path = Path(x_path)
        self.y_path = Path(y_path)
        self.meta_path = meta_path
        self.split = split
        n_images = _check_h5_images(self.x_path)
        labels = _read_h5_labels(self.y_path)
        if len(labels) != n_images:
            raise DatasetError(
                f"{self.x_path.name} holds {n_images} images but {self.y_path.name} holds {len(labels)} labels; "
                "the two files of one split must have the same length: re-download the pair"
            )
        if meta_path is not None:
            _check_meta_rows(meta_path, n_images)
        self._handle = None
        self._pid = -1
        super().__init__(labels)

    def _images(self):
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle = h5py.File(self.x_path, "r")
            self._pid = os.getpid()
        return self._handle["x"]

    def _read_row(self, row: int) -> np.ndarray:
        return np.asarray(self._images()[row])

    def read_batch(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        if len(rows) == 0:
            return np.zeros((0, *PATCH_SHAPE), np.uint8)
        if np.all(np.diff(rows) == 1):  # one contiguous hyperslab read
            return np.asarray(self._images()[int(rows[0]) : int(rows[-1]) + 1])
        order = np.argsort(rows)
        out = np.empty((len(rows), *PATCH_SHAPE), np.uint8)
        out[order] = self._images()[rows[order]]  # h5py fancy indexing needs increasing rows
        return out

    def describe(self) -> dict:
        return {**super().describe(), "split": self.split, "x": str(self.x_path), "y": str(self.y_path),
                "meta": str(self.meta_path) if self.meta_path else None}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = -1
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __del__(self) -> None:
        handle = self.__dict__.get("_handle")
        if handle is not None and self.__dict__.get("_pid") == os.getpid():
            try:
                handle.close()
            except Exception:  # interpreter shutdown: nothing to report
                pass


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(
            f"{path}: cannot be read as HDF5 ({exc}); the download may be incomplete: re-download it"
        ) from exc


def _check_h5_images(path: Path) -> int:
    with _open_h5(path) as handle:
        if "x" not in handle:
            raise DatasetError(f"{path}: no dataset 'x' (found {sorted(handle.keys())}); is this a PCam _x.h5 file?")
        x = handle["x"]
        if x.ndim != 4 or tuple(x.shape[1:]) != PATCH_SHAPE or x.dtype != np.uint8:
            raise DatasetError(
                f"{path}: images have shape {tuple(x.shape)} {x.dtype}, expected (N, 96, 96, 3) uint8 "
                "as in PCam's camelyonpatch_level_2_split_*_x.h5; re-download or regenerate the file"
            )
        return int(x.shape[0])


def _read_h5_labels(path: Path) -> np.ndarray:
    with _open_h5(path) as handle:
        if "y" not in handle:
            raise DatasetError(f"{path}: no dataset 'y' (found {sorted(handle.keys())}); is this a PCam _y.h5 file?")
        y = handle["y"]
        if y.ndim < 1 or int(np.prod(y.shape[1:], dtype=np.int64)) != 1:
            raise DatasetError(
                f"{path}: labels have shape {tuple(y.shape)}, expected (N, 1, 1, 1) as in PCam's _y.h5 files"
            )
        labels = np.asarray(y[...]).reshape(-1).astype(np.int64)
    bad = np.setdiff1d(np.unique(labels), [0, 1])
    if bad.size:
        raise DatasetError(f"{path}: labels must be 0 or 1, found {bad[:5].tolist()}")
    return labels


def _check_meta_rows(path: Path, n_images: int) -> None:
    with open(path, newline="") as handle:
        n_rows = sum(1 for _ in csv.reader(handle)) - 1
    if n_rows != n_images:
        raise DatasetError(
            f"{path}: {n_rows} rows for {n_images} images; the meta file belongs to another split or is truncated"
        )


def official_path(data_dir: Path, split: str, kind: str) -> Path:
    """Where a split's ``x``/``y`` HDF5 file (or ``meta`` CSV) is expected."""
    suffix = ".csv" if kind == "meta" else ".h5"
    return Path(data_dir) / f"{OFFICIAL_PREFIX}{split}_{kind}{suffix}"


def default_cache_dir() -> Path:
    """``$WSISCAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/wsiscan``, else ``~/.cache/wsiscan``."""
    if os.environ.get("WSISCAN_CACHE_DIR"):
        return Path(os.environ["WSISCAN_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wsiscan"


def _gzip_size(path: Path) -> int:
    """Uncompressed size modulo 2**32 from the gzip trailer (a lower bound for space checks)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return struct.unpack("<I", handle.read(4))[0]


def _decompress_once(gz_path: Path, cache_dir: Path | None, log: Log) -> Path:
    """The decompressed copy of ``gz_path``, making it if needed (atomically)."""
    name = gz_path.name[: -len(".gz")]
    beside = gz_path.with_name(name)
    cached = (cache_dir or default_cache_dir()) / "pcam" / name
    for candidate in (beside, cached):
        if candidate.is_file() and candidate.stat().st_mtime >= gz_path.stat().st_mtime:
            return candidate
    target = beside if os.access(gz_path.parent, os.W_OK) else cached
    target.parent.mkdir(parents=True, exist_ok=True)
    need = max(_gzip_size(gz_path), gz_path.stat().st_size)
    free = shutil.disk_usage(target.parent).free
    if free < need:
        raise DatasetError(
            f"{gz_path}: needs about {need / 2**30:.1f} GiB to decompress into {target.parent} but only "
            f"{free / 2**30:.1f} GiB is free; gunzip it yourself elsewhere or set WSISCAN_CACHE_DIR"
        )
    log(f"decompressing {gz_path.name} to {target} once (h5py cannot read gzip); later runs reuse it")
    try:
        with atomic_path(target) as partial, gzip.open(gz_path, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 * 2**20)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{gz_path}: cannot be decompressed ({exc}); the download may be incomplete") from exc
    return target


def resolve_h5(data_dir: Path, split: str, kind: str, cache_dir: Path | None, log: Log) -> Path:
    path = official_path(data_dir, split, kind)
    if path.is_file():
        return path
    gz_path = path.with_name(path.name + ".gz")
    if gz_path.is_file():
        return _decompress_once(gz_path, cache_dir, log)
    present = sorted(p.name for p in Path(data_dir).glob(f"{OFFICIAL_PREFIX}*"))
    raise DatasetError(
        f"{data_dir}: missing {path.name} (or {gz_path.name}) for the '{split}' split; "
        f"found {', '.join(present) or 'no PCam files'}; download all six camelyonpatch_level_2_split_* files"
    )
