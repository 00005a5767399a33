"""Slide ids are safe, readable folder names, unique within a run; results never leave OUT."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import pytest
from cli_helpers import run

from wsiscan.predict import expand_slide_inputs
from wsiscan.slide_ids import MAX_ID_BYTES, slide_id_for, unique_slide_ids
from wsiscan.testing import write_tiled_tiff


@pytest.mark.parametrize("name", ["...svs", "..svs", ".svs", "..", ".", "", "/", "a/..", "....ome.tiff"])
def test_dot_names_never_give_dot_ids(name):
    sid = slide_id_for(name)
    assert sid not in ("", ".", "..") and not sid.startswith(".")
    assert "/" not in sid and "\\" not in sid and "\x00" not in sid


@pytest.mark.parametrize("name, expected", [
    ("CMU-1-Small-Region.svs", "CMU-1-Small-Region"),
    ("Schnitt_ü…rechts.svs", "Schnitt_ü_rechts"),
    ("Schnitt_u\u0308.svs", "Schnitt_ü"),  # NFD input: the same id as the NFC name
    ("切片 1.ndpi", "切片_1"),
    ("a b\x00c\\d.tif", "a_b_c_d"),
    ("\u202eevil.svs", "_evil"),  # a right-to-left override is not kept
    ("scan.ome.tiff", "scan"),
])
def test_ids_keep_letters_and_replace_the_rest(name, expected):
    assert slide_id_for(name) == expected
    assert unicodedata.is_normalized("NFC", slide_id_for(name))


def test_long_names_are_cut_to_whole_characters():
    sid = slide_id_for("ü" * 400 + ".svs")
    assert len(sid.encode()) <= MAX_ID_BYTES and set(sid) == {"ü"}
    # even disambiguated, an id stays well under the 255-byte file name limit
    ids = unique_slide_ids([f"{d}/{'ü' * 400}.svs" for d in "abc"])
    assert len(set(ids)) == 3 and all(len(i.encode()) <= MAX_ID_BYTES for i in ids)


def test_unique_within_a_run_and_deterministic():
    paths = ["/a/x.svs", "/b/x.svs", "/c/X.svs", "/d/y.svs"]
    ids = unique_slide_ids(paths)
    assert ids[0] == "x" and ids[3] == "y"
    assert len({i.casefold() for i in ids}) == 4, ids
    assert ids[1].startswith("x-") and len(ids[1]) == len("x-") + 8
    assert unique_slide_ids(paths) == ids  # the same inputs give the same ids on a rerun


def test_expand_slide_inputs_gives_unique_ids(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.svs").write_bytes(b"")
    jobs = expand_slide_inputs([tmp_path / "a" / "x.svs", tmp_path / "b" / "x.svs"])
    assert [j.slide_id for j in jobs][0] == "x" and jobs[1].slide_id.startswith("x-")


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ids")
    return write_tiled_tiff(d / "small.tif", dimensions_px=(1024, 1024), mpp=0.486, downsamples=(1,),
                            boxes=((100, 100, 900, 900),))


def _files_outside(root: Path, out: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and out not in p.parents and p.parent != root]


@pytest.mark.parametrize("name", ["...svs", "..svs"])
def test_predict_on_dot_names_writes_inside_out(tmp_path, small_slide, tiny_ckpt, name):
    root = tmp_path / "r"
    root.mkdir()
    slide = root / name
    shutil.copy(small_slide, slide)
    out = root / "out" / "run1"
    r = run("predict", slide, "-o", out, "--model", tiny_ckpt, "--device", "cpu", "-q", "--slide-mpp", "0.486")
    assert r.exit_code == 0, r.output
    assert (out / "slide" / "summary.json").is_file()
    assert not (out / "summary.json").exists() and not (out.parent / "summary.json").exists()
    assert _files_outside(root, out) == [], "nothing is written outside OUT"


def test_tile_two_same_named_slides_get_two_folders(tmp_path, small_slide):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(small_slide, tmp_path / d / "x.tif")
    out = tmp_path / "out"
    r = run("tile", tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders[0] == "x" and folders[1].startswith("x-") and len(folders) == 2, folders


def test_non_ascii_name_keeps_its_letters(tmp_path, small_slide):
    slide = tmp_path / "Schnitt_ü…1.tif"
    shutil.copy(small_slide, slide)
    r = run("tile", slide, "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "Schnitt_ü_1" / "store.zarr").is_dir()
