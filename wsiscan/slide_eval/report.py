"""``evaluate_slides``: score a folder of ``wsiscan predict`` results against annotations.

Writes ``metrics.json``, ``froc.png``, ``roc.png`` (slide level, max probability) and
``slides.csv`` (one row per slide) into a folder that appears only when complete.
"""

from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import metrics as M
from ..errors import DatasetError
from ..layout import STORE_NAME, SUMMARY_NAME, is_result_folder, write_json_atomic
from ..output_folder import building_folder, check_output_folder
from ..records import read_summary_data, summary_threshold
from .annotations import find_annotation, read_annotation
from .froc import (
    DILATION_UM,
    FROC_FP_RATES,
    ITC_MAJOR_AXIS_UM,
    evaluation_mask,
    froc_curve,
    froc_score,
    lesion_hits,
)
from .labels import read_slide_labels, slide_key
from .scan import open_heatmap, scan_heatmap

__all__ = ["evaluate_slides", "find_results"]

Log = Callable[[str], None]


def _silent(message: str) -> None:
    del message


def find_results(results_dir: Path) -> tuple[list[Path], list[str]]:
    """Finished slide folders (holding summary.json and store.zarr) under ``results_dir``
    (or ``results_dir`` itself), and notes on folders skipped as unfinished."""
    if not results_dir.is_dir():
        raise DatasetError(f"{results_dir}: not a folder; give the -o folder of `wsiscan predict`")
    candidates = [results_dir] if (results_dir / STORE_NAME).exists() else sorted(
        d for d in results_dir.iterdir() if d.is_dir() and (d / STORE_NAME).exists())
    done, notes = [], []
    for d in candidates:
        if is_result_folder(d):
            done.append(d)
        else:
            notes.append(f"{d.name}: no summary.json (unfinished run), skipped")
    if not done:
        raise DatasetError(f"{results_dir}: no finished slide result (OUT/<slide-id>/summary.json); "
                           f"run `wsiscan predict SLIDE... -o {results_dir}` first")
    return done, notes


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def evaluate_slides(
    results_dir: str | Path,
    annotations_dir: str | Path,
    out_dir: str | Path,
    *,
    labels_csv: str | Path | None = None,
    threshold: float | None = None,
    top_k: int = 10,
    detection_radius_um: float = 200.0,
    min_detection_probability: float = 0.1,
    overwrite: bool = False,
    log: Log = _silent,
) -> dict:
    """Slide-level AUC, lesion-level FROC and cell-level Dice/IoU; see the README's protocol."""
    results_dir, annotations_dir, out_dir = Path(results_dir), Path(annotations_dir), Path(out_dir)
    check_output_folder(out_dir, overwrite=overwrite)
    if not annotations_dir.is_dir():
        raise DatasetError(f"{annotations_dir}: annotations folder not found; expected <slide-id>.xml (ASAP) "
                           f"or <slide-id>.geojson (QuPath) files")
    slide_dirs, skipped = find_results(results_dir)
    labels = read_slide_labels(labels_csv) if labels_csv is not None else None
    plan = []  # everything checkable is checked before any heatmap is read
    for slide_dir in slide_dirs:
        key = slide_key(slide_dir.name)
        ann_path = find_annotation(annotations_dir, slide_dir.name) or next(
            (p for p in sorted(annotations_dir.iterdir()) if slide_key(p.name) == key and p.is_file()), None)
        annotation = read_annotation(ann_path) if ann_path is not None else None
        if labels is not None:
            if key not in labels:
                skipped.append(f"{slide_dir.name}: not in {labels_csv}, skipped")
                continue
            label = labels[key]
        else:
            label = int(annotation is not None and annotation.has_tumour)
        if label == 1 and (annotation is None or not annotation.has_tumour):
            raise DatasetError(
                f"{annotations_dir}: no tumour annotation for tumour slide {slide_dir.name} "
                f"(expected {slide_dir.name}.xml or .geojson there); lesion-level FROC needs one")
        plan.append((slide_dir, ann_path, annotation, label))
    rows: list[dict[str, Any]] = []  # one per slide: the slides.csv columns
    fp_all: list[float] = []
    tp_all: list[float] = []
    n_lesions_all = 0
    dice_counts = np.zeros(3, np.int64)  # tp, fp, fn cells over all slides
    for slide_dir, ann_path, annotation, label in plan:
        exported = summary_threshold(read_summary_data(slide_dir / SUMMARY_NAME))
        slide_threshold = threshold if threshold is not None else (exported if exported is not None else 0.5)
        store, frame = open_heatmap(slide_dir)
        tumour = annotation.tumour if (annotation is not None and label == 1) else None
        scan = scan_heatmap(store, frame, tumour=tumour, threshold=slide_threshold, top_k=top_k,
                            detection_radius_um=detection_radius_um,
                            min_detection_probability=min_detection_probability)
        l0_mpp = frame.px_mpp / frame.l0_per_px
        mask = evaluation_mask(tumour, l0_mpp=l0_mpp) if tumour is not None else None
        fps, tps, n_lesions = lesion_hits(scan.detections, mask)
        fp_all += fps
        tp_all += tps.tolist()
        n_lesions_all += n_lesions
        tp_c, fp_c, fn_c = scan.tp_cells, scan.fp_cells, scan.fn_cells
        dice_counts += (tp_c, fp_c, fn_c)
        rows.append({
            "slide_id": slide_dir.name, "label": label, "max_probability": scan.max_probability,
            "top_k_mean_probability": scan.top_k_mean_probability, "n_cells": scan.n_cells,
            "threshold": slide_threshold, "n_lesions": n_lesions, "n_itc": len(mask.itc) if mask else 0,
            "lesions_detected": int(sum(1 for i, s in enumerate(tps) if s > 0 and (i + 1) not in mask.itc)) if mask else 0,
            "n_detections": len(scan.detections), "false_positives": len(fps),
            "tp_cells": tp_c, "fp_cells": fp_c, "fn_cells": fn_c,
            "dice": _ratio(2 * tp_c, 2 * tp_c + fp_c + fn_c), "iou": _ratio(tp_c, tp_c + fp_c + fn_c),
            "annotation": str(ann_path) if ann_path else None,
        })
        log(f"{slide_dir.name}: label {label}, max p {scan.max_probability if scan.max_probability is not None else 'n/a'}, "
            f"{len(scan.detections)} detections, {n_lesions} lesions")
    if not rows:
        raise DatasetError(f"{results_dir}: none of the finished results has a label in {labels_csv}; "
                           f"check that the CSV names the slides as their result folders are named")
    y = np.array([r["label"] for r in rows])
    scored = [r for r in rows if r["max_probability"] is not None]
    ys = np.array([r["label"] for r in scored])
    max_p = np.array([r["max_probability"] for r in scored], np.float64)
    topk_p = np.array([r["top_k_mean_probability"] for r in scored], np.float64)
    fps_curve, sens_curve = froc_curve(np.asarray(fp_all), np.asarray(tp_all), n_slides=len(rows), n_lesions=n_lesions_all)
    score, at_rates = froc_score(fps_curve, sens_curve) if n_lesions_all else (None, [None] * len(FROC_FP_RATES))
    tp_c, fp_c, fn_c = (int(v) for v in dice_counts)
    tumour_rows = [r for r in rows if r["label"] == 1 and r["dice"] is not None]
    report = {
        "results": str(results_dir.resolve()), "annotations": str(annotations_dir.resolve()),
        "labels_csv": str(labels_csv) if labels_csv else None,
        "n_slides": len(rows), "n_tumour_slides": int(y.sum()), "n_normal_slides": int((y == 0).sum()),
        "slide_level": {
            "auc_max_probability": M.binary_auc(max_p, ys) if len(scored) else None,
            "auc_top_k_mean_probability": M.binary_auc(topk_p, ys) if len(scored) else None,
            "top_k": top_k,
        },
        "froc": {
            "score": score,
            "sensitivity_at_fps_per_slide": dict(zip((f"{r:g}" for r in FROC_FP_RATES), at_rates, strict=True)),
            "n_lesions": n_lesions_all, "n_itc": int(sum(r["n_itc"] for r in rows)),
            "n_detections": int(sum(r["n_detections"] for r in rows)), "n_false_positives": len(fp_all),
            "curve": {"fps_per_slide": fps_curve.tolist(), "sensitivity": sens_curve.tolist()},
        },
        "cell_level": {
            "threshold": threshold if threshold is not None else "each slide's predict threshold",
            "dice": _ratio(2 * tp_c, 2 * tp_c + fp_c + fn_c), "iou": _ratio(tp_c, tp_c + fp_c + fn_c),
            "tp_cells": tp_c, "fp_cells": fp_c, "fn_cells": fn_c,
            "mean_dice_tumour_slides": float(np.mean([r["dice"] for r in tumour_rows])) if tumour_rows else None,
            "mean_iou_tumour_slides": float(np.mean([r["iou"] for r in tumour_rows])) if tumour_rows else None,
        },
        "protocol": {
            "detections": f"local maxima of the heatmap >= {min_detection_probability} within +-{detection_radius_um} um",
            "detection_radius_um": detection_radius_um, "min_detection_probability": min_detection_probability,
            "evaluation_mask_dilation_um": DILATION_UM, "itc_major_axis_um": ITC_MAJOR_AXIS_UM,
            "fp_rates": list(FROC_FP_RATES),
        },
        "skipped": skipped,
        "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with building_folder(out_dir, overwrite=overwrite) as tmp:
        _write_table(rows, tmp / "slides.csv")
        _plot_froc(fps_curve, sens_curve, score, at_rates, tmp / "froc.png", n_lesions=n_lesions_all, n_slides=len(rows))
        if len(set(ys.tolist())) == 2:
            M.plot_roc(max_p, ys, tmp / "roc.png", title=f"slide level, max probability ({len(scored)} slides)")
        write_json_atomic(report, tmp / "metrics.json")
    return report


def _write_table(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def _plot_froc(fps: np.ndarray, sens: np.ndarray, score: float | None, at_rates: list, path: Path, *,
               n_lesions: int, n_slides: int) -> None:
    fig = M.agg_figure((5.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    xs = np.geomspace(1 / 8, 16, 400)  # the curve as the score reads it: np.interp of the operating points
    ax.plot(xs, np.interp(xs, fps[::-1], sens[::-1]), color="tab:red", linewidth=2, label="FROC (interpolated)")
    shown = fps > 0
    ax.plot(fps[shown], sens[shown], ".", color="tab:red", alpha=0.5, label="operating points (thresholds)")
    if score is not None:
        ax.plot(FROC_FP_RATES, at_rates, "o", color="black", label=f"score {score:.3f} (mean of these 6)")
    ax.set_xscale("log", base=2)
    ax.set(xlim=(1 / 8, 16), ylim=(0, 1.02), xlabel="average false positives per slide",
           ylabel="lesion sensitivity", title=f"Camelyon16 FROC: {n_lesions} lesions, {n_slides} slides")
    ax.grid(True, which="both", color="0.9")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
