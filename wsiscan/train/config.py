"""The ``train:`` section of a recipe: a frozen dataclass validated on load.

Precedence is CLI option > ``--config FILE`` (its ``train:`` section) > the defaults here
(with ``--resume``, the run's own configuration replaces the defaults).  Every key is
documented in configs/pcam-resnet18.yaml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .. import pcam
from ..config import build_section, read_yaml
from ..errors import CheckpointError, ConfigError
from ..models import list_architectures, read_checkpoint

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TrainConfig", "load_train_config", "saved_train_config"]

# Every wsiscan-trained network sees ImageNet-normalised RGB, pretrained or not.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _trainable() -> tuple[str, ...]:
    """Read when a config is made, so an arch registered with wsiscan.register_model trains too."""
    return tuple(a for a in list_architectures() if a != "tiny")


@dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` section of a recipe; every key is documented in configs/pcam-resnet18.yaml."""

    arch: str = "resnet18"
    weights: str = "imagenet"
    strategy: str = "finetune"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 5e-4
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    early_stopping_patience: int = 5
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    color_jitter: float = 0.1
    hed_jitter: float = 0.05
    crop_px: int = 90
    crop_mode: str = "pad"
    drop_dark_bright: bool = False
    dark_threshold: int = 10
    bright_threshold: int = 245
    max_dark_bright_fraction: float = 0.5
    split_ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    workers: int = 4
    max_train_patches: int = 0
    max_val_patches: int = 0
    calibrate: bool = True
    ece_bins: int = 15

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"train.{key} must be {expected}, got {getattr(self, key)!r}")

        if self.arch not in _trainable() and not (isinstance(self.arch, str) and self.arch.startswith("timm:")):
            raise bad("arch", f"one of {', '.join(_trainable())} (or timm:<name>)")
        if self.strategy not in ("finetune", "linear"):
            raise bad("strategy", "finetune (all layers) or linear (head only)")
        if self.optimizer not in ("adamw", "sgd"):
            raise bad("optimizer", "adamw or sgd")
        if self.crop_mode not in ("pad", "resize"):
            raise bad("crop_mode", "pad or resize")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise bad("precision", "auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32")
        if not self.weights:
            raise bad("weights", "imagenet, none or the path of a weights file")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise bad(key, ">= 1")
        for key in ("lr", "head_lr_mult"):
            if not getattr(self, key) > 0:
                raise bad(key, "> 0")
        for key in ("weight_decay", "warmup_epochs", "color_jitter", "hed_jitter", "momentum"):
            if getattr(self, key) < 0:
                raise bad(key, ">= 0")
        for key in ("early_stopping_patience", "workers", "max_train_patches", "max_val_patches"):
            if getattr(self, key) < 0:
                raise bad(key, ">= 0 (0 switches it off)")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "in [0, 1]")
        if self.color_jitter >= 1:
            raise bad("color_jitter", "below 1 (a factor range 1 +- value)")
        if not 0 < self.crop_px <= pcam.PATCH_SHAPE[0]:
            raise bad("crop_px", f"between 1 and {pcam.PATCH_SHAPE[0]} ({pcam.PATCH_SHAPE[0]}: no crop)")
        if len(self.split_ratios) != 3 or min(self.split_ratios) < 0 or abs(sum(self.split_ratios) - 1) > 1e-6:
            raise bad("split_ratios", "three non-negative numbers (train, valid, test) summing to 1")
        if self.ece_bins < 2:
            raise bad("ece_bins", ">= 2")
        if self.arch == "logreg" and self.weights == "imagenet":
            raise ConfigError("train.weights: there are no ImageNet weights for arch 'logreg'; use --weights none")
        if self.arch == "smallcnn" and self.weights == "imagenet":
            raise ConfigError("train.weights: there are no ImageNet weights for arch 'smallcnn'; use --weights none")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["split_ratios"] = list(self.split_ratios)
        return out


def load_train_config(
    path: str | Path | None = None, *, base: Mapping[str, Any] | None = None, **overrides: Any
) -> TrainConfig:
    """Built-in defaults (or ``base``, e.g. a resumed run's config), overlaid with the
    ``train:`` section of ``path``, then with ``overrides`` (None values are ignored).
    Unknown keys and wrong types raise :class:`ConfigError` naming the file and the key."""
    values: dict[str, Any] = dict(base or {})
    source = "options"
    if path is not None:
        source = str(path)
        section = read_yaml(Path(path)).get("train") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section 'train' must be a mapping of keys")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(
                f"{path}: unknown key train.{unknown[0]}; valid keys of 'train': {', '.join(sorted(known))}"
            )
        values.update(section)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_section(TrainConfig, values, "train", source)


def saved_train_config(out_dir: str | Path) -> dict[str, Any] | None:
    """The configuration stored in ``out_dir/last.pt``, or None when there is no run."""
    last = Path(out_dir) / "last.pt"
    if not last.is_file():
        return None
    config = read_checkpoint(last).get("train_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{last}: holds no training state (train_config); it was not written by wsiscan train")
    return config


# ---------------------------------------------------------------------------------------
