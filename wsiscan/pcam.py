"""PatchCamelyon datasets: the official HDF5 files and the Kaggle folder layout.

Two public layouts are read, both as 96 x 96 px RGB patches at about 0.972 um/px with
label 1 meaning tumour in the centre 32 x 32 px:

* **Official PCam** (Veeling et al. 2018): ``camelyonpatch_level_2_split_{train,valid,test}_x.h5``
  holding dataset ``x`` of shape (N, 96, 96, 3) uint8 and ``..._y.h5`` holding ``y`` of
  shape (N, 1, 1, 1) uint8, optionally with ``..._meta.csv``.  The files may still be
  gzipped (``.h5.gz``): h5py cannot read a gzip stream, so each is decompressed once,
  next to itself when that folder is writable, otherwise into the cache folder.
  Images are read lazily, one HDF5 handle per worker process; only the labels (one byte
  per patch) are held in memory.
* **Kaggle** ("Histopathologic Cancer Detection"): ``train/<id>.tif`` plus
  ``train_labels.csv`` (``id,label``).  The Kaggle copy has no validation or test split,
  so :func:`make_stratified_split` draws a deterministic stratified one (8:1:1 by
  default), which a training run saves as ``split.csv`` and reuses on resume.

This module is the only importer of h5py.  Datasets return ``(image, label)`` with the
image a (96, 96, 3) uint8 numpy array, so PyTorch's default collate stacks them.
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import DatasetError

__all__ = [
    "PATCH_SHAPE",
    "PCAM_MPP",
    "OFFICIAL_SPLITS",
    "PatchDataset",
    "H5PatchDataset",
    "KaggleDataset",
    "SplitAssignment",
    "detect_layout",
    "official_path",
    "open_split",
    "make_stratified_split",
    "load_or_make_split",
    "read_split_csv",
    "write_split_csv",
    "read_kaggle_labels",
    "dark_bright_fraction",
    "find_clean_patches",
]

PATCH_SHAPE = (96, 96, 3)
PCAM_MPP = 0.972
OFFICIAL_SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"val": "valid", "validation": "valid"}
_OFFICIAL_PREFIX = "camelyonpatch_level_2_split_"
_KAGGLE_LABELS = "train_labels.csv"

Log = Callable[[str], None]


def _silent(message: str) -> None:
    del message


def _canonical_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


# ---------------------------------------------------------------------------------------
# Datasets


class PatchDataset:
    """A map-style dataset of (96, 96, 3) uint8 patches and 0/1 labels.

    ``rows`` maps dataset positions to rows of the underlying source, so a subset (a
    split, or the patches kept by :func:`find_clean_patches`) shares the source.
    """

    layout = ""

    def __init__(self, labels: np.ndarray, rows: np.ndarray | None = None) -> None:
        self._all_labels = np.asarray(labels, dtype=np.int64)
        self.rows = np.arange(len(self._all_labels)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the patches in this dataset, in dataset order."""
        return self._all_labels[self.rows]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        row = int(self.rows[index])
        return self._read_row(row), int(self._all_labels[row])

    def read_batch(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at dataset positions as one (n, 96, 96, 3) uint8 array."""
        return np.stack([self._read_row(int(self.rows[p])) for p in positions]) if len(positions) else \
            np.zeros((0, *PATCH_SHAPE), np.uint8)

    def subset(self, positions: Sequence[int] | np.ndarray) -> "PatchDataset":
        """The same source restricted to some positions of this dataset."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__getstate__())
        clone.rows = self.rows[np.asarray(positions, dtype=np.int64)]
        return clone

    def describe(self) -> dict:
        labels = self.labels
        return {"layout": self.layout, "n": int(len(labels)), "n_tumor": int(labels.sum())}

    def _read_row(self, row: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getstate__(self) -> dict:
        return dict(self.__dict__)


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
            except Exception:  # noqa: BLE001 - interpreter shutdown; nothing to report
                pass


class KaggleDataset(PatchDataset):
    """Patches of the Kaggle layout: ``train/<id>.tif`` labelled by ``train_labels.csv``."""

    layout = "kaggle"

    def __init__(self, root: Path, ids: Sequence[str], labels: np.ndarray, *, split: str = "") -> None:
        self.root = Path(root)
        self.ids = list(ids)
        self.split = split
        super().__init__(labels)

    def _read_row(self, row: int) -> np.ndarray:
        return _read_tif(self.root / "train" / f"{self.ids[row]}.tif")

    @property
    def patch_ids(self) -> list[str]:
        return [self.ids[r] for r in self.rows]

    def describe(self) -> dict:
        return {**super().describe(), "split": self.split, "root": str(self.root)}


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    try:
        image = tifffile.imread(path)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: patch listed in {_KAGGLE_LABELS} is missing; restore the file") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable TIFF ({exc}); re-download the patch") from exc
    if image.shape != PATCH_SHAPE or image.dtype != np.uint8:
        raise DatasetError(
            f"{path}: patch has shape {image.shape} {image.dtype}, expected {PATCH_SHAPE} uint8 RGB as in PCam"
        )
    return image


# ---------------------------------------------------------------------------------------
# Official HDF5 layout


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
    return Path(data_dir) / f"{_OFFICIAL_PREFIX}{split}_{kind}{suffix}"


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
    partial = target.with_name(target.name + ".partial")
    try:
        with gzip.open(gz_path, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 * 2**20)
    except (OSError, EOFError) as exc:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"{gz_path}: cannot be decompressed ({exc}); the download may be incomplete") from exc
    os.replace(partial, target)
    return target


