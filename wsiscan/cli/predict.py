"""``wsiscan predict`` and ``wsiscan heatmap``."""

from __future__ import annotations

from pathlib import Path

import click

from ..layout import GEOJSON_NAME, MANIFEST_NAME, OVERLAY_NAME, STORE_NAME, SUMMARY_NAME
from . import echo_err, main, remember_output
from .slides import build_config, tiling_options
from .speak import speak_at_end, speak_results, speech_options


@main.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@tiling_options
@click.option("--model", "-m", "model_names", multiple=True,
              help="Registry name or checkpoint path; repeat for an ensemble (probabilities averaged). "
                   "Default: tiatoolbox/resnet18-pcam.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Patches per forward pass (default: fit to the device).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default=None,
              help="auto: bf16 on CUDA, fp32 on CPU.")
@click.option("--tta/--no-tta", default=None, help="Average the 8 flips/rotations of each patch.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model(s).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Tumour probability threshold for regions and area.")
@click.option("--target-mpp", type=click.FloatRange(min=0, min_open=True), default=None, help="Override the model's input resolution, um/px.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=None,
              help="Unit regions decoded and queued ahead of the model (default 2; 0 counts as 1).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster, one task per slide (e.g. tcp://host:8786).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="With --workers/--scheduler: how often a slide is given to another worker after its worker "
                   "died (or an unexpected error); a slide's own error (corrupt file...) is never retried.")
@click.option("--decode-workers", type=click.IntRange(min=0), default=None,
              help="Decode threads of a single-process run (0 or unset: one per usable core that memory allows).")
@click.option("--keep-pixels/--no-keep-pixels", default=None,
              help="Also keep the decoded pixels in store.zarr/pixels (default: no, predict.keep_pixels; "
                   "the heatmap chunks alone make a killed run resumable).")
@speech_options
def predict(slides, out_dir, config_path, slide_mpp, tile_size_px, stride_px, min_tissue, workers, overwrite, quiet,
            model_names, device, batch_size, precision, tta, compile_, threshold, target_mpp, loader_workers,
            scheduler, retries, decode_workers, keep_pixels, speak, speak_wav) -> None:
    """Tumour-probability heatmap for each SLIDE.

    SLIDE is a slide file, a glob pattern (quoted: "dir/*.svs") or a CSV list with a
    `slide` (or `path`) column and an optional `slide_mpp` column.  Writes
    OUT/<slide-id>/{store.zarr, overlay.png, tumor.geojson, summary.json, qc.png}
    and OUT/manifest.json.  Rerunning a killed run finishes only the missing work.

    With --workers N (a local Dask cluster) or --scheduler ADDRESS (an existing one)
    the slides run in parallel, one task per slide; a slide whose worker dies is
    retried on another, and a rerun skips the slides already finished and unchanged.
    """
    from ..predict import expand_slide_inputs, load_models, resolution_config, slide_config

    if workers is not None and scheduler:
        raise click.UsageError("--workers starts a local Dask cluster and --scheduler uses an existing one; give one")
    if workers is not None and workers < 1:
        raise click.BadParameter(f"must be at least 1, got {workers}", param_hint="--workers")
    jobs = expand_slide_inputs(slides)
    if not jobs:
        raise click.UsageError(f"no slides to score: {', '.join(map(str, slides))} lists none")
    cfg = build_config(config_path, slide_mpp=slide_mpp, stride_px=stride_px, min_tissue=min_tissue,
                       workers=decode_workers)
    cfg = cfg.replace("predict", model=tuple(model_names) or None, device=device, batch_size=batch_size,
                      precision=precision, tta=tta, compile=compile_, threshold=threshold,
                      loader_workers=loader_workers, keep_pixels=keep_pixels)
    if workers is None and not scheduler:  # the first slide's tissue mask is made while torch imports
        from ..tiling import prefetch_tissue

        prefetch_tissue(jobs[0].path, slide_config(cfg, jobs[0]))
    from ..inference import select_device

    # the workers of an existing cluster choose their own device; everything else is checked here first
    dev = select_device(cfg.predict.device) if not scheduler else None
    models = load_models(cfg.predict.model)
    cfg = resolution_config(cfg, models.spec, target_mpp=target_mpp, tile_size_px=tile_size_px)
    speak_at_end([Path(out_dir) / j.slide_id for j in jobs], play=speak, wav=speak_wav)
    if workers is not None or scheduler:
        _predict_on_dask(jobs, out_dir, cfg, models, workers=workers, scheduler=scheduler, retries=retries,
                         overwrite=overwrite)
    else:
        _predict_in_turn(jobs, out_dir, cfg, models, dev, overwrite=overwrite, quiet=quiet)
    from ..render import SMOKE_MODEL_MARK
    from ..results import is_smoke_model

    if is_smoke_model(models.describe()):  # everything the smoke model makes says so (after success:
        # an error stays the one line on stderr)
        echo_err(f"wsiscan: warning: {SMOKE_MODEL_MARK}; its heatmaps mark dark patch centres, not tumour")


