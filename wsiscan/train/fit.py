"""``fit``: a whole training run in one folder, with checkpoints, early stopping on
validation AUC, exact resume, CSV/TensorBoard logs and temperature scaling."""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from .. import pcam
from ..config import build_section
from ..errors import ConfigError, DatasetError, StoreExistsError
from ..layout import atomic_path
from ..models import ModelSpec, build_model, load_checkpoint, read_checkpoint, save_checkpoint
from .config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from .engine import (
    Log,
    build_optimizer,
    build_scheduler,
    epoch_generator,
    evaluate,
    load_initial_weights,
    make_loader,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    silent,
    train_one_epoch,
    use_bf16,
    versions,
    write_json,
)

__all__ = ["FitResult", "fit"]

# Keys that may differ when a run is resumed (they do not change the result on one device).
_RESUMABLE_CHANGES = frozenset({"device", "workers"})


@dataclass(frozen=True)
class FitResult:
    out_dir: Path
    best_path: Path
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    finished: bool
    val_metrics: dict
    temperature: float
    ece_before: float | None
    ece_after: float | None


def _limit(dataset: pcam.PatchDataset, n_max: int, seed: int) -> pcam.PatchDataset:
    if not n_max or len(dataset) <= n_max:
        return dataset
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n_max])
    return dataset.subset(keep)


def _open_data(cfg: TrainConfig, data_dir: Path, out_dir: Path, log: Log, progress: bool):
    layout = pcam.detect_layout(data_dir)
    split_file = out_dir / "split.csv" if layout == "kaggle" else None
    train_ds, val_ds = (pcam.open_split(data_dir, split, split_file=split_file, ratios=cfg.split_ratios,
                                        seed=cfg.seed, log=log) for split in ("train", "valid"))
    info: dict[str, Any] = {"dir": str(Path(data_dir).resolve()), "layout": layout,
                            "split_file": str(split_file) if split_file else None}
    if cfg.drop_dark_bright:
        kept_path = out_dir / "train_kept.npy"
        if kept_path.is_file():
            kept = np.load(kept_path)
        else:
            from tqdm.auto import tqdm

            log(f"scanning {len(train_ds)} training patches for over-dark/over-bright ones")
            kept = pcam.find_clean_patches(
                train_ds, dark=cfg.dark_threshold, bright=cfg.bright_threshold,
                max_fraction=cfg.max_dark_bright_fraction,
                progress=lambda it: tqdm(it, desc="scan", leave=False, disable=not progress),
            )
            np.save(kept_path, kept)
        info["dropped_dark_bright"] = int(len(train_ds) - len(kept))
        log(f"dropped {len(train_ds) - len(kept)} of {len(train_ds)} training patches as over-dark/over-bright")
        train_ds = train_ds.subset(kept)
    train_ds = _limit(train_ds, cfg.max_train_patches, cfg.seed)
    val_ds = _limit(val_ds, cfg.max_val_patches, cfg.seed + 1)
    if len(val_ds) < 2 or len(set(val_ds.labels.tolist())) < 2:
        raise DatasetError(f"{data_dir}: the validation split needs patches of both classes (has {len(val_ds)}); "
                           "use more data or other split_ratios")
    info["train"], info["valid"] = train_ds.describe(), val_ds.describe()
    return train_ds, val_ds, info


def _write_log_csv(path: Path, history: list[dict]) -> None:
    if not history:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _selection_score(metrics: Mapping[str, Any]) -> float:
    return metrics["auc"] if metrics.get("auc") is not None else float(metrics.get("accuracy") or 0.0)


