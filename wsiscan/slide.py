"""Slide access: the only module that imports openslide.

``open_slide`` validates a file and returns a :class:`Slide`, which carries a frozen
:class:`SlideInfo` (levels, resolution and where it came from) and reads pixels as
RGB ``uint8`` arrays, resampled with area averaging when asked.

Pixels come from OpenSlide, or, for the levels of TIFF slides where it gives the same
pixels, from :mod:`wsiscan.tiffread`'s raw tile reader (5-6x faster on JPEG tiles,
measured with `wsiscan bench`); ``reader="openslide"`` turns the raw reader off.  :meth:`Slide.reader_for` says which
reader serves a level, and :attr:`Slide.decoded_px` counts the pixels each one decoded.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .errors import ConfigError, MissingMppError, ResolutionError, SlideDecodeError, SlideOpenError, SlideTooLargeError
from .grid import coarsest_level_within
from .rowimage import RowImage
from .tiffread import RawTiffReader, describe_refused_tiff, open_raw_reader

__all__ = [
    "LevelInfo",
    "MppInfo",
    "SlideInfo",
    "Slide",
    "open_slide",
    "slide_fingerprint",
]

_CM_PER_UNIT = {"centimeter": 1.0, "inch": 2.54}
# Level 0 larger than any scanner makes is refused before anything is allocated: a whole
# 75 x 25 mm slide at 0.1 um/px (finer than any 80x scanner) is 750,000 x 250,000 px =
# 1.9e11 px, so no real scan passes 1,000,000 px on a side or 2e11 px in all.
MAX_SIDE_PX = 1_000_000
MAX_AREA_PX = 200_000_000_000
# The most px a whole-slide picture (tissue thumbnail, overview) may have: 768 MiB of RGB.
MAX_THUMBNAIL_PX = 1 << 28
MAX_BLOCK_LV_PX = 4096  # the largest side, in level px, of one read behind a whole-slide picture
READERS = ("auto", "openslide")  # values of open_slide(reader=...) and of tile.reader


@dataclass(frozen=True)
class LevelInfo:
    index: int
    dimensions_px: tuple[int, int]  # (width, height) of this level
    downsample: float  # level-0 px per level px
    mpp: float | None  # um/px of this level (None when the slide has no resolution)


@dataclass(frozen=True)
class MppInfo:
    """The slide's base (level-0) resolution and its provenance."""

    mpp_x: float
    mpp_y: float
    source: str  # "openslide-properties", "tiff-resolution-tags" or "override"
    detail: str  # what exactly was read, e.g. "openslide.mpp-x=0.499, openslide.mpp-y=0.499"

    @property
    def mpp(self) -> float:
        return (self.mpp_x + self.mpp_y) / 2.0