for _param in predict.params:  # tiling_options says "decode processes"; for predict it is the Dask cluster
    if _param.name == "workers":
        _param.help = ("Score the slides in parallel on a local Dask cluster of N worker processes (one per GPU "
                       "when CUDA is present, at most N). Without it and --scheduler, one process scores them in turn.")


def _slide_line(entry) -> str:
    """A complete slide's figures (a :class:`~wsiscan.records.ManifestEntry`) in one line."""
    f = entry.figures
    return (f"{entry.slide_id}: {f.n_tiles} patches at {f.effective_mpp:.4g} um/px, "
            f"max p={f.max_probability:.3f}, top-k mean {f.top_k_mean_probability:.3f}, "
            f"tumour {f.tumour_area_mm2:.3f} mm2 in {f.n_regions} regions")


def _run_header(cfg, models, **cluster):
    from ..manifest import run_header
    from ..predict import config_hash

    return run_header("predict", models=models.describe(), model_hash=models.identity, config_hash=config_hash(cfg),
                      **cluster)


def _entry_for(cfg, models, worker):
    from ..predict import config_hash, slide_config
    from ..runner import pending_entry

    return lambda job: pending_entry(job, worker=worker, model_hash=models.identity,
                                     config_hash=config_hash(slide_config(cfg, job)))


def _predict_in_turn(jobs, out_dir, cfg, models, dev, *, overwrite: bool, quiet: bool) -> None:
    """The single-process run: the slides one after the other, no Dask; a slide's outputs
    are drawn while the next slide is decoding (see wsiscan.runner.InTurnBackend)."""
    from ..runner import InTurnBackend, run_slides

    def report(outcome, progress) -> None:
        entry = outcome.entry
        if entry.status == "failed":
            echo_err(f"wsiscan: error: {entry.error}")
        else:
            click.echo(f"{_slide_line(entry)}, {entry.seconds:.1f} s -> {Path(out_dir) / entry.slide_id}")

    backend = InTurnBackend(out_dir, cfg, models, device=dev, overwrite=overwrite, progress=not quiet)
    run = run_slides(jobs, out_dir, backend, header=_run_header(cfg, models), entry_for=_entry_for(cfg, models, "local"),
                     on_entry=report)
    failed = run["totals"]["failed"]
    if failed:
        echo_err(f"wsiscan: predict: {failed} of {len(jobs)} slides failed (see {Path(out_dir) / MANIFEST_NAME})")
        raise click.exceptions.Exit(1)