def fit(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    config_path: str | Path | None = None,
    progress: bool = False,
    log: Log = silent,
    stop_after_epoch: int | None = None,
) -> FitResult:
    """Train ``cfg`` on ``data_dir`` into ``out_dir`` (files listed in :mod:`wsiscan.train`).

    ``resume`` continues from ``out_dir/last.pt`` (or starts when there is none);
    ``stop_after_epoch`` ends the session early as an interruption would (for tests).
    """
    import yaml

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    state: dict[str, Any] | None = None
    if last_path.is_file():
        if not resume:
            raise StoreExistsError(f"{out_dir}: holds a training run already (last.pt); "
                                   "add --resume to continue it, or choose another --out")
        state = read_checkpoint(last_path)
        saved = build_section(TrainConfig, state["train_config"], "train", str(last_path))
        changed = sorted(k for k, v in cfg.to_dict().items()
                         if v != saved.to_dict()[k] and k not in _RESUMABLE_CHANGES)
        if changed:
            key = changed[0]
            raise ConfigError(f"{out_dir}: --resume with train.{key}={getattr(cfg, key)!r} but the run used "
                              f"{getattr(saved, key)!r}; resume with the run's settings or choose another --out")
    elif resume:
        log(f"{out_dir}: no last.pt to resume from; starting a new run")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump({"train": cfg.to_dict()}, sort_keys=False))

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 96 px shapes: let cuDNN pick the fastest kernels
    seed_everything(cfg.seed)
    base_spec = ModelSpec(arch=cfg.arch, patch_size_px=pcam.PATCH_SHAPE[0], input_mpp=pcam.PCAM_MPP,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, name=f"{cfg.arch}-pcam ({out_dir.name})")
    torch.manual_seed(cfg.seed)
    model = build_model(base_spec)
    # Weights before data: an offline ImageNet download fails before a long data scan.
    weights = (state["train_state"]["weights"] if state is not None
               else load_initial_weights(model, cfg.arch, cfg.weights))
    train_ds, val_ds, data_info = _open_data(cfg, data_dir, out_dir, log, progress)
    provenance = {
        "trained_by": "wsiscan train",
        "config": cfg.to_dict(),
        "config_file": str(Path(config_path).resolve()) if config_path else None,
        "data": data_info,
        "seed": cfg.seed,
        "weights": weights,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "precision": "bf16" if use_bf16(device, cfg.precision) else "fp32",
        "versions": versions(),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    spec = dataclasses.replace(base_spec, provenance=provenance)
    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True,
                                      generator=torch.Generator(), workers=0, device=device))
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    train_state: dict[str, Any] = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0,
                                   "history": [], "finished": False, "weights": weights}
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        train_state = dict(state["train_state"])
        provenance["started_at"] = state["train_state"].get("started_at", provenance["started_at"])
        set_rng_state(state["rng"])
        log(f"resuming {out_dir} after epoch {train_state['epoch']}")
    train_state["started_at"] = provenance["started_at"]

    writer = _summary_writer(out_dir, train_state["epoch"] * steps_per_epoch, log)
    try:
        for epoch in range(train_state["epoch"] + 1, cfg.epochs + 1):
            if train_state["finished"]:
                break
            loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True,
                                 generator=epoch_generator(cfg.seed, epoch, 0), workers=cfg.workers, device=device)
            lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
            stats = train_one_epoch(model, spec, loader, optimizer, scheduler, criterion, cfg=cfg, device=device,
                                    generator=epoch_generator(cfg.seed, epoch, 1), epoch=epoch, progress=progress)
            val_loader = make_loader(val_ds, batch_size=cfg.batch_size, shuffle=False,
                                     generator=epoch_generator(cfg.seed, epoch, 2), workers=cfg.workers, device=device)
            val = evaluate(model, spec, val_loader, device=device, precision=cfg.precision, ece_bins=cfg.ece_bins,
                           channels_last=cfg.channels_last, progress=progress, desc="validate")
            score = _selection_score(val.metrics)
            improved = score > train_state["best_score"]
            row = {"epoch": epoch, "lr_backbone": lrs.get("backbone", float("nan")),
                   "lr_head": lrs.get("head", float("nan")), "train_loss": stats["loss"],
                   "train_accuracy": stats["accuracy"], "val_loss": val.loss, "val_auc": val.metrics["auc"],
                   "val_accuracy": val.metrics["accuracy"], "val_balanced_accuracy": val.metrics["balanced_accuracy"],
                   "val_f1": val.metrics["f1"], "val_ece": val.metrics["ece"],
                   "train_images_per_s": stats["images_per_s"], "val_images_per_s": val.images_per_s,
                   "seconds": stats["seconds"]}
            train_state["history"] = [*train_state["history"], row]
            if improved:
                train_state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                best_spec = dataclasses.replace(spec, metrics={"epoch": epoch, "val": val.metrics})
                save_checkpoint(best_path, model, best_spec)
            else:
                train_state["bad_epochs"] += 1
            stop = 0 < cfg.early_stopping_patience <= train_state["bad_epochs"]
            train_state.update(epoch=epoch, finished=stop or epoch == cfg.epochs, stopped_early=stop)
            save_checkpoint(last_path, model, dataclasses.replace(spec, metrics={"epoch": epoch, "val": val.metrics}),
                            extra={"train_config": cfg.to_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "rng": rng_state(),
                                   "train_state": train_state})
            _write_log_csv(out_dir / "log.csv", train_state["history"])
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        writer.add_scalar(key.replace("_", "/", 1), value, epoch * steps_per_epoch)
                writer.flush()
            log(f"epoch {epoch}/{cfg.epochs}: train loss {stats['loss']:.4f}, val AUC {_fmt(val.metrics['auc'])}, "
                f"accuracy {_fmt(val.metrics['accuracy'])}, loss {val.loss:.4f}"
                f"{' (best)' if improved else ''}; {stats['images_per_s']:.0f} img/s")
            if stop:
                log(f"early stopping: no better validation AUC for {train_state['bad_epochs']} epochs")
            if stop_after_epoch is not None and epoch >= stop_after_epoch and not train_state["finished"]:
                return _result(out_dir, train_state, {}, None)
    finally:
        if writer is not None:
            writer.close()

    calibration = _calibrate(cfg, best_path, val_ds, device, train_state, log, progress)
    return _result(out_dir, train_state, calibration["val"], calibration)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _summary_writer(out_dir: Path, purge_step: int, log: Log):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard is not installed: logging to log.csv only (for TensorBoard scalars too: "
            "pip install 'wsiscan[tensorboard]')")
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=purge_step or None)