@dataclass(frozen=True)
class SlideInfo:
    path: str
    vendor: str
    file_size_bytes: int
    mtime_ns: int
    levels: tuple[LevelInfo, ...]
    mpp: MppInfo | None
    mpp_problem: str  # why no mpp is available ("" when mpp is set)
    objective_power: float | None
    associated_images: dict[str, tuple[int, int]] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def dimensions_px(self) -> tuple[int, int]:
        return self.levels[0].dimensions_px

    def to_dict(self, *, with_properties: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_properties:
            data.pop("properties")
        data["mpp"] = None if self.mpp is None else {**asdict(self.mpp), "mpp": self.mpp.mpp}
        return data


def slide_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identity of a slide file: resolved path, size, mtime and a hash of its ends.

    Hashing the first and last MiB is enough to tell two scans apart in practice
    and costs milliseconds even for multi-GB files.  For directory-based formats
    (e.g. MRXS data folders) only the index file is hashed.
    """
    p = Path(path).resolve()
    st = p.stat()
    h = hashlib.sha256()
    with p.open("rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > (2 << 20):
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return {
        "path": str(p),
        "size_bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "quick_sha256": h.hexdigest(),
    }


def _plausible(mpp_x: float, mpp_y: float, *, mpp_min: float, mpp_max: float, xy_max_rel_diff: float) -> str:
    """Empty string when plausible, else the reason."""
    for v in (mpp_x, mpp_y):
        if not math.isfinite(v) or v <= 0:
            return f"{v} is not a positive number"
        if not mpp_min <= v <= mpp_max:
            return f"{v:.4g} um/px is outside the plausible range {mpp_min}-{mpp_max} um/px"
    if abs(mpp_x - mpp_y) > xy_max_rel_diff * max(mpp_x, mpp_y):
        return f"x ({mpp_x:.4g}) and y ({mpp_y:.4g}) differ by more than {xy_max_rel_diff:.0%}"
    return ""


def _mpp_from_properties(props: dict[str, str]) -> tuple[tuple[float, float] | None, str]:
    if "openslide.mpp-x" in props and "openslide.mpp-y" in props:
        try:
            x = float(props["openslide.mpp-x"])
            y = float(props["openslide.mpp-y"])
        except ValueError:
            return None, f"openslide.mpp-x/y are not numbers ({props['openslide.mpp-x']!r})"
        return (x, y), f"openslide.mpp-x={x:g}, openslide.mpp-y={y:g}"
    return None, ""


def _mpp_from_tiff_tags(props: dict[str, str]) -> tuple[tuple[float, float] | None, str]:
    unit = props.get("tiff.ResolutionUnit", "").lower()
    if "tiff.XResolution" not in props or "tiff.YResolution" not in props:
        return None, ""
    try:
        xres = float(props["tiff.XResolution"])
        yres = float(props["tiff.YResolution"])
    except ValueError:
        return None, "tiff.X/YResolution are not numbers"
    if unit not in _CM_PER_UNIT:  # a resolution without a unit says nothing physical: as if absent
        return None, ""
    if xres <= 0 or yres <= 0:
        return None, f"TIFF resolution {xres:g}x{yres:g} is not positive"
    cm = _CM_PER_UNIT[unit]
    x, y = cm * 1e4 / xres, cm * 1e4 / yres
    return (x, y), f"tiff.XResolution={xres:g}, tiff.YResolution={yres:g} per {unit}"


def _resolve_mpp(
    path: Path,
    props: dict[str, str],
    *,
    slide_mpp: float | None,
    mpp_min: float,
    mpp_max: float,
    xy_max_rel_diff: float,
) -> tuple[MppInfo | None, str]:
    """The resolution chain: override > OpenSlide properties > TIFF resolution tags."""
    limits = dict(mpp_min=mpp_min, mpp_max=mpp_max, xy_max_rel_diff=xy_max_rel_diff)
    if slide_mpp is not None:
        why = _plausible(slide_mpp, slide_mpp, **limits)
        if why:
            raise ResolutionError(f"{path}: --slide-mpp {slide_mpp}: {why}; give the scan's real resolution in um/px")
        found, detail = _mpp_from_properties(props)
        note = f" (file says {detail})" if found else ""
        return MppInfo(slide_mpp, slide_mpp, "override", f"--slide-mpp {slide_mpp:g}{note}"), ""
    problems = []
    for source, reader in (
        ("openslide-properties", _mpp_from_properties),
        ("tiff-resolution-tags", _mpp_from_tiff_tags),
    ):
        found, detail = reader(props)
        if found is None:
            if detail:
                problems.append(detail)
            continue
        why = _plausible(*found, **limits)
        if why:
            problems.append(f"{detail}: {why}")
            continue
        return MppInfo(found[0], found[1], source, detail), ""
    return None, "; ".join(problems)


class Slide:
    """An open slide: metadata plus pixel reads.  Not shareable across processes."""

    def __init__(self, path: Path, handle: Any, info: SlideInfo, *, raw: RawTiffReader | None = None,
                 raw_problem: str = "", raw_level_problems: dict[int, str] | None = None) -> None:
        self.path = path
        self._handle = handle
        self.info = info
        self._raw = raw
        self.raw_problem = raw_problem  # why no level is read raw ('' when some are, or when not asked)
        self._raw_level_problems = raw_level_problems or {}  # level -> why OpenSlide reads it
        # level px decoded so far, per reader ("openslide", "tifffile-jpeg", "tifffile-jpeg2000"),
        # and px of raw-read regions left white because their tiles were marked glass
        self.decoded_px: dict[str, int] = {}
        self.skipped_px = 0
        self.last_reader = ""  # the reader of the latest read_level

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
        self._handle.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata --------------------------------------------------------------
    def require_mpp(self) -> MppInfo:
        """The base resolution, or a :class:`MissingMppError` saying how to give one."""
        if self.info.mpp is not None:
            return self.info.mpp
        power = self.info.objective_power
        hint = f" (objective power {power:g}x suggests about {10.0 / power:g})" if power else ""
        if self.info.mpp_problem:
            raise ResolutionError(
                f"{self.path}: implausible resolution in the slide's metadata ({self.info.mpp_problem}); "
                f"pass --slide-mpp UM_PER_PX with the scan's real resolution{hint}"
            )
        raise MissingMppError(
            f"{self.path}: no resolution (mpp) in the slide's metadata; "
            f"pass --slide-mpp UM_PER_PX with the scan's resolution{hint}"
        )

    # -- pixels ----------------------------------------------------------------
    def reader_for(self, level: int) -> str:
        """Which reader decodes ``level``: "tifffile-jpeg", "tifffile-jpeg2000" or "openslide"."""
        if self._raw is not None and self._raw.supports(level):
            return f"tifffile-{self._raw.codec(level)}"
        return "openslide"

    def why_openslide(self, level: int) -> str:
        """Why ``level`` is read by OpenSlide rather than raw ('' when it is read raw)."""
        if self._raw is None:
            return (self._raw_level_problems.get(level) or self.raw_problem
                    or "raw reads are off (reader='openslide')")
        return self._raw.why_not(level)

    def tile_layout(self, level: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """((tile width, height) px, (tile rows, cols)) of a raw-read level; None for OpenSlide levels."""
        if self._raw is None or not self._raw.supports(level):
            return None
        lev = self._raw.levels[level]
        return lev.tile_px, lev.grid_shape

    def read_level(self, *, level: int, lv_xy: tuple[int, int], size_px: tuple[int, int],
                   tile_keep: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """RGB uint8 (rows, cols, 3) of a rectangle in ``level`` pixels.

        Pixels outside the slide and transparent pixels come back white, as on glass.
        ``tile_keep`` ((tile rows, cols) bool, see :meth:`tile_layout`) marks the TIFF tiles
        worth decoding on a raw-read level: the others read as white.  OpenSlide levels
        ignore it and decode everything.  ``out``: a (rows, cols, 3) uint8 array to read
        into instead of a fresh one (a reused buffer); it is returned.
        """
        w, h = size_px
        if w <= 0 or h <= 0:
            return _into(out, np.full((max(h, 0), max(w, 0), 3), 255, np.uint8))
        reader = self.reader_for(level)
        self.last_reader = reader
        if reader != "openslide":
            if self._raw is None:  # reader_for names the raw reader only when one is open
                raise RuntimeError(f"{self.path}: level {level} has no raw reader")
            rgb, n_px = self._raw.read(level=level, lv_xy=lv_xy, size_px=(w, h), tile_keep=tile_keep, out=out)
            self.decoded_px[reader] = self.decoded_px.get(reader, 0) + n_px
            if tile_keep is not None:
                self.skipped_px += _inside_px(self.info.levels[level].dimensions_px, lv_xy, (w, h)) - n_px
            return rgb
        ds = self.info.levels[level].downsample
        l0_xy = (int(round(lv_xy[0] * ds)), int(round(lv_xy[1] * ds)))
        try:
            rgba = np.asarray(self._handle.read_region(l0_xy, level, (w, h)))
        except _openslide_error() as exc:
            raise SlideDecodeError(
                f"{self.path}: OpenSlide cannot decode level {level} at level-0 ({l0_xy[0]}, {l0_xy[1]}) ({exc}); "
                f"the slide file is damaged: copy it again from the scanner or re-export it") from exc
        self.decoded_px[reader] = self.decoded_px.get(reader, 0) + w * h
        return _into(out, rgba_to_rgb_white(rgba))

    def read_resampled(
        self,
        *,
        level: int,
        lv_box: tuple[float, float, float, float],
        out_size_px: tuple[int, int],
        tile_keep: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Read ``lv_box`` (x0, y0, x1, y1, float ``level`` px) resampled to ``out_size_px``.

        Downsampling averages areas (PIL's BOX filter over the exact float box), so a
        2x reduction is the mean of each 2x2 block.  When the box is integral and its
        size equals the output size, the pixels are returned untouched.  ``tile_keep`` as
        in :meth:`read_level`; ``out``: a (rows, cols, 3) uint8 array of ``out_size_px`` to
        read into (a reused buffer), which is returned.
        """
        x0, y0, x1, y1 = lv_box
        ow, oh = out_size_px
        ix0, iy0 = math.floor(x0 + 1e-9), math.floor(y0 + 1e-9)
        ix1, iy1 = math.ceil(x1 - 1e-9), math.ceil(y1 - 1e-9)
        integral = all(abs(v - round(v)) < 1e-9 for v in lv_box)
        if integral and ix1 - ix0 == ow and iy1 - iy0 == oh:  # the level's own pixels: straight into ``out``
            return self.read_level(level=level, lv_xy=(ix0, iy0), size_px=(ow, oh), tile_keep=tile_keep, out=out)
        region = self.read_level(level=level, lv_xy=(ix0, iy0), size_px=(ix1 - ix0, iy1 - iy0), tile_keep=tile_keep)
        img = Image.fromarray(region)
        box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
        return _into(out, np.asarray(img.resize((ow, oh), Image.Resampling.BOX, box=box)))

    def level_for_mpp(self, mpp: float, *, tolerance: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``mpp`` (within tolerance).

        Falls back to level 0 when every level is coarser.
        """
        base = self.require_mpp().mpp
        level_mpps = tuple(base * lvl.downsample for lvl in self.info.levels)
        best = coarsest_level_within(level_mpps, max_mpp=mpp * (1 + tolerance))
        return 0 if best is None else best

    def read_thumbnail(self, *, mpp: float, block_px: int = 512) -> np.ndarray:
        """The whole slide at ``mpp`` um/px, read block by block from the best level.

        Memory is bounded by the thumbnail (at most :data:`MAX_THUMBNAIL_PX`, else
        :class:`SlideTooLargeError`) plus one block of at most :data:`MAX_BLOCK_LV_PX` level
        px a side, whatever the slide size.  For a picture that grows with the slide, see
        :meth:`read_thumbnail_rows`.
        """
        out_w, out_h = self._thumbnail_size(mpp)
        thumb = np.empty((out_h, out_w, 3), np.uint8)
        for oy, band in self._thumbnail_bands(mpp, block_px):
            thumb[oy : oy + band.shape[0]] = band
        return thumb

    def read_thumbnail_rows(self, *, mpp: float, block_px: int = 512,
                            ram_limit_bytes: int | None = None) -> RowImage:
        """:meth:`read_thumbnail`'s picture (the same pixels) as a :class:`RowImage`, written
        one band of blocks at a time: memory is bounded by one band (``block_px`` rows), not
        by the picture, which goes to a temporary file when large (``ram_limit_bytes``, see
        :class:`RowImage`)."""
        out_w, out_h = self._thumbnail_size(mpp)
        image = RowImage((out_h, out_w, 3), np.uint8, ram_limit_bytes=ram_limit_bytes)
        try:
            for oy, band in self._thumbnail_bands(mpp, block_px):
                image.write_rows(oy, band)
        except BaseException:
            image.close()
            raise
        return image

    def _thumbnail_size(self, mpp: float) -> tuple[int, int]:
        """(width, height) px of the whole slide at ``mpp``; :class:`SlideTooLargeError` past
        :data:`MAX_THUMBNAIL_PX`."""
        base = self.require_mpp().mpp
        l0_w, l0_h = self.info.dimensions_px
        l0_per_out = mpp / base
        out_w = max(1, int(math.ceil(l0_w / l0_per_out)))
        out_h = max(1, int(math.ceil(l0_h / l0_per_out)))
        if out_w * out_h > MAX_THUMBNAIL_PX:
            raise SlideTooLargeError(
                f"{self.path}: a picture of the whole slide at {mpp:g} um/px would be {out_w} x {out_h} px, more "
                f"than the {MAX_THUMBNAIL_PX:,} px wsiscan allows; check the slide's resolution ({base:.4g} um/px, "
                f"--slide-mpp) or raise tissue.mask_mpp")
        return out_w, out_h

    def _thumbnail_bands(self, mpp: float, block_px: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of the whole slide at ``mpp``, one band of ``block_px`` rows at a
        time, each band read block by block from the best level."""
        out_w, out_h = self._thumbnail_size(mpp)
        level = self.level_for_mpp(mpp, tolerance=0.0)
        lv_per_out = mpp / self.require_mpp().mpp / self.info.levels[level].downsample
        # a slide without a coarse enough level: smaller blocks, so one read stays MAX_BLOCK_LV_PX a side
        block_px = max(1, min(block_px, int(MAX_BLOCK_LV_PX / lv_per_out)))
        for oy in range(0, out_h, block_px):
            bh = min(block_px, out_h - oy)
            band = np.empty((bh, out_w, 3), np.uint8)
            for ox in range(0, out_w, block_px):
                bw = min(block_px, out_w - ox)
                box = (ox * lv_per_out, oy * lv_per_out, (ox + bw) * lv_per_out, (oy + bh) * lv_per_out)
                band[:, ox : ox + bw] = self.read_resampled(level=level, lv_box=box, out_size_px=(bw, bh))
            yield oy, band

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (thumbnail, label, macro) as RGB; :class:`SlideDecodeError` if it is damaged."""
        try:
            return rgba_to_rgb_white(np.asarray(self._handle.associated_images[name]))
        except _openslide_error() as exc:
            raise SlideDecodeError(f"{self.path}: the associated image {name!r} cannot be decoded ({exc}); "
                                   f"the slide's pixels are not affected") from exc

    def associated_image_problems(self) -> dict[str, str]:
        """Why each associated image cannot be decoded ('' when it can).

        Each image is decoded through its own OpenSlide handle: a failed read leaves an
        OpenSlide handle unusable, and this slide's handle must stay good for its pixels.
        """
        import openslide

        problems = {}
        for name in self.info.associated_images:
            try:
                with openslide.OpenSlide(str(self.path)) as probe:
                    probe.associated_images[name]
            except openslide.OpenSlideError as exc:
                problems[name] = str(exc) or type(exc).__name__
            else:
                problems[name] = ""
        return problems

    def deep_zoom(self, *, tile_size_px: int = 254, overlap_px: int = 1) -> Any:
        """OpenSlide's ``DeepZoomGenerator`` over the whole slide in level-0 px (for ``wsiscan serve``)."""
        from openslide.deepzoom import DeepZoomGenerator

        return DeepZoomGenerator(self._handle, tile_size=tile_size_px, overlap=overlap_px, limit_bounds=False)


def openslide_library_version() -> str | None:
    """Version of the OpenSlide C library, None when it cannot be loaded (metadata must not fail on it)."""
    try:
        import openslide
    except Exception:  # a missing or broken library raises ImportError or OSError, depending on the platform
        return None
    version = getattr(openslide, "__library_version__", None)
    return None if version is None else str(version)
def _openslide_error() -> type[Exception]:
    import openslide

    return openslide.OpenSlideError


def _associated_dimensions(props: dict[str, str], names: list[str]) -> dict[str, tuple[int, int]]:
    """(width, height) of each associated image from OpenSlide's properties, without decoding
    it; (0, 0) where the properties do not say."""
    dims = {}
    for name in names:
        try:
            dims[name] = (int(props[f"openslide.associated.{name}.width"]),
                          int(props[f"openslide.associated.{name}.height"]))
        except (KeyError, ValueError):
            dims[name] = (0, 0)
    return dims


def check_slide_size(path: Path, dimensions_px: tuple[int, int]) -> None:
    """Refuse a level 0 larger than any scanner makes (:data:`MAX_SIDE_PX`, :data:`MAX_AREA_PX`)."""
    w, h = dimensions_px
    if max(w, h) > MAX_SIDE_PX or w * h > MAX_AREA_PX:
        raise SlideTooLargeError(
            f"{path}: level 0 declares {w:,} x {h:,} px, larger than any scanner makes (at most "
            f"{MAX_SIDE_PX:,} px a side and {MAX_AREA_PX:.0e} px in all); the file's header is damaged or "
            f"it is not a slide scan")


def _inside_px(dims_px: tuple[int, int], lv_xy: tuple[int, int], size_px: tuple[int, int]) -> int:
    """How many px of a rectangle lie inside a level of ``dims_px``."""
    w = min(lv_xy[0] + size_px[0], dims_px[0]) - max(lv_xy[0], 0)
    h = min(lv_xy[1] + size_px[1], dims_px[1]) - max(lv_xy[1], 0)
    return max(w, 0) * max(h, 0)


def _into(out: np.ndarray | None, rgb: np.ndarray) -> np.ndarray:
    """``rgb``, copied into ``out`` when a buffer was given."""
    if out is None:
        return rgb
    out[...] = rgb
    return out


def rgba_to_rgb_white(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's premultiplied RGBA over white."""
    if rgba.ndim == 3 and rgba.shape[2] == 3:
        return np.ascontiguousarray(rgba)
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    out = rgb.astype(np.uint16) + (255 - alpha.astype(np.uint16))[..., None]
    composited: np.ndarray = np.minimum(out, 255).astype(np.uint8)
    return composited


def _describe_unreadable(path: Path) -> str:
    """A best guess at why OpenSlide refused a file, with the fix."""
    try:
        head = path.read_bytes()[:8] if path.is_file() else b""
    except OSError:
        head = b""
    if head.startswith(b"\x89PNG"):
        return "a PNG image is not a whole-slide image; convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave in.png out.tif --tile --pyramid --compression jpeg`)"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return describe_refused_tiff(path)
    if head[:2] == b"\xff\xd8":
        return "a plain JPEG is not a whole-slide image; convert it to a tiled pyramidal TIFF"
    return "not a slide format OpenSlide can read (Aperio SVS, generic tiled TIFF, Hamamatsu NDPI/VMS, MIRAX MRXS, Leica SCN, Philips TIFF, Ventana BIF, DICOM WSI, ...); check that the file is complete and not corrupt"


def open_slide(
    path: str | Path,
    *,
    slide_mpp: float | None = None,
    mpp_min: float = 0.05,
    mpp_max: float = 40.0,
    mpp_xy_max_rel_diff: float = 0.05,
    reader: str = "auto",
) -> Slide:
    """Open ``path`` with OpenSlide and read its metadata.

    ``reader="auto"`` also opens the raw TIFF tile reader (:mod:`wsiscan.tiffread`) for
    the levels it reads exactly as OpenSlide does; ``"openslide"`` reads every level
    through OpenSlide.

    Resolution comes from, in order: ``slide_mpp`` if given, the OpenSlide
    ``openslide.mpp-x/y`` properties, then the TIFF resolution tags (with a unit).
    Implausible values are skipped, with the reason kept in ``info.mpp_problem``; a
    slide without resolution still opens (``info.mpp`` is None) so that ``info``
    works, and :meth:`Slide.require_mpp` raises when a resolution is needed.
    """
    import openslide

    if reader not in READERS:
        raise ConfigError(f"reader {reader!r} is not one of {', '.join(READERS)}")
    p = Path(path)
    if not p.exists():
        raise SlideOpenError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise SlideOpenError(f"{p}: is a folder, not a slide file; for MIRAX pass the .mrxs file next to its data folder")
    try:
        with p.open("rb"):  # OpenSlide would call an unreadable file an unsupported format
            pass
    except PermissionError as exc:
        raise SlideOpenError(f"{p}: permission denied reading the slide; make the file readable "
                             f"(e.g. chmod a+r) or run as a user who may read it") from exc
    try:
        handle = openslide.OpenSlide(str(p))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideOpenError(f"{p}: {_describe_unreadable(p)}") from exc
    except openslide.OpenSlideError as exc:
        raise SlideOpenError(f"{p}: OpenSlide could not read the file ({exc}); check that it is complete and not corrupt") from exc
    except PermissionError as exc:
        raise SlideOpenError(f"{p}: permission denied; make the file readable") from exc

    try:
        props = dict(handle.properties)
        mpp, problem = _resolve_mpp(
            p,
            props,
            slide_mpp=slide_mpp,
            mpp_min=mpp_min,
            mpp_max=mpp_max,
            xy_max_rel_diff=mpp_xy_max_rel_diff,
        )
        levels = tuple(
            LevelInfo(
                index=i,
                dimensions_px=(int(handle.level_dimensions[i][0]), int(handle.level_dimensions[i][1])),
                downsample=float(handle.level_downsamples[i]),
                mpp=None if mpp is None else mpp.mpp * float(handle.level_downsamples[i]),
            )
            for i in range(handle.level_count)
        )
        try:
            power = float(props["openslide.objective-power"]) if "openslide.objective-power" in props else None
        except ValueError:
            power = None
        assoc = _associated_dimensions(props, list(handle.associated_images.keys()))  # nothing decoded
        st = p.stat()
        info = SlideInfo(
            path=str(p.resolve()),
            vendor=props.get("openslide.vendor", "unknown"),
            file_size_bytes=st.st_size,
            mtime_ns=st.st_mtime_ns,
            levels=levels,
            mpp=mpp,
            mpp_problem=problem,
            objective_power=power,
            associated_images=assoc,
            properties=props,
        )
    except Exception:
        handle.close()
        raise
    if info.dimensions_px[0] <= 0 or info.dimensions_px[1] <= 0:
        handle.close()
        raise SlideOpenError(f"{p}: the slide has no pixels (level 0 is {info.dimensions_px}); check the file")
    try:
        check_slide_size(p, info.dimensions_px)
    except SlideTooLargeError:
        handle.close()
        raise
    raw: RawTiffReader | None = None
    raw_problem = ""
    raw_level_problems: dict[int, str] = {}
    if reader == "auto":
        try:
            raw, raw_problem, raw_level_problems = open_raw_reader(
                p, vendor=info.vendor, level_dimensions_px=tuple(lv.dimensions_px for lv in levels),
                level_downsamples=tuple(lv.downsample for lv in levels))
        except BaseException:
            handle.close()
            raise
    return Slide(p, handle, info, raw=raw, raw_problem=raw_problem, raw_level_problems=raw_level_problems)
