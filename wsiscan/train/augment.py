"""Batch augmentation on the training device, reproducible from one CPU generator.

Flips, 90-degree rotations, HED stain jitter (Tellez et al. 2018), brightness/contrast/
saturation jitter and a random crop (``crop_px``, 90 px in the recipe) brought back to
96 px by reflect padding (``crop_mode: pad``, default: a few px of translation at the
same 0.972 um/px the model sees at inference) or by resizing (``resize``: a ~7 % zoom).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["augment_batch", "dihedral_views"]

_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])  # skimage


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def augment_batch(images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W, 3) uint8 patches -> augmented (B, 3, H, W) float RGB in [0, 1].

    Random numbers come from ``generator`` (CPU) only, so the result is reproducible.
    """
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    n, _, size, _ = x.shape
    device = x.device
    if cfg.crop_px < size:
        offsets = torch.randint(0, size - cfg.crop_px + 1, (n, 2), generator=generator).tolist()
        x = torch.stack([x[i, :, oy : oy + cfg.crop_px, ox : ox + cfg.crop_px] for i, (oy, ox) in enumerate(offsets)])
        if cfg.crop_mode == "resize":
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        else:
            before = (size - cfg.crop_px) // 2
            after = size - cfg.crop_px - before
            x = nn.functional.pad(x, (before, after, before, after), mode="reflect")
    if cfg.hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.vflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(-2), x)
    if cfg.rot90:
        k = torch.randint(0, 4, (n,), generator=generator).to(device)
        for turns in (1, 2, 3):
            x = torch.where((k == turns)[:, None, None, None], torch.rot90(x, turns, dims=(-2, -1)), x)
    if cfg.hed_jitter > 0:
        s = cfg.hed_jitter
        alpha = _uniform(generator, n * 3, 1 - s, 1 + s, device).view(n, 3, 1, 1)
        beta = _uniform(generator, n * 3, -s, s, device).view(n, 3, 1, 1)
        rgb_from_hed = _RGB_FROM_HED.to(device)
        hed_from_rgb = torch.linalg.inv(rgb_from_hed)
        od = -torch.log(x.clamp_min(1.0 / 255.0))
        hed = torch.einsum("nchw,cd->ndhw", od, hed_from_rgb) * alpha + beta
        x = torch.exp(-torch.einsum("nchw,cd->ndhw", hed, rgb_from_hed))
    if cfg.color_jitter > 0:
        s = cfg.color_jitter
        brightness = _uniform(generator, n, 1 - s, 1 + s, device).view(n, 1, 1, 1)
        contrast = _uniform(generator, n, 1 - s, 1 + s, device).view(n, 1, 1, 1)
        saturation = _uniform(generator, n, 1 - s, 1 + s, device).view(n, 1, 1, 1)
        x = x * brightness
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey.mean(dim=(2, 3), keepdim=True)) * contrast + grey.mean(dim=(2, 3), keepdim=True)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey) * saturation + grey
    return x.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and 90-degree rotations of a (N, C, H, W) square batch."""
    views = []
    for flipped in (x, x.flip(-1)):
        views += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return views