def _calibrate(cfg: TrainConfig, best_path: Path, val_ds: pcam.PatchDataset, device: torch.device,
               train_state: Mapping[str, Any], log: Log, progress: bool) -> dict:
    """Fit the temperature of best.pt on the validation logits and store it in best.pt."""
    model, spec = load_checkpoint(best_path, map_location=device)
    spec = dataclasses.replace(spec, temperature=1.0)
    loader = make_loader(val_ds, batch_size=cfg.batch_size, shuffle=False, generator=torch.Generator().manual_seed(0),
                         workers=cfg.workers, device=device)
    val = evaluate(model, spec, loader, device=device, precision=cfg.precision, ece_bins=cfg.ece_bins,
                   channels_last=cfg.channels_last, progress=progress, desc="calibrate")
    # guarded: fitted only on a large enough validation set, kept only when it lowers ECE
    guard = M.guarded_temperature(val.logits, val.labels, positive_class=spec.positive_class, n_bins=cfg.ece_bins) \
        if cfg.calibrate else None
    temperature = guard.temperature if guard else 1.0
    probs = M.softmax(val.logits, temperature)[:, spec.positive_class]
    calibrated = {**M.compute_metrics(probs, val.labels, n_bins=cfg.ece_bins),
                  "loss": M.nll(val.logits, val.labels, temperature)}
    summary = {
        "best_epoch": train_state["best_epoch"],
        "epochs_run": train_state["epoch"],
        "stopped_early": bool(train_state.get("stopped_early", False)),
        "temperature": temperature,
        "ece_before": val.metrics["ece"],
        "ece_after": calibrated["ece"],
        "val": val.metrics,
        "val_calibrated": calibrated,
        "fitted_temperature": guard.fitted_temperature if guard else None,
        "calibration_warning": guard.warning if guard else None,
        "min_calibration_patches": M.MIN_CALIBRATION_PATCHES,
    }
    save_checkpoint(best_path, model, dataclasses.replace(spec, temperature=temperature, metrics=summary))
    write_json(best_path.with_name("metrics.json"), summary)
    if guard is not None and guard.warning:
        log(f"wsiscan: warning: {guard.warning}")
    elif cfg.calibrate:
        log(f"temperature {temperature:.3f} fitted on {len(val.labels)} validation patches: "
            f"ECE {val.metrics['ece']:.4f} -> {calibrated['ece']:.4f}")
    return summary


def _result(out_dir: Path, train_state: Mapping[str, Any], val_metrics: dict, calibration: dict | None) -> FitResult:
    return FitResult(
        out_dir=out_dir, best_path=out_dir / "best.pt", best_epoch=int(train_state["best_epoch"]),
        epochs_run=int(train_state["epoch"]), stopped_early=bool(train_state.get("stopped_early", False)),
        finished=bool(train_state["finished"]), val_metrics=val_metrics,
        temperature=calibration["temperature"] if calibration else 1.0,
        ece_before=calibration["ece_before"] if calibration else None,
        ece_after=calibration["ece_after"] if calibration else None,
    )


# ---------------------------------------------------------------------------------------
