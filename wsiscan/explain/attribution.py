"""Attribution maps of a patch classifier, built on Captum (``captum.attr``).

* ``gradcam``: Grad-CAM (Selvaraju et al. 2017), Captum's ``LayerGradCam`` with ReLU, on
  the layer :func:`default_layer` picks (``--layer`` overrides), upsampled bilinearly to
  the patch.  For a 96 px PCam patch a ResNet's last block (``layer4``) is only 3 x 3
  cells of 32 px, so the default for ResNets is ``layer3`` (6 x 6 cells of 16 px); for
  ``smallcnn`` the last ReLU (12 x 12).  ``tiny`` and ``logreg`` have no convolutional
  feature map: for them ``gradcam`` is Captum's ``Saliency`` (|gradient| summed over
  the colour channels), and the index says so.
* ``ig``: integrated gradients (Sundararajan et al. 2017), Captum's
  ``IntegratedGradients`` from a white (glass) patch to the patch, summed over colour
  channels, positive part (evidence for tumour), smoothed with a 2 px Gaussian.

Every method explains the positive class's log-odds ``(logit_pos - logsumexp(others)) / T``
of RGB in [0, 1] (the model's normalisation inside).  An ensemble's map is the mean of
its members' maps, each scaled to [0, 1] first; with ``tta`` a member's map is the mean
over the 8 flips and rotations, each mapped back to the patch's orientation.  The
probability is predict's: the mean of the members' (and views') softmax probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DatasetError
from ..models import ModelSpec, calibrated_logits, predict_proba

__all__ = ["METHODS", "Attribution", "default_layer", "explain_patches", "dihedral", "undo_dihedral"]

METHODS = ("gradcam", "ig")
_IG_BASELINE = 1.0  # white glass
_IG_SMOOTH_PX = 2.0


class _LogOdds(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> (N,) log-odds of the positive class at the spec's temperature."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        logits = calibrated_logits(self.model, self.spec, x01)
        pos = self.spec.positive_class
        others = torch.cat([logits[:, :pos], logits[:, pos + 1 :]], dim=1)
        return logits[:, pos] - torch.logsumexp(others, dim=1)


def default_layer(model: nn.Module, spec: ModelSpec) -> str | None:
    """The module Grad-CAM reads, by dotted name, or None when the network has no conv feature map."""
    if spec.arch.startswith("resnet"):
        return "layer3"
    if spec.arch == "smallcnn" and isinstance(model.features, nn.Sequential):
        return f"features.{len(model.features) - 2}"  # the last ReLU, before the last pooling
    return None


def _module(model: nn.Module, name: str, ref: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Sequential)) and n][:12]
        raise ConfigError(f"model {ref} has no layer {name!r}; try one of: {', '.join(convs)} ...")
    return modules[name]


def dihedral(x: torch.Tensor, i: int) -> torch.Tensor:
    """View ``i`` (0..7) of the flips and 90-degree rotations of a (..., H, W) square tensor."""
    return torch.rot90(x.flip(-1) if i >= 4 else x, i % 4, dims=(-2, -1))


def undo_dihedral(x: torch.Tensor, i: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: a map of view ``i`` back in the patch's orientation."""
    back = torch.rot90(x, -(i % 4), dims=(-2, -1))
    return back.flip(-1) if i >= 4 else back


@dataclass(frozen=True)
class Attribution:
    """Per patch: probability (N,), and for each method a (N, H, W) float32 map in [0, 1]."""

    probabilities: np.ndarray
    maps: dict[str, np.ndarray]
    notes: dict[str, str]  # what each method was for these models (layer, fallback)
    titles: dict[str, str]  # short names for pictures ("saliency" where Grad-CAM had no conv layer)


