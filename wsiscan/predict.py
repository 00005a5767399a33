"""``predict``: slide -> tile store -> heatmap -> overlay, GeoJSON and summary.

Everything that can be checked before writing (models, device, slide, resolution,
tissue, an existing result for another slide/model) is checked first, so a failed run
leaves earlier results untouched.  A rerun after a kill resumes: tiling skips written
pixel chunks, inference skips written heatmap chunks, and the final outputs are
rewritten from the (deterministic) heatmap.

``summary.json`` is the commit record of a result: it is removed before a run changes
anything in the slide's folder and written (atomically) last, so a folder holds a
finished, consistent result exactly when it holds a ``summary.json``.  The summary
records the model hash and the config hash; :func:`completed_summary` uses them, with
the slide's fingerprint, to tell a finished and unchanged result without redoing it.

Inputs (:func:`expand_slide_inputs`): slide paths, glob patterns and CSV lists of
slides (a ``slide`` or ``path`` column, optional ``slide_mpp`` per slide).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import glob
import hashlib
import json
import math
import time
from concurrent.futures import Executor, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .config import Config, runtime_versions
from .decode import default_workers
from .errors import CheckpointError, ConfigError, StoreExistsError
from .heatmap import (
    HeatmapFrame,
    build_pyramid,
    check_heatmap,
    export_class_regions,
    ome_multiscales,
    scored_cells,
    slide_scores,
)
from .layout import GEOJSON_NAME, OVERLAY_NAME, QC_NAME, RESULT_FILES, STORE_NAME, SUMMARY_NAME, slide_dir_for
from .output_folder import make_slide_dir, plan_slide_output
from .qc import overview_picture, write_qc
from .records import SlideSummary, summary_or_none
from .results import class_regions_block, threshold_outputs
from .slide_ids import slide_id_for, unique_slide_ids
from .staging import slide_build
from .store import open_tile_store
from .store_meta import write_grid
from .tiling import prepare_store, write_store_pictures

__all__ = ["LoadedModels", "SlideJob", "load_models", "predict_slide", "predict_in_turn", "resolution_config", "slide_config",
           "config_hash", "completed_summary", "expand_slide_inputs"]


@dataclass(frozen=True)
class LoadedModels:
    names: tuple[str, ...]
    models: tuple[Any, ...]
    specs: tuple[Any, ...]
    sha256: tuple[str, ...]

    @property
    def spec(self):
        return self.specs[0]

    def describe(self) -> list[dict[str, Any]]:
        return [{"model": n, "sha256": h, "spec": s.to_dict()} for n, s, h in zip(self.names, self.specs, self.sha256, strict=False)]

    @property
    def identity(self) -> str:
        return hashlib.sha256("|".join(self.sha256).encode()).hexdigest()[:16]


def load_models(names: Sequence[str]) -> LoadedModels:
    """Load every model of an ensemble; they must agree on input size, resolution and classes."""
    from .models import load_model

    loaded = [load_model(n) for n in names]
    specs = [s for _, s, _ in loaded]
    first = specs[0]
    for name, s in zip(names[1:], specs[1:], strict=True):
        if (s.patch_size_px, round(s.input_mpp, 4)) != (first.patch_size_px, round(first.input_mpp, 4)):
            raise CheckpointError(
                f"{name}: ensemble members must share input size and resolution; it takes {s.patch_size_px} px at "
                f"{s.input_mpp:g} um/px but {names[0]} takes {first.patch_size_px} px at {first.input_mpp:g} um/px"
            )
        if max(s.num_classes, first.num_classes) > 2 and s.class_names != first.class_names:
            raise CheckpointError(
                f"{name}: ensemble members of more than 2 classes must have the same classes; it has "
                f"{', '.join(s.class_names)} but {names[0]} has {', '.join(first.class_names)}"
            )
        if s.class_names[s.positive_class] != first.class_names[first.positive_class]:
            raise CheckpointError(
                f"{name}: ensemble members must score the same class; it scores "
                f"'{s.class_names[s.positive_class]}' but {names[0]} scores '{first.class_names[first.positive_class]}'"
            )
    return LoadedModels(tuple(names), tuple(m for m, _, _ in loaded), tuple(specs), tuple(h for _, _, h in loaded))


def resolution_config(config: Config, spec, *, target_mpp: float | None, tile_size_px: int | None) -> Config:
    """Tiling follows the model's input resolution and patch size unless overridden."""
    return config.replace("tile", target_mpp=target_mpp or spec.input_mpp,
                          tile_size_px=tile_size_px or spec.patch_size_px)