def _predict_on_dask(jobs, out_dir, cfg, models, *, workers, scheduler, retries: int, overwrite: bool) -> None:
    """The slides as Dask tasks, on a local cluster (--workers) or an existing one (--scheduler)."""
    import contextlib

    from ..distributed import connect, dashboard_link, plan_local_cluster, predict_many, start_local_cluster

    width = len(str(len(jobs)))

    def report(outcome, progress) -> None:
        entry = outcome.entry
        step = f"[{progress.done:>{width}}/{progress.total}]"
        if entry.status == "failed":
            echo_err(f"wsiscan: error: {step} {entry.error}")
        elif entry.skipped:
            click.echo(f"{step} {entry.slide_id}: finished and unchanged, skipped -> {Path(out_dir) / entry.slide_id}")
        else:
            retried = f", attempt {entry.attempts}" if entry.attempts > 1 else ""
            click.echo(f"{step} {_slide_line(entry)}, {entry.seconds:.1f} s on {entry.worker}{retried} -> "
                       f"{Path(out_dir) / entry.slide_id} | {progress.patches_per_s:.0f} patches/s")

    with contextlib.ExitStack() as stack:

        def start_client():
            """Called by predict_many only when some slide needs a task."""
            if scheduler:
                try:
                    client = stack.enter_context(connect(scheduler))
                except (OSError, TimeoutError) as exc:
                    echo_err(f"wsiscan: error: cannot reach the Dask scheduler at {scheduler} ({exc}); check the "
                             f"address, or start a cluster with `dask scheduler` and `dask worker {scheduler}`")
                    raise click.exceptions.Exit(1) from exc
            else:
                client = stack.enter_context(connect(stack.enter_context(start_local_cluster(plan, retries=retries))))
            n_workers = len(client.scheduler_info().get("workers", {}))
            link = dashboard_link(client) or "none (install bokeh>=3.1 for the Dask dashboard)"
            click.echo(f"wsiscan: {len(jobs)} slides on {n_workers} Dask workers ({where}); dashboard: {link}")
            if n_workers == 0:
                echo_err("wsiscan: warning: the scheduler has no workers yet; the slides wait until workers connect")
            return client

        if scheduler:
            plan, where = None, f"scheduler {scheduler}"
            worker_device, torch_threads = None, None
        else:
            plan = plan_local_cluster(workers, device=cfg.predict.device)
            where = f"local {plan.kind} cluster" + (f", GPUs {','.join(plan.gpus)}" if plan.gpus else "")
            worker_device, torch_threads = plan.worker_device, plan.torch_threads
        manifest = predict_many(jobs, out_dir, cfg, models, client=start_client, overwrite=overwrite,
                                retries=retries, worker_device=worker_device, torch_threads=torch_threads,
                                cluster=where, on_result=report)
    t = manifest["totals"]
    click.echo(f"wsiscan: predict: {t['complete']} of {t['slides']} slides complete ({t['skipped']} finished earlier "
               f"and unchanged, {t['retried']} retried), {t['failed']} failed, in {t['elapsed_s']:.1f} s: "
               f"{t['slides_per_s']:.3g} slides/s, {t['patches_per_s']:.0f} patches/s")
    if t["failed"]:
        echo_err(f"wsiscan: predict: {t['failed']} of {t['slides']} slides failed "
                 f"(see {Path(out_dir) / MANIFEST_NAME})")
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("result_dir", type=click.Path(path_type=Path), callback=remember_output)
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Tumour probability threshold.")
@click.option("--png/--no-png", default=True, help="Rewrite overlay.png.")
@click.option("--geojson/--no-geojson", default=True, help="Rewrite tumor.geojson.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
@speech_options
def heatmap(result_dir: Path, threshold, png, geojson, config_path, speak, speak_wav) -> None:
    """Re-export a finished result (RESULT_DIR = OUT/<slide-id>) without rerunning the model.

    Every threshold-dependent figure of summary.json (scores, regions, areas) is rewritten
    at the new threshold, atomically and after the exports, and summary.json's `exports`
    says at which threshold each of tumor.geojson and overlay.png was last written.
    """
    from ..config import load_config
    from ..errors import StoreError
    from ..heatmap import HeatmapFrame, export_class_regions, heatmap_class_names, scored_cells
    from ..records import read_summary
    from ..results import class_regions_block, threshold_outputs
    from ..staging import lock_result_folder
    from ..store import open_tile_store

    click.get_current_context().call_on_close(lock_result_folder(result_dir))  # one writer per slide
    summary_path = result_dir / SUMMARY_NAME
    store = open_tile_store(result_dir / STORE_NAME, mode="r+")
    hm = store.heatmap_meta()
    if hm.get("status") != "complete" or not summary_path.exists():
        raise StoreError(f"{result_dir}: has no finished result (no {SUMMARY_NAME}); run `wsiscan predict` first")
    summary = read_summary(summary_path)
    # the run's own region settings, unless --config gives others
    cfg = load_config(config_path)
    if config_path is None:
        cfg = cfg.replace("predict", **summary.region_settings())
    pc = cfg.replace("predict", threshold=threshold).predict
    frame = HeatmapFrame.from_meta(hm)
    cells = scored_cells(store)
    class_names = heatmap_class_names(store)
    name = Path(store.meta["slide"]["path"]).name
    picture, picture_mpp = store.overview() if png else (None, 1.0)
    areas = summary.areas
    outs = threshold_outputs(result_dir, cells, frame, threshold=pc.threshold, top_k=pc.top_k,
                             min_region_area_um2=pc.min_region_area_um2,
                             simplify_tolerance_um=pc.simplify_tolerance_um, slide_name=name,
                             models=[dict(m) for m in summary.models], n_tiles=summary.n_tiles,
                             picture=picture, picture_mpp=picture_mpp,
                             tissue={k: areas.get(k) for k in ("tissue_area_mm2", "ink_area_mm2",
                                                               "scored_tissue_fraction")},
                             write_geojson_file=geojson and class_names is None)
    exports = dict(summary.exports)
    if geojson:
        exports[GEOJSON_NAME] = {"threshold": pc.threshold}
        if class_names is not None:
            outs["regions"] = class_regions_block(outs["regions"], export_class_regions(
                store, frame, result_dir / GEOJSON_NAME, slide_name=name, threshold=pc.threshold,
                min_area_um2=pc.min_region_area_um2, simplify_tolerance_um=pc.simplify_tolerance_um))
        click.echo(f"{result_dir / GEOJSON_NAME}: {outs['regions']['n']} regions at threshold {pc.threshold:g}")
    if png:
        exports[OVERLAY_NAME] = {"threshold": pc.threshold}
        click.echo(f"{result_dir / OVERLAY_NAME}")
    summary.with_blocks(**outs, exports=exports).write(summary_path)
    click.echo(f"{summary_path}: scores, regions and areas at threshold {pc.threshold:g}")
    # summary.json now holds this threshold's figures, so the spoken text is made from it
    speak_results([result_dir], play=speak, wav=speak_wav)
