"""The training engine: device and precision, seeds, initial weights, data loaders,
one training epoch, evaluation under ``torch.inference_mode``, optimiser and schedule.

bf16 autocast and channels_last are used on CUDA only; on CPU everything runs in fp32.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torchvision
from torch import nn

from .. import metrics as M
from .. import pcam
from ..errors import CheckpointError, ConfigError, DeviceError, OfflineError
from ..layout import write_text_atomic
from ..models import ModelSpec, convert_tiatoolbox_state_dict, normalise, read_checkpoint
from ..workers import torch_worker_init
from .augment import augment_batch, dihedral_views
from .config import TrainConfig

__all__ = [
    "Log",
    "silent",
    "resolve_device",
    "use_bf16",
    "autocast",
    "seed_everything",
    "epoch_generator",
    "rng_state",
    "set_rng_state",
    "load_initial_weights",
    "make_loader",
    "train_one_epoch",
    "EvalResult",
    "evaluate",
    "build_optimizer",
    "build_scheduler",
    "versions",
    "write_json",
]

Log = Callable[[str], None]


def silent(message: str) -> None:
    del message


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0")
    elif device.type != "cpu":
        raise ConfigError(f"--device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def use_bf16(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" and precision in ("auto", "bf16")


def autocast(device: torch.device, precision: str):
    if use_bf16(device, precision):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): resume replays it exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 101 + stream) % 2**63)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _head_module(model: nn.Module) -> nn.Module:
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear head to train")
    return linears[-1]


def _offline_message(arch: str, reason: str) -> str:
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    cache = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return (f"ImageNet weights for {arch} cannot be fetched ({reason}); train from scratch with "
            f"--weights none, pass --weights FILE with a local torchvision {arch} .pth file, "
            f"or copy that file to {cache}")


def load_initial_weights(model: nn.Module, arch: str, weights: str) -> str:
    """Load ``imagenet`` (torchvision weights API), ``none`` or a file into ``model``,
    leaving a head whose shape differs at its random initialisation.  Returns a
    description for the run's provenance."""
    if weights == "none":
        return "none (random initialisation)"
    if weights == "imagenet":
        if not arch.startswith("resnet"):
            raise ConfigError(f"--weights imagenet: no ImageNet weights for arch {arch!r}; use --weights none")
        if os.environ.get("WSISCAN_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
            raise OfflineError(_offline_message(arch, "WSISCAN_OFFLINE is set"))
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            state = enum.get_state_dict(progress=False)
        except OSError as exc:  # URLError, HTTPError, socket timeouts, connection refused
            raise OfflineError(_offline_message(arch, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")) from exc
        _load_matching(model, state, f"torchvision {enum}")
        return f"imagenet (torchvision {enum}, {enum.url})"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"--weights: {weights!r} is neither imagenet, none nor an existing weights file")
    try:
        state = read_checkpoint(path)["state_dict"]
    except CheckpointError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            raise CheckpointError(
                f"--weights {path}: cannot be read as PyTorch weights ({exc.__class__.__name__})"
            ) from exc
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"--weights {path}: holds a {type(state).__name__}, not a state dict")
    if any(str(k).removeprefix("module.").startswith("feat_extract.") for k in state):  # TIAToolbox CNNModel
        try:
            state = convert_tiatoolbox_state_dict(state, arch)
        except CheckpointError as exc:
            raise CheckpointError(f"--weights {path}: {exc}; is it for another --arch?") from exc
    _load_matching(model, {str(k).removeprefix("module."): v for k, v in state.items()}, str(path))
    return f"file {path.resolve()}"


def _load_matching(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Load the entries of ``state`` that fit; only the head may stay unmatched."""
    own = model.state_dict()
    head_module = _head_module(model)
    head = {f"{name}.{p}" for name, m in model.named_modules() if m is head_module for p in ("weight", "bias")}
    usable = {k: v for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in usable and k not in head and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(
            f"{source}: does not fit the model's backbone (first of {len(missing)} unmatched: '{missing[0]}'); "
            "is it for another --arch?"
        )
    model.load_state_dict(usable, strict=False)


# ---------------------------------------------------------------------------------------


def make_loader(dataset: pcam.PatchDataset, *, batch_size: int, shuffle: bool, generator: torch.Generator,
                workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    workers = min(workers, os.cpu_count() or 1)
    sampler = torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle else None
    return torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]  # any map-style object works (torch docs); the stubs want a Dataset
        batch_size=batch_size,
        sampler=sampler,
        drop_last=shuffle and len(dataset) > batch_size,  # no 1-patch batch in BatchNorm
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=generator,  # worker seeds come from here, not from the global RNG
        persistent_workers=False,
        worker_init_fn=torch_worker_init,  # workers die with their parent, even after kill -9
    )


def _set_train_mode(model: nn.Module, strategy: str) -> None:
    if strategy == "linear":  # frozen backbone: BatchNorm keeps its pretrained statistics
        model.eval()
        _head_module(model).train()
    else:
        model.train()


def train_one_epoch(
    model: nn.Module,
    spec: ModelSpec,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    *,
    cfg: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    epoch: int,
    progress: bool = False,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, accuracy and images/s."""
    from tqdm.auto import tqdm

    _set_train_mode(model, cfg.strategy)
    channels_last = cfg.channels_last and device.type == "cuda"
    total_loss, correct, seen, started = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, disable=not progress)
    for images, labels in bar:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        x01 = augment_batch(images, cfg, generator)
        if channels_last:
            x01 = x01.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg.precision):
            logits = model(normalise(x01, spec))
        loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise ConfigError(f"the training loss became {loss.item()} in epoch {epoch}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    seconds = time.perf_counter() - started
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "images": seen,
            "seconds": seconds, "images_per_s": seen / seconds if seconds > 0 else 0.0}