# Settings that change how fast a result is made, never the result: left out of the config hash.
_EXECUTION_ONLY = {"tile": ("workers",),
                   "predict": ("model", "device", "batch_size", "loader_workers", "compile", "keep_pixels")}


def config_hash(config: Config) -> str:
    """Hash of the resolved configuration that shapes a result.

    Leaves out the decode workers, device, batch size, loader threads, compile flag and
    whether pixels are kept (they change the speed or the disk use, not the heatmap) and the model names (results record the
    models by checkpoint sha256 instead, see :attr:`LoadedModels.identity`).
    """
    d = dataclasses.asdict(config)
    for section, keys in _EXECUTION_ONLY.items():
        for key in keys:
            d[section].pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SlideJob:
    """One slide to score, with its own base-resolution override (from a CSV list)."""

    path: Path
    slide_mpp: float | None = None
    slide_id: str = ""  # the run's unique id (expand_slide_inputs); empty: the file name's id

    def __post_init__(self) -> None:
        if not self.slide_id:
            object.__setattr__(self, "slide_id", slide_id_for(self.path))


def slide_config(config: Config, job: SlideJob) -> Config:
    """The configuration for one slide: a per-slide ``slide_mpp`` beats the run's."""
    return config.replace("slide", slide_mpp=job.slide_mpp)


_GLOB_CHARS = frozenset("*?[")
_PATH_COLUMNS = ("slide", "path")


def expand_slide_inputs(items: Sequence[str | Path]) -> list[SlideJob]:
    """Slides from paths, glob patterns and CSV lists, in order, each file once.

    * ``*.csv``: a header row with a ``slide`` or ``path`` column and an optional
      ``slide_mpp`` column (empty: read the slide's own); relative paths are relative
      to the CSV file's folder.
    * A pattern with ``*``, ``?`` or ``[`` that is not an existing file is expanded
      (``**`` recurses), sorted; a pattern that matches nothing is kept as given, so
      the slide's error names it.
    * Anything else is a slide path.
    """
    jobs: list[SlideJob] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            jobs.extend(_read_slide_list(path))
        elif not path.exists() and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            jobs.extend([SlideJob(Path(m)) for m in matches] or [SlideJob(path)])
        else:
            jobs.append(SlideJob(path))
    seen: set[str] = set()
    unique = []
    for job in jobs:
        key = str(job.path.resolve()) if job.path.exists() else str(job.path)
        if key not in seen:
            seen.add(key)
            unique.append(job)
    ids = unique_slide_ids([job.path for job in unique])
    return [dataclasses.replace(job, slide_id=slide_id) for job, slide_id in zip(unique, ids, strict=True)]


