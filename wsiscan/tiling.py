"""Slide -> tile store: the plan (resolution, tissue, grid, kept tiles), and ``tile_slide``.

``plan_tiling`` does every check and all the cheap work (resolution, thumbnail,
mask, grid) without writing anything; ``tile_slide`` then creates or resumes the
store and runs the scan pipeline (:mod:`wsiscan.scan`) without a model, keeping the
decoded chunks.  A rerun after a kill skips the chunks already on disk: zarr writes
each chunk file atomically, so a chunk that exists is complete.  The keep rule lives in
:mod:`wsiscan.keep`, what the store records in :mod:`wsiscan.store_meta`, chunk
decoding in :mod:`wsiscan.decode` and the QC picture in :mod:`wsiscan.qc`.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import NoTissueError, StoreExistsError
from .grid import LevelSelection, StoreGeometry, TileCoverage, TileGrid, build_grid, select_level, store_geometry
from .heap import bound_heap, release_free_heap
from .keep import chunks_needed, glass_tile_keep, keep_grid_tiles
from .layout import QC_NAME, STORE_NAME
from .qc import read_overview, write_qc
from .rowimage import RowImage, as_row_image
from .slide import Slide, open_slide, slide_fingerprint
from .staging import slide_build
from .store import TileStore, create_tile_store, open_tile_store, remove_store, store_exists
from .store_meta import pixel_identity, store_meta, write_grid
from .tissue import TileScores, TissueMask, detect_tissue

__all__ = ["TilingPlan", "TileResult", "plan_tiling", "tile_slide", "open_configured_slide", "prefetch_tissue"]


def open_configured_slide(path: str | Path, config: Config) -> Slide:
    sc = config.slide
    return open_slide(path, slide_mpp=sc.slide_mpp, mpp_min=sc.mpp_min, mpp_max=sc.mpp_max,
                      mpp_xy_max_rel_diff=sc.mpp_xy_max_rel_diff, reader=config.tile.reader)


@dataclass(frozen=True)
class _SlidePictures:
    """What a plan reads of a slide before it knows the model: the mask thumbnail, the
    overview picture, the tissue mask, and how long each took."""

    thumbnail: RowImage
    overview: RowImage | np.ndarray  # the thumbnail itself, or a small sharper picture
    overview_mpp: float
    tissue: TissueMask
    timings_s: dict[str, float]

    def close(self) -> None:
        """Give back the thumbnail's memory or temporary file (pictures nobody will take)."""
        self.thumbnail.close()


def _read_pictures(slide: Slide, config: Config) -> _SlidePictures:
    t = time.perf_counter()
    mask_mpp = config.tissue.mask_mpp
    # straight into a RowImage, a band of blocks at a time: never the whole picture in memory
    thumbnail = slide.read_thumbnail_rows(mpp=mask_mpp)
    try:
        # the thumbnail itself, or for a small slide a sharper picture (under OVERVIEW_MIN_SIDE_PX a side)
        overview, overview_mpp = read_overview(slide, thumbnail, mask_mpp=mask_mpp, base_mpp=slide.require_mpp().mpp)
        thumbnail_s = time.perf_counter() - t
        t = time.perf_counter()
        tissue = detect_tissue(thumbnail, mask_mpp=mask_mpp, config=config.tissue)
    except BaseException:
        thumbnail.close()
        raise
    return _SlidePictures(thumbnail, overview, overview_mpp, tissue,
                          {"thumbnail_s": thumbnail_s, "mask_s": time.perf_counter() - t})


def _pictures_key(slide_path: str | Path, config: Config) -> tuple[Any, ...] | None:
    """What the pictures of a slide depend on: the file (path, size, mtime) and the slide,
    reader and tissue settings; None when the file cannot be read."""
    try:
        st = os.stat(slide_path)
        return (os.path.realpath(slide_path), st.st_size, st.st_mtime_ns, repr(config.slide), config.tile.reader,
                repr(config.tissue))
    except OSError:
        return None