@dataclass(frozen=True)
class EvalResult:
    """Logits (N, C) before temperature, labels (N,), tumour probabilities with the
    spec's temperature, mean loss and the metrics of :func:`wsiscan.metrics.compute_metrics`."""

    logits: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    loss: float
    metrics: dict
    images_per_s: float


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    spec: ModelSpec,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str = "auto",
    tta: bool = False,
    channels_last: bool = True,
    ece_bins: int = 15,
    threshold: float = 0.5,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Logits, probabilities and metrics of ``model`` over ``loader``.

    Patches are scaled to ``spec.patch_size_px`` when it is not 96 px.  With ``tta`` the
    logits are averaged over the 8 flips and 90-degree rotations (before temperature).
    """
    from tqdm.auto import tqdm

    model.eval()
    channels_last = channels_last and device.type == "cuda"
    all_logits, all_labels, started = [], [], time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        x01 = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if x01.shape[-1] != spec.patch_size_px:
            x01 = nn.functional.interpolate(x01, size=(spec.patch_size_px,) * 2, mode="bilinear",
                                            align_corners=False, antialias=True)
        if channels_last:
            x01 = x01.contiguous(memory_format=torch.channels_last)
        views = dihedral_views(x01) if tta else [x01]
        with autocast(device, precision):
            logits = torch.stack([model(normalise(v, spec)).float() for v in views]).mean(0)
        all_logits.append(logits.cpu())
        all_labels.append(labels)
    seconds = time.perf_counter() - started
    logits_np = torch.cat(all_logits).numpy().astype(np.float64) if all_logits else np.zeros((0, spec.num_classes))
    labels_np = torch.cat(all_labels).numpy().astype(np.int64) if all_labels else np.zeros(0, np.int64)
    probs = M.softmax(logits_np, spec.temperature)[:, spec.positive_class] if len(logits_np) else np.zeros(0)
    loss = M.nll(logits_np, labels_np, spec.temperature) if len(logits_np) else float("nan")
    metrics = M.compute_metrics(probs, labels_np, threshold=threshold, n_bins=ece_bins)
    metrics["loss"] = loss
    return EvalResult(logits_np, labels_np, probs, loss, metrics, len(labels_np) / seconds if seconds > 0 else 0.0)


# ---------------------------------------------------------------------------------------
# Optimiser and schedule


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    head_ids = {id(p) for p in _head_module(model).parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        is_head = id(param) in head_ids
        if cfg.strategy == "linear" and not is_head:
            param.requires_grad_(False)
            continue
        groups.setdefault(("head" if is_head else "backbone", param.ndim > 1), []).append(param)
    param_groups = []
    for (part, decays), params in sorted(groups.items()):
        param_groups.append({
            "params": params,
            "name": f"{part}{'' if decays else '_no_decay'}",
            "lr": cfg.lr * (cfg.head_lr_mult if part == "head" else 1.0),
            "weight_decay": cfg.weight_decay if decays else 0.0,
        })
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------
# fit


def versions() -> dict[str, str]:
    from importlib import metadata

    try:
        wsiscan_version = metadata.version("wsiscan")
    except metadata.PackageNotFoundError:
        wsiscan_version = "unknown"
    return {"wsiscan": wsiscan_version, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(json.dumps(data, indent=2, allow_nan=True) + "\n", path)