def _resolve_h5(data_dir: Path, split: str, kind: str, cache_dir: Path | None, log: Log) -> Path:
    path = official_path(data_dir, split, kind)
    if path.is_file():
        return path
    gz_path = path.with_name(path.name + ".gz")
    if gz_path.is_file():
        return _decompress_once(gz_path, cache_dir, log)
    present = sorted(p.name for p in Path(data_dir).glob(f"{_OFFICIAL_PREFIX}*"))
    raise DatasetError(
        f"{data_dir}: missing {path.name} (or {gz_path.name}) for the '{split}' split; "
        f"found {', '.join(present) or 'no PCam files'}; download all six camelyonpatch_level_2_split_* files"
    )


# ---------------------------------------------------------------------------------------
# Kaggle layout


def read_kaggle_labels(root: Path) -> tuple[list[str], np.ndarray]:
    """Ids and labels from ``train_labels.csv``, checked against the ``train/`` folder."""
    root = Path(root)
    csv_path = root / _KAGGLE_LABELS
    if not csv_path.is_file():
        raise DatasetError(
            f"{root}: {_KAGGLE_LABELS} not found; the Kaggle layout needs train/<id>.tif and "
            f"{_KAGGLE_LABELS} (id,label) side by side"
        )
    ids: list[str] = []
    labels: list[int] = []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{csv_path}: header must be 'id,label', got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if row["label"] not in ("0", "1"):
                raise DatasetError(f"{csv_path}: line {line}: label must be 0 or 1, got {row['label']!r}")
            ids.append(row["id"])
            labels.append(int(row["label"]))
    if not ids:
        raise DatasetError(f"{csv_path}: lists no patches")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{csv_path}: some ids appear more than once; deduplicate the file")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"{root}: folder train/ not found; the Kaggle layout keeps the patches in train/<id>.tif")
    present = {name[:-4] for name in os.listdir(train_dir) if name.endswith(".tif")}
    missing = [i for i in ids if i not in present]
    if missing:
        raise DatasetError(
            f"{train_dir}: {len(missing)} of {len(ids)} patches in {_KAGGLE_LABELS} have no .tif, "
            f"first {missing[0]}.tif; restore the files or remove their rows"
        )
    return ids, np.asarray(labels, dtype=np.int64)


