"""Tile store integrity: checksums on every chunk, crash-atomic chunk writes, probabilities
range-checked on every read, one line naming a damaged chunk and the fix, and schema 1
stores (no checksums) still read with a one-line warning."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import assert_one_line_error, run

from wsiscan.errors import DamagedChunkError, UncheckedStoreWarning

SLIDE_ID = "synthetic"
# small chunks, so the heatmap and the pixels each have several and a chunk other than (0, 0) can be named
CONFIG = "tile:\n  supertile_px: 384\npredict:\n  heatmap_chunk_cells: 8\n  keep_pixels: true\n"


def _predict(slide, out: Path, ckpt, cfg: Path, *extra):
    return run("predict", slide, "-o", out, "--model", ckpt, "--config", cfg, "-q", *extra)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _flip(path: Path, n_bytes: int, *, random: bool = False) -> None:
    """Replace ``n_bytes`` in the middle of ``path``: inverted, or random bytes."""
    data = bytearray(path.read_bytes())
    at = max(0, len(data) // 2 - n_bytes // 2)
    n = min(n_bytes, len(data) - at)
    data[at : at + n] = os.urandom(n) if random else bytes(b ^ 0xFF for b in data[at : at + n])
    path.write_bytes(bytes(data))


def _make_schema_1(store_path: Path) -> None:
    """Turn a store into what a schema 1 wsiscan wrote: the same arrays with Blosc-LZ4 and
    no checksum codec, and the store attributes without ``checksums``."""
    old = store_path.with_name("old.zarr")
    src = zarr.open_group(str(store_path), mode="r")
    dst = zarr.open_group(str(old), mode="w", zarr_format=3)
    dst.attrs.update(dict(src.attrs))

    def copy(group, out) -> None:
        for name, node in group.members():
            if isinstance(node, zarr.Group):
                sub = out.create_group(name)
                sub.attrs.update(dict(node.attrs))
                copy(node, sub)
                continue
            assert any(type(c).__name__ == "Crc32cCodec" for c in node.compressors)
            blosc = [c for c in node.compressors if type(c).__name__ == "BloscCodec"]
            arr = out.create_array(name, shape=node.shape, dtype=node.dtype, chunks=node.chunks, compressors=blosc,
                                   fill_value=node.fill_value, chunk_key_encoding={"name": "default", "separator": "/"},
                                   config={"write_empty_chunks": True}, attributes=dict(node.attrs))
            arr[...] = node[...]

    copy(src, dst)
    meta = dict(dst.attrs["wsiscan"])
    meta["schema_version"] = 1
    del meta["checksums"]
    dst.attrs["wsiscan"] = meta
    shutil.rmtree(store_path)
    old.rename(store_path)


@pytest.fixture(scope="module")
def finished(synthetic_slide, tiny_ckpt, tmp_path_factory):
    """A finished ``predict --keep-pixels`` result (several heatmap and pixel chunks), made once."""
    root = tmp_path_factory.mktemp("integrity")
    cfg = root / "c.yaml"
    cfg.write_text(CONFIG)
    r = _predict(synthetic_slide.path, root / "out", tiny_ckpt, cfg)
    assert r.exit_code == 0, r.output
    return root / "out", cfg


@pytest.fixture
def result(finished, tmp_path):
    """A private copy of the finished result: (OUT, slide folder, config)."""
    src, cfg = finished
    out = tmp_path / "out"
    shutil.copytree(src, out)
    return out, out / SLIDE_ID, cfg


@pytest.fixture
def result_v1(result):
    """The finished result with its store as a schema 1 wsiscan wrote it (no checksums)."""
    out, slide_dir, cfg = result
    _make_schema_1(slide_dir / "store.zarr")
    return out, slide_dir, cfg


def test_every_stored_array_carries_a_crc32c_after_blosc(result):
    _, slide_dir, _ = result
    store = slide_dir / "store.zarr"
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["wsiscan"]
    assert meta["schema_version"] == 2 and meta["checksums"] == "crc32c"
    arrays = {}
    for zj in store.rglob("zarr.json"):
        doc = json.loads(zj.read_text())
        if doc["node_type"] == "array":
            arrays[str(zj.parent.relative_to(store))] = [c["name"] for c in doc["codecs"]]
    # pixels, the pictures, the grid arrays and the heatmap (its pyramid levels: the range-check test)
    assert {"pixels", "thumbnail", "tissue_mask", "overview", "heatmap/0", "grids/s96/rc"} <= set(arrays)
    for name, codecs in arrays.items():
        assert codecs[-2:] == ["blosc", "crc32c"], (name, codecs)


def test_flipped_heatmap_chunk_is_refused_by_heatmap_and_predict(result, synthetic_slide, tiny_ckpt):
    out, slide_dir, cfg = result
    _flip(slide_dir / "store.zarr" / "heatmap" / "0" / "c" / "1" / "1", 8)
    before = _snapshot(out)
    for r in (run("heatmap", slide_dir), _predict(synthetic_slide.path, out, tiny_ckpt, cfg)):
        assert_one_line_error(r, "store.zarr/heatmap/0 chunk (1, 1) is damaged (checksum mismatch)", "--overwrite")
        assert _snapshot(out) == before  # nothing deleted or rewritten: no summary, overlay or GeoJSON from it
    # the fix the message names rebuilds it
    assert _predict(synthetic_slide.path, out, tiny_ckpt, cfg, "--overwrite").exit_code == 0
    assert run("heatmap", slide_dir).exit_code == 0


def test_damaged_pixel_chunk_is_one_line_on_resume_and_in_the_result_api(result, synthetic_slide, tiny_ckpt):
    from wsiscan import open_result

    out, slide_dir, cfg = result
    store = slide_dir / "store.zarr"
    chunk = sorted((store / "pixels" / "c").rglob("0"), key=lambda p: p.stat().st_size)[-1]  # a tissue chunk
    ci, cj = (int(p) for p in chunk.relative_to(store / "pixels" / "c").parts[:2])
    _flip(chunk, 4096, random=True)
    with pytest.raises(DamagedChunkError, match=rf"pixels chunk \({ci}, {cj}, 0\) is damaged \(checksum mismatch\)"):
        open_result(slide_dir).read_store_px((0, 0, 2048, 1536))
    # an interrupted run: its heatmap chunks and summary are gone, so the rerun reads the stored pixels
    shutil.rmtree(store / "heatmap" / "0" / "c")
    (slide_dir / "summary.json").unlink()
    before = set(_snapshot(out))
    r = _predict(synthetic_slide.path, out, tiny_ckpt, cfg)
    assert_one_line_error(r, f"store.zarr/pixels chunk ({ci}, {cj}, 0) is damaged (checksum mismatch)",
                          "--overwrite")
    assert before <= set(_snapshot(out))  # nothing deleted


def test_schema_1_store_reads_and_says_so_once(result_v1, synthetic_slide, tiny_ckpt):
    from wsiscan import open_result

    out, slide_dir, cfg = result_v1
    r = run("heatmap", slide_dir)
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsiscan: warning: "), r.stderr
    assert "without chunk checksums (tile store schema version 1)" in lines[0] and "--overwrite" in lines[0]
    with pytest.warns(UncheckedStoreWarning):
        res = open_result(slide_dir)
    assert res.store.checksums is False
    assert np.isfinite(res.cells()).any()
    r = _predict(synthetic_slide.path, out, tiny_ckpt, cfg)  # a rerun resumes the old store
    assert r.exit_code == 0, r.output
    assert sum("without chunk checksums" in ln for ln in r.stderr.splitlines()) == 1, r.stderr


def test_out_of_range_probability_in_an_unchecked_store_is_refused(result_v1):
    out, slide_dir, _ = result_v1
    # damage a checksum cannot catch in a schema 1 store: a chunk that decodes to values that are no probabilities
    raw = zarr.open_array(str(slide_dir / "store.zarr" / "heatmap" / "0"), mode="r+")
    values = raw[8:16, 8:16]
    values[np.isnan(values)] = 0.5
    values[3, 4] = -4.6
    raw[8:16, 8:16] = values
    before = _snapshot(out)
    r = run("heatmap", slide_dir)
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("wsiscan: warning: "), r.stderr
    assert lines[1].startswith("wsiscan: error: ")
    for needle in ("store.zarr/heatmap/0 chunk (1, 1) is damaged", "-4.6", "[0, 1]", "--overwrite"):
        assert needle in lines[1], (needle, lines[1])
    assert _snapshot(out) == before


def test_undecodable_chunk_in_an_unchecked_store_is_one_line(result_v1):
    from wsiscan import open_result

    _, slide_dir, _ = result_v1
    chunk = slide_dir / "store.zarr" / "heatmap" / "0" / "c" / "0" / "1"
    chunk.write_bytes(chunk.read_bytes()[:7])  # a Blosc header cut short
    with pytest.warns(UncheckedStoreWarning):
        res = open_result(slide_dir)
    with pytest.raises(DamagedChunkError, match=r"heatmap/0 chunk \(0, 1\) is damaged \(cannot be decoded"):
        res.cells()


def test_range_check_names_the_chunk_and_allows_nan(tmp_path):
    from wsiscan.store import create_tile_store

    store = create_tile_store(tmp_path / "s.zarr", meta={}, height_px=64, width_px=64, supertile_px=32,
                              compression_level=1, thumbnail=np.zeros((4, 4, 3), np.uint8),
                              tissue_mask=np.zeros((4, 4), bool))
    store.create_heatmap(shape=(3, 20, 30), chunk=8, meta={})
    level = store.heatmap_level(0)
    cells = np.full((3, 20, 30), np.nan, np.float32)
    cells[:, :10, :10] = np.linspace(0, 1, 300, dtype=np.float32).reshape(3, 10, 10)
    level[...] = cells
    assert np.array_equal(level[...], cells, equal_nan=True)  # NaN (not scored), 0 and 1 all pass
    level[1, 13, 21] = 1.5
    with pytest.raises(DamagedChunkError, match=r"heatmap/0 chunk \(0, 1, 2\) is damaged \(holds 1\.5,"):
        level[...]
    with pytest.raises(DamagedChunkError, match=r"chunk \(0, 1, 2\)"):
        level[1, 10:, 20:]
    assert np.isnan(level[2, 13, 21])  # a read that does not touch the bad value passes
    level[1, 13, 21] = np.inf
    with pytest.raises(DamagedChunkError, match=r"holds inf"):
        level[:, 13]
    level1 = store.create_heatmap_level(1, shape=(3, 10, 15), chunk=8)  # a pyramid level: checksummed and checked
    assert level1.checksummed and level1.probabilities


def test_chunk_rewrite_is_a_new_file_and_partial_files_of_dead_writers_are_swept(tmp_path):
    from wsiscan.store import create_tile_store, open_tile_store

    store = create_tile_store(tmp_path / "s.zarr", meta={}, height_px=64, width_px=64, supertile_px=32,
                              compression_level=1, thumbnail=np.zeros((4, 4, 3), np.uint8),
                              tissue_mask=np.zeros((4, 4), bool))
    store.write_chunk(0, 1, np.full((32, 32, 3), 7, np.uint8))
    chunk = tmp_path / "s.zarr" / "pixels" / "c" / "0" / "1" / "0"
    link = tmp_path / "hard-link"
    os.link(chunk, link)  # what a hard-linked copy of the store holds
    old_bytes = link.read_bytes()
    store.write_chunk(0, 1, np.full((32, 32, 3), 9, np.uint8))
    assert chunk.stat().st_ino != link.stat().st_ino and link.read_bytes() == old_bytes
    assert store.pixels[0, 40, 0] == 9
    assert not [p for p in (tmp_path / "s.zarr").rglob("*") if ".partial-" in p.name]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = chunk.with_name(f".0.partial-{int(dead.stdout)}-0badc0de")
    live = chunk.with_name(f".0.partial-{os.getpid()}-0badc0de")
    stale.write_bytes(b"torn")
    live.write_bytes(b"being written")
    reopened = open_tile_store(tmp_path / "s.zarr")
    reopened.update_meta(status="in_progress")
    assert stale.exists()  # only a run that completes the store sweeps
    reopened.update_meta(status="complete")
    assert not stale.exists() and live.exists()


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from wsiscan.store import open_tile_store
    store = open_tile_store(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        store.write_chunk(0, 0, rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
""")


