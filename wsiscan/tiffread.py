"""Raw TIFF tile reads: the only module that imports tifffile and imagecodecs for slide pixels.

Fetching the tile bytes of a TIFF slide with ``os.pread`` and decoding them with imagecodecs
(libjpeg-turbo, OpenJPEG) is several times faster than OpenSlide's decode of the same tiles
(the README's Performance section has the figures).  :class:`RawTiffReader` does that for the levels where it gives the very
pixels OpenSlide's ``read_region`` gives (composited on white), and says why not for the
others, which :class:`wsiscan.slide.Slide` then reads through OpenSlide:

* the file is one OpenSlide reads as ``aperio`` or ``generic-tiff`` (each level a tiled
  top-level page, matched to the OpenSlide level by its dimensions; two candidate pages
  with the same dimensions are refused as ambiguous);
* tiles are 8-bit, 3 samples, interleaved, and JPEG (compression 7, YCbCr or RGB, with or
  without shared JPEGTables; the colour space comes from the TIFF photometric tag, never from
  JFIF / Adobe markers, as in OpenSlide) or Aperio JPEG 2000 in RGB (33005).  Aperio's YCbCr JPEG 2000
  (33003) is left to OpenSlide, which converts its colours with its own arithmetic;
* the level's downsample is a whole number.  OpenSlide addresses a region by level-0
  coordinates and divides by the downsample, so on a level with a fractional downsample
  (4443 / 2221 = 2.0005) it paints the tiles at a sub-pixel offset and interpolates:
  measured up to 23 grey levels away from the level's own pixels on TCGA-CR-7395 level 1.
  Those reads stay with OpenSlide so that both readers give identical pixels everywhere.

Pixels outside the level and tiles that are absent from the file (zero byte count) come
back white, as OpenSlide's transparent pixels do after :func:`wsiscan.slide.rgba_to_rgb_white`.
A reader holds one file descriptor and reads with ``os.pread``; open one per thread or
process, like the OpenSlide handles.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlideDecodeError, SlideOpenError

__all__ = ["TiffLevel", "RawTiffReader", "open_raw_reader", "describe_refused_tiff", "RAW_VENDORS"]

RAW_VENDORS = ("aperio", "generic-tiff")  # OpenSlide vendors whose levels are plain tiled TIFF pages
_JPEG = 7
_APERIO_J2K_RGB = 33005
_PHOTOMETRIC_RGB = 2
_PHOTOMETRIC_YCBCR = 6
_JCS_RGB = 2  # libjpeg's J_COLOR_SPACE of RGB output


@dataclass(frozen=True)
class TiffLevel:
    """Where the tiles of one OpenSlide level lie in the file, and how to decode them."""

    level: int
    page_index: int
    dimensions_px: tuple[int, int]  # (width, height) of the level
    tile_px: tuple[int, int]  # (width, height) of one TIFF tile
    codec: str  # "jpeg" or "jpeg2000"
    offsets: np.ndarray  # (tile rows, tile cols) int64 file offsets
    bytecounts: np.ndarray  # (tile rows, tile cols) int64, 0 for an absent tile
    jpegtables: bytes | None
    jpeg_colorspace: int | None  # libjpeg J_COLOR_SPACE of the JPEG data, from the TIFF photometric tag

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(tile rows, tile cols)."""
        return self.offsets.shape


