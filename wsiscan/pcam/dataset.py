"""PCam's patch shape, resolution and split names, and PatchDataset, the map-style base of both layouts."""

from __future__ import annotations

from typing import Callable, Self, Sequence

import numpy as np

PATCH_SHAPE = (96, 96, 3)
PCAM_MPP = 0.972
OFFICIAL_SPLITS = ("train", "valid", "test")

Log = Callable[[str], None]


def silent(message: str) -> None:
    del message


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

    def subset(self, positions: Sequence[int] | np.ndarray) -> Self:
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
