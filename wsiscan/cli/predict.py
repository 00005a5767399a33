"""``wsiscan predict`` and ``wsiscan heatmap``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import WsiscanError
from . import echo_err, main
from .slides import build_config, tiling_options


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
@click.option("--loader-workers", type=int, default=None, help="Threads reading the tile store ahead of the model.")
def predict(slides, out_dir, config_path, slide_mpp, tile_size_px, stride_px, min_tissue, workers, overwrite, quiet,
            model_names, device, batch_size, precision, tta, compile_, threshold, target_mpp, loader_workers) -> None:
    """Tumour-probability heatmap for each SLIDE.

    Writes OUT/<slide-id>/{store.zarr, overlay.png, tumor.geojson, summary.json, qc.png}
    and OUT/manifest.json.  Rerunning a killed run finishes only the missing work.
    """
    from ..heatmap import write_json_atomic
    from ..inference import select_device
    from ..predict import load_models, predict_slide, resolution_config

    cfg = build_config(config_path, slide_mpp=slide_mpp, stride_px=stride_px, min_tissue=min_tissue, workers=workers)
    cfg = cfg.replace("predict", model=tuple(model_names) or None, device=device, batch_size=batch_size,
                      precision=precision, tta=tta, compile=compile_, threshold=threshold,
                      loader_workers=loader_workers)
    dev = select_device(cfg.predict.device)
    models = load_models(cfg.predict.model)
    cfg = resolution_config(cfg, models.spec, target_mpp=target_mpp, tile_size_px=tile_size_px)

    manifest = {"command": "predict", "models": models.describe(), "slides": []}
    failed = 0
    for slide in slides:
        t0 = time.perf_counter()
        entry = {"slide": str(slide)}
        try:
            summary = predict_slide(slide, out_dir, cfg, models, device=dev, overwrite=overwrite, progress=not quiet)
        except WsiscanError as exc:
            if len(slides) == 1:
                raise
            failed += 1
            echo_err(f"wsiscan: error: {exc}")
            entry.update(status="failed", error=str(exc), seconds=time.perf_counter() - t0)
        else:
            sc = summary["scores"]
            entry.update(status="complete", slide_id=summary["slide_id"], seconds=summary["timings_s"]["total_s"],
                         n_tiles=summary["tiles"]["n_tiles"], max_probability=sc["max_probability"])
            click.echo(
                f"{summary['slide_id']}: {summary['tiles']['n_tiles']} patches at {summary['resolution']['effective_mpp']:.4g} um/px, "
                f"max p={sc['max_probability']:.3f}, top-{sc.get('top_k', 0)} mean {sc['top_k_mean_probability']:.3f}, "
                f"tumour {sc['tumour_area_mm2']:.3f} mm2 in {summary['regions']['n']} regions, "
                f"{summary['timings_s']['total_s']:.1f} s -> {Path(out_dir) / summary['slide_id']}"
            )
        manifest["slides"].append(entry)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, Path(out_dir) / "manifest.json")
    if failed:
        echo_err(f"wsiscan: predict: {failed} of {len(slides)} slides failed (see {Path(out_dir) / 'manifest.json'})")
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("result_dir", type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=None, help="Tumour probability threshold.")
@click.option("--png/--no-png", default=True, help="Rewrite overlay.png.")
@click.option("--geojson/--no-geojson", default=True, help="Rewrite tumor.geojson.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
def heatmap(result_dir: Path, threshold, png, geojson, config_path) -> None:
    """Re-export a finished result (RESULT_DIR = OUT/<slide-id>) without rerunning the model."""
    from ..config import load_config
    from ..errors import StoreError
    from ..heatmap import HeatmapFrame, render_overlay, tumour_regions, write_geojson
    from ..store import open_tile_store

    cfg = load_config(config_path).replace("predict", threshold=threshold)
    pc = cfg.predict
    store = open_tile_store(result_dir / "store.zarr", mode="r+")
    hm = store.heatmap_meta()
    if hm.get("status") != "complete":
        raise StoreError(f"{result_dir}: has no finished heatmap; run `wsiscan predict` first")
    frame = HeatmapFrame(hm["stride_px"], hm["tile_size_px"], hm["px_mpp"], hm["l0_per_px"])
    cells = store.heatmap_level(0)[...]
    name = Path(store.meta["slide"]["path"]).name
    if geojson:
        regions = tumour_regions(cells, frame, threshold=pc.threshold, min_area_um2=pc.min_region_area_um2,
                                 simplify_tolerance_um=pc.simplify_tolerance_um)
        write_geojson(regions, result_dir / "tumor.geojson", slide_name=name, threshold=pc.threshold)
        click.echo(f"{result_dir / 'tumor.geojson'}: {len(regions)} regions at threshold {pc.threshold:g}")
    if png:
        render_overlay(store.thumbnail(), cells, frame, thumb_mpp=store.meta["mask_mpp"], threshold=pc.threshold,
                       title=f"{name}  |  threshold {pc.threshold:g}", path=result_dir / "overlay.png")
        click.echo(f"{result_dir / 'overlay.png'}")
