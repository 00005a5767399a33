"""One line on stderr, exit 1, no traceback: a full disk, a denied permission, damaged slide
pixels, damaged associated images, impossible slide sizes, truncated slides, unsafe
checkpoints, an unwritable model cache; warnings stay off stderr unless -v."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run

from wsiscan.testing import write_tiled_tiff

REPO = Path(__file__).resolve().parents[1]
CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
PYTHON = sys.executable


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    """1024 x 1024 px at 0.486 um/px, tissue almost everywhere, a 4x level for the thumbnail."""
    d = tmp_path_factory.mktemp("errors13")
    return write_tiled_tiff(d / "small.tif", dimensions_px=(1024, 1024), mpp=0.486, downsamples=(1, 4),
                            boxes=((64, 64, 960, 960),))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """The subprocess twin of cli_helpers.assert_one_line_error."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("wsiscan: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _damage_tile(path: Path, *, page: int, tile_index: int) -> None:
    """Overwrite the bytes of one tile with zeros (the file keeps its size and its layout)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pg = tif.pages[page]
        offset, count = int(pg.dataoffsets[tile_index]), int(pg.databytecounts[tile_index])
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * count)


# -- a full disk --------------------------------------------------------------------------------
def _fill_the_disk(monkeypatch, filename: str | None) -> None:
    from PIL import Image

    def save(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([filename] if filename else []))

    monkeypatch.setattr(Image.Image, "save", save)


def test_enospc_without_a_file_name_names_the_output_folder(tmp_path, small_slide, monkeypatch):
    _fill_the_disk(monkeypatch, None)
    out = tmp_path / "out"
    r = run("tile", small_slide, "-o", out, "-q")
    assert_one_line_error(r, str(out), "no space left", "free space")


def test_enospc_with_a_file_name_names_the_file(tmp_path, small_slide, monkeypatch):
    target = tmp_path / "out" / "small" / "qc.png"
    _fill_the_disk(monkeypatch, str(target))
    r = run("tile", small_slide, "-o", tmp_path / "out", "-q")
    assert_one_line_error(r, str(target), "no space left", f"disk holding {target.parent}")


def _tmpfs_available() -> str:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "needs Linux and unshare(1)"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            return f"cannot mount a tmpfs in a private mount namespace here ({probe.stderr.strip()[:120]})"
        return "-rm"
    return "-m"


def test_enospc_on_a_real_full_tmpfs(tmp_path, small_slide):
    how = _tmpfs_available()
    if not how.startswith("-"):
        pytest.skip(how)
    full = tmp_path / "full"
    full.mkdir()
    cmd = (f"mount -t tmpfs -o size=64k tmpfs '{full}' && exec '{PYTHON}' -m wsiscan tile '{small_slide}' "
           f"-o '{full}/out' -q")
    proc = subprocess.run(["unshare", how, "sh", "-c", cmd], capture_output=True, text=True, env=_env(), timeout=600)
    _assert_one_line(proc, "no space left", f"{full}/out")


# -- a denied permission (real permission bits: as another user when run as root) -------------
def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv(1): permission bits do not apply to root")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def shared_dir(small_slide):
    """A folder another user may use, with a copy of the slide."""
    d = Path(tempfile.mkdtemp(prefix="wsiscan-perm-"))
    os.chmod(d, 0o777)
    shutil.copy(small_slide, d / "slide.tif")
    os.chmod(d / "slide.tif", 0o644)
    yield d
    for p in d.rglob("*"):
        if p.is_dir():
            os.chmod(p, 0o777)
    shutil.rmtree(d, ignore_errors=True)


def _run_cli(prefix: list[str], *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**_env(), "HOME": str(home), "WSISCAN_HOME": str(home / "wsiscan-home")}
    return subprocess.run([*prefix, PYTHON, "-m", "wsiscan", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=home)


def test_unreadable_slide_exits_1(shared_dir):
    prefix = _unprivileged()
    os.chmod(shared_dir / "slide.tif", 0)
    proc = _run_cli(prefix, "info", str(shared_dir / "slide.tif"), home=shared_dir)
    _assert_one_line(proc, str(shared_dir / "slide.tif"), "permission denied", "readable")


def test_unwritable_slide_folder_exits_1(shared_dir):
    prefix = _unprivileged()
    slide_dir = shared_dir / "out" / "slide"
    slide_dir.mkdir(parents=True)
    os.chmod(shared_dir / "out", 0o777)
    os.chmod(slide_dir, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    proc = _run_cli(prefix, "tile", str(shared_dir / "slide.tif"), "-o", str(shared_dir / "out"), "-q",
                    home=shared_dir)
    _assert_one_line(proc, "permission denied", str(slide_dir))


def test_denied_permission_in_process_names_the_file(tmp_path, small_slide, monkeypatch):
    from PIL import Image

    target = tmp_path / "out" / "small" / "qc.png"

    def save(self, fp, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))

    monkeypatch.setattr(Image.Image, "save", save)
    r = run("tile", small_slide, "-o", tmp_path / "out", "-q")
    assert_one_line_error(r, str(target), "permission denied", "writable")


# -- damaged pixels --------------------------------------------------------------------------
def test_openslide_decode_error_says_the_file_is_damaged(tmp_path, small_slide):
    slide = tmp_path / "zlib-damaged.tif"  # zlib tiles: read by OpenSlide, not the raw JPEG reader
    shutil.copy(small_slide, slide)
    _damage_tile(slide, page=0, tile_index=5)  # level 0, tile (1, 1): inside the tissue
    r = run("tile", slide, "-o", tmp_path / "out", "-q")
    assert_one_line_error(r, str(slide), "OpenSlide cannot decode", "damaged")
    assert "tile.reader" not in r.stderr, "OpenSlide itself failed: switching to it is no fix"


def test_raw_jpeg_decode_error_suggests_openslide_then_says_damaged(tmp_path):
    slide = write_tiled_tiff(tmp_path / "jpeg-damaged.tif", dimensions_px=(1024, 1024), mpp=0.486,
                             downsamples=(1, 4), boxes=((64, 64, 960, 960),), compression="jpeg")
    _damage_tile(slide, page=0, tile_index=5)
    r = run("tile", slide, "-o", tmp_path / "out", "-q")
    assert_one_line_error(r, str(slide), "tile.reader: openslide")
    cfg = tmp_path / "openslide.yaml"
    cfg.write_text("tile:\n  reader: openslide\n")
    r = run("tile", slide, "-o", tmp_path / "out2", "-q", "--config", cfg)
    assert_one_line_error(r, str(slide), "damaged")


def test_truncated_slide_is_called_truncated(tmp_path, small_slide):
    slide = tmp_path / "truncated.tif"
    data = small_slide.read_bytes()
    slide.write_bytes(data[: len(data) * 6 // 10])
    r = run("tile", slide, "-o", tmp_path / "out", "-q")
    assert_one_line_error(r, str(slide))
    assert "truncated" in r.stderr or "damaged" in r.stderr, r.stderr
    assert "stripped" not in r.stderr, r.stderr


# -- damaged associated images ----------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_thumbnail_slide(tmp_path_factory) -> Path:
    if not CMU.is_file():
        pytest.skip(f"real data {CMU} is absent")
    import tifffile

    path = tmp_path_factory.mktemp("assoc") / "bad-thumbnail.svs"
    shutil.copy(CMU, path)
    os.chmod(path, 0o644)
    with tifffile.TiffFile(path) as tif:  # page 1 of an Aperio SVS is its thumbnail
        strips = list(zip(tif.pages[1].dataoffsets, tif.pages[1].databytecounts, strict=True))
    with open(path, "r+b") as fh:
        for offset, count in strips:
            fh.seek(int(offset))
            fh.write(b"\0" * int(count))
    return path


def test_info_lists_a_damaged_thumbnail_as_unreadable(bad_thumbnail_slide):
    r = run("info", bad_thumbnail_slide)
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("associated:"))
    assert "thumbnail (unreadable:" in line and "label (" in line and "macro (" in line, line
    r = run("info", bad_thumbnail_slide, "--json")
    assert r.exit_code == 0 and '"unreadable_associated_images"' in r.stdout


def test_tile_and_predict_do_not_need_associated_images(tmp_path, bad_thumbnail_slide, tiny_ckpt):
    r = run("tile", bad_thumbnail_slide, "-o", tmp_path / "tiles", "-q")
    assert r.exit_code == 0, r.output
    r = run("predict", bad_thumbnail_slide, "-o", tmp_path / "pred", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred" / "bad-thumbnail" / "summary.json").is_file()


# -- sizes no scanner makes -------------------------------------------------------------------
def write_sparse_tiff(path: Path, *, width_px: int, height_px: int, mpp: float, tile_px: int = 4096) -> Path:
    """A valid tiled TIFF declaring ``width_px`` x ``height_px`` RGB px whose tiles are all absent
    (byte count 0, which OpenSlide reads as transparent): a few hundred KB on disk."""
    import struct

    n_tiles = -(-width_px // tile_px) * -(-height_px // tile_px)
    extra = bytearray()

    def put(data: bytes) -> int:
        offset = 8 + len(extra)
        extra.extend(data + b"\0" * (len(data) % 2))
        return offset

    bits = put(struct.pack("<3H", 8, 8, 8))
    res = put(struct.pack("<2I", round(1e4 / mpp * 1000), 1000))
    offsets, counts = put(bytes(4 * n_tiles)), put(bytes(4 * n_tiles))
    short, long_, rational = 3, 4, 5
    entries = [(256, long_, 1, width_px), (257, long_, 1, height_px), (258, short, 3, bits), (259, short, 1, 8),
               (262, short, 1, 2), (277, short, 1, 3), (282, rational, 1, res), (283, rational, 1, res),
               (284, short, 1, 1), (296, short, 1, 3), (322, long_, 1, tile_px), (323, long_, 1, tile_px),
               (324, long_, n_tiles, offsets), (325, long_, n_tiles, counts)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == short and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(extra)) + bytes(extra) + ifd)
    return path


def test_a_slide_larger_than_any_scanner_is_refused_at_once(tmp_path):
    slide = write_sparse_tiff(tmp_path / "huge.tif", width_px=1 << 20, height_px=1 << 20, mpp=0.5)
    assert slide.stat().st_size < 8 << 20
    t0 = time.perf_counter()
    r = run("tile", slide, "-o", tmp_path / "out", "-q")
    assert_one_line_error(r, str(slide), "1,048,576 x 1,048,576 px", "larger than any scanner")
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "out" / "huge").exists()


def test_a_whole_slide_picture_is_bounded(tmp_path):
    from wsiscan.errors import SlideTooLargeError
    from wsiscan.slide import open_slide

    # under the scanner limits, but a tissue picture at 4 um/px of a 30 um/px slide would be 56x its px
    slide = write_sparse_tiff(tmp_path / "coarse-huge.tif", width_px=500_000, height_px=200_000, mpp=30.0)
    with open_slide(slide) as s:
        with pytest.raises(SlideTooLargeError, match="tissue.mask_mpp"):
            s.read_thumbnail(mpp=4.0)
    # 270 x 270 mm at 0.9 um/px: the tissue thumbnail at 4 um/px would be 67,501 px a side
    wide = write_sparse_tiff(tmp_path / "wide.tif", width_px=300_000, height_px=300_000, mpp=0.9)
    r = run("tile", wide, "-o", tmp_path / "out", "-q")
    assert_one_line_error(r, str(wide), "67501 x 67501 px", "tissue.mask_mpp")


def test_library_log_records_stay_off_stderr(tmp_path, small_slide):
    """tifffile logs a warning while a truncated TIFF is examined: not a second stderr line."""
    slide = tmp_path / "cut.tif"
    data = small_slide.read_bytes()
    slide.write_bytes(data[: len(data) // 5])
    env = {**_env(), "HOME": str(tmp_path)}
    proc = subprocess.run([PYTHON, "-m", "wsiscan", "info", str(slide)], capture_output=True, text=True, env=env,
                          timeout=600)
    _assert_one_line(proc, str(slide), "truncated")
    proc = subprocess.run([PYTHON, "-m", "wsiscan", "-v", "info", str(slide)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 1 and "wsiscan: warning: tifffile" in proc.stderr, proc.stderr


def test_thumbnail_reads_stay_small_without_a_pyramid(tmp_path, monkeypatch):
    from wsiscan.slide import MAX_BLOCK_LV_PX, Slide, open_slide

    slide = write_sparse_tiff(tmp_path / "flat.tif", width_px=40_000, height_px=8_000, mpp=0.25)
    sizes = []
    real = Slide.read_level

    def spy(self, *, level, lv_xy, size_px, tile_keep=None):
        sizes.append(size_px)
        return real(self, level=level, lv_xy=lv_xy, size_px=size_px, tile_keep=tile_keep)

    monkeypatch.setattr(Slide, "read_level", spy)
    with open_slide(slide) as s:
        thumb = s.read_thumbnail(mpp=64.0)  # 256x finer level 0: blocks of 16 thumbnail px
    assert thumb.shape == (32, 157, 3) and thumb.min() == 255
    assert max(max(sz) for sz in sizes) <= MAX_BLOCK_LV_PX + 1, max(sizes)


# -- checkpoints, the model cache -------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo unsafe-code-ran",))


@pytest.mark.parametrize("legacy", [False, True])
def test_unsafe_pickle_is_called_unsafe_not_truncated(tmp_path, small_slide, legacy):
    import torch

    ckpt = tmp_path / "evil.pt"
    torch.save({"format": _Evil()}, ckpt, _use_new_zipfile_serialization=not legacy)
    r = run("predict", small_slide, "-o", tmp_path / "out", "--model", ckpt, "--device", "cpu", "-q")
    assert_one_line_error(r, str(ckpt), "unsafe", "posix.system" if os.name == "posix" else "system")
    assert "truncated" not in r.stderr and "unsafe-code-ran" not in r.output


def test_truncated_checkpoint_is_still_called_truncated(tmp_path, tiny_ckpt, small_slide):
    ckpt = tmp_path / "cut.pt"
    data = tiny_ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    r = run("predict", small_slide, "-o", tmp_path / "out", "--model", ckpt, "--device", "cpu", "-q")
    assert_one_line_error(r, str(ckpt), "truncated")
    assert "unsafe" not in r.stderr


def test_unwritable_model_cache_names_wsiscan_home(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WSISCAN_HOME", str(blocker))  # the cache would be a-file/models
    r = run("models", "pull", "wsiscan/tiny")
    assert_one_line_error(r, "WSISCAN_HOME", str(blocker / "models"))


# -- warnings ---------------------------------------------------------------------------------
def _warn_when_opening(monkeypatch, text: str) -> None:
    """Make open_slide issue a UserWarning, as torch does on import or load."""
    import wsiscan.slide

    real = wsiscan.slide.open_slide

    def noisy(*args, **kwargs):
        warnings.warn(text, UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(wsiscan.slide, "open_slide", noisy)


def test_library_warnings_stay_off_stderr_unless_verbose(small_slide, monkeypatch):
    _warn_when_opening(monkeypatch, "TypedStorage is deprecated (a torch UserWarning)")
    quiet = run("info", small_slide)
    assert quiet.exit_code == 0 and "TypedStorage" not in quiet.stderr, quiet.stderr
    loud = run("-v", "info", small_slide)
    assert loud.exit_code == 0 and "wsiscan: warning: UserWarning: TypedStorage" in loud.stderr, loud.stderr


def test_warnings_do_not_precede_the_error_line(tmp_path, monkeypatch):
    _warn_when_opening(monkeypatch, "a torch UserWarning")
    missing = tmp_path / "missing.svs"
    assert_one_line_error(run("info", missing), str(missing))


def test_the_size_limits_are_real_scanner_bounds():
    from wsiscan.slide import MAX_AREA_PX, MAX_SIDE_PX

    # a whole 75 x 25 mm slide at 0.12 um/px (80x scanners) must pass; 0.05 um/px must not
    assert 75e3 / 0.12 <= MAX_SIDE_PX and (75e3 / 0.12) * (25e3 / 0.12) <= MAX_AREA_PX
    assert (75e3 / 0.05) > MAX_SIDE_PX


# -- a full temporary folder (the working files of a large slide's pictures and chunks) ---------
def test_full_temporary_folder_is_one_line_naming_it_and_tmpdir(tmp_path, small_slide, monkeypatch):
    """The slide's pictures go to working files (forced here for a small slide); when the
    temporary folder's disk is full, predict says so in one line naming that folder and
    TMPDIR (not the output folder, which has room), and leaves no result behind."""
    import wsiscan.rowimage as rowimage

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(rowimage, "RAM_LIMIT_BYTES", 0)

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "out"
    r = run("predict", small_slide, "--model", "wsiscan/tiny", "--device", "cpu", "-o", out, "-q")
    assert_one_line_error(r, str(scratch), "disk is full", "TMPDIR")
    assert not list(out.rglob("summary.json"))
    assert not list(scratch.iterdir())  # the working files are unlinked


def test_full_temporary_folder_leaves_the_finished_result_as_it_was(tmp_path, small_slide, monkeypatch):
    """A finished result in the folder, then an --overwrite run that finds the temporary
    folder full: one line, and every file of the finished result is still there, byte for byte."""
    import wsiscan.rowimage as rowimage

    out = tmp_path / "out"
    first = run("predict", small_slide, "--model", "wsiscan/tiny", "--device", "cpu", "-o", out, "-q")
    assert first.exit_code == 0, first.output

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    before = snapshot()
    assert any(name.endswith("summary.json") for name in before)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(rowimage, "RAM_LIMIT_BYTES", 0)

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    r = run("predict", small_slide, "--model", "wsiscan/tiny", "--device", "cpu", "-o", out, "-q", "--overwrite")
    assert_one_line_error(r, str(scratch), "disk is full", "TMPDIR")
    assert snapshot() == before


def test_full_temporary_folder_while_chunks_wait_is_the_same_line(tmp_path, monkeypatch):
    import numpy as np

    from wsiscan.errors import OutputError
    from wsiscan.scan import _ChunkSpill

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spill = _ChunkSpill(1024)
    slot, shape = spill.put(np.arange(1024, dtype=np.uint8))
    np.testing.assert_array_equal(spill.take(slot, shape, np.empty(1024, np.uint8)), np.arange(1024) % 256)
    calls = []

    def filling(*args):  # the disk fills during the write: 100 bytes go, then no room
        calls.append(args)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return 100

    monkeypatch.setattr(os, "pwrite", filling)
    with pytest.raises(OutputError, match=rf"^{tmp_path}: .*disk is full.*TMPDIR") as caught:
        spill.put(np.ones(1024, np.uint8))
    assert "\n" not in str(caught.value)
    spill.close()
