"""The raw TIFF tile reader: the same pixels as OpenSlide, fallback where it cannot, glass skip."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import wsiscan.decode as decode
import wsiscan.tiling as tiling
from wsiscan.config import load_config
from wsiscan.errors import ConfigError, StoreExistsError
from wsiscan.slide import open_slide
from wsiscan.store import open_tile_store
from wsiscan.store_meta import pixel_identity
from wsiscan.testing import synthetic_tissue, write_synthetic_slide
from wsiscan.tiffread import open_raw_reader
from wsiscan.tiling import plan_tiling, prepare_store, tile_slide


def _both(path):
    return open_slide(path), open_slide(path, reader="openslide")


def _assert_same_level(path, level, *, regions=()):
    """The whole level, and each (lv_xy, size_px) region, equal through both readers."""
    raw, osl = _both(path)
    with raw, osl:
        assert raw.reader_for(level).startswith("tifffile-"), raw.why_openslide(level)
        assert osl.reader_for(level) == "openslide"
        lw, lh = raw.info.levels[level].dimensions_px
        for xy, size in ((0, 0), (lw, lh)), *regions:
            a = raw.read_level(level=level, lv_xy=xy, size_px=size)
            b = osl.read_level(level=level, lv_xy=xy, size_px=size)
            assert raw.last_reader != "openslide" and osl.last_reader == "openslide"
            assert a.shape == b.shape == (size[1], size[0], 3)
            assert np.array_equal(a, b), f"level {level} {xy} {size}: max diff {np.abs(a.astype(int) - b).max()}"


def _edge_regions(dims):
    """Rectangles crossing each edge and corner of a level, and one wholly outside it."""
    w, h = dims
    return [((-37, -21), (300, 200)), ((w - 150, h - 90), (400, 300)), ((w - 100, 10), (250, 120)),
            ((15, h - 60), (333, 150)), ((w + 10, h + 10), (64, 64)), ((-500, 40), (100, 50))]


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory):
    """A JPEG (YCbCr) generic TIFF whose size is not a multiple of its 256 px tiles, 2 levels."""
    path = tmp_path_factory.mktemp("raw") / "jpeg.tif"
    return write_synthetic_slide(path, dimensions_px=(3000, 2200), compression="jpeg", downsamples=(1, 4))


def _write_jpeg_tiff(path, *, photometric: int):
    """One-level JPEG TIFF (tifffile's YCbCr tiles with a JFIF marker), its photometric tag then set."""
    img = synthetic_tissue(0, 700, 0, 900, boxes=((40, 40, 860, 660),))
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, photometric="rgb", tile=(256, 256), compression="jpeg", resolution=(2e4, 2e4),
                  resolutionunit="CENTIMETER", metadata=None)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(photometric)
    return path


# -- pixel equality -------------------------------------------------------------------------------


def test_synthetic_jpeg_levels_equal_openslide(jpeg_slide):
    with open_slide(jpeg_slide.path) as s:
        assert [s.reader_for(i) for i in range(2)] == ["tifffile-jpeg", "tifffile-jpeg"]
        dims = [lv.dimensions_px for lv in s.info.levels]
    for level in (0, 1):
        _assert_same_level(jpeg_slide.path, level, regions=_edge_regions(dims[level]))


def test_outside_the_slide_is_white(jpeg_slide):
    with open_slide(jpeg_slide.path) as s:
        w, h = s.info.dimensions_px
        out = s.read_level(level=0, lv_xy=(w + 5, -300), size_px=(40, 30))
        assert s.last_reader == "tifffile-jpeg" and (out == 255).all()
        edge = s.read_level(level=0, lv_xy=(w - 10, h - 10), size_px=(30, 30))
        assert (edge[10:] == 255).all() and (edge[:, 10:] == 255).all() and (edge[:10, :10] < 255).any()


@pytest.mark.parametrize("photometric", [2, 6])
def test_colour_space_follows_the_tiff_tag_as_in_openslide(tmp_path, photometric):
    # tifffile encodes these tiles as YCbCr JPEG with a JFIF marker; with the tag saying RGB,
    # OpenSlide decodes them as RGB anyway (wrong colours, but the raw reader must agree)
    path = _write_jpeg_tiff(tmp_path / f"p{photometric}.tif", photometric=photometric)
    _assert_same_level(path, 0, regions=_edge_regions((900, 700)))


