"""PCam readers: official HDF5 (plain and gzipped), Kaggle folders, splits, bad data."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsiscan import pcam
from wsiscan.errors import DatasetError
from wsiscan.testing_pcam import make_patches, write_kaggle_folder, write_pcam_h5

SHARED_DATA = Path(os.environ.get("WSISCAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared/data"))
KAGGLE_SAMPLE = SHARED_DATA / "pcam-kaggle-sample"


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    return write_pcam_h5(tmp_path_factory.mktemp("official"), n_per_split={"train": 40, "valid": 12, "test": 10})


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    return write_kaggle_folder(tmp_path_factory.mktemp("kaggle"), n=60)


# ---------------------------------------------------------------------------------------
# Official layout


def test_official_splits_read_lazily(official):
    sizes = {"train": 40, "valid": 12, "test": 10}
    for split, n in sizes.items():
        ds = pcam.open_split(official, split)
        assert isinstance(ds, pcam.H5PatchDataset)
        assert len(ds) == n == len(ds.labels)
        image, label = ds[3]
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and label in (0, 1)
        assert ds.meta_path is not None and ds.describe()["split"] == split
    assert pcam.open_split(official, "val").split == "valid"  # alias
    with h5py.File(pcam.official_path(official, "train", "x"), "r") as f:
        expected = f["x"][5]
    ds = pcam.open_split(official, "train")
    np.testing.assert_array_equal(ds[5][0], expected)
    # batch reads (contiguous and scattered) agree with item reads
    np.testing.assert_array_equal(ds.read_batch([4, 5, 6]), np.stack([ds[i][0] for i in (4, 5, 6)]))
    np.testing.assert_array_equal(ds.read_batch([9, 2, 30]), np.stack([ds[i][0] for i in (9, 2, 30)]))
    sub = ds.subset([7, 1])
    np.testing.assert_array_equal(sub[0][0], ds[7][0])
    assert sub.labels.tolist() == [ds.labels[7], ds.labels[1]]


def test_h5_dataset_pickles_without_its_handle_and_works_in_workers(official):
    import torch

    ds = pcam.open_split(official, "valid")
    ds[0]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handle is None
    np.testing.assert_array_equal(clone[2][0], ds[2][0])
    plain = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)
    workers = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    for (xa, ya), (xb, yb) in zip(plain, workers, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_gzipped_files_are_decompressed_once(tmp_path):
    root = write_pcam_h5(tmp_path / "gz", n_per_split={"train": 8, "valid": 4, "test": 4}, gzipped=True)
    assert not pcam.official_path(root, "train", "x").exists()
    messages: list[str] = []
    ds = pcam.open_split(root, "train", log=messages.append)
    assert len(ds) == 8 and ds[0][0].shape == (96, 96, 3)
    assert len(messages) == 2 and all("h5py cannot read gzip" in m for m in messages)
    messages.clear()
    pcam.open_split(root, "train", log=messages.append)
    assert messages == []  # reused


def test_gzipped_files_in_a_read_only_folder_go_to_the_cache(tmp_path, monkeypatch):
    root = write_pcam_h5(tmp_path / "gz", n_per_split={"train": 4, "valid": 4, "test": 4}, gzipped=True)
    monkeypatch.setattr(pcam.hdf5.os, "access", lambda path, mode: False)
    ds = pcam.open_split(root, "test", cache_dir=tmp_path / "cache")
    assert ds.x_path == tmp_path / "cache" / "pcam" / "camelyonpatch_level_2_split_test_x.h5"
    assert not pcam.official_path(root, "test", "x").exists()


def _copy_official(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_x_file(official, tmp_path):
    root = _copy_official(official, tmp_path / "d")
    pcam.official_path(root, "valid", "x").unlink()
    with pytest.raises(DatasetError, match="missing camelyonpatch_level_2_split_valid_x.h5"):
        pcam.open_split(root, "valid")


def test_missing_y_file(official, tmp_path):
    root = _copy_official(official, tmp_path / "d")
    pcam.official_path(root, "test", "y").unlink()
    with pytest.raises(DatasetError, match="missing camelyonpatch_level_2_split_test_y.h5"):
        pcam.open_split(root, "test")


def test_mismatched_lengths(official, tmp_path):
    root = _copy_official(official, tmp_path / "d")
    with h5py.File(pcam.official_path(root, "valid", "y"), "w") as f:
        f.create_dataset("y", data=np.zeros((5, 1, 1, 1), np.uint8))
    with pytest.raises(DatasetError, match="holds 12 images but .* 5 labels"):
        pcam.open_split(root, "valid")


def test_wrong_image_shape(official, tmp_path):
    root = _copy_official(official, tmp_path / "d")
    with h5py.File(pcam.official_path(root, "valid", "x"), "w") as f:
        f.create_dataset("x", data=np.zeros((12, 64, 64, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"shape \(12, 64, 64, 3\).*expected \(N, 96, 96, 3\)"):
        pcam.open_split(root, "valid")


def test_bad_labels_and_not_hdf5(official, tmp_path):
    root = _copy_official(official, tmp_path / "d")
    with h5py.File(pcam.official_path(root, "valid", "y"), "w") as f:
        f.create_dataset("y", data=np.full((12, 1, 1, 1), 2, np.uint8))
    with pytest.raises(DatasetError, match="labels must be 0 or 1"):
        pcam.open_split(root, "valid")
    pcam.official_path(root, "test", "x").write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(DatasetError, match="cannot be read as HDF5"):
        pcam.open_split(root, "test")


def test_meta_rows_must_match(official, tmp_path):
    root = _copy_official(official, tmp_path / "d")
    meta = pcam.official_path(root, "test", "meta")
    meta.write_text("\n".join(meta.read_text().splitlines()[:5]) + "\n")
    with pytest.raises(DatasetError, match="4 rows for 10 images"):
        pcam.open_split(root, "test")


def test_layout_errors(tmp_path, official):
    with pytest.raises(DatasetError, match="data folder not found"):
        pcam.open_split(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither PCam layout found"):
        pcam.open_split(tmp_path / "empty", "train")
    with pytest.raises(DatasetError, match="unknown split 'all'"):
        pcam.open_split(official, "all")


# ---------------------------------------------------------------------------------------
# Kaggle layout


def test_kaggle_split_is_stratified_deterministic_and_saved(kaggle, tmp_path):
    ids, labels = pcam.read_kaggle_labels(kaggle)
    assert len(ids) == 60
    split_file = tmp_path / "split.csv"
    sets = {s: pcam.open_split(kaggle, s, split_file=split_file) for s in ("train", "valid", "test")}
    assert split_file.is_file()
    assert sum(len(d) for d in sets.values()) == 60
    all_ids = [i for d in sets.values() for i in d.patch_ids]
    assert sorted(all_ids) == sorted(ids)  # disjoint and complete
    for s, d in sets.items():
        frac = len(d) / 60
        assert abs(frac - {"train": 0.8, "valid": 0.1, "test": 0.1}[s]) < 0.05
        assert 0 < d.labels.sum() < len(d)  # both classes in every split
        by_id = dict(zip(ids, labels.tolist(), strict=True))
        assert [by_id[i] for i in d.patch_ids] == d.labels.tolist()
    again = pcam.make_stratified_split(labels, seed=0)
    assert again.tolist() == pcam.make_stratified_split(labels, seed=0).tolist()
    assert again.tolist() != pcam.make_stratified_split(labels, seed=1).tolist()


def test_saved_split_is_reused_and_checked(kaggle, tmp_path):
    split_file = tmp_path / "split.csv"
    first = pcam.open_split(kaggle, "test", split_file=split_file, seed=0)
    # a different seed does not redraw a saved split
    again = pcam.open_split(kaggle, "test", split_file=split_file, seed=123)
    assert again.patch_ids == first.patch_ids
    text = split_file.read_text().splitlines()
    text[2] = "deadbeef,0,train"
    split_file.write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match="patch deadbeef is not in"):
        pcam.open_split(kaggle, "test", split_file=split_file)


@pytest.mark.parametrize("header", ["# seed=x ratios=0.8,0.1,0.1", "# seed=0 ratios=0.8,0.2",
                                    "# seed=0 ratios=0.8,0.1,oops", "# seed=0 ratios=0.9,0.1,0.1"])
def test_split_file_with_a_bad_header_is_refused(kaggle, tmp_path, header):
    split_file = tmp_path / "split.csv"
    pcam.open_split(kaggle, "train", split_file=split_file, ratios=(0.7, 0.2, 0.1), seed=4)
    saved = pcam.read_split_csv(split_file)
    assert saved.ratios == (0.7, 0.2, 0.1) and saved.seed == 4
    lines = split_file.read_text().splitlines()
    split_file.write_text("\n".join([header, *lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match=f"{split_file}: bad header line .*remove the file to make a new split"):
        pcam.open_split(kaggle, "train", split_file=split_file)


def test_kaggle_all_split(kaggle):
    ds = pcam.open_split(kaggle, "all")
    assert len(ds) == 60 and ds[0][0].shape == (96, 96, 3)


def test_missing_train_labels_csv(tmp_path):
    root = write_kaggle_folder(tmp_path / "k", n=6)
    (root / "train_labels.csv").unlink()
    with pytest.raises(DatasetError, match="train_labels.csv not found"):
        pcam.open_split(root, "all")


def test_csv_id_without_tif(tmp_path):
    root = write_kaggle_folder(tmp_path / "k", n=6)
    with open(root / "train_labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["0123456789abcdef", 1])
    with pytest.raises(DatasetError, match="1 of 7 patches .* have no .tif, first 0123456789abcdef.tif"):
        pcam.open_split(root, "all")


def test_kaggle_wrong_patch_shape(tmp_path):
    import tifffile

    root = write_kaggle_folder(tmp_path / "k", n=6)
    first_id = (root / "train_labels.csv").read_text().splitlines()[1].split(",")[0]
    tifffile.imwrite(root / "train" / f"{first_id}.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with pytest.raises(DatasetError, match=r"shape \(64, 64, 3\).*expected \(96, 96, 3\)"):
        pcam.open_split(root, "all")


def test_bad_label_values(tmp_path):
    root = write_kaggle_folder(tmp_path / "k", n=6)
    text = (root / "train_labels.csv").read_text().replace(",1\n", ",yes\n", 1).replace(",0\n", ",yes\n", 1)
    (root / "train_labels.csv").write_text(text)
    with pytest.raises(DatasetError, match="label must be 0 or 1"):
        pcam.open_split(root, "all")


# ---------------------------------------------------------------------------------------
# Preprocessing


def test_dark_bright_fraction_by_hand():
    images = np.full((3, 96, 96, 3), 128, np.uint8)
    images[1, :48] = 255  # top half glass
    images[2, :, :24] = 0  # left quarter black
    np.testing.assert_allclose(pcam.dark_bright_fraction(images), [0.0, 0.5, 0.25])


def test_find_clean_patches_drops_blank_ones(tmp_path):
    root = write_pcam_h5(tmp_path / "d", n_per_split={"train": 50, "valid": 4, "test": 4}, blank_fraction=0.3)
    ds = pcam.open_split(root, "train")
    fractions = pcam.dark_bright_fraction(ds.read_batch(np.arange(len(ds))))
    kept = pcam.find_clean_patches(ds, batch_size=16)
    assert 0 < len(kept) < len(ds)
    assert kept.tolist() == np.flatnonzero(fractions <= 0.5).tolist()


def test_generated_patches_are_learnable_by_centre_darkness():
    x, y = make_patches(200, seed=3)
    centre = x[:, 32:64, 32:64].mean(axis=(1, 2, 3))
    assert centre[y == 1].mean() < centre[y == 0].mean() - 20


# ---------------------------------------------------------------------------------------
# Real patches


@pytest.mark.realdata
@pytest.mark.skipif(not KAGGLE_SAMPLE.is_dir(), reason=f"real data folder {KAGGLE_SAMPLE} is absent")
def test_real_kaggle_sample_loads_with_its_labels():
    ds = pcam.open_split(KAGGLE_SAMPLE, "all")
    assert len(ds) == 15 and int(ds.labels.sum()) == 5
    with open(KAGGLE_SAMPLE / "train_labels.csv", newline="") as f:
        expected = {row["id"]: int(row["label"]) for row in csv.DictReader(f)}
    assert dict(zip(ds.patch_ids, ds.labels.tolist(), strict=True)) == expected
    images = ds.read_batch(np.arange(15))
    assert images.shape == (15, 96, 96, 3) and images.dtype == np.uint8
    assert 50 < images.mean() < 250  # real H&E, not blank
    split = pcam.make_stratified_split(ds.labels, seed=0)
    assert {s: int((split == s).sum()) for s in ("train", "valid", "test")} == {"train": 11, "valid": 2, "test": 2}
