"""Tiling synthetic slides into the zarr tile store: geometry, pixels, resume, refusal to overwrite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from cli_helpers import run

from wsiscan.config import load_config
from wsiscan.errors import StoreExistsError
from wsiscan.rowimage import RowImage
from wsiscan.slide import open_slide
from wsiscan.testing import write_synthetic_slide
from wsiscan.tiling import plan_tiling, tile_slide


def _overlap_fraction(px_xy, tile, boxes_px):
    x, y = px_xy
    best = 0.0
    for bx0, by0, bx1, by1 in boxes_px:
        ox = max(0, min(x + tile, bx1) - max(x, bx0))
        oy = max(0, min(y + tile, by1) - max(y, by0))
        best = max(best, ox * oy / tile**2)
    return best


def test_tiles_lie_on_the_known_tissue(synthetic_slide, tmp_path):
    cfg = load_config()
    r = tile_slide(synthetic_slide.path, tmp_path, cfg, progress=False, workers=1)
    plan = r.plan
    assert plan.selection.level == 0 and plan.selection.lv_per_px == pytest.approx(2.0, rel=1e-3)
    scale = plan.geometry.l0_per_px
    boxes_px = [tuple(v / scale for v in b) for b in synthetic_slide.tissue_boxes_l0]
    origins = plan.grid.px_origin(plan.kept_rc)
    # the keep rule is "any tissue" (issue 12): a kept tile touches a box grown by the mask's
    # rounding and blur (two mask pixels), and none lies on the glass
    margin = plan.tissue.mask_mpp / plan.geometry.effective_mpp
    grown = [(b[0] - 2 * margin, b[1] - 2 * margin, b[2] + 2 * margin, b[3] + 2 * margin) for b in boxes_px]
    fractions = [_overlap_fraction(o, 96, grown) for o in origins]
    assert min(fractions) > 0, "a kept tile lies on the glass"
    # every tile fully inside a box (with one mask pixel of margin) is kept
    rr, cc = np.meshgrid(np.arange(plan.grid.n_rows), np.arange(plan.grid.n_cols), indexing="ij")
    all_origins = plan.grid.px_origin(np.stack([rr.ravel(), cc.ravel()], 1))
    inside = [
        (o[0], o[1]) for o in all_origins
        if any(o[0] >= b[0] + margin and o[1] >= b[1] + margin and o[0] + 96 <= b[2] - margin
               and o[1] + 96 <= b[3] - margin for b in boxes_px)
    ]
    kept = {(int(o[0]), int(o[1])) for o in origins}
    assert inside and all((int(x), int(y)) in kept for x, y in inside)
    # level-0 coordinates are the store coordinates scaled
    assert np.array_equal(plan.l0_xy(), np.floor(origins * scale + 1e-6).astype(np.int64))


def test_store_pixels_are_the_area_averaged_slide(synthetic_slide, tmp_path):
    cfg = load_config()
    r = tile_slide(synthetic_slide.path, tmp_path, cfg, progress=False, workers=2)
    g = zarr.open_group(str(r.store_path), mode="r")
    pixels = g["pixels"]
    assert pixels.shape == (1536 + 96, 2048 + 96, 3)  # the slide plus one tile of glass padding (issue 12)
    assert (pixels[1536:, :] == 255).all() and (pixels[:, 2048:] == 255).all()
    with open_slide(synthetic_slide.path) as s:
        l0 = s.read_level(level=0, lv_xy=(1024, 1024), size_px=(512, 512)).astype(np.float64)
    expected = l0.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    got = pixels[512:768, 512:768].astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0
    meta = g.attrs["wsiscan"]
    assert meta["status"] == "complete" and meta["schema_version"] == 2 and meta["checksums"] == "crc32c"
    assert meta["mpp"]["source"] == "openslide-properties"
    assert meta["slide"]["size_bytes"] == synthetic_slide.path.stat().st_size
    grid = g["grids/s96"]
    assert grid["rc"].shape == (r.n_tiles, 2) and grid["tissue_fraction"].shape == (r.n_tiles,)


def test_only_chunks_near_tissue_are_written(tmp_path):
    # one small tissue island in a corner of a large slide
    slide = write_synthetic_slide(tmp_path / "corner.tif", dimensions_px=(6144, 6144), mpp=0.486,
                                  boxes=((200, 200, 1400, 1400),))
    cfg = load_config().replace("tile", supertile_px=384)
    r = tile_slide(slide.path, tmp_path / "out", cfg, progress=False, workers=1)
    n_chunks_total = r.plan.geometry.n_chunk_rows * r.plan.geometry.n_chunk_cols
    chunk_files = list((r.store_path / "pixels" / "c").rglob("0"))
    chunk_files = [f for f in chunk_files if f.is_file()]
    assert len(chunk_files) == r.n_chunks_needed < n_chunks_total / 4
    assert r.n_tiles > 0


def test_rerun_is_a_no_op_and_other_config_is_refused(synthetic_slide, tmp_path):
    cfg = load_config()
    first = tile_slide(synthetic_slide.path, tmp_path, cfg, progress=False, workers=1)
    again = tile_slide(synthetic_slide.path, tmp_path, cfg, progress=False, workers=1)
    assert again.n_chunks_written == 0 and again.n_chunks_resumed == first.n_chunks_needed
    # a new stride reuses the pixels (no pixel is stored twice) and adds a grid
    s32 = tile_slide(synthetic_slide.path, tmp_path, cfg.replace("tile", stride_px=32), progress=False, workers=1)
    assert s32.n_chunks_written == 0 and s32.n_tiles > 5 * first.n_tiles
    g = zarr.open_group(str(first.store_path), mode="r")
    assert "s96" in g["grids"] and "s32" in g["grids"]
    with pytest.raises(StoreExistsError, match="another configuration of this slide"):
        tile_slide(synthetic_slide.path, tmp_path, cfg.replace("tile", target_mpp=1.5), progress=False)
    replaced = tile_slide(synthetic_slide.path, tmp_path, cfg.replace("tile", target_mpp=1.5), progress=False,
                          overwrite=True, workers=1)
    assert replaced.plan.geometry.effective_mpp == 1.5


def test_plan_writes_nothing(synthetic_slide, tmp_path):
    plan_tiling(synthetic_slide.path, load_config())
    assert list(tmp_path.iterdir()) == []


def _plan_arrays(plan):
    return tuple(x.to_array() if isinstance(x, RowImage) else x for x in (
        plan.thumbnail, plan.tissue.mask, plan.tissue.ink, plan.kept_rc, plan.kept_scores.tissue_fraction,
        plan.kept_scores.max_saturation, plan.chunks_needed, plan.unscored_tissue))


def test_prefetched_tissue_gives_the_plan_made_without_it(synthetic_slide, tmp_path):
    """predict makes the thumbnail and tissue mask in a thread while torch imports
    (prefetch_tissue): plan_tiling takes them only for the same file and settings, and the
    plan is the one made without them."""
    from wsiscan import tiling

    cfg = load_config()
    plain = plan_tiling(synthetic_slide.path, cfg)
    assert "tissue_wait_s" not in plain.timings_s
    tiling.prefetch_tissue(synthetic_slide.path, cfg)
    prefetched = plan_tiling(synthetic_slide.path, cfg)
    assert "tissue_wait_s" in prefetched.timings_s  # it was taken
    for a, b in zip(_plan_arrays(plain), _plan_arrays(prefetched), strict=True):
        np.testing.assert_array_equal(a, b)
    assert prefetched.identity == plain.identity and prefetched.tissue.threshold == plain.tissue.threshold
    assert plan_tiling(synthetic_slide.path, cfg).timings_s.get("tissue_wait_s") is None  # used once

    # other tissue settings: not taken, the plan follows the settings it is given
    tiling.prefetch_tissue(synthetic_slide.path, cfg.replace("tissue", closing_radius_um=40.0))
    again = plan_tiling(synthetic_slide.path, cfg)
    assert "tissue_wait_s" not in again.timings_s
    np.testing.assert_array_equal(again.tissue.mask.to_array(), plain.tissue.mask.to_array())
    # ... and dropped by that plan: a later one with those settings reads the slide itself
    other = plan_tiling(synthetic_slide.path, cfg.replace("tissue", closing_radius_um=40.0))
    assert "tissue_wait_s" not in other.timings_s
    # the file changed since (a copy written over, another mtime): not taken either
    copy = tmp_path / "copy.tif"
    copy.write_bytes(synthetic_slide.path.read_bytes())
    tiling.prefetch_tissue(copy, cfg)
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert "tissue_wait_s" not in plan_tiling(copy, cfg).timings_s


def test_a_failed_prefetch_leaves_the_error_to_plan_tiling(bad_inputs):
    from wsiscan import tiling
    from wsiscan.errors import WsiscanError

    cfg = load_config()
    for case in ("random", "no_mpp"):
        tiling.prefetch_tissue(bad_inputs[case], cfg)
        with pytest.raises(WsiscanError) as plain_error:
            plan_tiling(bad_inputs[case], cfg)
        with pytest.raises(WsiscanError) as again:
            plan_tiling(bad_inputs[case], cfg)
        assert str(plain_error.value) == str(again.value) and str(bad_inputs[case]) in str(again.value)


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_same_store(tmp_path):
    """The killed run is a real process killed with SIGKILL; the reference and the resuming run are
    the same command run in this process (the CLI in-process, so no interpreter start)."""
    slide = write_synthetic_slide(tmp_path / "big.tif", dimensions_px=(4096, 4096), mpp=0.486,
                                  boxes=((200, 200, 3900, 3900),))
    cfg_file = tmp_path / "small-chunks.yaml"
    cfg_file.write_text("tile:\n  supertile_px: 96\n")
    args = ["tile", str(slide.path), "--config", str(cfg_file), "-q", "--workers", "2"]
    cmd = [sys.executable, "-m", "wsiscan", *args]
    ref = run(*args, "-o", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output
    ref_store = tmp_path / "ref" / "big" / "store.zarr"
    n_needed = zarr.open_group(str(ref_store), mode="r").attrs["wsiscan"]["chunks_needed"]

    out = tmp_path / "killed"
    chunk_dir = out / "big" / "store.zarr" / "pixels" / "c"
    proc = subprocess.Popen(cmd + ["-o", str(out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    n_before_kill = 0
    while time.time() < deadline:
        n_before_kill = sum(1 for f in chunk_dir.rglob("*") if f.is_file()) if chunk_dir.exists() else 0
        if n_before_kill >= 20:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    g = zarr.open_group(str(out / "big" / "store.zarr"), mode="r")
    assert g.attrs["wsiscan"]["status"] == "in_progress", "the run finished before it could be killed"
    n_on_disk = sum(1 for f in chunk_dir.rglob("*") if f.is_file())
    assert 0 < n_on_disk < n_needed

    resumed = run(*args, "-o", out)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.stdout
    a = zarr.open_group(str(ref_store), mode="r")
    b = zarr.open_group(str(out / "big" / "store.zarr"), mode="r")
    assert b.attrs["wsiscan"]["status"] == "complete"
    assert np.array_equal(a["pixels"][...], b["pixels"][...])
    assert np.array_equal(a["grids/s96/rc"][...], b["grids/s96/rc"][...])
    assert np.array_equal(a["tissue_mask"][...], b["tissue_mask"][...])


def test_pictures_a_killed_run_left_out_or_half_written_are_written_on_resume(synthetic_slide, tiny_ckpt, tmp_path):
    """predict writes the store's pictures while it scans; a run killed before they were in place
    leaves one missing or marked half-written, and the rerun writes it again."""
    import shutil

    from wsiscan.errors import StoreError
    from wsiscan.store import open_tile_store

    out = tmp_path / "out"
    args = ["predict", str(synthetic_slide.path), "-o", str(out), "--model", str(tiny_ckpt), "--device", "cpu", "-q"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    slide_dir = out / "synthetic"
    store_path = slide_dir / "store.zarr"
    names = [n for n in ("thumbnail", "tissue_mask", "overview") if n in zarr.open_group(str(store_path), mode="r")]
    assert names[:2] == ["thumbnail", "tissue_mask"]
    g = zarr.open_group(str(store_path), mode="r")
    assert all("wsiscan_writing" not in g[n].attrs for n in names)
    want = {n: g[n][...] for n in names}
    heatmap = g["heatmap/0"][...]

    # what a kill leaves: the thumbnail not yet created, the mask created but not all written
    shutil.rmtree(store_path / "thumbnail")
    mask = zarr.open_group(str(store_path), mode="r+")["tissue_mask"]
    mask.attrs["wsiscan_writing"] = True
    for f in (store_path / "tissue_mask" / "c").rglob("*"):
        if f.is_file():
            f.unlink()
    with pytest.raises(StoreError, match="half-written"):
        open_tile_store(store_path).tissue_mask()
    (slide_dir / "summary.json").unlink()  # no commit record: an unfinished run, which a rerun resumes

    again = run(*args)
    assert again.exit_code == 0, again.output
    g = zarr.open_group(str(store_path), mode="r")
    for n in names:
        assert "wsiscan_writing" not in g[n].attrs and np.array_equal(g[n][...], want[n]), n
    assert np.array_equal(g["heatmap/0"][...], heatmap, equal_nan=True)
    assert open_tile_store(store_path).tissue_mask().any()


def _thumbnail_rows_equal(slide, mpp, **kwargs):
    want = slide.read_thumbnail(mpp=mpp, **kwargs)
    with slide.read_thumbnail_rows(mpp=mpp, ram_limit_bytes=0, **kwargs) as rows:
        assert not rows.in_memory and rows.shape == want.shape and rows.dtype == want.dtype
        np.testing.assert_array_equal(rows.to_array(), want)
    with slide.read_thumbnail_rows(mpp=mpp, **kwargs) as rows:  # small: in memory
        np.testing.assert_array_equal(rows.to_array(), want)


@pytest.mark.parametrize("mpp,block_px", [(4.0, 512), (4.0, 37), (1.3, 100), (0.486, 512)])
def test_thumbnail_rows_are_read_thumbnails_pixels(synthetic_slide, mpp, block_px):
    """The RowImage thumbnail (read a band of blocks at a time into a file) is read_thumbnail's
    array bit for bit: resampled or not, bands that end inside the picture or at its edge."""
    with open_slide(synthetic_slide.path) as slide:
        _thumbnail_rows_equal(slide, mpp, block_px=block_px)


@pytest.mark.realdata
@pytest.mark.parametrize("name,slide_mpp", [("CMU-1-Small-Region.svs", None), ("TCGA-CR-7395-01A-01-TS1.svs", 0.25),
                                            ("camelyon-lymph-node-lowres.dcm", None)])
def test_thumbnail_rows_of_real_slides_are_read_thumbnails_pixels(shared_slides, name, slide_mpp):
    with open_slide(shared_slides / name, slide_mpp=slide_mpp) as slide:
        mpp = max(4.0, slide.require_mpp().mpp)
        _thumbnail_rows_equal(slide, mpp)
        _thumbnail_rows_equal(slide, mpp / 3, block_px=200)


def _store_picture_files(store_path, names):
    files = {}
    for name in names:
        root = store_path / name
        files.update({str(f.relative_to(store_path)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()})
    return files


def test_store_pictures_from_row_images_are_the_bytes_from_arrays(tmp_path):
    """Pictures written a band of chunk rows at a time from RowImages in files are the store
    bytes of the same pictures written from arrays: more than one band, a partial last band
    and chunk column, a bool mask; also when a killed write left one half-written."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    from wsiscan.rowimage import RowImage
    from wsiscan.store import create_tile_store, open_tile_store

    rng = np.random.default_rng(3)
    thumb = rng.integers(0, 256, (2500, 1300, 3), dtype=np.uint8)
    thumb[:900] = 255  # glass too
    mask = rng.random((2500, 1300)) < 0.3
    overview = rng.integers(0, 256, (700, 400, 3), dtype=np.uint8)
    names = ("thumbnail", "tissue_mask", "overview")

    def new_store(name):
        return create_tile_store(tmp_path / name, meta={}, height_px=64, width_px=64, supertile_px=64,
                                 compression_level=5, thumbnail=None, tissue_mask=None)

    # the straightforward write: each whole picture in one zarr call
    whole = new_store("whole")
    group = zarr.open_group(str(whole.path), mode="r+")
    for name, data, attrs in (("thumbnail", thumb, {}), ("tissue_mask", mask.astype(np.uint8), {}),
                              ("overview", overview, {"overview_mpp": 2.5})):
        arr = group.create_array(name, shape=data.shape, dtype=np.uint8,
                                 chunks=(min(1024, data.shape[0]), min(1024, data.shape[1])) + data.shape[2:],
                                 compressors=(BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"), Crc32cCodec()),
                                 dimension_names=("y", "x", "c")[: data.ndim], attributes=attrs,
                                 config={"write_empty_chunks": True})
        arr[...] = data
    want = _store_picture_files(whole.path, names)

    from_arrays = new_store("arrays")
    from_arrays.write_pictures(thumbnail=thumb, tissue_mask=mask, overview=overview, overview_mpp=2.5)
    assert _store_picture_files(from_arrays.path, names) == want
    assert len([f for f in want if f.startswith("thumbnail/c/")]) == 6  # 3 chunk rows x 2 chunk columns

    from_rows = new_store("rows")
    images = [RowImage.from_array(a, ram_limit_bytes=0) for a in (thumb, mask, overview)]
    from_rows.write_pictures(thumbnail=images[0], tissue_mask=images[1], overview=images[2], overview_mpp=2.5)
    assert _store_picture_files(from_rows.path, names) == want
    assert open_tile_store(from_rows.path).overview()[1] == 2.5

    # a write killed after its first band: the picture keeps its mark, and is written again
    class KilledAfterOneBand(RowImage):
        def rows(self, y0, y1, *, out=None):
            if y0 > 0:
                raise KeyboardInterrupt
            return super().rows(y0, y1, out=out)

    half = KilledAfterOneBand((2500, 1300, 3), np.uint8, ram_limit_bytes=0)
    half.write_rows(0, thumb)
    with pytest.raises(KeyboardInterrupt):
        from_rows.write_pictures(thumbnail=half)
    assert open_tile_store(from_rows.path).missing_pictures(overview=True) == ["thumbnail"]
    from_rows.write_pictures(thumbnail=images[0])
    assert open_tile_store(from_rows.path).missing_pictures(overview=True) == []
    assert _store_picture_files(from_rows.path, names) == want
    for image in images:
        image.close()


def test_thumbnail_rows_and_store_pictures_hold_one_band_not_the_picture(synthetic_slide, tmp_path):
    """Reading the thumbnail into a file-backed RowImage allocates about one band of blocks,
    and writing a file-backed picture into the store one band of chunk rows and a few chunks'
    copies (tracemalloc sees numpy's buffers), not the picture."""
    import tracemalloc

    from wsiscan.rowimage import RowImage
    from wsiscan.store import create_tile_store

    with open_slide(synthetic_slide.path) as slide:
        tracemalloc.start()
        try:
            image = slide.read_thumbnail_rows(mpp=0.486, block_px=128, ram_limit_bytes=0)  # level 0 as it is
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert image.nbytes == 4096 * 3072 * 3 and peak < image.nbytes / 6, (peak, image.nbytes)
    image.close()

    rng = np.random.default_rng(4)
    tall = rng.integers(0, 256, (8192, 2048, 3), dtype=np.uint8)  # barely compressible: the worst case
    store = create_tile_store(tmp_path / "s", meta={}, height_px=64, width_px=64, supertile_px=64,
                              compression_level=5, thumbnail=None, tissue_mask=None)
    with RowImage.from_array(tall, ram_limit_bytes=0) as picture:
        tracemalloc.start()
        try:
            store.write_pictures(thumbnail=picture)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    band, chunk = 1024 * 2048 * 3, 1024 * 1024 * 3
    assert peak < band + 5 * chunk < tall.nbytes / 2, (peak, band, chunk)
    np.testing.assert_array_equal(store.thumbnail(), tall)
