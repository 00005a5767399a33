"""The streaming scan engine: streamed pixels give the stored-pixel heatmap bit for bit, pixels kept only on request."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from cli_helpers import run
from test_predict import resnet_ckpt  # noqa: F401 - the session fixture: a random ResNet-18 checkpoint

from wsiscan.testing import write_synthetic_slide


def _heatmap(out, name="synthetic"):
    return zarr.open_group(str(out / name / "store.zarr"), mode="r")["heatmap/0"][...]


def _summary(out, name="synthetic"):
    return json.loads((out / name / "summary.json").read_text())


def test_streamed_heatmap_equals_the_stored_pixel_heatmap_bit_for_bit(resnet_ckpt, tmp_path):  # noqa: F811 - the fixture imported above
    """ResNet-18, CPU fp32, stride 32 (units overlap four store chunks): decoded straight to the
    model, decoded and kept behind the stream, and read back from a tile store made by `tile`.
    The slide is the synthetic one at 3072 x 2560 px (some 600 patches: three ResNet-18 runs)."""
    synthetic_slide = write_synthetic_slide(tmp_path / "synthetic.tif", dimensions_px=(3072, 2560))
    common = ["--model", resnet_ckpt, "-q", "--stride-px", "32", "--device", "cpu", "--precision", "fp32"]
    streamed = tmp_path / "streamed"
    assert run("predict", synthetic_slide.path, "-o", streamed, *common).exit_code == 0
    kept = tmp_path / "kept"
    assert run("predict", synthetic_slide.path, "-o", kept, *common, "--keep-pixels").exit_code == 0
    stored = tmp_path / "stored"
    r = run("tile", synthetic_slide.path, "-o", stored, "-q", "--stride-px", "32")
    assert r.exit_code == 0, r.output
    assert run("predict", synthetic_slide.path, "-o", stored, *common).exit_code == 0

    s_streamed, s_kept, s_stored = _summary(streamed), _summary(kept), _summary(stored)
    # where the pixels came from
    assert s_streamed["store"]["pixel_chunks_decoded"] > 0 and s_streamed["tiles"]["pixel_chunks_resumed"] == 0
    assert s_streamed["tiles"]["pixel_chunks_written"] == 0 and not s_streamed["store"]["pixels_kept"]
    assert s_kept["tiles"]["pixel_chunks_written"] > 0 and s_kept["store"]["pixels_kept"]
    assert s_stored["store"]["pixel_chunks_decoded"] == 0 and s_stored["tiles"]["pixel_chunks_resumed"] > 0
    # the store records its size; a store without pixels is a small fraction of one with them
    assert 0 < s_streamed["store"]["pixel_bytes_on_disk"] < s_kept["store"]["pixel_bytes_on_disk"] / 10
    assert s_kept["store"]["bytes_on_disk"] >= s_kept["store"]["pixel_bytes_on_disk"]

    a, b, c = _heatmap(streamed), _heatmap(kept), _heatmap(stored)
    assert np.isfinite(a).sum() == s_streamed["tiles"]["n_tiles"] > 500
    assert np.nanmax(a) - np.nanmin(a) > 1e-3, "a random ResNet should still vary across the slide"
    assert np.array_equal(a, c, equal_nan=True), "streamed pixels and stored pixels give different heatmaps"
    assert np.array_equal(a, b, equal_nan=True)
    # what the writer kept behind the stream is what `tile` stores
    pk = zarr.open_group(str(kept / "synthetic" / "store.zarr"), mode="r")["pixels"][...]
    ps = zarr.open_group(str(stored / "synthetic" / "store.zarr"), mode="r")["pixels"][...]
    assert np.array_equal(pk, ps)


@pytest.mark.parametrize("spill_after_units", [0, 1, 1 << 20])
def test_units_are_cut_from_chunks_exactly_as_a_store_read(synthetic_slide, tmp_path, monkeypatch, spill_after_units):
    """stream_units against TileStore.read_px for every unit of an odd stride (units straddle chunks),
    with chunks parked in the temporary file as soon as their next unit is not the next one (0),
    the one after (1), or never (1 << 20)."""
    from wsiscan import scan as scan_mod
    from wsiscan.config import load_config
    from wsiscan.inference import plan_units
    from wsiscan.scan import ScanStats, stream_chunks, stream_units

    parked: list[tuple[int, ...]] = []
    real_put = scan_mod._ChunkSpill.put

    def counting_put(self, data):
        parked.append(tuple(data.shape))
        return real_put(self, data)

    monkeypatch.setattr(scan_mod._ChunkSpill, "put", counting_put)
    from wsiscan.tiling import tile_slide

    cfg = load_config().replace("tile", stride_px=40, supertile_px=256)
    res = tile_slide(synthetic_slide.path, tmp_path, cfg, progress=False, workers=2)
    plan = res.plan
    from wsiscan.store import open_tile_store

    store = open_tile_store(res.store_path, mode="r")
    g = plan.grid
    uplan = plan_units(n_rows=g.n_rows, n_cols=g.n_cols, tile_size_px=g.tile_size_px, stride_px=g.stride_px,
                       supertile_px=plan.geometry.supertile_px)
    units = sorted({(int(r) // uplan.tiles_per_unit, int(c) // uplan.tiles_per_unit) for r, c in plan.kept_rc})
    needed = [tuple(map(int, ij)) for ij in np.argwhere(plan.chunks_needed)]
    # a second store of the same plan holds no pixels: every chunk is decoded from the slide
    from wsiscan.tiling import prepare_store

    empty, _ = prepare_store(plan, tmp_path / "empty.zarr", overwrite=False)
    stats = ScanStats()
    stored = {c for c in needed if empty.chunk_done(*c)}
    chunks = stream_chunks(plan, empty, needed, workers=2, stats=stats, tile_keep=plan.glass_tile_keep(),
                           stored=stored)
    n = 0
    for i, region in stream_units(plan, uplan, units, chunks, spill_after_units=spill_after_units):
        want = store.read_px(px_box=uplan.unit_px_box(*units[i]))
        assert np.array_equal(region, want), units[i]
        n += 1
    assert n == len(units) > 4
    assert stats.chunks_decoded == len(needed) and stats.chunks_from_store == 0
    if spill_after_units > len(units):
        assert not parked
    else:
        assert len(parked) > 4


def test_a_slides_outputs_are_drawn_while_the_next_slide_is_scanned(synthetic_slide, tiny_ckpt, tmp_path,
                                                                     monkeypatch):
    import shutil
    import threading
    import time

    from wsiscan import predict as predict_mod
    from wsiscan import scan as scan_mod
    from wsiscan.config import load_config
    from wsiscan.predict import SlideJob, load_models, predict_in_turn

    second = tmp_path / "second.tif"
    shutil.copy(synthetic_slide.path, second)
    events: list[tuple[str, str, float, float]] = []
    real_scan, real_pyramid = scan_mod.scan_slide, predict_mod.build_pyramid

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if name == "outputs":
                    time.sleep(0.5)  # outputs of a big slide take a while: the next scan must not wait for them
                events.append((name, threading.current_thread().name, t0, time.perf_counter()))
        return wrapper

    monkeypatch.setattr(scan_mod, "scan_slide", timed("scan", real_scan))
    monkeypatch.setattr(predict_mod, "build_pyramid", timed("outputs", real_pyramid))
    models = load_models([str(tiny_ckpt)])
    jobs = [SlideJob(synthetic_slide.path), SlideJob(second)]
    results = list(predict_in_turn(jobs, tmp_path / "out", load_config(), models, device=torch.device("cpu"),
                                   progress=False))
    assert [j.path for j, _, _ in results] == [j.path for j in jobs]
    assert all(exc is None and s["slide_id"] for _, s, exc in results)
    scans = [e for e in events if e[0] == "scan"]
    outputs = [e for e in events if e[0] == "outputs"]
    assert len(scans) == 2 and len(outputs) == 2
    assert all(e[1].startswith("wsiscan-outputs") for e in outputs)
    # slide 1's outputs started before slide 2's scan ended: the two overlapped
    assert outputs[0][2] < scans[1][3]
    a = zarr.open_group(str(tmp_path / "out" / "synthetic" / "store.zarr"), mode="r")["heatmap/0"][...]
    b = zarr.open_group(str(tmp_path / "out" / "second" / "store.zarr"), mode="r")["heatmap/0"][...]
    assert np.array_equal(a, b, equal_nan=True)


class _PatchMean:
    """A stand-in for the Ensemble: each patch's mean byte / 255, and the batch sizes it was given."""

    def __init__(self, fixed_shape: bool) -> None:
        self.device = torch.device("cpu")
        self.fixed_shape = fixed_shape
        self.sizes: list[int] = []

    def score_uint8(self, x_u8):
        self.sizes.append(len(x_u8))
        return x_u8.float().mean(dim=(1, 2, 3)) / 255.0