def test_resampled_reads_equal_openslide(jpeg_slide):
    raw, osl = _both(jpeg_slide.path)
    with raw, osl:
        for box, out in (((100.5, 77.25, 1700.0, 1311.7), (823, 634)), ((2500.0, 1900.0, 3100.0, 2300.0), (300, 200))):
            a = raw.read_resampled(level=0, lv_box=box, out_size_px=out)
            b = osl.read_resampled(level=0, lv_box=box, out_size_px=out)
            assert np.array_equal(a, b)


@pytest.mark.realdata
def test_cmu_svs_jpeg_equals_openslide(shared_slides):
    path = shared_slides / "CMU-1-Small-Region.svs"
    with open_slide(path) as s:
        assert s.info.vendor == "aperio" and s.reader_for(0) == "tifffile-jpeg"
        dims = s.info.dimensions_px
    _assert_same_level(path, 0, regions=_edge_regions(dims))


@pytest.mark.realdata
def test_tcga_svs_jpeg2000_equals_openslide_and_fractional_level_falls_back(shared_slides):
    path = shared_slides / "TCGA-CR-7395-01A-01-TS1.svs"
    with open_slide(path) as s:
        assert s.reader_for(0) == "tifffile-jpeg2000"
        # level 1 is 2221 px for 4443: downsample 2.0005, which OpenSlide paints at sub-pixel offsets
        assert s.reader_for(1) == "openslide" and "not a whole number" in s.why_openslide(1)
        dims = s.info.dimensions_px
        s.read_level(level=1, lv_xy=(0, 0), size_px=(64, 64))
        assert s.last_reader == "openslide"
    _assert_same_level(path, 0, regions=_edge_regions(dims))


# -- fallback to OpenSlide ------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zlib", "lzw", None])
def test_non_jpeg_tiff_falls_back_to_openslide(tmp_path, compression):
    slide = write_synthetic_slide(tmp_path / "s.tif", dimensions_px=(1024, 768), compression=compression)
    with open_slide(slide.path) as s:
        assert s.reader_for(0) == "openslide" and s.tile_layout(0) is None
        assert "only JPEG" in s.why_openslide(0)
        s.read_level(level=0, lv_xy=(0, 0), size_px=(100, 100))
        assert s.last_reader == "openslide" and s.decoded_px == {"openslide": 10_000}


@pytest.mark.realdata
def test_dicom_falls_back_to_openslide(shared_slides):
    with open_slide(shared_slides / "camelyon-lymph-node-lowres.dcm") as s:
        assert s.info.vendor == "dicom" and s.reader_for(0) == "openslide"
        assert "vendor 'dicom'" in s.why_openslide(0)
        assert s.read_level(level=0, lv_xy=(0, 0), size_px=(32, 32)).shape == (32, 32, 3)


def test_ambiguous_pages_are_not_mapped(tmp_path):
    path = tmp_path / "twins.tif"
    img = np.full((512, 512, 3), 200, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for _ in range(2):
            tif.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None)
    reader, why, _ = open_raw_reader(path, vendor="generic-tiff", level_dimensions_px=((512, 512),),
                                  level_downsamples=(1.0,))
    assert reader is None and "ambiguous" in why
    reader, why, _ = open_raw_reader(path, vendor="hamamatsu", level_dimensions_px=((512, 512),),
                                  level_downsamples=(1.0,))
    assert reader is None and "hamamatsu" in why


def test_reader_openslide_is_forced_by_config(jpeg_slide, tmp_path):
    cfg = load_config().replace("tile", reader="openslide")
    plan = plan_tiling(jpeg_slide.path, cfg)
    assert plan.pixel_reader == "openslide" and not plan.glass_skip and plan.lv_tile_layout is None
    auto = plan_tiling(jpeg_slide.path, load_config())
    assert auto.pixel_reader == "tifffile-jpeg" and auto.glass_skip and auto.identity != plan.identity
    config_file = tmp_path / "c.yaml"
    config_file.write_text("tile:\n  reader: openslide\n")
    assert load_config(config_file).tile.reader == "openslide"
    config_file.write_text("tile:\n  reader: libtiff\n")
    with pytest.raises(ConfigError, match="tile.reader must be auto or openslide"):
        load_config(config_file)
    with tiling.open_configured_slide(jpeg_slide.path, cfg) as s:
        assert s.reader_for(0) == "openslide"


