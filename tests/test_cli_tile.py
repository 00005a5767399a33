"""`wsiscan info` and `wsiscan tile` from the command line, including every bad input."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run


def test_info_prints_levels_and_mpp_source(synthetic_slide):
    r = run("info", synthetic_slide.path)
    assert r.exit_code == 0, r.output
    assert "generic-tiff" in r.output and "0.486" in r.output and "openslide-properties" in r.output
    assert "level 1:" in r.output
    j = json.loads(run("info", synthetic_slide.path, "--json").output)
    assert j["mpp"]["source"] == "openslide-properties" and len(j["levels"]) == 2
    assert j["levels"][1]["mpp"] == pytest.approx(0.486 * 4)
    # the synthetic slide is zlib-compressed: OpenSlide reads it, and says why
    assert all(lv["reader"] == "openslide" and "compression" in lv["why_openslide"] for lv in j["levels"])
    assert "read by openslide (compression" in r.output


def test_tile_writes_store_and_qc(synthetic_slide, tmp_path):
    r = run("tile", synthetic_slide.path, "-o", tmp_path, "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "synthetic" / "store.zarr" / "zarr.json").exists()
    assert (tmp_path / "synthetic" / "qc.png").stat().st_size > 1000
    assert "tiles of 96 px at 0.972 um/px" in r.output


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing", ["does-not-exist.svs", "no such file"]),
        ("random", ["random.svs", "not a slide format"]),
        ("stripped", ["stripped.tif", "not tiled", "vips"]),
        ("png", ["image.png", "PNG", "tiled pyramidal TIFF"]),
        ("no_mpp", ["no-mpp.tif", "no resolution", "--slide-mpp"]),
        ("dpi72", ["dpi72.tif", "implausible", "352.8", "--slide-mpp"]),
        ("coarse", ["coarse.tif", "without upsampling", "level 0: 4"]),
        ("white", ["white.tif", "no tissue"]),
    ],
)
def test_bad_slides_fail_in_one_line_and_write_nothing(bad_inputs, tmp_path, case, needles):
    out = tmp_path / "out"
    r = run("tile", bad_inputs[case], "-o", out, "-q")
    assert_one_line_error(r, *needles)
    assert not out.exists(), "a failed run left files behind"


def test_no_mpp_slide_tiles_with_override(bad_inputs, tmp_path):
    r = run("tile", bad_inputs["no_mpp"], "-o", tmp_path, "-q", "--slide-mpp", "0.5")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "no-mpp" / "store.zarr" / "zarr.json").read_text())["attributes"]["wsiscan"]
    assert meta["mpp"]["source"] == "override"


def test_implausible_override_is_refused(bad_inputs, tmp_path):
    assert_one_line_error(run("tile", bad_inputs["no_mpp"], "-o", tmp_path, "--slide-mpp", "352.8"),
                          "--slide-mpp 352.8", "plausible")


def test_unwritable_output_path(synthetic_slide, tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new files even to root
        target, needle = "/proc/wsiscan-test-out/out", "cannot write into /proc"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        target, needle = locked / "out", "permission denied"
    assert_one_line_error(run("tile", synthetic_slide.path, "-o", target, "-q"), needle, "choose another -o/--out")


def test_output_path_that_is_a_file(synthetic_slide, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert_one_line_error(run("tile", synthetic_slide.path, "-o", blocker / "out", "-q"), "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_store_for_another_slide_is_not_overwritten(synthetic_slide, bad_inputs, tmp_path):
    assert run("tile", synthetic_slide.path, "-o", tmp_path, "-q").exit_code == 0
    # another slide under the same name in another folder
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = other_dir / "synthetic.tif"
    other.write_bytes(bad_inputs["no_mpp"].read_bytes())
    before = (tmp_path / "synthetic" / "store.zarr" / "zarr.json").read_bytes()
    r = run("tile", other, "-o", tmp_path, "-q", "--slide-mpp", "0.5")
    assert_one_line_error(r, "another slide", "--overwrite")
    assert (tmp_path / "synthetic" / "store.zarr" / "zarr.json").read_bytes() == before


def test_batch_goes_on_after_a_failure(synthetic_slide, bad_inputs, tmp_path):
    r = run("tile", bad_inputs["random"], synthetic_slide.path, "-o", tmp_path, "-q")
    assert r.exit_code == 1
    assert "random.svs" in r.stderr and "1 of 2 slides failed" in r.stderr
    assert (tmp_path / "synthetic" / "store.zarr").exists()


def test_bad_config_file(synthetic_slide, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tile:\n  stride: 3\n")
    assert_one_line_error(run("tile", synthetic_slide.path, "-o", tmp_path, "--config", cfg), "unknown key tile.stride")


# -- real slides ----------------------------------------------------------------------
@pytest.mark.realdata
def test_cmu_small_region_tiles_from_level_0_downsampled_2x(shared_slides, tmp_path):
    from wsiscan.config import load_config
    from wsiscan.tiling import tile_slide

    r = tile_slide(shared_slides / "CMU-1-Small-Region.svs", tmp_path, load_config(), progress=False)
    sel = r.plan.selection
    assert sel.level == 0 and sel.resample and sel.lv_per_px == pytest.approx(0.972 / 0.499)
    # 2220 x 2967 px at 0.499 -> about 1139 x 1523 px at 0.972: at most 11 x 15 = 165 tiles; tissue covers ~half
    assert 40 <= r.n_tiles <= 130
    import zarr

    g = zarr.open_group(str(r.store_path), mode="r")
    px = g["pixels"]
    # tiles lie on tissue: every one holds stained pixels (the keep rule is "any tissue in the
    # tile's cell", issue 12, so a border tile may be mostly glass), most are mostly stained
    means = []
    for x, y in r.plan.grid.px_origin(r.plan.kept_rc)[:: max(1, r.n_tiles // 10)]:
        patch = px[y : y + 96, x : x + 96].astype(float)
        assert (patch.mean(axis=-1) < 215).mean() > 0.01, "a kept tile is all glass"
        means.append(patch.mean())
    assert np.median(means) < 225


@pytest.mark.realdata
def test_tcga_jpeg2000_without_mpp(shared_slides, tmp_path):
    slide = shared_slides / "TCGA-CR-7395-01A-01-TS1.svs"
    assert_one_line_error(run("tile", slide, "-o", tmp_path / "a", "-q"), "no resolution", "--slide-mpp")
    assert not (tmp_path / "a").exists()
    r = run("tile", slide, "-o", tmp_path / "b", "-q", "--slide-mpp", "0.25")
    assert r.exit_code == 0, r.output
    assert "mpp from override" in r.output


@pytest.mark.realdata
def test_info_says_which_reader_decodes_each_level(shared_slides):
    info = json.loads(run("info", shared_slides / "TCGA-CR-7395-01A-01-TS1.svs", "--json").output)
    assert [lv["reader"] for lv in info["levels"]] == ["tifffile-jpeg2000", "openslide"]
    assert info["levels"][0]["why_openslide"] is None and "not a whole number" in info["levels"][1]["why_openslide"]
    info = json.loads(run("info", shared_slides / "CMU-1-Small-Region.svs", "--json").output)
    assert [lv["reader"] for lv in info["levels"]] == ["tifffile-jpeg"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["bone-marrow-jpeg.dcm", "bone-marrow-jpeg2000.dcm", "camelyon-lymph-node-lowres.dcm"])
def test_dicom_info_works_and_tiling_is_refused(shared_slides, tmp_path, name):
    if not (shared_slides / name).exists():
        pytest.skip(f"{name} is not in the shared data")
    r = run("info", shared_slides / name, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["vendor"] == "dicom" and info["mpp"]["mpp"] > 10
    assert {lv["reader"] for lv in info["levels"]} == {"openslide"}
    assert_one_line_error(run("tile", shared_slides / name, "-o", tmp_path, "-q"), name, "without upsampling")
    assert not tmp_path.joinpath("out").exists()


def test_bad_tile_reader_in_config_is_one_line(synthetic_slide, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("tile:\n  reader: bogus\n")
    assert_one_line_error(run("tile", synthetic_slide.path, "--config", cfg, "-o", tmp_path / "out"),
                          str(cfg), "tile.reader must be auto or openslide", "bogus")
    assert not (tmp_path / "out").exists()
