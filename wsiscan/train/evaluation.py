"""``evaluate_model``: score a checkpoint or registered model on one PCam split and
write metrics.json, roc.png, reliability.png and predictions.csv."""

from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path

import torch

from .. import metrics as M
from .. import pcam
from ..models import load_model
from .engine import Log, evaluate, make_loader, resolve_device, silent, versions, write_json

__all__ = ["evaluate_model", "open_eval_split"]


def open_eval_split(model_ref: str, spec, data_dir: Path, split: str, *, split_file: str | Path | None = None,
                    log: Log = silent) -> tuple[pcam.PatchDataset, str | Path | None]:
    """The split a model is evaluated on, and the split file used: for a Kaggle folder
    ``split_file``, else the ``split.csv`` next to the checkpoint, else the split drawn
    again with the checkpoint's seed and ratios (the one ``wsiscan train`` made)."""
    config = spec.provenance.get("config", {}) if isinstance(spec.provenance, dict) else {}
    if split_file is None and Path(model_ref).is_file() and (Path(model_ref).parent / "split.csv").is_file():
        split_file = Path(model_ref).parent / "split.csv"
    ratios = tuple(config.get("split_ratios", (0.8, 0.1, 0.1)))
    seed = int(config.get("seed", 0))
    dataset = pcam.open_split(Path(data_dir), split, split_file=Path(split_file) if split_file else None,
                              ratios=ratios, seed=seed, log=log)
    if dataset.layout == "kaggle" and split != "all" and split_file is None:
        log(f"note: no split file; drew the stratified {':'.join(f'{r:g}' for r in ratios)} split with seed {seed}")
    return dataset, split_file


def evaluate_model(
    model_ref: str,
    data_dir: str | Path,
    split: str,
    out_dir: str | Path,
    *,
    tta: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 2,
    split_file: str | Path | None = None,
    threshold: float = 0.5,
    ece_bins: int = 15,
    progress: bool = False,
    log: Log = silent,
) -> dict:
    """Score a checkpoint or registered model on one split; write ``metrics.json``,
    ``roc.png``, ``reliability.png`` and ``predictions.csv`` into ``out_dir``.

    For a Kaggle folder the split comes from ``split_file``, else from the ``split.csv``
    saved next to the checkpoint by ``wsiscan train``, else it is drawn again with the
    checkpoint's seed and ratios (the same split ``wsiscan train`` made).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    torch_device = resolve_device(device)
    model, spec, sha256 = load_model(model_ref, map_location=torch_device)
    dataset, split_file = open_eval_split(model_ref, spec, data_dir, split, split_file=split_file, log=log)
    if abs(spec.input_mpp - pcam.PCAM_MPP) / pcam.PCAM_MPP > 0.05:
        log(f"note: the model expects {spec.input_mpp} um/px, PCam patches are {pcam.PCAM_MPP} um/px")
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0),
                         workers=workers, device=torch_device)
    result = evaluate(model, spec, loader, device=torch_device, tta=tta, threshold=threshold, ece_bins=ece_bins,
                      progress=progress, desc=f"evaluate {split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{spec.name or spec.arch} on {data_dir.name}/{split}{' (TTA)' if tta else ''}"
    M.plot_roc(result.probs, result.labels, out_dir / "roc.png", title=title)
    M.plot_reliability(result.probs, result.labels, out_dir / "reliability.png", n_bins=ece_bins)
    ids = dataset.patch_ids if isinstance(dataset, pcam.KaggleDataset) else [str(r) for r in dataset.rows]
    with open(out_dir / "predictions.csv", "w", newline="") as handle:
        csv_writer = csv.writer(handle)
        csv_writer.writerow(["id", "label", "prob_tumor"])
        csv_writer.writerows(zip(ids, result.labels.tolist(), (f"{p:.6f}" for p in result.probs), strict=True))
    report = {
        "model": {"ref": str(model_ref), "name": spec.name, "arch": spec.arch, "sha256": sha256,
                  "temperature": spec.temperature, "input_mpp": spec.input_mpp},
        "data": {**dataset.describe(), "dir": str(data_dir.resolve()),
                 "split_file": str(split_file) if split_file else None},
        "split": split,
        "tta": tta,
        "device": str(torch_device),
        "versions": versions(),
        "images_per_s": result.images_per_s,
        "metrics": result.metrics,
        "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out_dir / "metrics.json", report)
    return report