@pytest.mark.slow
def test_kill_9_during_chunk_writes_never_leaves_a_torn_chunk(tmp_path):
    from wsiscan.store import create_tile_store, open_tile_store

    create_tile_store(tmp_path / "s.zarr", meta={}, height_px=256, width_px=256, supertile_px=256,
                      compression_level=1, thumbnail=np.zeros((4, 4, 3), np.uint8),
                      tissue_mask=np.zeros((4, 4), bool))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    for seed in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "s.zarr"), str(seed)],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.05 * seed)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = open_tile_store(tmp_path / "s.zarr")
        assert store.pixels[...].shape == (256, 256, 3)  # decodes and passes its checksum: a whole chunk
        store.update_meta(status="complete")  # what the resumed run does at its end: sweeps the partial file
        assert not [p for p in (tmp_path / "s.zarr").rglob("*") if ".partial-" in p.name]


def test_heatmap_group_left_without_level_0_by_a_kill_is_created_again(result, synthetic_slide, tiny_ckpt):
    """A run killed inside the heatmap's creation (its group written, level 0 not yet) left a
    store the rerun must resume, not refuse as damaged."""
    out, slide_dir, cfg = result
    store = slide_dir / "store.zarr"
    expected = zarr.open_array(store / "heatmap" / "0", mode="r")[...]
    for level in sorted((store / "heatmap").iterdir()):
        if level.is_dir():
            shutil.rmtree(level)
    (slide_dir / "summary.json").unlink()  # the killed run had not finished
    r = _predict(synthetic_slide.path, out, tiny_ckpt, cfg)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(zarr.open_array(store / "heatmap" / "0", mode="r")[...], expected)
    assert (slide_dir / "summary.json").is_file()
