"""The networks: torchvision ResNets, SmallCNN, PixelLogReg, the deterministic TinyModel, and build_model."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import CheckpointError
from .spec import ARCHITECTURES, EXTERNAL_ARCH, REGISTERED, RESNETS, TORCHSCRIPT_ARCH, ModelSpec, known_architectures

ModelFactory = Callable[[ModelSpec], nn.Module]


class SmallCNN(nn.Module):
    """A small CNN for training from scratch: 4 conv-bn-relu-maxpool blocks,
    global average pooling and a linear head (about 0.4 M parameters)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


class PixelLogReg(nn.Module):
    """Pixel logistic regression baseline: flatten, then one linear layer."""

    def __init__(self, num_classes: int, patch_size_px: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * patch_size_px * patch_size_px, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class TinyModel(nn.Module):
    """Deterministic test model: dark patch centres score high.

    With ``m`` the mean of the input over channels and the centre rows/cols
    ``[H//3, H - H//3)`` x ``[W//3, W - W//3)`` (PCam's centre 32x32 for 96 px),
    logits are ``[0, k * (0.5 - m)]`` so ``p(class 1) = sigmoid(k * (0.5 - m))``.
    ``k`` (10.0) is a buffer, so it is saved in the state dict.
    """

    k: torch.Tensor  # registered as a buffer in __init__

    def __init__(self, k: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("k", torch.tensor(float(k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        centre = x[:, :, h // 3 : h - h // 3, w // 3 : w - w // 3]
        m = centre.float().mean(dim=(1, 2, 3))
        z = self.k.float() * (0.5 - m)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def register_model(name: str, factory: ModelFactory | None = None, *, replace: bool = False):
    """Make ``ModelSpec(arch=name)`` build ``factory(spec)``: any ``nn.Module`` giving
    ``spec.num_classes`` logits for a float (N, 3, H, W) batch.

    Usable as ``register_model("mine", factory)`` or as a decorator
    (``@register_model("mine")``), as torchvision's ``register_model``.  Once
    registered, the name works in checkpoints, ``predict``, ``train`` and ``evaluate``
    in this process (register it again in every process that loads such a
    checkpoint).  A built-in name, or a registered one without ``replace``, is refused.
    """
    if not isinstance(name, str) or not name or name.startswith("timm:") or name in (TORCHSCRIPT_ARCH, EXTERNAL_ARCH) \
            or name in ARCHITECTURES:
        raise ValueError(f"cannot register arch {name!r}: choose a new name (built-in: {', '.join(ARCHITECTURES)})")

    def add(fn: ModelFactory) -> ModelFactory:
        if not callable(fn):
            raise TypeError(f"register_model({name!r}): the factory must be callable, got {type(fn).__name__}")
        if name in REGISTERED and not replace and REGISTERED[name] is not fn:
            raise ValueError(f"arch {name!r} is registered already; pass replace=True to change it")
        REGISTERED[name] = fn
        return fn

    return add if factory is None else add(factory)


def unregister_model(name: str) -> None:
    """Forget a registered arch (tests, notebooks)."""
    REGISTERED.pop(name, None)


def list_architectures() -> list[str]:
    """Built-in and registered arch names (``timm:<name>`` is accepted besides these)."""
    return [a for a in known_architectures() if a not in (TORCHSCRIPT_ARCH, EXTERNAL_ARCH)]


def _timm_model(spec: ModelSpec) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise CheckpointError(
            f"arch {spec.arch!r} needs timm, which is not installed: pip install 'wsiscan[timm]'"
        ) from exc
    name = spec.arch[len("timm:"):]
    try:
        return timm.create_model(name, pretrained=False, num_classes=spec.num_classes)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise CheckpointError(f"arch {spec.arch!r}: {exc}; see timm.list_models()") from exc


def build_model(spec: ModelSpec) -> nn.Module:
    """A randomly initialised network for ``spec.arch`` with ``spec.num_classes`` logits."""
    n = len(spec.class_names)
    if spec.arch in REGISTERED:
        model = REGISTERED[spec.arch](spec)
        if not isinstance(model, nn.Module):
            raise CheckpointError(
                f"the factory registered for arch {spec.arch!r} returned a {type(model).__name__}, not an nn.Module"
            )
        return model
    if spec.arch.startswith("timm:"):
        return _timm_model(spec)
    if spec.arch in (TORCHSCRIPT_ARCH, EXTERNAL_ARCH):
        raise CheckpointError(
            f"arch {spec.arch!r} has no architecture to build: a 'torchscript' model loads from its WSInfer "
            "folder (config.json + torchscript_model.pt), an 'external' one is the callable given to wsiscan.predict"
        )
    if spec.arch in RESNETS:
        import torchvision.models  # here, not at the top: importing it takes ~1.5 s (torch._dynamo), and
        # the other architectures do without it

        return getattr(torchvision.models, spec.arch)(weights=None, num_classes=n)
    if spec.arch == "smallcnn":
        return SmallCNN(n)
    if spec.arch == "logreg":
        return PixelLogReg(n, spec.patch_size_px)
    if spec.arch == "tiny":
        return TinyModel()
    raise CheckpointError(  # unreachable for a validated spec
        f"unknown arch {spec.arch!r}; expected one of {', '.join(ARCHITECTURES)}"
    )