@dataclass(frozen=True)
class SplitAssignment:
    """Which patch of a Kaggle folder belongs to which split."""

    ids: tuple[str, ...]
    labels: tuple[int, ...]
    splits: tuple[str, ...]
    seed: int
    ratios: tuple[float, float, float]

    def positions(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)

    def counts(self) -> dict[str, dict[str, int]]:
        labels = np.asarray(self.labels)
        out = {}
        for split in OFFICIAL_SPLITS:
            pos = self.positions(split)
            out[split] = {"n": int(len(pos)), "n_tumor": int(labels[pos].sum())}
        return out


def make_stratified_split(
    labels: np.ndarray, *, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> np.ndarray:
    """Split names (train/valid/test) per patch, stratified by label and reproducible.

    Within each class the patches are permuted by ``numpy.random.default_rng(seed)`` and
    cut by ``ratios``; each class with at least three patches puts at least one in the
    validation and in the test split.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise DatasetError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_val = int(round(n * ratios[1]))
        n_test = int(round(n * ratios[2]))
        if n >= 3:
            n_val = max(n_val, 1 if ratios[1] > 0 else 0)
            n_test = max(n_test, 1 if ratios[2] > 0 else 0)
        n_train = n - n_val - n_test
        out[members[:n_train]] = "train"
        out[members[n_train : n_train + n_val]] = "valid"
        out[members[n_train + n_val :]] = "test"
    return out.astype(str)


def write_split_csv(path: Path, assignment: SplitAssignment) -> None:
    """``id,label,split`` rows plus a header comment line with the seed and ratios (atomic)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as handle:
        handle.write(f"# seed={assignment.seed} ratios={','.join(str(r) for r in assignment.ratios)}\n")
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "split"])
        writer.writerows(zip(assignment.ids, assignment.labels, assignment.splits))
    os.replace(tmp, path)


def read_split_csv(path: Path) -> SplitAssignment:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read split file ({exc.strerror})") from exc
    seed, ratios = 0, (0.8, 0.1, 0.1)
    if lines and lines[0].startswith("#"):
        fields = dict(part.split("=", 1) for part in lines[0][1:].split() if "=" in part)
        seed = int(fields.get("seed", seed))
        if "ratios" in fields:
            ratios = tuple(float(r) for r in fields["ratios"].split(","))  # type: ignore[assignment]
        lines = lines[1:]
    rows = list(csv.DictReader(lines))
    if not rows or not {"id", "label", "split"} <= set(rows[0]):
        raise DatasetError(f"{path}: not a wsiscan split file (expected columns id,label,split)")
    bad = {r["split"] for r in rows} - set(OFFICIAL_SPLITS)
    if bad:
        raise DatasetError(f"{path}: unknown split names {sorted(bad)}; expected {', '.join(OFFICIAL_SPLITS)}")
    return SplitAssignment(
        ids=tuple(r["id"] for r in rows),
        labels=tuple(int(r["label"]) for r in rows),
        splits=tuple(r["split"] for r in rows),
        seed=seed,
        ratios=ratios,  # type: ignore[arg-type]
    )


def load_or_make_split(
    root: Path,
    split_file: Path | None,
    *,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    log: Log = _silent,
) -> SplitAssignment:
    """The split saved in ``split_file`` if it exists (checked against the labels), else a
    new stratified one, written to ``split_file`` when given."""
    ids, labels = read_kaggle_labels(root)
    if split_file is not None and Path(split_file).is_file():
        saved = read_split_csv(Path(split_file))
        by_id = dict(zip(ids, labels.tolist()))
        for pid, label in zip(saved.ids, saved.labels):
            if by_id.get(pid) != label:
                raise DatasetError(
                    f"{split_file}: patch {pid} is not in {Path(root) / _KAGGLE_LABELS} with label {label}; "
                    "the split belongs to other data: remove it or point --data at the matching folder"
                )
        return saved
    splits = make_stratified_split(labels, ratios=ratios, seed=seed)
    assignment = SplitAssignment(tuple(ids), tuple(labels.tolist()), tuple(splits.tolist()), seed,
                                 tuple(float(r) for r in ratios))  # type: ignore[arg-type]
    if split_file is not None:
        write_split_csv(Path(split_file), assignment)
        log(f"made a stratified {':'.join(f'{r:g}' for r in ratios)} split of {len(ids)} Kaggle patches "
            f"(seed {seed}), saved to {split_file}")
    return assignment


