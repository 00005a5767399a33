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

Only its hdf5 module imports h5py.  Datasets return ``(image, label)`` with the
image a (96, 96, 3) uint8 numpy array, so PyTorch's default collate stacks them.
"""

from .clean import dark_bright_fraction, find_clean_patches
from .dataset import OFFICIAL_SPLITS, PATCH_SHAPE, PCAM_MPP, Log, PatchDataset
from .hdf5 import H5PatchDataset, default_cache_dir, official_path
from .kaggle import (
    KaggleDataset,
    SplitAssignment,
    load_or_make_split,
    make_stratified_split,
    read_kaggle_labels,
    read_split_csv,
    write_split_csv,
)
from .layout import detect_layout, open_split

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
    "default_cache_dir",
    "open_split",
    "make_stratified_split",
    "load_or_make_split",
    "read_split_csv",
    "write_split_csv",
    "read_kaggle_labels",
    "dark_bright_fraction",
    "find_clean_patches",
    "Log",
]
