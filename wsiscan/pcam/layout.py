"""Which PCam layout a folder holds (detect_layout), and one split of it opened as a dataset (open_split)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError
from .dataset import OFFICIAL_SPLITS, Log, PatchDataset, silent
from .hdf5 import OFFICIAL_PREFIX, H5PatchDataset, official_path, resolve_h5
from .kaggle import KAGGLE_LABELS, KaggleDataset, load_or_make_split, read_kaggle_labels

_SPLIT_ALIASES = {"val": "valid", "validation": "valid"}


def _canonical_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


def detect_layout(data_dir: Path) -> str:
    """``"official"`` or ``"kaggle"``, or a :class:`DatasetError` saying what was expected."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: data folder not found; pass the folder holding the PCam files to --data")
    if any(data_dir.glob(f"{OFFICIAL_PREFIX}*")):
        return "official"
    if (data_dir / KAGGLE_LABELS).exists() or (data_dir / "train").is_dir():
        return "kaggle"
    raise DatasetError(
        f"{data_dir}: neither PCam layout found; expected camelyonpatch_level_2_split_{{train,valid,test}}_{{x,y}}.h5"
        f"[.gz] (official) or train/<id>.tif with {KAGGLE_LABELS} (Kaggle)"
    )


def open_split(
    data_dir: Path,
    split: str,
    *,
    split_file: Path | None = None,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    cache_dir: Path | None = None,
    log: Log = silent,
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
        x_path = resolve_h5(data_dir, split, "x", cache_dir, log)
        y_path = resolve_h5(data_dir, split, "y", cache_dir, log)
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