def _gaussian(maps: torch.Tensor, sigma_px: float) -> torch.Tensor:
    radius = int(3 * sigma_px)
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    x = maps[:, None]
    x = nn.functional.conv2d(nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = nn.functional.conv2d(nn.functional.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0]


def _one_view(method: str, wrapped: _LogOdds, layer: nn.Module | None, x01: torch.Tensor, ig_steps: int) -> torch.Tensor:
    """(N, H, W) raw map of one method on one view."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    size = x01.shape[-2:]
    if method == "gradcam" and layer is not None:
        cam = LayerGradCam(wrapped, layer).attribute(x01, relu_attributions=True)
        return LayerAttribution.interpolate(cam.float(), tuple(size), interpolate_mode="bilinear")[:, 0].clamp_min(0)
    if method == "gradcam":
        return Saliency(wrapped).attribute(x01.clone().requires_grad_(True), abs=True).sum(1)
    attr = IntegratedGradients(wrapped).attribute(x01, baselines=_IG_BASELINE, n_steps=ig_steps,
                                                  internal_batch_size=max(len(x01) * 8, 8))
    return _gaussian(attr.sum(1).clamp_min(0).float(), _IG_SMOOTH_PX)


def _scaled(maps: torch.Tensor) -> torch.Tensor:
    peak = maps.flatten(1).max(1).values.clamp_min(1e-12)
    return maps / peak[:, None, None]


def explain_patches(
    models: Sequence[nn.Module],
    specs: Sequence[ModelSpec],
    patches_uint8: np.ndarray,
    *,
    methods: Sequence[str] = METHODS,
    tta: bool = False,
    device: torch.device | str = "cpu",
    layer: str | None = None,
    ig_steps: int = 32,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> Attribution:
    """Maps and probabilities for (N, H, W, 3) uint8 patches; see the module doc."""
    patches = np.asarray(patches_uint8)
    size_px = specs[0].patch_size_px
    if patches.ndim != 4 or patches.shape[1:] != (size_px, size_px, 3):
        raise DatasetError(f"patches of shape {patches.shape[1:]} given; the model takes ({size_px}, {size_px}, 3) "
                           f"RGB: crop or resize them to {size_px} x {size_px} px")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown attribution method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    device = torch.device(device)
    names = list(names or [s.name or s.arch for s in specs])
    views = range(8) if tta else range(1)
    n = len(patches)
    probs = np.zeros(n, np.float64)
    maps = {m: np.zeros((n, size_px, size_px), np.float32) for m in methods}
    notes: dict[str, str] = {}
    titles = {m: "Grad-CAM" if m == "gradcam" else "integrated gradients" for m in methods}
    for model, spec, name in zip(models, specs, names, strict=True):
        model = model.to(device).eval()
        wrapped = _LogOdds(model, spec)
        layer_name = layer if layer is not None else default_layer(model, spec)
        layer_module = _module(model, layer_name, name) if layer_name is not None else None
        for m in methods:
            what = (f"Grad-CAM on {layer_name}" if layer_module is not None else "saliency |gradient| (no conv layer)") \
                if m == "gradcam" else f"integrated gradients, white baseline, {ig_steps} steps"
            if m == "gradcam" and layer_module is None:
                titles[m] = "saliency" if len(models) == 1 else "Grad-CAM / saliency"
            notes.setdefault(m, "")
            notes[m] = "; ".join(filter(None, [notes[m], f"{name}: {what}"]))
        for start in range(0, n, batch_size):
            x01 = torch.from_numpy(patches[start : start + batch_size].copy()).to(device).permute(0, 3, 1, 2).float() / 255.0
            member = {m: torch.zeros(len(x01), size_px, size_px, device=device) for m in methods}
            for i in views:
                v = dihedral(x01, i).contiguous()
                with torch.no_grad():
                    p = predict_proba(model, spec, v)
                probs[start : start + len(x01)] += p.double().cpu().numpy()
                for m in methods:
                    member[m] += undo_dihedral(_one_view(m, wrapped, layer_module, v, ig_steps).detach(), i)
            for m in methods:
                maps[m][start : start + len(x01)] += _scaled(member[m] / len(views)).cpu().numpy()
    probs /= len(models) * len(views)
    return Attribution(probs, {m: v / len(models) for m, v in maps.items()}, notes, titles)