def test_openslide_store_is_not_resumed_by_the_raw_reader(jpeg_slide, tmp_path):
    old = tile_slide(jpeg_slide.path, tmp_path, load_config().replace("tile", reader="openslide"),
                     progress=False, workers=1)
    with pytest.raises(StoreExistsError, match="another configuration of this slide"):
        prepare_store(plan_tiling(jpeg_slide.path, load_config()), old.store_path, overwrite=False)


# The identity of an OpenSlide-read store of a slide with this size and hash, read at 0.486 um/px
# level 0 resampled to 0.972 um/px with the packaged defaults: the value older stores carry, so
# a change to the recipe (or to a default that shapes the pixels) shows here.
GOLDEN_FINGERPRINT = {"size_bytes": 1_000_000, "quick_sha256": "0123456789abcdef" * 4}
GOLDEN_OPENSLIDE_IDENTITY = "39aba117a51b7d67"


def test_openslide_reads_keep_the_identity_of_older_stores(jpeg_slide):
    cfg = load_config().replace("tile", reader="openslide")
    plan = plan_tiling(jpeg_slide.path, cfg)
    assert (plan.selection.level, plan.base_mpp, plan.selection.effective_mpp) == (0, 0.486, 0.972)
    assert plan.identity == pixel_identity(plan.fingerprint, cfg, plan.selection, plan.base_mpp)
    golden = pixel_identity(GOLDEN_FINGERPRINT, cfg, plan.selection, plan.base_mpp)
    assert golden == GOLDEN_OPENSLIDE_IDENTITY


# -- glass skip -----------------------------------------------------------------------------------


def test_reads_into_a_used_buffer_equal_fresh_reads(jpeg_slide):
    """``out`` (a reused buffer, here full of stale pixels) ends up exactly as a fresh read:
    tiles, glass tiles, absent tiles and px outside the level included, through both readers."""
    with open_slide(jpeg_slide.path) as raw, open_slide(jpeg_slide.path, reader="openslide") as osl:
        layout = raw.tile_layout(0)
        assert layout is not None
        keep = np.random.default_rng(3).random(layout[1]) < 0.5  # half the tiles as glass
        lw, lh = raw.info.levels[0].dimensions_px
        for slide, tile_keep in ((raw, None), (raw, keep), (osl, None)):
            for xy, (w, h) in (((0, 0), (lw, lh)), *_edge_regions((lw, lh))):
                fresh = slide.read_level(level=0, lv_xy=xy, size_px=(w, h), tile_keep=tile_keep)
                stale = np.full((h, w, 3), 7, np.uint8)
                got = slide.read_level(level=0, lv_xy=xy, size_px=(w, h), tile_keep=tile_keep, out=stale)
                assert got is stale and np.array_equal(got, fresh), (slide.last_reader, xy, tile_keep is None)
            for box, size in (((512.0, 256.0, 1280.0, 1024.0), (768, 768)), ((100.5, 77.25, 1700.0, 1311.7), (823, 634))):
                fresh = slide.read_resampled(level=0, lv_box=box, out_size_px=size, tile_keep=tile_keep)
                stale = np.full((size[1], size[0], 3), 7, np.uint8)
                got = slide.read_resampled(level=0, lv_box=box, out_size_px=size, tile_keep=tile_keep, out=stale)
                assert got is stale and np.array_equal(got, fresh)


def _patches(store_path, plan):
    pixels = open_tile_store(store_path).pixels[:]
    t = plan.grid.tile_size_px
    return [pixels[y : y + t, x : x + t] for x, y in plan.grid.px_origin(plan.kept_rc)]


