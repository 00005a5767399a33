"""``wsiscan predict`` and ``wsiscan heatmap``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from . import echo_err, main
from .slides import build_config, tiling_options
from .speak import speak_at_end, speak_results, speech_options


@main.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@tiling_options
@click.option("--model", "-m", "model_names", multiple=True,
              help="Registry name or checkpoint path; repeat for an ensemble (probabilities averaged). "
                   "Default: tiatoolbox/resnet18-pcam.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto).")
@click.option("--batch-size", type=int, default=None, help="Patches per forward pass (default: fit to the device).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default=None,
              help="auto: bf16 on CUDA, fp32 on CPU.")
@click.option("--tta/--no-tta", default=None, help="Average the 8 flips/rotations of each patch.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model(s).")
@click.option("--threshold", type=float, default=None, help="Tumour probability threshold for regions and area.")
@click.option("--target-mpp", type=float, default=None, help="Override the model's input resolution, um/px.")
@click.option("--loader-workers", type=int, default=None,
              help="Unit regions decoded and queued ahead of the model (default 2).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster, one task per slide (e.g. tcp://host:8786).")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="With --workers/--scheduler: how often a slide is given to another worker after its worker "
                   "died (or an unexpected error); a slide's own error (corrupt file...) is never retried.")
@click.option("--decode-workers", type=int, default=None,
              help="Decode threads of a single-process run (default: one per usable core that memory allows).")
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
    from ..inference import select_device
    from ..predict import expand_slide_inputs, load_models, resolution_config
    from ..tiling import slide_id_for

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
    # the workers of an existing cluster choose their own device; everything else is checked here first
    dev = select_device(cfg.predict.device) if not scheduler else None
    models = load_models(cfg.predict.model)
    cfg = resolution_config(cfg, models.spec, target_mpp=target_mpp, tile_size_px=tile_size_px)
    speak_at_end([Path(out_dir) / slide_id_for(j.path) for j in jobs], play=speak, wav=speak_wav)
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


def _slide_line(record: dict) -> str:
    return (f"{record['slide_id']}: {record['n_tiles']} patches at {record['effective_mpp']:.4g} um/px, "
            f"max p={record['max_probability']:.3f}, top-k mean {record['top_k_mean_probability']:.3f}, "
            f"tumour {record['tumour_area_mm2']:.3f} mm2 in {record['n_regions']} regions")


def _predict_in_turn(jobs, out_dir, cfg, models, dev, *, overwrite: bool, quiet: bool) -> None:
    """The single-process run: the slides one after the other, no Dask; a slide's outputs
    are drawn while the next slide is decoding (see wsiscan.predict.predict_in_turn).

    Issue 12: the manifest has every documented top-level field (run_id, versions,
    started/finished, totals) and each slide's absolute path, and is merged into the
    OUT/manifest.json already there (manifest.write_manifest_merged) after each slide.
    """
    import os

    from ..config import runtime_versions
    from ..manifest import new_run_id, run_totals, write_manifest_merged
    from ..predict import config_hash, predict_in_turn, result_record, slide_config
    from ..tiling import slide_id_for

    t_run = time.perf_counter()
    manifest = {"command": "predict", "run_id": new_run_id(), "cluster": None, "scheduler": None, "dashboard": None,
                "n_workers": 1, "retries": 0, "models": models.describe(), "model_hash": models.identity,
                "config_hash": config_hash(cfg), "versions": runtime_versions(), "started": time.time(),
                "finished": None, "slides": []}
    failed = 0
    t0 = time.perf_counter()
    started = time.time()
    results = predict_in_turn(jobs, out_dir, cfg, models, device=dev, overwrite=overwrite, progress=not quiet,
                              job_config=lambda job: slide_config(cfg, job))
    for job, summary, exc in results:
        job_cfg = slide_config(cfg, job)
        entry = {"slide": os.path.abspath(job.path), "slide_id": slide_id_for(job.path), "slide_mpp": job.slide_mpp,
                 "skipped": False, "error": None, "worker": "local", "attempts": 1, "retries": 0,
                 "workers": ["local"], "started": started, "model_hash": models.identity,
                 "config_hash": config_hash(job_cfg)}
        if exc is not None:
            if len(jobs) == 1:
                raise exc
            failed += 1
            echo_err(f"wsiscan: error: {exc}")
            entry.update(status="failed", error=str(exc), error_type=type(exc).__name__,
                         seconds=time.perf_counter() - t0, finished=time.time())
        else:
            record = result_record(summary)
            entry.update(status="complete", **record, seconds=summary["timings_s"]["total_s"], finished=time.time())
            click.echo(f"{_slide_line(record)}, {entry['seconds']:.1f} s -> {Path(out_dir) / record['slide_id']}")
        t0 = time.perf_counter()
        started = time.time()
        manifest["slides"].append(entry)
        manifest["totals"] = run_totals(manifest["slides"], elapsed_s=time.perf_counter() - t_run)
        if job is jobs[-1]:
            manifest["finished"] = time.time()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_manifest_merged(out_dir, manifest)
    if failed:
        echo_err(f"wsiscan: predict: {failed} of {len(jobs)} slides failed (see {Path(out_dir) / 'manifest.json'})")
        raise click.exceptions.Exit(1)


def _predict_on_dask(jobs, out_dir, cfg, models, *, workers, scheduler, retries: int, overwrite: bool) -> None:
    """The slides as Dask tasks, on a local cluster (--workers) or an existing one (--scheduler)."""
    import contextlib

    from ..distributed import connect, dashboard_link, plan_local_cluster, predict_many, start_local_cluster

    width = len(str(len(jobs)))

    def report(entry: dict, progress: dict) -> None:
        step = f"[{progress['done']:>{width}}/{progress['total']}]"
        if entry["status"] == "failed":
            echo_err(f"wsiscan: error: {step} {entry['error']}")
        elif entry["skipped"]:
            click.echo(f"{step} {entry['slide_id']}: finished and unchanged, skipped -> {Path(out_dir) / entry['slide_id']}")
        else:
            retried = f", attempt {entry['attempts']}" if entry["attempts"] > 1 else ""
            click.echo(f"{step} {_slide_line(entry)}, {entry['seconds']:.1f} s on {entry['worker']}{retried} -> "
                       f"{Path(out_dir) / entry['slide_id']} | {progress['patches_per_s']:.0f} patches/s")

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
                 f"(see {Path(out_dir) / 'manifest.json'})")
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("result_dir", type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=None, help="Tumour probability threshold.")
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
    from ..results import class_regions_block, threshold_outputs, update_summary_atomic
    from ..staging import lock_result_folder
    from ..store import open_tile_store

    click.get_current_context().call_on_close(lock_result_folder(result_dir))  # one writer per slide
    summary_path = result_dir / "summary.json"
    store = open_tile_store(result_dir / "store.zarr", mode="r+")
    hm = store.heatmap_meta()
    if hm.get("status") != "complete" or not summary_path.exists():
        raise StoreError(f"{result_dir}: has no finished result (no summary.json); run `wsiscan predict` first")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{summary_path}: cannot be read ({exc}); rerun `wsiscan predict` on the slide") from exc
    # the run's own region settings, unless --config gives others
    cfg = load_config(config_path)
    if config_path is None and isinstance(summary.get("config", {}).get("predict"), dict):
        run = summary["config"]["predict"]
        cfg = cfg.replace("predict", **{k: run[k] for k in ("threshold", "top_k", "min_region_area_um2",
                                                            "simplify_tolerance_um") if k in run})
    pc = cfg.replace("predict", threshold=threshold).predict
    frame = HeatmapFrame.from_meta(hm)
    cells = scored_cells(store)
    class_names = heatmap_class_names(store)
    name = Path(store.meta["slide"]["path"]).name
    picture, picture_mpp = store.overview() if png else (None, 1.0)
    areas = summary.get("areas") or {}
    outs = threshold_outputs(result_dir, cells, frame, threshold=pc.threshold, top_k=pc.top_k,
                             min_region_area_um2=pc.min_region_area_um2,
                             simplify_tolerance_um=pc.simplify_tolerance_um, slide_name=name,
                             models=summary.get("models", []), n_tiles=summary["tiles"]["n_tiles"],
                             picture=picture, picture_mpp=picture_mpp,
                             tissue={k: areas.get(k) for k in ("tissue_area_mm2", "ink_area_mm2",
                                                               "scored_tissue_fraction")},
                             write_geojson_file=geojson and class_names is None)
    exports = dict(summary.get("exports") or {})
    if geojson:
        exports["tumor.geojson"] = {"threshold": pc.threshold}
        if class_names is not None:
            outs["regions"] = class_regions_block(outs["regions"], export_class_regions(
                store, frame, result_dir / "tumor.geojson", slide_name=name, threshold=pc.threshold,
                min_area_um2=pc.min_region_area_um2, simplify_tolerance_um=pc.simplify_tolerance_um))
        click.echo(f"{result_dir / 'tumor.geojson'}: {outs['regions']['n']} regions at threshold {pc.threshold:g}")
    if png:
        exports["overlay.png"] = {"threshold": pc.threshold}
        click.echo(f"{result_dir / 'overlay.png'}")
    update_summary_atomic(summary_path, {**outs, "exports": exports})
    click.echo(f"{summary_path}: scores, regions and areas at threshold {pc.threshold:g}")
    # summary.json now holds this threshold's figures, so the spoken text is made from it
    speak_results([result_dir], play=speak, wav=speak_wav)