# ---------------------------------------------------------------------------------------
# Opening a split


def detect_layout(data_dir: Path) -> str:
    """``"official"`` or ``"kaggle"``, or a :class:`DatasetError` saying what was expected."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: data folder not found; pass the folder holding the PCam files to --data")
    if any(data_dir.glob(f"{_OFFICIAL_PREFIX}*")):
        return "official"
    if (data_dir / _KAGGLE_LABELS).exists() or (data_dir / "train").is_dir():
        return "kaggle"
    raise DatasetError(
        f"{data_dir}: neither PCam layout found; expected camelyonpatch_level_2_split_{{train,valid,test}}_{{x,y}}.h5"
        f"[.gz] (official) or train/<id>.tif with {_KAGGLE_LABELS} (Kaggle)"
    )


def open_split(
    data_dir: Path,
    split: str,
    *,
    split_file: Path | None = None,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    cache_dir: Path | None = None,
    log: Log = _silent,
) -> PatchDataset:
    """One split (``train``, ``valid`` or ``test``; ``all`` for a Kaggle folder) of a PCam folder.

    For the Kaggle layout the split comes from ``split_file`` when it exists, else it is
    drawn with ``ratios`` and ``seed`` (and saved to ``split_file`` when one is named).
    """
    data_dir = Path(data_dir)
    split = _canonical_split(split)
    layout = detect_layout(data_dir)
    if layout == "official":
        if split not in OFFICIAL_SPLITS:
            raise DatasetError(f"unknown split {split!r} for the official PCam files; use train, valid or test")
        x_path = _resolve_h5(data_dir, split, "x", cache_dir, log)
        y_path = _resolve_h5(data_dir, split, "y", cache_dir, log)
        meta = official_path(data_dir, split, "meta")
        return H5PatchDataset(x_path, y_path, meta_path=meta if meta.is_file() else None, split=split)
    if split not in (*OFFICIAL_SPLITS, "all"):
        raise DatasetError(f"unknown split {split!r} for a Kaggle folder; use train, valid, test or all")
    if split == "all":
        ids, labels = read_kaggle_labels(data_dir)
        dataset = KaggleDataset(data_dir, ids, labels, split="all")
    else:
        assignment = load_or_make_split(data_dir, split_file, ratios=ratios, seed=seed, log=log)
        dataset = KaggleDataset(data_dir, assignment.ids, np.asarray(assignment.labels), split=split)
        dataset = dataset.subset(assignment.positions(split))
    if len(dataset) == 0:
        raise DatasetError(f"{data_dir}: the '{split}' split is empty; the folder holds too few patches to split")
    dataset.read_batch([0])  # fail early on a wrong shape, not in a worker process
    return dataset


# ---------------------------------------------------------------------------------------
# PCam preprocessing: over-dark and over-bright patches


def dark_bright_fraction(images: np.ndarray, *, dark: int = 10, bright: int = 245) -> np.ndarray:
    """Per image, the fraction of pixels whose mean RGB is below ``dark`` or above ``bright``."""
    mean = images.astype(np.float32).mean(axis=-1)
    return ((mean < dark) | (mean > bright)).mean(axis=(1, 2))


def _batches(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


def find_clean_patches(
    dataset: PatchDataset,
    *,
    dark: int = 10,
    bright: int = 245,
    max_fraction: float = 0.5,
    batch_size: int = 2048,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> np.ndarray:
    """Positions of the patches that are not mostly over-dark or over-bright.

    PCam's published preprocessing drops patches whose pixels are mostly below 10 or
    above 245 (pen, dust, glass).  The images are read in batches, never all at once.
    """
    batches = _batches(len(dataset), batch_size)
    if progress is not None:
        batches = progress(batches)
    keep = [pos[dark_bright_fraction(dataset.read_batch(pos), dark=dark, bright=bright) <= max_fraction]
            for pos in batches]
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)
