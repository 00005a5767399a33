"""``wsiscan explain`` and ``wsiscan evaluate-slides``: thin commands over
:mod:`wsiscan.explain` and :mod:`wsiscan.slide_eval`."""

from __future__ import annotations

from pathlib import Path

import click

from . import echo_err, main, remember_output

_METHODS = ("gradcam", "ig")  # static so `--help` needs no torch; wsiscan.explain checks the same list


@main.command("explain")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), callback=remember_output,
              help="Output folder: one PNG panel per patch and index.json (refused if it exists, see --overwrite).")
@click.option("--model", "model_refs", multiple=True,
              help="Checkpoint path or registered name; repeat for an ensemble [default for a result folder: "
                   "the model(s) it was scored with].")
@click.option("--method", "methods", multiple=True, type=click.Choice(_METHODS),
              help="Attribution method(s): gradcam (Grad-CAM), ig (integrated gradients) [default: both].")
@click.option("--tta", is_flag=True, help="Mean map over the 8 flips and 90-degree rotations, mapped back.")
@click.option("--top-k", type=click.IntRange(min=1), default=8, show_default=True,
              help="Result folder: explain this many highest-probability patches.")
@click.option("--region", type=click.IntRange(min=1),
              help="Result folder: only patches inside this region of tumor.geojson (1 = highest max probability).")
@click.option("--split", help="PCam folder: train, valid, test [default: test; a Kaggle folder: all].")
@click.option("--max-patches", type=click.IntRange(min=1), default=16, show_default=True,
              help="PCam folder: the first N patches of the split.")
@click.option("--layer", help="Module Grad-CAM reads, e.g. layer4 [default: layer3 of a ResNet, the last ReLU of smallcnn].")
@click.option("--ig-steps", type=click.IntRange(min=2), default=32, show_default=True,
              help="Integration steps of integrated gradients.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder (only once the new one is complete).")
def explain_command(inputs, out_dir, model_refs, methods, tta, top_k, region, split, max_patches, layer, ig_steps,
                    device, overwrite) -> None:
    """Grad-CAM and integrated-gradients panels for patches.

    INPUTS: a PCam folder (HDF5 or Kaggle layout), patch images (PNG/TIFF/JPEG, or .txt
    lists of them), or one result folder OUT/<slide-id> of `wsiscan predict`.
    """
    from ..explain.run import explain

    index = explain(inputs, out_dir, model_refs=model_refs, methods=methods or _METHODS, tta=tta, device=device,
                    split=split, max_patches=max_patches, top_k=top_k, region=region, layer=layer,
                    ig_steps=ig_steps, overwrite=overwrite, log=echo_err)
    for p in index["patches"]:
        peaks = ", ".join(f"{m} peak {tuple(s['peak_xy_px'])}" for m, s in p["maps"].items())
        label = "" if p["label"] is None else f" label={p['label']}"
        click.echo(f"{p['id']}: p={p['probability']:.3f}{label}; {peaks}")
    click.echo(f"wrote {out_dir}/index.json and {len(index['patches'])} panel(s)")


@main.command("evaluate-slides")
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--annotations", "annotations_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of <slide-id>.xml (Camelyon16 ASAP) or <slide-id>.geojson (QuPath) annotations.")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV of slide labels (Camelyon16 reference.csv, or a header with slide,label) "
                   "[default: tumour iff the slide has a tumour annotation].")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), callback=remember_output,
              help="Output folder [default: RESULTS_DIR/slide-eval].")
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Probability for cell-level Dice/IoU [default: each slide's predict threshold].")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Slide score 'top-k mean': the mean of the k highest patch probabilities.")
@click.option("--detection-radius-um", type=click.FloatRange(min=0), default=200.0, show_default=True,
              help="FROC detections: local maxima of the heatmap within +- this distance.")
@click.option("--min-detection-probability", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="FROC detections: ignore local maxima below this probability.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder (only once the new one is complete).")
def evaluate_slides_command(results_dir, annotations_dir, labels_csv, out_dir, threshold, top_k, detection_radius_um,
                            min_detection_probability, overwrite) -> None:
    """Slide-level AUC, Camelyon16 lesion-level FROC and cell-level Dice/IoU of predict results.

    RESULTS_DIR is the -o folder of `wsiscan predict` (one OUT/<slide-id>/ per slide).
    """
    from ..slide_eval import evaluate_slides

    out_dir = out_dir or results_dir / "slide-eval"
    report = evaluate_slides(results_dir, annotations_dir, out_dir, labels_csv=labels_csv, threshold=threshold,
                             top_k=top_k, detection_radius_um=detection_radius_um,
                             min_detection_probability=min_detection_probability, overwrite=overwrite, log=echo_err)
    s, f, c = report["slide_level"], report["froc"], report["cell_level"]
    click.echo(f"{report['n_slides']} slides ({report['n_tumour_slides']} tumour): slide AUC max {_fmt(s['auc_max_probability'])}, "
               f"top-{s['top_k']} mean {_fmt(s['auc_top_k_mean_probability'])}; FROC {_fmt(f['score'])} "
               f"({f['n_lesions']} lesions, {f['n_itc']} ITC excluded); Dice {_fmt(c['dice'])}, IoU {_fmt(c['iou'])}")
    click.echo(f"wrote {out_dir}/metrics.json, froc.png, slides.csv")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
