"""Slide -> tile store: tissue detection, the tile grid, and parallel, resumable pixel writing.

``plan_tiling`` does every check and all the cheap work (resolution, thumbnail,
mask, grid) without writing anything; ``tile_slide`` then creates or resumes the
store and decodes the supertile chunks near tissue in worker threads (processes for
large slides), each with its own OpenSlide handle.  A rerun after a kill skips the
chunks already on disk: zarr writes each chunk file atomically, so a chunk that exists
is complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import re
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, runtime_versions
from .errors import NoTissueError, OutputError, StoreExistsError
from .grid import LevelSelection, StoreGeometry, TileGrid, build_grid, grid_border, select_level, store_geometry, \
    tile_coverage
from .render import render_tissue_qc, save_png_atomic
from .slide import Slide, open_slide, slide_fingerprint
from .staging import slide_build
from .store import TileStore, create_tile_store, open_tile_store, remove_store, store_exists
from .tissue import TissueMask, TileScores, box_counts, cell_tissue_fractions, detect_tissue, keep_tiles, score_tiles, \
    summed_area_table, usable_cores

__all__ = ["TilingPlan", "TileResult", "plan_tiling", "tile_slide", "slide_id_for", "open_configured_slide",
           "check_writable", "make_slide_dir", "plan_slide_output"]

STORE_NAME = "store.zarr"
QC_NAME = "qc.png"


def slide_id_for(path: str | Path) -> str:
    """Folder name for a slide's outputs: its file stem, made filesystem-safe."""
    stem = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = Path(stem).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "slide"


def open_configured_slide(path: str | Path, config: Config) -> Slide:
    sc = config.slide
    return open_slide(path, slide_mpp=sc.slide_mpp, mpp_min=sc.mpp_min, mpp_max=sc.mpp_max,
                      mpp_xy_max_rel_diff=sc.mpp_xy_max_rel_diff, reader=config.tile.reader)


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
    thumbnail: np.ndarray
    tissue: TissueMask
    kept_rc: np.ndarray  # (N, 2) int32 row, col of kept tiles, row-major
    kept_scores: TileScores
    chunks_needed: np.ndarray  # (n_chunk_rows, n_chunk_cols) bool
    identity: str  # hash of slide + everything that shapes the pixels
    config: Config
    timings_s: dict[str, float]
    pixel_reader: str = "openslide"  # which reader decodes the level read (Slide.reader_for)
    glass_skip: bool = False  # TIFF tiles far from tissue are left white, not decoded (see _glass_tile_keep)
    lv_tile_layout: tuple[tuple[int, int], tuple[int, int]] | None = None  # raw reads: (tile w, h), (rows, cols)
    # the whole slide for pictures people look at (qc.png, overlay.png), and its um/px: the
    # thumbnail itself, or for a small slide a sharper read (see OVERVIEW_MIN_SIDE_PX)
    overview: np.ndarray | None = None
    overview_mpp: float | None = None
    # tissue pixels of the mask whose centre lies in no kept tile (shown in qc.png)
    unscored_tissue: np.ndarray | None = None

    @property
    def scored_tissue_fraction(self) -> float:
        """Share of the tissue mask's pixels whose centre lies in a kept (scored) tile."""
        total = int(self.tissue.mask.sum())
        if total == 0 or self.unscored_tissue is None:
            return 1.0 if total == 0 else float("nan")
        return 1.0 - int(self.unscored_tissue.sum()) / total

    @property
    def n_tiles(self) -> int:
        return int(len(self.kept_rc))

    def l0_xy(self) -> np.ndarray:
        px = self.grid.px_origin(self.kept_rc)
        return np.floor(px * self.geometry.l0_per_px + 1e-6).astype(np.int64)


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


