"""The Kaggle folder layout: KaggleDataset, train_labels.csv, and the stratified split kept in split.csv."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError
from ..layout import atomic_path
from .dataset import OFFICIAL_SPLITS, PATCH_SHAPE, Log, PatchDataset, silent

KAGGLE_LABELS = "train_labels.csv"


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
        raise DatasetError(f"{path}: patch listed in {KAGGLE_LABELS} is missing; restore the file") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable TIFF ({exc}); re-download the patch") from exc
    if image.shape != PATCH_SHAPE or image.dtype != np.uint8:
        raise DatasetError(
            f"{path}: patch has shape {image.shape} {image.dtype}, expected {PATCH_SHAPE} uint8 RGB as in PCam"
        )
    return image


def read_kaggle_labels(root: Path) -> tuple[list[str], np.ndarray]:
    """Ids and labels from ``train_labels.csv``, checked against the ``train/`` folder."""
    root = Path(root)
    csv_path = root / KAGGLE_LABELS
    if not csv_path.is_file():
        raise DatasetError(
            f"{root}: {KAGGLE_LABELS} not found; the Kaggle layout needs train/<id>.tif and "
            f"{KAGGLE_LABELS} (id,label) side by side"
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
            f"{train_dir}: {len(missing)} of {len(ids)} patches in {KAGGLE_LABELS} have no .tif, "
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


def _ratio_triple(values: Sequence[float]) -> tuple[float, float, float]:
    """``values`` as (train, valid, test) ratios; :class:`DatasetError` unless three non-negative numbers summing
    to 1."""
    ratios = tuple(float(r) for r in values)
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise DatasetError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    return ratios[0], ratios[1], ratios[2]


def make_stratified_split(
    labels: np.ndarray, *, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> np.ndarray:
    """Split names (train/valid/test) per patch, stratified by label and reproducible.

    Within each class the patches are permuted by ``numpy.random.default_rng(seed)`` and
    cut by ``ratios``; each class with at least three patches puts at least one in the
    validation and in the test split.
    """
    ratios = _ratio_triple(ratios)
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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        handle.write(f"# seed={assignment.seed} ratios={','.join(str(r) for r in assignment.ratios)}\n")
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "split"])
        writer.writerows(zip(assignment.ids, assignment.labels, assignment.splits, strict=True))


def read_split_csv(path: Path) -> SplitAssignment:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read split file ({exc.strerror})") from exc
    seed, ratios = 0, (0.8, 0.1, 0.1)
    if lines and lines[0].startswith("#"):
        fields = dict(part.split("=", 1) for part in lines[0][1:].split() if "=" in part)
        try:
            seed = int(fields.get("seed", seed))
            if "ratios" in fields:
                ratios = _ratio_triple([float(r) for r in fields["ratios"].split(",")])
        except ValueError as exc:  # DatasetError is a ValueError too
            raise DatasetError(f"{path}: bad header line {lines[0]!r} ({exc}); expected '# seed=INT ratios=A,B,C': "
                               "fix it, or remove the file to make a new split") from exc
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
        ratios=ratios,
    )


def load_or_make_split(
    root: Path,
    split_file: Path | None,
    *,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    log: Log = silent,
) -> SplitAssignment:
    """The split saved in ``split_file`` if it exists (checked against the labels), else a
    new stratified one, written to ``split_file`` when given."""
    ids, labels = read_kaggle_labels(root)
    if split_file is not None and Path(split_file).is_file():
        saved = read_split_csv(Path(split_file))
        by_id = dict(zip(ids, labels.tolist(), strict=True))
        for pid, label in zip(saved.ids, saved.labels, strict=True):
            if by_id.get(pid) != label:
                raise DatasetError(
                    f"{split_file}: patch {pid} is not in {Path(root) / KAGGLE_LABELS} with label {label}; "
                    "the split belongs to other data: remove it or point --data at the matching folder"
                )
        return saved
    splits = make_stratified_split(labels, ratios=ratios, seed=seed)
    assignment = SplitAssignment(tuple(ids), tuple(labels.tolist()), tuple(splits.tolist()), seed,
                                 _ratio_triple(ratios))
    if split_file is not None:
        write_split_csv(Path(split_file), assignment)
        log(f"made a stratified {':'.join(f'{r:g}' for r in ratios)} split of {len(ids)} Kaggle patches "
            f"(seed {seed}), saved to {split_file}")
    return assignment