_PREFETCHED: dict[tuple[Any, ...], Future] = {}
_PREFETCH_LOCK = threading.Lock()


def prefetch_tissue(slide_path: str | Path, config: Config) -> None:
    """Read a slide's thumbnail and compute its tissue mask in a thread, for the
    :func:`plan_tiling` of the same slide and settings that comes next.

    ``predict`` starts it before it imports torch and loads the model (on a 2-core machine
    the second core is idle while torch imports).  Nothing is written and nothing is
    raised: whatever goes wrong, :func:`plan_tiling` reads the slide itself and reports it."""
    key = _pictures_key(slide_path, config)
    if key is None:
        return
    # large arrays from mmap, unmapped when freed: a thread's heap arena would keep the mask's
    # temporaries resident through the scan (the scan bounds the heap the same way, scan.py)
    bound_heap()
    future: Future = Future()
    with _PREFETCH_LOCK:
        _PREFETCHED.clear()  # at most one slide's pictures wait
        _PREFETCHED[key] = future

    def run() -> None:
        try:
            with open_configured_slide(slide_path, config) as slide:
                pictures = _read_pictures(slide, config)
            release_free_heap()  # this thread's heap arena keeps the temporaries of detection otherwise
            future.set_result(pictures)
        except BaseException:  # plan_tiling reads the slide again and raises what it finds
            future.set_result(None)

    threading.Thread(target=run, name="wsiscan-tissue-prefetch", daemon=True).start()


def _prefetched(slide_path: str | Path, config: Config) -> _SlidePictures | None:
    """The pictures :func:`prefetch_tissue` made for this slide and settings (waiting for them), once; or None.

    Pictures made for another slide or other settings are dropped: the plan they were made
    for has not come first (its slide was skipped, say), so none will take them, and they
    would hold a whole-slide thumbnail through the run."""
    key = _pictures_key(slide_path, config)
    with _PREFETCH_LOCK:
        future = _PREFETCHED.pop(key, None) if key is not None else None
        _PREFETCHED.clear()
    if future is None:
        return None
    pictures: _SlidePictures | None = future.result()
    if pictures is not None and _pictures_key(slide_path, config) != key:
        pictures.close()  # the file changed while it was read: read it again
        return None
    return pictures


@dataclass(frozen=True)
class TilingPlan:
    slide_path: Path
    fingerprint: dict[str, Any]
    slide_info: dict[str, Any]
    base_mpp: float
    mpp_source: str
    selection: LevelSelection
    geometry: StoreGeometry
    grid: TileGrid
    thumbnail: RowImage | np.ndarray  # (rows, cols, 3) uint8 at tissue.mask_mpp: a RowImage from plan_tiling
    tissue: TissueMask
    kept_rc: np.ndarray  # (N, 2) int32 row, col of kept tiles, row-major
    kept_scores: TileScores
    chunks_needed: np.ndarray  # (n_chunk_rows, n_chunk_cols) bool
    identity: str  # hash of slide + everything that shapes the pixels
    config: Config
    timings_s: dict[str, float]
    pixel_reader: str = "openslide"  # which reader decodes the level read (Slide.reader_for)
    glass_skip: bool = False  # TIFF tiles far from tissue are left white, not decoded (see glass_tile_keep)
    lv_tile_layout: tuple[tuple[int, int], tuple[int, int]] | None = None  # raw reads: (tile w, h), (rows, cols)
    # the whole slide for pictures people look at (qc.png, overlay.png), and its um/px: the
    # thumbnail itself, or for a small slide a sharper read (see OVERVIEW_MIN_SIDE_PX)
    overview: RowImage | np.ndarray | None = None
    overview_mpp: float | None = None
    # (rows, cols) bool: tissue pixels of the mask whose centre lies in no kept tile (shown in qc.png)
    unscored_tissue: RowImage | np.ndarray | None = None

    @functools.cached_property
    def scored_tissue_fraction(self) -> float:
        """Share of the tissue mask's pixels whose centre lies in a kept (scored) tile
        (counted once, stripe by stripe)."""
        total = as_row_image(self.tissue.mask).count_nonzero()
        if total == 0 or self.unscored_tissue is None:
            return 1.0 if total == 0 else float("nan")
        return 1.0 - as_row_image(self.unscored_tissue).count_nonzero() / total

    def close_pictures(self) -> None:
        """Give back the memory or temporary files of the plan's whole-slide pictures (the
        thumbnail, overview and unscored tissue), once nothing will read them again."""
        for image in (self.thumbnail, self.overview, self.unscored_tissue):
            if isinstance(image, RowImage):
                image.close()

    @property
    def n_tiles(self) -> int:
        return int(len(self.kept_rc))

    def l0_xy(self) -> np.ndarray:
        px = self.grid.px_origin(self.kept_rc)
        return np.floor(px * self.geometry.l0_per_px + 1e-6).astype(np.int64)

    def glass_tile_keep(self) -> np.ndarray | None:
        """(tile rows, cols) bool over the TIFF tiles of the level read: True where a tile
        must be decoded (:func:`wsiscan.keep.glass_tile_keep`).  None when nothing is
        skipped (OpenSlide reads)."""
        if not self.glass_skip or self.lv_tile_layout is None:
            return None
        return glass_tile_keep(self.tissue, lv_tile_layout=self.lv_tile_layout, lv_per_px=self.selection.lv_per_px,
                               px_mpp=self.geometry.effective_mpp, tile_size_px=self.grid.tile_size_px)