def _pixel_identity(fingerprint: dict[str, Any], config: Config, selection: LevelSelection, base_mpp: float,
                    *, reader: str = "openslide", glass_skip: bool = False) -> str:
    shaping: dict[str, Any] = {
        "slide": {k: fingerprint[k] for k in ("size_bytes", "quick_sha256")},
        "base_mpp": round(base_mpp, 6),
        "effective_mpp": round(selection.effective_mpp, 6),
        "level": selection.level,
        "tile_size_px": config.tile.tile_size_px,
        "supertile_px": config.tile.supertile_px,
        "tissue": asdict(config.tissue),
        "compression_level": config.tile.compression_level,
    }
    if reader != "openslide":  # OpenSlide-read stores keep the identity they had before raw reads existed
        shaping["reader"] = reader
        shaping["glass_skip"] = {"margin_px": GLASS_MARGIN_PX} if glass_skip else False
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def _boxes_near_tissue(tissue: TissueMask, *, px_mpp: float, x0_px: np.ndarray, x1_px: np.ndarray,
                       y0_px: np.ndarray, y1_px: np.ndarray, reach_px: float) -> np.ndarray:
    """(len(y0_px), len(x0_px)) bool: whether the box [x0, x1) x [y0, y1) (store px at
    ``px_mpp``), grown by ``reach_px`` on every side, holds a tissue pixel of the mask."""
    rows, cols = tissue.mask.shape
    scale = px_mpp / tissue.mask_mpp  # mask px per store px

    def mask_range(a_px: np.ndarray, b_px: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        m0 = np.clip(np.floor((a_px - reach_px) * scale), 0, limit).astype(np.int64)
        m1 = np.clip(np.ceil((b_px + reach_px) * scale), 0, limit).astype(np.int64)
        return m0, m1

    mx0, mx1 = mask_range(x0_px, x1_px, cols)
    my0, my1 = mask_range(y0_px, y1_px, rows)
    return box_counts(summed_area_table(tissue.mask), my0[:, None], mx0[None, :], my1[:, None], mx1[None, :]) > 0


def _chunks_needed(geometry: StoreGeometry, tissue: TissueMask, grid: TileGrid, kept_rc: np.ndarray,
                   tile_size_px: int) -> np.ndarray:
    """Chunks any tile with tissue could touch, at any stride: the mask dilated by one tile."""
    n_r, n_c = geometry.n_chunk_rows, geometry.n_chunk_cols
    s, w, h = geometry.supertile_px, geometry.width_px, geometry.height_px
    px_x0 = np.arange(n_c) * s
    px_y0 = np.arange(n_r) * s
    needed = _boxes_near_tissue(tissue, px_mpp=geometry.effective_mpp, x0_px=px_x0, x1_px=np.minimum(px_x0 + s, w),
                                y0_px=px_y0, y1_px=np.minimum(px_y0 + s, h), reach_px=tile_size_px)
    # every kept tile's chunks, whatever the mask says (min_tissue may be 0)
    if len(kept_rc):
        px = grid.px_origin(kept_rc)
        s = geometry.supertile_px
        for dx in (0, tile_size_px - 1):
            for dy in (0, tile_size_px - 1):
                ci = np.minimum((px[:, 1] + dy) // s, n_r - 1)
                cj = np.minimum((px[:, 0] + dx) // s, n_c - 1)
                needed[ci, cj] = True
    return needed


def plan_tiling(slide_path: str | Path, config: Config, *, stride_px: int | None = None) -> TilingPlan:
    """Validate the slide and compute everything short of decoding pixels.  Writes nothing."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    tc = config.tile
    stride = stride_px or tc.stride_px
    with open_configured_slide(slide_path, config) as slide:
        mpp = slide.require_mpp()
        level_mpps = tuple(lv.mpp for lv in slide.info.levels)
        selection = select_level(requested_mpp=tc.target_mpp, level_mpps=level_mpps,
                                 tolerance=tc.mpp_tolerance, source=str(slide.path))
        geometry = store_geometry(l0_dimensions_px=slide.info.dimensions_px, base_mpp=mpp.mpp,
                                  selection=selection, supertile_px=tc.supertile_px,
                                  pad_px=tc.tile_size_px)  # glass for the last partial tiles
        timings["open_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        thumbnail = slide.read_thumbnail(mpp=config.tissue.mask_mpp)
        overview, overview_mpp = _overview(slide, thumbnail, mask_mpp=config.tissue.mask_mpp, base_mpp=mpp.mpp)
        timings["thumbnail_s"] = time.perf_counter() - t
        info = slide.info.to_dict()
        fingerprint = slide_fingerprint(slide.path)
        spath = slide.path
        pixel_reader = slide.reader_for(selection.level)
        lv_tile_layout = slide.tile_layout(selection.level)
    # glass skip needs the raw reader's tile grid, and a tile must have tissue to be kept
    glass_skip = lv_tile_layout is not None  # glass-only tiles are never kept (keep_tiles)

    t = time.perf_counter()
    tissue = detect_tissue(thumbnail, mask_mpp=config.tissue.mask_mpp, config=config.tissue)
    grid = build_grid(width_px=geometry.slide_width_px, height_px=geometry.slide_height_px,
                      tile_size_px=tc.tile_size_px, stride_px=stride, pad_px=geometry.pad_px)
    if grid.n_tiles == 0:
        raise NoTissueError(
            f"{spath}: the slide is smaller than one {tc.tile_size_px} px tile at {selection.effective_mpp:.4g} um/px "
            f"({geometry.width_px}x{geometry.height_px} px); use a smaller --target-mpp or tile size"
        )
    rr, cc = np.meshgrid(np.arange(grid.n_rows), np.arange(grid.n_cols), indexing="ij")
    all_rc = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int32)
    px_xy = grid.px_origin(all_rc)
    scores = score_tiles(tissue, px_xy=px_xy, tile_size_px=tc.tile_size_px,
                         px_mpp=selection.effective_mpp)
    cfg = config.tissue
    # the keep rule lives in tissue.py (a tile's heatmap cell has tissue, or on the grid's border its footprint)
    keep = keep_tiles(scores, min_tissue=tc.min_tissue, max_dark_bright_fraction=cfg.max_dark_bright_fraction,
                      min_max_saturation=cfg.pcam_min_max_saturation,
                      cell_tissue_fraction=cell_tissue_fractions(tissue, px_xy=px_xy,
                                                                 tile_size_px=tc.tile_size_px, stride_px=stride,
                                                                 px_mpp=selection.effective_mpp),
                      on_grid_border=grid_border(grid, all_rc))
    if not keep.any():
        raise NoTissueError(
            f"{spath}: no tissue found (saturation threshold {tissue.threshold:.3f}, "
            f"{tissue.mask.mean():.1%} of the thumbnail above it, 0 of {grid.n_tiles} tiles with tissue"
            f"{f' (>= {tc.min_tissue:.0%})' if tc.min_tissue > 0 else ''}); check the slide, or lower --min-tissue / "
            f"tissue.min_saturation"
        )
    kept_rc = all_rc[keep]
    kept_scores = TileScores(scores.tissue_fraction[keep], scores.dark_bright_fraction[keep],
                             scores.max_saturation[keep])
    chunks = _chunks_needed(geometry, tissue, grid, kept_rc, tc.tile_size_px)
    unscored = tissue.mask & ~tile_coverage(tissue.mask.shape, mask_mpp=tissue.mask_mpp,
                                            px_mpp=selection.effective_mpp, px_xy=grid.px_origin(kept_rc),
                                            tile_size_px=tc.tile_size_px)
    # the plan lives through tiling and inference: keep the mask, drop what only scoring
    # needed (saturation and dark/bright: 195 MB for a 100,000 px slide), and hand the
    # freed temporaries of detection back to the OS
    tissue = replace(tissue, saturation=None, dark_bright=None)
    del scores, all_rc, rr, cc
    _release_free_heap()
    timings["tissue_s"] = time.perf_counter() - t
    return TilingPlan(
        slide_path=spath, fingerprint=fingerprint, slide_info=info, base_mpp=mpp.mpp, mpp_source=mpp.source,
        selection=selection, geometry=geometry, grid=grid, thumbnail=thumbnail, tissue=tissue,
        kept_rc=kept_rc, kept_scores=kept_scores, chunks_needed=chunks,
        identity=_pixel_identity(fingerprint, config, selection, mpp.mpp, reader=pixel_reader, glass_skip=glass_skip),
        config=config, timings_s=timings, pixel_reader=pixel_reader, glass_skip=glass_skip,
        lv_tile_layout=lv_tile_layout, overview=overview, overview_mpp=overview_mpp, unscored_tissue=unscored,
    )


# Thread or process, one OpenSlide handle each (a shared handle serialises its reads).
# Threads start at once; processes take ~0.6-1.7 s to spawn (measured: wsiscan bench) but
# scale further: OpenSlide's decode runs outside the GIL in threads, but zarr's chunk
# write (~5 ms of Python per chunk) does not.  Measured on 2 cores: threads win up to a
# few hundred chunks, processes tie at ~1,000; with more cores processes win sooner.
PROCESS_MIN_CHUNKS = 256  # decode in worker processes from this many chunks on (and workers > 1)
CHUNKS_PER_WRITE = 4  # neighbouring chunks of one chunk row written by one zarr call (less per-call overhead)
_WORKER: dict[str, Any] = {}


def _chunk_runs(todo: list[tuple[int, int]], *, max_len: int) -> list[tuple[int, int, int]]:
    """(ci, cj0, cj1): runs of up to ``max_len`` consecutive chunks of one chunk row, in ``todo`` order."""
    runs: list[list[int]] = []
    for ci, cj in todo:
        last = runs[-1] if runs else None
        if last and last[0] == ci and last[2] == cj and last[2] - last[1] < max_len:
            last[2] += 1
        else:
            runs.append([ci, cj, cj + 1])
    return [(ci, a, b) for ci, a, b in runs]


# Glass skip: a TIFF tile of the level read is decoded only when some tile (patch) that could
# be kept, at any stride, could use one of its pixels: when it lies within one patch plus this
# margin (store px) of a tissue pixel of the mask.  The margin covers the box filter of a
# resampled read, whose output px reads the level px under it plus a partial one on each side.
GLASS_MARGIN_PX = 4


def _glass_tile_keep(plan: TilingPlan) -> np.ndarray | None:
    """(tile rows, cols) bool over the TIFF tiles of the level read: True where a tile must be decoded.

    The rule of :func:`_chunks_needed` (the mask dilated by one patch) at TIFF-tile
    granularity, plus ``GLASS_MARGIN_PX``: a kept patch has tissue under its footprint
    (``min_tissue`` > 0), so it lies within one patch of a tissue pixel, whatever the
    stride; every level px it, or its resampling, reads is in a kept tile.  None when
    nothing is skipped (OpenSlide reads, or ``min_tissue`` 0, where glass patches are kept).
    """
    if not plan.glass_skip or plan.lv_tile_layout is None:
        return None
    (tw, th), (n_tr, n_tc) = plan.lv_tile_layout
    lv_per_px = plan.selection.lv_per_px
    lv_x0 = np.arange(n_tc, dtype=np.float64) * tw
    lv_y0 = np.arange(n_tr, dtype=np.float64) * th
    return _boxes_near_tissue(plan.tissue, px_mpp=plan.geometry.effective_mpp, x0_px=lv_x0 / lv_per_px,
                              x1_px=(lv_x0 + tw) / lv_per_px, y0_px=lv_y0 / lv_per_px, y1_px=(lv_y0 + th) / lv_per_px,
                              reach_px=plan.grid.tile_size_px + GLASS_MARGIN_PX)


def _decode_run(ci: int, cj0: int, cj1: int, selection: LevelSelection, geometry: StoreGeometry,
                slide: Slide | None = None, store: TileStore | None = None,
                tile_keep: np.ndarray | None = None) -> tuple[int, int, int]:
    """Read, resample and store chunks (ci, cj0) .. (ci, cj1 - 1) with one store write.

    Returns (chunks written, bytes decoded at the level read, bytes of glass tiles left
    white instead).  Each chunk file is still written atomically on its own, so a killed
    run leaves only complete chunks.  In a worker process, the slide, store and
    ``tile_keep`` are the ones ``_worker_init`` opened.
    """
    if slide is None:
        slide, store, tile_keep = _WORKER["slide"], _WORKER["store"], _WORKER.get("tile_keep")
    store = store or _WORKER["store"]
    parts = []
    decoded0, skipped0 = sum(slide.decoded_px.values()), slide.skipped_px
    s = selection.lv_per_px
    for cj in range(cj0, cj1):
        x0, y0, x1, y1 = geometry.chunk_box_px(ci, cj)
        box = (x0 * s, y0 * s, x1 * s, y1 * s)
        parts.append(slide.read_resampled(level=selection.level, lv_box=box, out_size_px=(x1 - x0, y1 - y0),
                                          tile_keep=tile_keep))
    store.write_chunk(ci, cj0, parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
    return (cj1 - cj0, (sum(slide.decoded_px.values()) - decoded0) * 3, (slide.skipped_px - skipped0) * 3)


def _worker_init(slide_path: str, config: Config, store_path: str, tile_keep: np.ndarray | None = None) -> None:
    _WORKER["slide"] = open_configured_slide(slide_path, config)
    _WORKER["store"] = open_tile_store(store_path)
    _WORKER["tile_keep"] = tile_keep


DECODE_WORKER_BYTES = 256 << 20  # host memory one decode worker may hold: a run of chunks at the level read, copies


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_workers() -> int:
    """One decode worker per usable core (the process's CPU affinity), as many as half the
    available memory allows at ``DECODE_WORKER_BYTES`` each (at least one)."""
    cores = usable_cores(at_most=1 << 16)
    avail = _available_memory_bytes()
    if avail is None:
        return cores
    return max(1, min(cores, avail // 2 // DECODE_WORKER_BYTES))


def check_writable(out_dir: Path) -> None:
    """Raise :class:`OutputError` unless files can be created in ``out_dir`` (or its nearest existing parent)."""
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{out_dir}: {probe} is a file, not a folder; choose another -o/--out")
    try:  # a real write: os.access says yes to root even where writes fail
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        why = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        raise OutputError(f"{out_dir}: cannot write into {probe} ({why}); choose another -o/--out") from exc


def plan_slide_output(slide_path: str | Path, out_dir: str | Path, config: Config, *,
                      stride_px: int | None = None) -> tuple[TilingPlan, str, Path, Path]:
    """Check that ``out_dir`` is writable, plan the slide; (plan, slide id, slide folder, store path).

    Creates nothing: :func:`make_slide_dir` does, once the caller has checked what is there.
    """
    check_writable(Path(out_dir))
    plan = plan_tiling(slide_path, config, stride_px=stride_px)
    slide_id = slide_id_for(plan.slide_path)
    slide_dir = Path(out_dir) / slide_id
    return plan, slide_id, slide_dir, slide_dir / STORE_NAME


def make_slide_dir(slide_dir: Path) -> None:
    """Create a slide's output folder, or raise :class:`OutputError` saying why not."""
    try:
        slide_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{slide_dir}: cannot create the output folder ({exc.strerror}); choose another -o/--out") from exc


def _store_meta(plan: TilingPlan) -> dict[str, Any]:
    config = plan.config
    return {
        "identity": plan.identity,
        "status": "in_progress",
        "slide": plan.fingerprint,
        "slide_info": plan.slide_info,
        "mpp": {"base_mpp": plan.base_mpp, "source": plan.mpp_source,
                "detail": plan.slide_info["mpp"]["detail"] if plan.slide_info.get("mpp") else ""},
        "level_selection": asdict(plan.selection),
        "geometry": {**asdict(plan.geometry), "n_chunk_rows": plan.geometry.n_chunk_rows,
                     "n_chunk_cols": plan.geometry.n_chunk_cols},
        "mask_mpp": plan.tissue.mask_mpp,
        "tissue_threshold": plan.tissue.threshold,
        "tissue_area_mm2": plan.tissue.tissue_area_um2 / 1e6,
        "ink_area_mm2": plan.tissue.ink_area_um2 / 1e6,
        "chunks_needed": int(plan.chunks_needed.sum()),
        "pixel_reader": plan.pixel_reader,
        "glass_skip": plan.glass_skip,
        "config": {"slide": asdict(config.slide), "tile": asdict(config.tile), "tissue": asdict(config.tissue)},
        "versions": runtime_versions(),
    }


def prepare_store(plan: TilingPlan, store_path: Path, *, overwrite: bool) -> tuple[TileStore, bool]:
    """Open the matching store to resume, or create a new one.  Returns (store, resumed)."""
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
            return existing, True
    store = create_tile_store(
        store_path, meta=_store_meta(plan), height_px=plan.geometry.height_px, width_px=plan.geometry.width_px,
        supertile_px=plan.geometry.supertile_px, compression_level=plan.config.tile.compression_level,
        thumbnail=plan.thumbnail, tissue_mask=plan.tissue.mask,
        overview=plan.overview if plan.overview is not plan.thumbnail else None, overview_mpp=plan.overview_mpp,
    )
    return store, False


def write_pixels(plan: TilingPlan, store: TileStore, *, workers: int, progress: bool) -> tuple[int, int, int]:
    """Decode every needed chunk not yet on disk.  Returns (written, resumed, decoded bytes).

    Below ``PROCESS_MIN_CHUNKS`` chunks, ``workers`` threads; from there on, ``workers``
    spawned processes (see the note on ``PROCESS_MIN_CHUNKS``).
    """
    from tqdm import tqdm

    needed = [tuple(map(int, ij)) for ij in np.argwhere(plan.chunks_needed)]
    todo = [(ci, cj) for ci, cj in needed if not store.chunk_done(ci, cj)]
    resumed = len(needed) - len(todo)
    runs = _chunk_runs(todo, max_len=CHUNKS_PER_WRITE)
    n_workers = max(1, min(workers, len(runs)))
    decoded = skipped = 0
    tile_keep = _glass_tile_keep(plan)
    bar = tqdm(total=len(todo), unit="chunk", desc=f"tiling {plan.slide_path.name}", disable=not progress,
               leave=False, dynamic_ncols=True)
    sel, geo = plan.selection, plan.geometry
    local = threading.local()
    handles: list[Slide] = []
    lock = threading.Lock()

    def in_thread(ci: int, cj0: int, cj1: int) -> tuple[int, int]:
        slide = getattr(local, "slide", None)
        if slide is None:
            slide = local.slide = open_configured_slide(plan.slide_path, plan.config)
            with lock:
                handles.append(slide)
        return _decode_run(ci, cj0, cj1, sel, geo, slide, store, tile_keep)

    def count(n: int, d: int, g: int) -> None:
        nonlocal decoded, skipped
        decoded += d
        skipped += g
        bar.update(n)

    def drain(futures) -> None:
        for f in futures:
            count(*f.result())

    try:
        if n_workers == 1:
            for run in runs:
                count(*in_thread(*run))
        else:
            if len(todo) >= PROCESS_MIN_CHUNKS:
                pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"),
                                           initializer=_worker_init,
                                           initargs=(str(plan.slide_path), plan.config, str(store.path),
                                                     tile_keep))
                submit = lambda run: pool.submit(_decode_run, *run, sel, geo)  # noqa: E731
                in_flight = 4 * n_workers
            else:
                pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="wsiscan-tile")
                submit = lambda run: pool.submit(in_thread, *run)  # noqa: E731
                in_flight = 2 * n_workers
            with pool:
                pending: set = set()
                try:
                    for run in runs:  # a bounded number of runs in flight: memory stays flat
                        pending.add(submit(run))
                        if len(pending) >= in_flight:
                            done, pending = wait(pending, return_when=FIRST_COMPLETED)
                            drain(done)
                    drain(pending)
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
    finally:
        bar.close()
        for slide in handles:
            slide.close()
    if handles:
        _release_free_heap()
    store.update_meta(decode={
        "reader": plan.pixel_reader, "glass_skip": plan.glass_skip, "decoded_bytes": decoded,
        "glass_skipped_bytes": skipped,
        # TIFF tiles of the whole level read: within reach of tissue, and in all
        "lv_tiles_near_tissue": None if tile_keep is None else int(tile_keep.sum()),
        "lv_tiles_total": None if tile_keep is None else int(tile_keep.size)})
    return len(todo), resumed, decoded


def _release_free_heap() -> None:
    """Give the decode buffers freed by this process back to the OS (glibc only).

    glibc raises its mmap threshold after large frees, so the 2-9 MB region buffers of
    in-process decoding end up on the heap and stay resident after they are freed:
    +100-200 MB that inference then stacks on (measured on a 24,000 px slide: 273 MB
    resident after tiling, 176 MB after the trim).  Worker processes return theirs on exit.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
        return
    if trim is not None:
        trim(0)


def write_grid(plan: TilingPlan, store: TileStore) -> None:
    store.write_grid(
        stride_px=plan.grid.stride_px, tile_size_px=plan.grid.tile_size_px, n_rows=plan.grid.n_rows,
        n_cols=plan.grid.n_cols, rc=plan.kept_rc, l0_xy=plan.l0_xy(),
        tissue_fraction=plan.kept_scores.tissue_fraction,
        attrs={"min_tissue": plan.config.tile.min_tissue, "px_mpp": plan.geometry.effective_mpp,
               "l0_per_px": plan.geometry.l0_per_px,
               "hm_offset_px": plan.grid.hm_offset_px,
               "scored_tissue_fraction": plan.scored_tissue_fraction},
    )


OVERVIEW_MIN_SIDE_PX = 1000  # long side of the overview picture of a slide whose mask thumbnail is smaller


def _overview(slide: Slide, thumbnail: np.ndarray, *, mask_mpp: float, base_mpp: float) -> tuple[np.ndarray, float]:
    """The mask thumbnail when its long side reaches ``OVERVIEW_MIN_SIDE_PX``; for a small
    slide, a sharper read of the whole slide with that long side (never finer than level 0)."""
    rows, cols = thumbnail.shape[:2]
    if max(rows, cols) >= OVERVIEW_MIN_SIDE_PX:
        return thumbnail, mask_mpp
    finer_mpp = max(mask_mpp * max(rows, cols) / OVERVIEW_MIN_SIDE_PX, base_mpp)
    return slide.read_thumbnail(mpp=finer_mpp), finer_mpp


def overview_picture(plan: TilingPlan) -> tuple[np.ndarray, float]:
    """The whole slide for pictures people look at, and its um/px (read when the plan was made)."""
    if plan.overview is None or plan.overview_mpp is None:
        return plan.thumbnail, plan.tissue.mask_mpp
    return plan.overview, plan.overview_mpp


def write_qc(plan: TilingPlan, path: Path, *, max_side_px: int = 2000) -> Path:
    """Thumbnail + mask outline + kept tiles, so a person can check the mask at a glance.

    When the mask thumbnail is small (a small slide), a sharper picture is read from
    the slide so that the tiles stay visible.
    """
    scale = plan.geometry.effective_mpp / plan.tissue.mask_mpp
    px = plan.grid.px_origin(plan.kept_rc).astype(np.float64)
    t = plan.grid.tile_size_px
    boxes = np.concatenate([px * scale, (px + t) * scale], axis=1)
    picture, _ = overview_picture(plan)
    # ink and unscored tissue in colours of their own, areas in the caption, a scale bar
    tissue = plan.tissue
    title = (f"{plan.slide_path.name}: {plan.n_tiles} scored tiles of {t} px at {plan.geometry.effective_mpp:.4g} "
             f"um/px, stride {plan.grid.stride_px} px. Tissue {tissue.tissue_area_um2 / 1e6:.3f} mm2, "
             f"{plan.scored_tissue_fraction:.1%} of it in scored tiles; pen ink {tissue.ink_area_um2 / 1e6:.3f} mm2.\n"
             f"green: tissue mask outline, blue: scored tiles, yellow: pen ink (not tissue), "
             f"red: tissue in no scored tile, pink tint: not tissue")
    img = render_tissue_qc(picture, tissue.mask, tile_boxes_thumb=boxes, title=title, max_side_px=max_side_px,
                           mask_mpp=tissue.mask_mpp, ink=tissue.ink, unscored=plan.unscored_tissue)
    return save_png_atomic(img, path)


def tile_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    config: Config,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> TileResult:
    """Tile one slide into ``out_dir/<slide-id>/store.zarr`` (resuming a killed run)."""
    t0 = time.perf_counter()
    plan, slide_id, slide_dir, store_path = plan_slide_output(slide_path, out_dir, config)
    # built beside a finished result and swapped in at the end of the block (wsiscan.staging)
    with slide_build(Path(out_dir), slide_id, overwrite=overwrite) as build:
        make_slide_dir(build.dir)
        store, _ = prepare_store(plan, build.dir / STORE_NAME, overwrite=overwrite)
        t = time.perf_counter()
        n_workers = workers if workers is not None else (config.tile.workers or default_workers())
        from .scan import scan_slide  # the pipeline predict runs, here without a model: pixels kept

        n_needed = int(plan.chunks_needed.sum())
        resumed = sum(store.chunk_done(int(ci), int(cj)) for ci, cj in np.argwhere(plan.chunks_needed))
        stats = scan_slide(plan, store, workers=n_workers, keep_pixels=True, progress=progress)
        written, decoded = stats.chunks_written, stats.decoded_bytes
        if resumed + written != n_needed:
            raise RuntimeError(f"{store_path}: {n_needed - resumed - written} pixel chunks were left unwritten")
        timings = dict(plan.timings_s)
        timings["pixels_s"] = time.perf_counter() - t
        write_grid(plan, store)
        write_qc(plan, build.dir / QC_NAME)
        timings["total_s"] = time.perf_counter() - t0
        store.update_meta(status="complete", timings_s=timings, workers=n_workers,
                          last_run={"chunks_written": written, "chunks_resumed": resumed, "decoded_bytes": decoded})
    return TileResult(slide_id, slide_dir, store_path, slide_dir / QC_NAME, plan.n_tiles, int(plan.chunks_needed.sum()),
                      written, resumed, decoded, timings, plan)