def test_device_stage_pads_the_last_batch_only_for_a_fixed_shape_and_writes_every_cell():
    from wsiscan.inference import DeviceScorer, plan_units
    from wsiscan.scan import Pipeline, units_with_work

    rng = np.random.default_rng(0)
    uplan = plan_units(n_rows=40, n_cols=30, tile_size_px=16, stride_px=8, supertile_px=64, hm_chunk_target=16)
    kept = np.argwhere(rng.random((40, 30)) < 0.4).astype(np.int32)
    side = (uplan.tiles_per_unit - 1) * uplan.stride_px + uplan.tile_size_px
    results = {}
    for fixed in (False, True):
        units, tiles, per_chunk, resumed = units_with_work(uplan, kept, lambda ci, cj: (ci, cj) == (0, 0))
        written: dict = {}
        fake = _PatchMean(fixed)
        scorer = DeviceScorer(fake, uplan, units, tiles, per_chunk, batch_size=7,
                              write_chunk=lambda ci, cj, data, written=written: written.__setitem__((ci, cj), data.copy()))
        regions = ((i, np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8))
                   for i in range(len(units)))
        pipe = Pipeline()
        scorer.run(regions, pipe)
        pipe.join()
        assert (0, 0) not in written and resumed == int(((kept[:, 0] < 16) & (kept[:, 1] < 16)).sum())
        assert set(written) == set(per_chunk)
        assert scorer.stats["tiles"] == len(kept) - resumed
        if fixed:
            assert set(fake.sizes) == {7}, "every batch has the one shape"
        else:
            assert set(fake.sizes[:-1]) == {7} and 0 < fake.sizes[-1] <= 7
        # each kept cell holds its own patch's mean, cut at the stride from its unit's region
        for i, (ur, uc) in enumerate(units):
            region = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
            for r, c in tiles[i]:
                y, x = (r - ur * uplan.tiles_per_unit) * 8, (c - uc * uplan.tiles_per_unit) * 8
                want = np.float32(region[y : y + 16, x : x + 16].astype(np.float32).mean() / 255.0)
                got = written[(r // 16, c // 16)][r % 16, c % 16]
                assert abs(got - want) < 1e-6
        results[fixed] = written
    assert all(np.array_equal(results[False][k], results[True][k], equal_nan=True) for k in results[False])


def test_cpu_device_stage_scores_the_batches_a_whole_region_normalisation_gives_bit_for_bit():
    """The CPU device stage copies (and normalises) patches straight into one reused batch
    buffer, from a region ring whose buffers are reused; its heatmap equals, bit for bit, the
    one made the straightforward way: each region converted to float32, times scale plus
    bias as a whole, every kept patch cut from it, batches of 7 in unit order.  Stride 8
    (patches overlap: the region is normalised once) and stride 16 (each patch on its own)."""
    from wsiscan.inference import DeviceScorer, Ensemble, RegionRing, plan_units
    from wsiscan.models import ModelSpec
    from wsiscan.scan import Pipeline, units_with_work

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    spec = ModelSpec(arch="smallcnn", patch_size_px=16, mean=(0.7, 0.55, 0.72), std=(0.16, 0.21, 0.13))
    ens = Ensemble([net], [spec], torch.device("cpu"), autocast_dtype=None, tta=False)
    scale, bias = ens.shared_affine()
    rng = np.random.default_rng(3)
    for stride in (8, 16):
        uplan = plan_units(n_rows=40, n_cols=30, tile_size_px=16, stride_px=stride, supertile_px=64,
                           hm_chunk_target=16)
        kept = np.argwhere(rng.random((40, 30)) < 0.5).astype(np.int32)
        units, tiles, per_chunk, _ = units_with_work(uplan, kept, lambda ci, cj: False)
        side = (uplan.tiles_per_unit - 1) * stride + 16
        regions = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in units]
        ring = RegionRing((side, side, 3), n_slots=3, device=torch.device("cpu"))

        def fill(regions=regions, ring=ring, side=side):
            for i, r in enumerate(regions):
                buf = ring((side, side, 3))
                buf[...] = r
                yield i, buf

        written: dict = {}
        scorer = DeviceScorer(ens, uplan, units, tiles, per_chunk, batch_size=7, ring=ring,
                              write_chunk=lambda ci, cj, data, written=written: written.__setitem__((ci, cj), data.copy()))
        pipe = Pipeline()
        scorer.run(fill(), pipe)
        pipe.join()
        # the straightforward way
        patches = []
        for i, (ur, uc) in enumerate(units):
            norm = torch.from_numpy(regions[i]).to(torch.float32).mul_(scale).add_(bias)
            for r, c in tiles[i]:
                y, x = (r - ur * uplan.tiles_per_unit) * stride, (c - uc * uplan.tiles_per_unit) * stride
                patches.append(norm[y : y + 16, x : x + 16])
        x_all = torch.stack(patches)
        want = torch.cat([ens.score_normalised(x_all[k : k + 7].permute(0, 3, 1, 2)) for k in range(0, len(x_all), 7)])
        rc = np.concatenate(tiles)
        got = np.array([written[(r // 16, c // 16)][r % 16, c % 16] for r, c in rc])
        assert len(rc) == scorer.stats["tiles"] > 100
        assert np.array_equal(got, want.numpy()), f"stride {stride}: the heatmap differs"


def test_buffer_pool_hands_a_buffer_out_again_only_when_nothing_uses_it():
    from wsiscan.heap import BufferPool

    pool = BufferPool(64, max_free=1)
    a = pool.array((4, 4, 3))
    addr = a.__array_interface__["data"][0]
    view = a[1:, ::2]  # a view outlives the array it was taken from
    del a
    b = pool.array((4, 4, 3))
    assert b.__array_interface__["data"][0] != addr and pool.allocated == 2
    b[...] = 0
    view[...] = 1  # the view still writes its own buffer, not the one handed out since
    assert (b == 0).all()
    del view
    c = pool.array((2, 2, 3))  # the first buffer, back now
    assert c.__array_interface__["data"][0] == addr and pool.allocated == 2
    del b, c  # one kept (max_free=1), one freed
    d, e = pool.array((4, 4, 3)), pool.array((4, 4, 3))
    assert pool.allocated == 3
    big = pool.array((5, 5, 3))  # larger than a buffer: a plain array
    assert big.shape == (5, 5, 3) and pool.allocated == 3
    pool.close()
    del d, e  # dropped, not kept
    pool.array((4, 4, 3))
    assert pool.allocated == 4
