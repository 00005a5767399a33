"""The networks: torchvision ResNets, SmallCNN, PixelLogReg, the deterministic TinyModel, and build_model."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..errors import CheckpointError
from .spec import _RESNETS, ARCHITECTURES, ModelSpec


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

    def __init__(self, k: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("k", torch.tensor(float(k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        centre = x[:, :, h // 3 : h - h // 3, w // 3 : w - w // 3]
        m = centre.float().mean(dim=(1, 2, 3))
        z = self.k.float() * (0.5 - m)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def build_model(spec: ModelSpec) -> nn.Module:
    """A randomly initialised network for ``spec.arch`` with ``spec.num_classes`` logits."""
    n = len(spec.class_names)
    if spec.arch in _RESNETS:
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
