"""Small PatchCamelyon-format data sets with learnable labels, for tests and benchmarks.

The patches imitate H&E at PCam's scale: a pink eosin background with scattered purple
nuclei.  A label-1 patch carries a dense, dark nuclear texture in the centre 32 x 32 px
(PCam's rule: tumour in the centre counts), so a small CNN separates the classes within
a few epochs, while ``shuffle_labels=True`` gives the same images with labels that carry
no signal (a model should score an AUC near 0.5 on it).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np

from .pcam import OFFICIAL_SPLITS, PATCH_SHAPE, official_path

__all__ = ["make_patches", "write_pcam_h5", "write_kaggle_folder"]

_EOSIN = np.array([236.0, 176.0, 206.0], dtype=np.float32)
_NUCLEUS = np.array([80.0, 45.0, 125.0], dtype=np.float32)


def make_patches(
    n: int,
    *,
    seed: int = 0,
    positive_fraction: float = 0.5,
    blank_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic patches, (n, 96, 96, 3) uint8, and their 0/1 labels.

    ``blank_fraction`` of the patches are replaced by near-white glass (mean RGB > 245),
    which PCam's preprocessing drops.
    """
    rng = np.random.default_rng(seed)
    size = PATCH_SHAPE[0]
    labels = (rng.random(n) < positive_fraction).astype(np.uint8)
    # Nuclei: a coarse random field upsampled 4x into blobs, thresholded per patch.
    coarse = rng.random((n, size // 4, size // 4), dtype=np.float32)
    field = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    density = rng.uniform(0.03, 0.25, size=(n, 1, 1)).astype(np.float32)
    density = np.broadcast_to(density, field.shape).copy()
    centre = slice(size // 2 - 16, size // 2 + 16)
    tumour_density = rng.uniform(0.5, 0.75, size=n).astype(np.float32)
    density[labels == 1, centre, centre] = tumour_density[labels == 1, None, None]
    nuclei = (field < density).astype(np.float32)[..., None]
    stain = 1.0 + rng.normal(0.0, 0.04, size=(n, 1, 1, 3)).astype(np.float32)
    image = (1.0 - nuclei) * _EOSIN * stain + nuclei * _NUCLEUS * stain
    image += rng.normal(0.0, 10.0, size=image.shape).astype(np.float32)
    if blank_fraction > 0:
        blank = rng.random(n) < blank_fraction
        image[blank] = 250.0 + rng.normal(0.0, 1.5, size=(int(blank.sum()), *PATCH_SHAPE))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _labels_for(labels: np.ndarray, shuffle_labels: bool, seed: int) -> np.ndarray:
    if not shuffle_labels:
        return labels
    return np.random.default_rng(seed + 7919).permutation(labels)


def write_pcam_h5(
    root: str | Path,
    *,
    n_per_split: dict[str, int] | None = None,
    seed: int = 0,
    gzipped: bool = False,
    meta: bool = True,
    shuffle_labels: bool = False,
    blank_fraction: float = 0.0,
) -> Path:
    """Write the six official-layout HDF5 files (and ``_meta.csv``) into ``root``.

    ``gzipped=True`` leaves only ``.h5.gz`` files, as PCam is distributed.
    """
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"train": 256, "valid": 64, "test": 64, **(n_per_split or {})}
    for offset, split in enumerate(OFFICIAL_SPLITS):
        x, y = make_patches(sizes[split], seed=seed * 10 + offset, blank_fraction=blank_fraction)
        y = _labels_for(y, shuffle_labels, seed * 10 + offset)
        x_path, y_path = official_path(root, split, "x"), official_path(root, split, "y")
        with h5py.File(x_path, "w") as handle:
            handle.create_dataset("x", data=x, chunks=(min(32, max(1, len(x))), *PATCH_SHAPE))
        with h5py.File(y_path, "w") as handle:
            handle.create_dataset("y", data=y.reshape(-1, 1, 1, 1))
        if meta:
            with open(official_path(root, split, "meta"), "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"])
                for i, label in enumerate(y):
                    writer.writerow([i, 96 * i, 0, bool(label), bool(label), f"synthetic_{split}"])
        if gzipped:
            for path in (x_path, y_path):
                with open(path, "rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                path.unlink()
    return root


def write_kaggle_folder(
    root: str | Path,
    *,
    n: int = 160,
    seed: int = 0,
    shuffle_labels: bool = False,
    blank_fraction: float = 0.0,
) -> Path:
    """Write ``train/<id>.tif`` patches and ``train_labels.csv`` (Kaggle layout) into ``root``."""
    import tifffile

    root = Path(root)
    (root / "train").mkdir(parents=True, exist_ok=True)
    x, y = make_patches(n, seed=seed, blank_fraction=blank_fraction)
    y = _labels_for(y, shuffle_labels, seed)
    with open(root / "train_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        for i in range(n):
            pid = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()
            tifffile.imwrite(root / "train" / f"{pid}.tif", x[i], photometric="rgb")
            writer.writerow([pid, int(y[i])])
    return root
