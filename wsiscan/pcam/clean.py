"""PCam preprocessing: finding the patches that are not mostly over-dark or over-bright."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from .dataset import PatchDataset


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
    progress: Callable[[Iterator[np.ndarray]], Iterable[np.ndarray]] | None = None,
) -> np.ndarray:
    """Positions of the patches that are not mostly over-dark or over-bright.

    PCam's published preprocessing drops patches whose pixels are mostly below 10 or
    above 245 (pen, dust, glass).  The images are read in batches, never all at once.
    """
    raw = _batches(len(dataset), batch_size)
    batches = progress(raw) if progress is not None else raw
    keep = [pos[dark_bright_fraction(dataset.read_batch(pos), dark=dark, bright=bright) <= max_fraction]
            for pos in batches]
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)