class RawTiffReader:
    """Reads rectangles of the supported levels of one TIFF slide straight from its tiles."""

    def __init__(self, path: Path, levels: dict[int, TiffLevel], problems: dict[int, str]) -> None:
        self.path = path
        self.levels = levels
        self.problems = problems  # level -> why it is left to OpenSlide
        self._fd: int | None = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def supports(self, level: int) -> bool:
        return level in self.levels

    def why_not(self, level: int) -> str:
        """Why ``level`` is read by OpenSlide ('' when this reader supports it)."""
        return "" if level in self.levels else self.problems.get(level, f"no level {level}")

    def codec(self, level: int) -> str:
        return self.levels[level].codec

    def read(self, *, level: int, lv_xy: tuple[int, int], size_px: tuple[int, int],
             tile_keep: np.ndarray | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """RGB uint8 (rows, cols, 3) of a rectangle of ``level`` px, and how many of its px were decoded.

        ``tile_keep`` (tile rows, tile cols) bool, optional: tiles marked False are not
        decoded and read as white (255), like pixels outside the level.  ``out``: a
        (rows, cols, 3) uint8 array to read into (a reused buffer; its contents do not
        matter) instead of a fresh one; it is returned.
        """
        lev = self.levels[level]
        x0, y0 = int(lv_xy[0]), int(lv_xy[1])
        w, h = int(size_px[0]), int(size_px[1])
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        elif out.shape != (h, w, 3) or out.dtype != np.uint8:
            raise ValueError(f"out is {out.dtype} {out.shape}, expected uint8 {(h, w, 3)}")
        lw, lh = lev.dimensions_px
        tw, th = lev.tile_px
        # the part of the rectangle inside the level
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, lw), min(y0 + h, lh)
        if ix1 <= ix0 or iy1 <= iy0:
            out[...] = 255
            return out, 0
        # white outside the level: bands above and below it, then left and right of it; every
        # px inside is written once below, by its tile or as white (each write of the
        # buffer is one it needs: nothing is filled first and then overwritten)
        out[: iy0 - y0] = 255
        out[iy1 - y0 :] = 255
        out[iy0 - y0 : iy1 - y0, : ix0 - x0] = 255
        out[iy0 - y0 : iy1 - y0, ix1 - x0 :] = 255
        decoded = 0
        for tr in range(iy0 // th, (iy1 - 1) // th + 1):
            for tc in range(ix0 // tw, (ix1 - 1) // tw + 1):
                tx, ty = tc * tw, tr * th
                sx0, sy0, sx1, sy1 = max(ix0, tx), max(iy0, ty), min(ix1, tx + tw), min(iy1, ty + th)
                dst = out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
                count = int(lev.bytecounts[tr, tc])
                # a tile marked glass, or absent (transparent in OpenSlide): white
                if (tile_keep is not None and not tile_keep[tr, tc]) or count == 0:
                    dst[...] = 255
                    continue
                tile = self._decode(lev, tr, tc, count)
                dst[...] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
                decoded += (sx1 - sx0) * (sy1 - sy0)
        return out, decoded

    def _decode(self, lev: TiffLevel, tr: int, tc: int, count: int) -> np.ndarray:
        import imagecodecs

        if self._fd is None:
            raise SlideOpenError(f"{self.path}: the raw tile reader is closed")
        data = os.pread(self._fd, count, int(lev.offsets[tr, tc]))
        try:
            if lev.codec == "jpeg":
                tile = imagecodecs.jpeg8_decode(data, tables=lev.jpegtables, colorspace=lev.jpeg_colorspace,
                                                outcolorspace=_JCS_RGB)
            else:
                tile = imagecodecs.jpeg2k_decode(data)
        except (imagecodecs.Jpeg8Error, imagecodecs.Jpeg2kError, ValueError) as exc:
            short = f", {len(data)} of {count} bytes present: the file is truncated" if len(data) < count else ""
            raise SlideDecodeError(
                f"{self.path}: level {lev.level} tile (row {tr}, col {tc}) at byte {int(lev.offsets[tr, tc])} "
                f"is not valid {lev.codec} ({exc}{short}); set tile.reader: openslide in a --config file to "
                f"read it with OpenSlide, and if that fails too the slide file is damaged"
            ) from exc
        tw, th = lev.tile_px
        if tile.ndim != 3 or tile.shape[2] < 3 or tile.shape[0] < th or tile.shape[1] < tw:
            raise SlideDecodeError(
                f"{self.path}: level {lev.level} tile (row {tr}, col {tc}) decodes to {tile.shape}, expected "
                f"({th}, {tw}, 3); set tile.reader: openslide in a --config file to read it with OpenSlide, "
                f"and if that fails too the slide file is damaged"
            )
        return tile[..., :3]


def _codec_available(codec: str) -> bool:
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available if codec == "jpeg" else imagecodecs.JPEG2K.available)


def _level_from_page(page, level: int, vendor: str) -> tuple[TiffLevel | None, str]:
    """The :class:`TiffLevel` of a tiled page, or None and why it is not supported."""
    comp = int(page.compression)
    photometric = int(page.photometric)
    if comp == _JPEG and photometric in (_PHOTOMETRIC_YCBCR, _PHOTOMETRIC_RGB):
        codec = "jpeg"
    elif comp == _APERIO_J2K_RGB and vendor == "aperio":
        codec = "jpeg2000"
    else:
        return None, f"compression {comp} with photometric {photometric} (only JPEG and Aperio RGB JPEG 2000)"
    if page.bitspersample != 8 or page.samplesperpixel != 3 or int(page.planarconfig) != 1 or page.extrasamples:
        return None, (f"{page.samplesperpixel} samples of {page.bitspersample} bits, planar configuration "
                      f"{int(page.planarconfig)} (only 3 interleaved 8-bit samples)")
    if page.imagedepth != 1 or page.tiledepth != 1:
        return None, "a 3-D tiled page"
    if not _codec_available(codec):
        return None, f"imagecodecs has no {codec} decoder"
    tw, th = int(page.tilewidth), int(page.tilelength)
    w, h = int(page.imagewidth), int(page.imagelength)
    rows, cols = math.ceil(h / th), math.ceil(w / tw)
    offsets = np.asarray(page.dataoffsets, np.int64)
    counts = np.asarray(page.databytecounts, np.int64)
    if offsets.size != rows * cols or counts.size != rows * cols:
        return None, f"{offsets.size} tile offsets for a grid of {rows} x {cols} tiles"
    colorspace = None
    if codec == "jpeg":
        import imagecodecs

        # the TIFF tag decides, whatever JFIF / Adobe markers the JPEG data carries: OpenSlide
        # does the same (measured on files whose tag and markers disagree: its pixels follow the tag)
        cs = imagecodecs.JPEG8.CS
        colorspace = int(cs.RGB if photometric == _PHOTOMETRIC_RGB else cs.YCbCr)
    return TiffLevel(level=level, page_index=int(page.index), dimensions_px=(w, h), tile_px=(tw, th), codec=codec,
                     offsets=offsets.reshape(rows, cols), bytecounts=counts.reshape(rows, cols),
                     jpegtables=bytes(page.jpegtables) if page.jpegtables else None,
                     jpeg_colorspace=colorspace), ""


def describe_refused_tiff(path: Path) -> str:
    """Why OpenSlide may have refused a file with a TIFF header: truncated or damaged, not
    tiled (stripped), or tiled but in no slide layout it knows; with the fix."""
    convert = "convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg`)"
    try:
        import tifffile

        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            ends = [int(o) + int(c) for pg in pages for o, c in zip(pg.dataoffsets, pg.databytecounts, strict=True)]
            tiled = bool(pages) and bool(getattr(pages[0], "is_tiled", False))
    except Exception as exc:
        return (f"a TIFF that is truncated or damaged (tifffile: {exc}); copy it again from the scanner or "
                f"re-export it")
    if ends and max(ends) > size:
        return (f"a TIFF that is truncated: its tiles reach byte {max(ends):,} but the file has {size:,} bytes; "
                f"copy it again from the scanner or re-export it")
    if not tiled:
        return f"a TIFF that is not tiled (stripped); {convert}"
    return f"a tiled TIFF in no slide layout OpenSlide knows, or damaged; {convert}"


def open_raw_reader(path: str | Path, *, vendor: str, level_dimensions_px: tuple[tuple[int, int], ...],
                    level_downsamples: tuple[float, ...]) -> tuple[RawTiffReader | None, str, dict[int, str]]:
    """A reader for the levels of ``path`` that it can read exactly as OpenSlide does.

    Returns (reader, '', problems) or (None, why not, problems); ``problems`` (also the
    reader's ``problems``) says, per level, why that level is left to OpenSlide (empty when
    the whole file is).
    """
    if vendor not in RAW_VENDORS:
        return None, f"OpenSlide vendor {vendor!r} (only {', '.join(RAW_VENDORS)})", {}
    try:
        import tifffile
    except ImportError:
        return None, "tifffile is not installed", {}
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        return None, f"cannot read the file ({exc})", {}
    # the file as it is now: another file at the path, or this one rewritten, is parsed again
    key = (str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, vendor,
           tuple(map(tuple, level_dimensions_px)), tuple(level_downsamples))
    with _PARSED_LOCK:  # one parse at a time: a handle opened meanwhile waits and takes its result
        parsed = _PARSED.get(key)
        if parsed is None:
            parsed = _parse_levels(tifffile, p, vendor, level_dimensions_px, level_downsamples)
            _PARSED.clear()
            _PARSED[key] = parsed
    reader_or_none, why, levels, problems = parsed
    if not reader_or_none:
        return None, why, dict(problems)
    return RawTiffReader(p, dict(levels), dict(problems)), "", dict(problems)


# The levels of the last TIFF parsed (one file), for the next handle on it.  A scan opens a
# handle per decode thread, after planning opened its own: tifffile's parse of a large
# slide makes some 600,000 Python objects (its tile tables as tuples of ints), 20-30 MB
# that the heap keeps in part after they are freed, in each thread that parses.  The
# TiffLevel arrays are read-only and shared by the readers.
_PARSED: dict[tuple, tuple[bool, str, dict[int, TiffLevel], dict[int, str]]] = {}
_PARSED_LOCK = threading.Lock()


def _parse_levels(tifffile: Any, p: Path, vendor: str, level_dimensions_px: tuple[tuple[int, int], ...],
                  level_downsamples: tuple[float, ...]) -> tuple[bool, str, dict[int, TiffLevel], dict[int, str]]:
    """(readable, why not, levels, problems) of ``p``: see :func:`open_raw_reader`."""
    try:
        with tifffile.TiffFile(p) as tif:
            tiled = [page for page in tif.pages if isinstance(page, tifffile.TiffPage) and page.is_tiled]
            levels: dict[int, TiffLevel] = {}
            problems: dict[int, str] = {}
            for i, dims in enumerate(level_dimensions_px):
                match = [pg for pg in tiled if (int(pg.imagewidth), int(pg.imagelength)) == tuple(dims)]
                ds = level_downsamples[i]
                if len(match) != 1:
                    problems[i] = f"{len(match)} tiled TIFF pages of {dims[0]} x {dims[1]} px (ambiguous or missing)"
                elif i > 0 and ds != round(ds):
                    problems[i] = (f"downsample {ds:.6g} is not a whole number: OpenSlide paints this level at "
                                   f"sub-pixel offsets, which raw tiles would not reproduce")
                else:
                    lev, why = _level_from_page(match[0], i, vendor)
                    if lev is None:
                        problems[i] = why
                    else:
                        levels[i] = lev
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as exc:
        return False, f"tifffile cannot parse the file ({exc})", {}, {}
    if not levels:
        return False, "; ".join(f"level {i}: {why}" for i, why in sorted(problems.items())), {}, problems
    for lev in levels.values():
        lev.offsets.flags.writeable = False
        lev.bytecounts.flags.writeable = False
    return True, "", levels, problems