@dataclass(frozen=True)
class TileResult:
    slide_id: str
    out_dir: Path
    store_path: Path
    qc_path: Path
    n_tiles: int
    n_chunks_needed: int
    n_chunks_written: int  # by this run
    n_chunks_resumed: int  # already on disk from an earlier run
    decoded_bytes: int
    timings_s: dict[str, float]
    plan: TilingPlan


def plan_tiling(slide_path: str | Path, config: Config, *, stride_px: int | None = None) -> TilingPlan:
    """Validate the slide and compute everything short of decoding pixels.  Writes nothing."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    tc = config.tile
    stride = stride_px or tc.stride_px
    with open_configured_slide(slide_path, config) as slide:
        mpp = slide.require_mpp()
        level_mpps = tuple(mpp.mpp * lv.downsample for lv in slide.info.levels)
        selection = select_level(requested_mpp=tc.target_mpp, level_mpps=level_mpps,
                                 tolerance=tc.mpp_tolerance, source=str(slide.path))
        geometry = store_geometry(l0_dimensions_px=slide.info.dimensions_px, base_mpp=mpp.mpp,
                                  selection=selection, supertile_px=tc.supertile_px,
                                  pad_px=tc.tile_size_px)  # glass for the last partial tiles
        timings["open_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        pictures = _prefetched(slide_path, config)  # started before torch was imported (prefetch_tissue)
        if pictures is None:
            pictures = _read_pictures(slide, config)
        else:
            timings["tissue_wait_s"] = time.perf_counter() - t
        thumbnail, overview, overview_mpp = pictures.thumbnail, pictures.overview, pictures.overview_mpp
        timings["thumbnail_s"] = pictures.timings_s["thumbnail_s"]
        info = slide.info.to_dict()
        fingerprint = slide_fingerprint(slide.path)
        spath = slide.path
        pixel_reader = slide.reader_for(selection.level)
        lv_tile_layout = slide.tile_layout(selection.level)
    # glass skip needs the raw reader's tile grid, and a tile must have tissue to be kept
    glass_skip = lv_tile_layout is not None  # glass-only tiles are never kept (keep_tiles)

    t = time.perf_counter()
    tissue, mask_s = pictures.tissue, pictures.timings_s["mask_s"]
    del pictures
    grid = build_grid(width_px=geometry.slide_width_px, height_px=geometry.slide_height_px,
                      tile_size_px=tc.tile_size_px, stride_px=stride, pad_px=geometry.pad_px)
    if grid.n_tiles == 0:
        thumbnail.close()
        raise NoTissueError(
            f"{spath}: the slide is smaller than one {tc.tile_size_px} px tile at {selection.effective_mpp:.4g} um/px "
            f"({geometry.width_px}x{geometry.height_px} px); use a smaller --target-mpp or tile size"
        )
    kept = keep_grid_tiles(tissue, grid, px_mpp=selection.effective_mpp, tile=tc, tissue_config=config.tissue)
    if not len(kept.rc):
        thumbnail.close()
        mask = as_row_image(tissue.mask)
        raise NoTissueError(
            f"{spath}: no tissue found (saturation threshold {tissue.threshold:.3f}, "
            f"{mask.count_nonzero() / math.prod(mask.shape):.1%} of the thumbnail above it, "
            f"0 of {grid.n_tiles} tiles with tissue"
            f"{f' (>= {tc.min_tissue:.0%})' if tc.min_tissue > 0 else ''}); check the slide, or lower --min-tissue / "
            f"tissue.min_saturation"
        )
    kept_rc = kept.rc
    # the plan lives through tiling and inference: keep the mask, drop what only scoring
    # needed (saturation and dark/bright: their temporary files go when nothing holds them)
    tissue = replace(tissue, saturation=None, dark_bright=None)
    chunks = chunks_needed(geometry, tissue, grid, kept_rc)
    mask_rows, mask_cols = tissue.mask.shape[:2]
    unscored = unscored_tissue(tissue.mask, TileCoverage(
        (mask_rows, mask_cols), mask_mpp=tissue.mask_mpp, px_mpp=selection.effective_mpp, px_xy=grid.px_origin(kept_rc),
        tile_size_px=tc.tile_size_px))
    release_free_heap()  # hand the freed temporaries of detection back to the OS
    timings["tissue_s"] = mask_s + time.perf_counter() - t  # the mask (perhaps made beforehand) and the keep rule
    return TilingPlan(
        slide_path=spath, fingerprint=fingerprint, slide_info=info, base_mpp=mpp.mpp, mpp_source=mpp.source,
        selection=selection, geometry=geometry, grid=grid, thumbnail=thumbnail, tissue=tissue,
        kept_rc=kept_rc, kept_scores=kept.scores, chunks_needed=chunks,
        identity=pixel_identity(fingerprint, config, selection, mpp.mpp, reader=pixel_reader, glass_skip=glass_skip),
        config=config, timings_s=timings, pixel_reader=pixel_reader, glass_skip=glass_skip,
        lv_tile_layout=lv_tile_layout, overview=overview, overview_mpp=overview_mpp, unscored_tissue=unscored,
    )


def unscored_tissue(mask: RowImage | np.ndarray, coverage: TileCoverage, *,
                    rows_per_stripe: int | None = None) -> RowImage:
    """(rows, cols) bool: the pixels of the tissue ``mask`` that ``coverage`` (the kept tiles)
    leaves out, made a stripe of rows at a time (``rows_per_stripe``: RowImage's default)."""
    mask = as_row_image(mask)
    out = RowImage(mask.shape, bool)
    for y0, rows in mask.stripes(rows_per_stripe):
        out.write_rows(y0, rows & ~coverage.rows(y0, y0 + len(rows)))
    return out


def prepare_store(plan: TilingPlan, store_path: Path, *, overwrite: bool,
                  pictures: bool = True) -> tuple[TileStore, bool]:
    """Open the matching store to resume, or create a new one.  Returns (store, resumed).

    With ``pictures`` the whole-slide pictures a new store, or a resumed one that lacks
    some, needs are written too (:func:`write_store_pictures`); without, the caller does
    that itself (``predict``, in a thread while it scans).
    """
    if store_exists(store_path) or store_path.exists():
        if overwrite:
            remove_store(store_path)
        else:
            existing = open_tile_store(store_path) if store_exists(store_path) else None
            meta = existing.meta if existing else {}
            if existing is None or meta.get("identity") != plan.identity:
                other = meta.get("slide", {}).get("path", "unknown")
                same_slide = meta.get("slide", {}).get("quick_sha256") == plan.fingerprint["quick_sha256"]
                what = "another configuration of this slide" if same_slide else f"another slide ({other})"
                raise StoreExistsError(
                    f"{store_path}: holds a tile store for {what}; pass --overwrite to replace it or choose another -o/--out"
                )
            if pictures:
                write_store_pictures(plan, existing)
            return existing, True
    store = create_tile_store(
        store_path, meta=store_meta(plan), height_px=plan.geometry.height_px, width_px=plan.geometry.width_px,
        supertile_px=plan.geometry.supertile_px, compression_level=plan.config.tile.compression_level,
        thumbnail=None, tissue_mask=None,
    )
    if pictures:
        write_store_pictures(plan, store)
    return store, False


def write_store_pictures(plan: TilingPlan, store: TileStore, *, pictures_in: Executor | None = None) -> None:
    """Write the plan's whole-slide pictures (thumbnail, tissue mask, overview) that ``store``
    lacks: all of them in a new store, and in a resumed one those a killed run left out or
    half-written (the store's identity is the plan's, so its pictures are the plan's).

    ``pictures_in``: an executor that writes them while the caller goes on (marking the
    store complete waits for them); only the pictures go to it, not the plan.  Each is
    written a band of chunk rows at a time (:meth:`TileStore.write_pictures`): the plan's
    RowImages stay open until the write is done (``predict`` closes them after its outputs).
    """
    overview = plan.overview if plan.overview is not plan.thumbnail else None
    names = set(store.missing_pictures(overview=overview is not None))
    if not names:
        return
    write = functools.partial(store.write_pictures, thumbnail=plan.thumbnail if "thumbnail" in names else None,
                              tissue_mask=plan.tissue.mask if "tissue_mask" in names else None,
                              overview=overview if "overview" in names else None, overview_mpp=plan.overview_mpp)
    if pictures_in is None:
        write()
    else:
        store.pictures_written_by(pictures_in.submit(write))


def tile_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    config: Config,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    slide_id: str | None = None,
) -> TileResult:
    """Tile one slide into ``out_dir/<slide-id>/store.zarr`` (resuming a killed run)."""
    from .output_folder import make_slide_dir, plan_slide_output

    t0 = time.perf_counter()
    plan, slide_id, slide_dir, store_path = plan_slide_output(slide_path, out_dir, config, slide_id=slide_id)
    # built beside a finished result and swapped in at the end of the block (wsiscan.staging)
    with slide_build(Path(out_dir), slide_id, overwrite=overwrite) as build:
        make_slide_dir(build.dir)
        store, _ = prepare_store(plan, build.dir / STORE_NAME, overwrite=overwrite)
        t = time.perf_counter()
        from .decode import default_workers
        from .scan import scan_slide  # the pipeline predict runs, here without a model: pixels kept

        n_workers = workers if workers is not None else (config.tile.workers or default_workers())
        stats = scan_slide(plan, store, workers=n_workers, keep_pixels=True, progress=progress)
        written, resumed, decoded = stats.chunks_written, stats.chunks_resumed, stats.decoded_bytes
        if not stats.pixels_complete:
            raise RuntimeError(f"{store_path}: {stats.chunks_needed - resumed - written} pixel chunks were left unwritten")
        timings = dict(plan.timings_s)
        timings["pixels_s"] = time.perf_counter() - t
        write_grid(plan, store)
        write_qc(plan, build.dir / QC_NAME)
        timings["total_s"] = time.perf_counter() - t0
        store.update_meta(status="complete", timings_s=timings, workers=n_workers,
                          last_run={"chunks_written": written, "chunks_resumed": resumed, "decoded_bytes": decoded})
    return TileResult(slide_id, slide_dir, store_path, slide_dir / QC_NAME, plan.n_tiles, int(plan.chunks_needed.sum()),
                      written, resumed, decoded, timings, plan)
