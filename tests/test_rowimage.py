"""RowImage: whole-slide pictures in row stripes, in memory or in an unlinked temporary file."""

from __future__ import annotations

import errno
import os
import pickle
import threading

import numpy as np
import pytest

from wsiscan.errors import OutputError
from wsiscan.rowimage import RowImage, as_row_image


@pytest.mark.parametrize("limit", [0, 1 << 30], ids=["file", "memory"])
@pytest.mark.parametrize("shape,dtype", [((37, 23, 3), np.uint8), ((41, 19), np.float32), ((5, 7), bool)])
def test_rows_written_are_rows_read(limit, shape, dtype):
    rng = np.random.default_rng(1)
    data = (rng.random(shape) * 255).astype(dtype)
    with RowImage.from_array(data, ram_limit_bytes=limit) as image:
        assert image.in_memory == (limit > 0)
        np.testing.assert_array_equal(image.to_array(), data)
        np.testing.assert_array_equal(image.rows(1, 4), data[1:4])
        out = np.empty((2,) + shape[1:], dtype)
        assert image.rows(1, 3, out=out) is out
        np.testing.assert_array_equal(out, data[1:3])
        got = np.concatenate([rows for _, rows in image.stripes(4)])
        np.testing.assert_array_equal(got, data)
        assert [b for b in image.stripe_bounds(16)] == [(y, min(y + 16, shape[0])) for y in range(0, shape[0], 16)]
        assert image.count_nonzero() == np.count_nonzero(data)
        assert image.any() == bool(data.any())


def test_unwritten_rows_are_zero_and_partial_writes_land_in_place():
    image = RowImage((10, 4), np.int16, ram_limit_bytes=0)
    image.write_rows(6, np.full((2, 4), -3, np.int16))
    expected = np.zeros((10, 4), np.int16)
    expected[6:8] = -3
    np.testing.assert_array_equal(image.to_array(), expected)
    assert not RowImage((3, 3), bool, ram_limit_bytes=0).any()


def test_in_memory_rows_are_read_only_views():
    image = RowImage.from_array(np.arange(12).reshape(4, 3))
    rows = image.rows(0, 2)
    with pytest.raises(ValueError):
        rows[0, 0] = 5
    assert image.to_array().flags.writeable


def test_file_is_unlinked_and_closed():
    image = RowImage((64, 64), np.uint8, ram_limit_bytes=0)
    name = image._file._file.name
    assert not os.path.exists(str(name)) or not isinstance(name, str)
    image.close()
    image.close()
    with pytest.raises(ValueError, match="closed"):
        image.rows(0, 1)


def test_bad_rows_are_refused():
    image = RowImage((4, 3), np.uint8, ram_limit_bytes=0)
    with pytest.raises(IndexError):
        image.rows(2, 5)
    with pytest.raises(ValueError):
        image.write_rows(0, np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError):
        image.rows(0, 2, out=np.empty((3, 3), np.uint8))


def test_full_disk_is_one_clear_error(monkeypatch):
    image = RowImage((8, 1024), np.uint8, ram_limit_bytes=0)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OutputError, match=r"disk is full.*TMPDIR") as caught:
        image.write_rows(0, np.ones((2, 1024), np.uint8))
    assert "\n" not in str(caught.value)


def test_pickle_carries_the_rows():
    data = np.arange(60, dtype=np.float32).reshape(6, 10)
    image = RowImage.from_array(data, ram_limit_bytes=0)
    copy = pickle.loads(pickle.dumps(image))
    np.testing.assert_array_equal(copy.to_array(), data)


def test_threads_write_distinct_rows():
    image = RowImage((256, 300), np.uint16, ram_limit_bytes=0)
    rows = np.arange(256 * 300, dtype=np.uint16).reshape(256, 300)
    threads = [threading.Thread(target=lambda k=k: [image.write_rows(y, rows[y:y + 1]) for y in range(k, 256, 4)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(image.to_array(), rows)


def test_wrap_shares_the_array():
    data = np.zeros((6, 5), np.uint8)
    image = as_row_image(data)
    assert as_row_image(image) is image
    image.write_rows(2, np.ones((1, 5), np.uint8))
    assert data[2].sum() == 5 and image.shape == (6, 5) and image.nbytes == 30


def test_numpy_does_not_take_a_row_image_for_an_array():
    image = RowImage.from_array(np.ones((4, 4), bool), ram_limit_bytes=0)
    with pytest.raises(TypeError, match="row stripes"):
        np.count_nonzero(image)
    with pytest.raises(TypeError, match="row stripes"):
        np.asarray(image)