@pytest.mark.parametrize(
    "mpp, downsamples",
    [(0.486, (1, 4)),  # level 0 resampled 2x
     (0.41, (1, 4)),  # level 0 resampled 2.37x: box filter over fractional boxes
     (0.486, (1, 2))],  # level 1 (0.972 um/px) read as-is
)
def test_glass_skip_keeps_every_kept_patch_identical(tmp_path, mpp, downsamples):
    # small islands on a lot of glass: many TIFF tiles of needed chunks are glass
    boxes = ((900, 700, 1500, 1250), (3900, 2600, 4300, 3000), (5200, 400, 5500, 650))
    slide = write_synthetic_slide(tmp_path / "islands.tif", dimensions_px=(6144, 4096), mpp=mpp,
                                  downsamples=downsamples, boxes=boxes, compression="jpeg")
    cfg = load_config().replace("tile", supertile_px=384)
    skip = tile_slide(slide.path, tmp_path / "skip", cfg, progress=False, workers=2)
    full = tile_slide(slide.path, tmp_path / "full", cfg.replace("tile", reader="openslide"), progress=False,
                      workers=2)
    assert skip.plan.glass_skip and skip.plan.pixel_reader == "tifffile-jpeg"
    meta = open_tile_store(skip.store_path).meta
    assert meta["pixel_reader"] == "tifffile-jpeg" and meta["decode"]["reader"] == "tifffile-jpeg"
    assert meta["decode"]["glass_skipped_bytes"] > 0 and meta["decode"]["lv_tiles_near_tissue"] < meta["decode"]["lv_tiles_total"]
    assert skip.decoded_bytes + meta["decode"]["glass_skipped_bytes"] == full.decoded_bytes
    assert open_tile_store(full.store_path).meta["decode"]["reader"] == "openslide"
    for stride in (96, 32):
        plan = plan_tiling(slide.path, cfg.replace("tile", stride_px=stride))
        assert plan.n_tiles > 0
        for a, b in zip(_patches(skip.store_path, plan), _patches(full.store_path, plan), strict=True):
            assert np.array_equal(a, b)


def test_glass_skip_is_on_at_any_min_tissue(jpeg_slide):
    """Glass-only patches are never kept (issue 12's keep rule: any tissue), so glass tiles
    may be skipped whatever --min-tissue says, 0 included."""
    plan = plan_tiling(jpeg_slide.path, load_config().replace("tile", min_tissue=0.0))
    assert plan.pixel_reader == "tifffile-jpeg" and plan.glass_skip
    keep = plan.glass_tile_keep()
    assert keep is not None and 0 < keep.sum() < keep.size


def test_glass_skip_in_worker_processes(tmp_path, monkeypatch):
    boxes = ((900, 700, 1500, 1250),)
    slide = write_synthetic_slide(tmp_path / "one.tif", dimensions_px=(4096, 3072), boxes=boxes, compression="jpeg")
    cfg = load_config().replace("tile", supertile_px=192)
    monkeypatch.setattr(decode, "PROCESS_MIN_CHUNKS", 1)
    procs = tile_slide(slide.path, tmp_path / "procs", cfg, progress=False, workers=2)
    monkeypatch.setattr(decode, "PROCESS_MIN_CHUNKS", 10**9)
    one = tile_slide(slide.path, tmp_path / "one", cfg, progress=False, workers=1)
    assert procs.decoded_bytes == one.decoded_bytes
    assert open_tile_store(procs.store_path).meta["decode"]["glass_skipped_bytes"] > 0
    assert np.array_equal(open_tile_store(procs.store_path).pixels[:], open_tile_store(one.store_path).pixels[:])


def test_handles_on_one_file_share_its_parsed_tile_tables_and_a_rewritten_file_is_parsed_again(tmp_path):
    """A scan opens a handle per decode thread: tifffile parses the file once, the readers share
    its read-only tile tables; the same path rewritten (other tiles) gets its own tables and pixels."""
    path = tmp_path / "slide.tif"
    write_synthetic_slide(path, dimensions_px=(1200, 900), compression="jpeg", downsamples=(1, 4))
    with open_slide(path) as a, open_slide(path) as b:
        la, lb = a._raw.levels[0], b._raw.levels[0]
        assert la.offsets is lb.offsets and not la.offsets.flags.writeable and not la.bytecounts.flags.writeable
        assert np.array_equal(a.read_level(level=0, lv_xy=(0, 0), size_px=(1200, 900)),
                              b.read_level(level=0, lv_xy=(0, 0), size_px=(1200, 900)))
        before = a.read_level(level=0, lv_xy=(0, 0), size_px=(1200, 900))
    write_synthetic_slide(path, dimensions_px=(1300, 900), compression="jpeg", downsamples=(1, 4))
    with open_slide(path) as c, open_slide(path, reader="openslide") as d:
        assert c._raw.levels[0].offsets is not la.offsets and c._raw.levels[0].dimensions_px == (1300, 900)
        after = c.read_level(level=0, lv_xy=(0, 0), size_px=(1300, 900))
        assert np.array_equal(after, d.read_level(level=0, lv_xy=(0, 0), size_px=(1300, 900)))
        assert after.shape != before.shape