def _read_slide_list(path: Path) -> list[SlideJob]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [(h or "").strip() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read the slide list ({exc}); give a UTF-8 CSV with a 'slide' column") from exc
    column = next((c for c in _PATH_COLUMNS if c in header), None)
    if column is None:
        found = ", ".join(h for h in header if h) or "none"
        raise ConfigError(
            f"{path}: a slide list needs a 'slide' or 'path' column (optional: 'slide_mpp'); found columns: {found}"
        )
    jobs = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get(column):
            if any(row.values()):
                raise ConfigError(f"{path}: line {line} has no value in column '{column}'; give a slide path")
            continue  # a blank line
        slide = Path(row[column]).expanduser()
        if not slide.is_absolute():
            slide = path.parent / slide
        mpp_text = row.get("slide_mpp", "")
        mpp = None
        if mpp_text:
            try:
                mpp = float(mpp_text)
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                raise ConfigError(
                    f"{path}: line {line}: slide_mpp must be a positive number in um/px, got {mpp_text!r}; "
                    f"leave it empty to read the slide's own resolution"
                )
        jobs.append(SlideJob(slide, mpp))
    return jobs


def completed_summary(slide_path: str | Path, out_dir: str | Path, config: Config,
                      models: LoadedModels, *, slide_id: str | None = None) -> SlideSummary | None:
    """The summary of a finished result for this slide, models and config; None if there is none.

    Finished: ``OUT/<slide-id>/summary.json`` exists (it is written last) and every
    output it lists is there.  Unchanged: same model hash, same config hash and the
    same slide file (size and mtime; when the mtime differs, size and the hash of its
    first and last MiB).  Reads a few bytes of metadata, never the pixels.
    """
    from .slide import slide_fingerprint

    slide_path = Path(slide_path)
    slide_dir = Path(out_dir) / slide_id if slide_id else slide_dir_for(out_dir, slide_path)
    summary = summary_or_none(slide_dir / SUMMARY_NAME)
    try:
        st = slide_path.stat()
    except OSError:
        return None
    if summary is None or summary.model_hash != models.identity or summary.config_hash != config_hash(config):
        return None
    if not all((slide_dir / str(name)).exists() for name in summary.outputs.values()):
        return None
    recorded = summary.slide
    if recorded.get("size_bytes") != st.st_size:
        return None
    if recorded.get("mtime_ns") != st.st_mtime_ns:
        try:
            if slide_fingerprint(slide_path)["quick_sha256"] != recorded.get("quick_sha256"):
                return None
        except OSError:
            return None
    return summary


def _inference_identity(models: LoadedModels, config: Config, pixel_identity: str) -> str:
    shaping = {
        "models": list(models.sha256),
        "pixels": pixel_identity,
        "stride_px": config.tile.stride_px,
        "min_tissue": config.tile.min_tissue,
        "tta": config.predict.tta,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def predict_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    config: Config,
    models: LoadedModels,
    *,
    device: Any,
    overwrite: bool = False,
    progress: bool = True,
    defer_outputs: bool = False,
    slide_id: str | None = None,
) -> Any:
    """Run the whole pipeline on one slide; returns the summary written to summary.json.

    With ``defer_outputs`` it returns once the heatmap is complete, with a function that
    draws the outputs and writes (and returns) the summary: see :func:`predict_in_turn`.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .inference import resolve_precision

    t_start = time.perf_counter()
    pc = config.predict
    autocast = resolve_precision(pc.precision, device)
    # the device side (weights to the device, cast once, cuDNN/compile warm-up) is made
    # ready in a thread while the slide is planned (thumbnail, tissue mask, grid)
    prep_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wsiscan-prep")
    device_ready = prep_pool.submit(_device_side, models, device, autocast, pc, config.tile.tile_size_px)
    try:
        plan, slide_id, slide_dir, store_path = plan_slide_output(slide_path, out_dir, config, slide_id=slide_id)
    except BaseException:
        prep_pool.shutdown(wait=True)
        raise
    try:  # built beside a finished result and swapped in by finish() (wsiscan.staging)
        with slide_build(out_dir, slide_id, overwrite=overwrite) as build:
            try:
                finish = build.committing(_predict_planned(
                    plan, slide_id, build.dir, build.dir / STORE_NAME, config, models, device=device,
                    overwrite=overwrite, progress=progress, t_start=t_start, device_ready=device_ready,
                    autocast=autocast, prep_pool=prep_pool))
            except BaseException:
                prep_pool.shutdown(wait=True)  # its threads write into build.dir (qc.png): stopped before
                raise  # slide_build keeps or discards that folder
    finally:
        prep_pool.shutdown(wait=True)
    return finish if defer_outputs else finish()


def _unit_shape(units: Any) -> tuple[int, int, int]:
    side = (units.tiles_per_unit - 1) * units.stride_px + units.tile_size_px
    return (side, side, 3)


_ENSEMBLE_CACHE: dict[tuple, tuple[Any, int]] = {}


def _device_side(models: LoadedModels, device: Any, autocast: Any, pc: Any, tile_size_px: int) -> tuple[Any, int]:
    """(Ensemble, batch size) for this run, built once per models/device/settings (a run of many
    slides reuses it) and, on CUDA, warmed up at the batch shape inference will use."""
    import torch

    from .inference import Ensemble, default_batch_size

    key = (models.identity, str(device), str(autocast), pc.tta, pc.compile, pc.batch_size, tile_size_px)
    if key in _ENSEMBLE_CACHE:
        return _ENSEMBLE_CACHE[key]
    nets = models.models if autocast is None else tuple(copy.deepcopy(m) for m in models.models)
    ensemble = Ensemble(nets, models.specs, device, autocast_dtype=autocast, tta=pc.tta, compile=pc.compile)
    batch_size = pc.batch_size or default_batch_size(device)
    if ensemble.fixed_shape:  # cuDNN autotuning / compilation / graph capture now, not on the first batch
        ensemble.score_uint8(torch.zeros((batch_size, 3, tile_size_px, tile_size_px), dtype=torch.uint8,
                                         device=device))
    _ENSEMBLE_CACHE.clear()
    _ENSEMBLE_CACHE[key] = (ensemble, batch_size)
    return ensemble, batch_size


def _predict_planned(plan, slide_id: str, slide_dir: Path, store_path: Path, config: Config, models: LoadedModels,
                     *, device: Any, overwrite: bool, progress: bool, t_start: float, device_ready: Any,
                     autocast: Any, prep_pool: Any) -> Any:
    from .inference import DeviceScorer, RegionRing, plan_units
    from .scan import Pipeline, scan_slide, units_with_work

    pc = config.predict
    inference_id = _inference_identity(models, config, plan.identity)

    # refuse before writing anything if the folder holds another slide's or model's result
    from .store import store_exists

    same_pixels = store_exists(store_path) and open_tile_store(store_path).meta.get("identity") == plan.identity
    if store_path.exists() and not overwrite:
        if store_exists(store_path):
            existing = open_tile_store(store_path)
            if same_pixels and existing.has_heatmap():
                hm = existing.heatmap_meta()
                if hm.get("identity") != inference_id:
                    raise StoreExistsError(
                        f"{store_path}: holds a heatmap made with another model or settings "
                        f"(models {', '.join(m['model'] for m in hm.get('models', []))}, stride {hm.get('stride_px')} px); "
                        f"pass --overwrite to replace it or choose another -o/--out"
                    )
                check_heatmap(existing)  # a damaged chunk is refused before the folder changes
    timings: dict[str, float] = dict(plan.timings_s)
    make_slide_dir(slide_dir)
    summary_path = slide_dir / SUMMARY_NAME
    if overwrite:  # the old result is about to be replaced: it is no longer a finished one
        summary_path.unlink(missing_ok=True)
    # --overwrite replaces the heatmap; the pixels too only when they were made differently
    store, _ = prepare_store(plan, store_path, overwrite=overwrite and not same_pixels, pictures=False)
    # from here on the folder changes: it holds a finished result again only once summary.json is rewritten
    summary_path.unlink(missing_ok=True)

    workers = config.tile.workers or default_workers()
    write_grid(plan, store)
    # drawn while the slide is scanned
    qc_done = prep_pool.submit(write_qc, plan, slide_dir / QC_NAME)

    # -- scan: decode -> device -> heatmap chunks, concurrently ----------------------
    t = time.perf_counter()
    grid = plan.grid
    units = plan_units(n_rows=grid.n_rows, n_cols=grid.n_cols, tile_size_px=grid.tile_size_px,
                       stride_px=grid.stride_px, supertile_px=plan.geometry.supertile_px,
                       hm_chunk_target=pc.heatmap_chunk_cells)
    frame = HeatmapFrame(grid.stride_px, grid.tile_size_px, plan.geometry.effective_mpp, plan.geometry.l0_per_px)
    if store.has_heatmap() and (overwrite or store.heatmap_meta().get("identity") != inference_id):
        store.delete_heatmap()
    spec = models.spec
    class_axis = {"class_names": list(spec.class_names), "positive_class": spec.positive_class} \
        if spec.num_classes > 2 else {}  # more than 2 classes: one heatmap channel per class
    if not store.has_heatmap():
        store.create_heatmap(shape=(*([spec.num_classes] if class_axis else []), grid.n_rows, grid.n_cols),
                             chunk=units.hm_chunk, meta={**class_axis,
            "identity": inference_id, "status": "in_progress", "models": models.describe(),
            "stride_px": grid.stride_px, "tile_size_px": grid.tile_size_px, "tta": pc.tta,
            "cell_definition": "cell (r, c) = the stride x stride px square centred on grid tile (r, c); "
                               "value = that tile's probability; NaN = no tissue tile",
            "offset_px": frame.offset_px, "px_mpp": frame.px_mpp, "l0_per_px": frame.l0_per_px,
        })
    todo, todo_tiles, per_chunk, resumed_tiles = units_with_work(units, plan.kept_rc, store.heatmap_chunk_done)
    # the store's pictures are written in the prep pool while the slide is scanned (marking
    # the store complete waits for them): only now, as zarr would queue the store calls
    # above (grid, heatmap) behind their chunks; after qc.png is drawn, not beside it: each
    # holds its own stripes and pictures (tens of MB for a large slide), and memory must
    # not grow with the slide (the scan keeps both cores busy meanwhile anyway)
    write_store_pictures(plan, store, pictures_in=_After(prep_pool, qc_done))
    t_ready = time.perf_counter()
    ensemble, batch_size = device_ready.result()
    timings["device_wait_s"] = time.perf_counter() - t_ready
    queue_units = max(1, pc.loader_workers)
    ring = RegionRing(_unit_shape(units), n_slots=queue_units + 3, device=device)
    from tqdm import tqdm

    bar = tqdm(total=len(per_chunk), unit="chunk", desc=f"scanning {plan.slide_path.name}", disable=not progress,
               leave=False, dynamic_ncols=True)

    def chunk_written() -> None:
        bar.update(1)

    scorer = DeviceScorer(ensemble, units, todo, todo_tiles, per_chunk, batch_size=batch_size,
                          write_chunk=store.write_heatmap_chunk, ring=ring, on_chunk_written=chunk_written)
    pipe = Pipeline()
    try:
        scan = scan_slide(plan, store, workers=workers, keep_pixels=pc.keep_pixels, uplan=units, units=todo,
                          consume=lambda regions: scorer.run(regions, pipe), region_buffer=ring, pipeline=pipe,
                          queue_units=queue_units)
    finally:
        bar.close()
    qc_done.result()
    # complete: planned, grid written, every chunk this run needed decoded; pixels_kept:
    # every needed chunk is in the store (a later run at another stride reads them)
    pixels_kept = scan.pixels_complete
    store.update_meta(status="complete", pixels_kept=pixels_kept)
    written, resumed, decoded = scan.chunks_written, scan.chunks_from_store, scan.decoded_bytes
    stats = {"tiles": scorer.stats["tiles"], "tiles_resumed": resumed_tiles}
    timings["pixels_s"] = scan.timings_s.get("decode_s", 0.0)
    timings["inference_s"] = time.perf_counter() - t
    timings["device_busy_s"] = scorer.stats["device_s"]
    timings["device_idle_s"] = scorer.stats["wait_s"]

    def finish() -> SlideSummary:
        """Outputs (pyramid, scores, GeoJSON, overlay) and the summary: a run of many slides
        calls it in another thread while the next slide is decoding."""
        # -- outputs ---------------------------------------------------------------------------
        t = time.perf_counter()
        n_levels = build_pyramid(store)
        store.set_heatmap_ome(ome_multiscales(frame, n_levels, name=f"{slide_id} tumour probability",
                                              class_names=tuple(class_axis["class_names"]) if class_axis else None))
        store.update_heatmap_meta(status="complete", n_levels=n_levels)
        # a multi-class model's tumor.geojson holds the regions of every class (export_class_regions);
        # each class's channel is read once, for its regions and its scores
        class_scores: dict[int, dict[str, Any]] = {}
        channels: dict[int, np.ndarray] = {}

        def class_channel(k: int, cells_k: np.ndarray) -> None:
            class_scores[k] = slide_scores(cells_k, threshold=pc.threshold, top_k=pc.top_k, cell_um=frame.cell_um)
            if k == spec.positive_class:
                channels[k] = cells_k

        class_regions = export_class_regions(store, frame, slide_dir / GEOJSON_NAME, slide_name=plan.slide_path.name,
                                             threshold=pc.threshold, min_area_um2=pc.min_region_area_um2,
                                             simplify_tolerance_um=pc.simplify_tolerance_um,
                                             on_channel=class_channel) if class_axis else []
        # the positive class's channel of a multi-class heatmap
        cells = channels[spec.positive_class] if class_axis else scored_cells(store)
        # every threshold-dependent output and figure in one call (results.threshold_outputs)
        picture, picture_mpp = overview_picture(plan)
        outs = threshold_outputs(slide_dir, cells, frame, threshold=pc.threshold, top_k=pc.top_k,
                                 min_region_area_um2=pc.min_region_area_um2,
                                 simplify_tolerance_um=pc.simplify_tolerance_um, slide_name=plan.slide_path.name,
                                 models=models.describe(), n_tiles=plan.n_tiles, picture=picture,
                                 picture_mpp=picture_mpp, tissue=tissue_figures(plan),
                                 geojson_name=GEOJSON_NAME, overlay_name=OVERLAY_NAME,
                                 write_geojson_file=not class_axis)
        if class_axis:
            outs["regions"] = class_regions_block(outs["regions"], class_regions)
        timings["outputs_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        summary = SlideSummary(
            slide=plan.fingerprint,
            slide_id=slide_id,
            mpp=store.meta["mpp"],
            resolution={"target_mpp": config.tile.target_mpp, "effective_mpp": frame.px_mpp,
                        "level": plan.selection.level, "resampled": plan.selection.resample,
                        "pixel_reader": plan.pixel_reader, "glass_skip": plan.glass_skip},
            scores=outs["scores"], regions=outs["regions"], areas=outs["areas"], smoke_model=outs["smoke_model"],
            exports={GEOJSON_NAME: {"threshold": pc.threshold}, OVERLAY_NAME: {"threshold": pc.threshold}},
            classes=_class_summary(store, class_regions, class_scores) if class_axis else None,
            tiles={"n_tiles": plan.n_tiles, "tile_size_px": grid.tile_size_px, "stride_px": grid.stride_px,
                   "grid_shape": [grid.n_rows, grid.n_cols], "scored_this_run": stats["tiles"],
                   "resumed_tiles": stats["tiles_resumed"], "pixel_chunks_written": written,
                   "pixel_chunks_resumed": resumed},
            heatmap={"path": f"{STORE_NAME}/heatmap", "levels": n_levels, "cell_um": frame.cell_um,
                     "offset_px": frame.offset_px},
            timings_s=timings,
            throughput={"patches_per_s_inference": stats["tiles"] / timings["inference_s"] if stats["tiles"] else None,
                        "decoded_mb": decoded / 1e6},
            store={"bytes_on_disk": store.bytes_on_disk(), "pixel_bytes_on_disk": store.bytes_on_disk("pixels"),
                   "pixels_kept": pixels_kept, "keep_pixels": pc.keep_pixels,
                   "pixel_chunks_decoded": scan.chunks_decoded},
            models=tuple(models.describe()),
            model_hash=models.identity,
            config_hash=config_hash(config),
            device=_device_description(device),
            precision=str(autocast or "fp32").replace("torch.", ""),
            batch_size=batch_size,
            config=dataclasses.asdict(config),
            versions=runtime_versions(),
            outputs=RESULT_FILES,
        )
        summary.write(summary_path)
        plan.close_pictures()  # qc.png, the store's pictures and overlay.png are drawn: nothing reads them now
        return summary

    return finish


def predict_in_turn(jobs: Sequence[SlideJob], out_dir: str | Path, config: Config, models: LoadedModels, *,
                    device: Any, overwrite: bool = False, progress: bool = True,
                    job_config: Any = None) -> Iterator[tuple[SlideJob, SlideSummary | None, BaseException | None]]:
    """Score slides one after the other, each slide's outputs drawn (in a thread) while the
    next slide is already decoding and scoring.  Yields (job, summary, error) in order;
    an error is a :class:`WsiscanError` of that slide (others are raised)."""
    from concurrent.futures import ThreadPoolExecutor

    from .errors import WsiscanError

    pending: list[tuple[SlideJob, Any]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsiscan-outputs") as outputs:
        def drain() -> Iterator[tuple[SlideJob, SlideSummary | None, BaseException | None]]:
            while pending:
                job, fut = pending.pop(0)
                try:
                    yield job, fut.result(), None
                except WsiscanError as exc:
                    yield job, None, exc

        for job in jobs:
            cfg = job_config(job) if job_config else config
            try:
                finish = predict_slide(job.path, out_dir, cfg, models, device=device, overwrite=overwrite,
                                       progress=progress, defer_outputs=True, slide_id=job.slide_id)
            except WsiscanError as exc:
                yield from drain()
                yield job, None, exc
                continue
            yield from drain()  # at most one slide's outputs wait: memory stays that of two slides
            pending.append((job, outputs.submit(finish)))
        yield from drain()


class _After(Executor):
    """An executor that runs what is submitted in ``pool`` once ``first`` has finished (however
    it finished: its own waiter sees its error)."""

    def __init__(self, pool: Any, first: Future) -> None:
        self.pool, self.first = pool, first

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        def after() -> Any:
            futures_wait([self.first])
            return fn(*args, **kwargs)
        return self.pool.submit(after)


def tissue_figures(plan) -> dict[str, Any]:
    """The threshold-independent areas of a plan (tissue mask, pen ink, scored share)."""
    return {"tissue_area_mm2": plan.tissue.tissue_area_um2 / 1e6, "ink_area_mm2": plan.tissue.ink_area_um2 / 1e6,
            "scored_tissue_fraction": plan.scored_tissue_fraction}


def _class_summary(store: Any, regions: list[dict[str, Any]], class_scores: dict[int, dict[str, Any]]
                   ) -> dict[str, Any]:
    """Per class of a multi-class heatmap: its scores (``class_scores``, by channel) and its number of regions."""
    meta = store.heatmap_meta()
    names = meta["class_names"]
    per_class = {}
    for k, name in enumerate(names):
        scores = dict(class_scores[k])
        scores["area_above_threshold_mm2"] = scores.pop("tumour_area_mm2")
        per_class[name] = {**scores, "n_regions": sum(r.get("class_name") == name for r in regions)}
    return {"names": names, "positive_class": names[meta["positive_class"]], "per_class": per_class}


def _device_description(device: Any) -> dict[str, Any]:
    import platform

    import torch

    # platform.machine(), not processor(): on Linux processor() runs `uname -p` in a forked
    # child of this (by now large) process, which a process-tree memory sampler counts twice
    d = {"type": device.type, "cpu": platform.machine(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        d["name"] = torch.cuda.get_device_name(device)
    return d
