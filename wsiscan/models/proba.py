"""Applying a network: input normalisation, calibrated class probabilities, the tiny model's NumPy reference."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .spec import ModelSpec


def normalise(x01: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """The network's input from float RGB in [0, 1], shape (N, 3, H, W).

    Resizes to ``spec.input_size_px`` when set (bilinear with antialiasing, as PIL's
    resize that WSInfer's ``Resize`` uses), then applies ``spec.mean``/``spec.std``.
    Identity when the spec has neither; keeps device and dtype.
    """
    if not x01.is_floating_point():
        raise TypeError(
            f"normalise expects float RGB scaled to [0, 1], got {x01.dtype}: divide by 255 first"
        )
    size = spec.input_size_px
    if size is not None and tuple(x01.shape[-2:]) != (size, size):
        x01 = torch.nn.functional.interpolate(x01, size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=True)
    if spec.mean is None:
        return x01
    mean = torch.tensor(spec.mean, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - mean) / std


def calibrated_logits(model: nn.Module, spec: ModelSpec, x01: torch.Tensor) -> torch.Tensor:
    """The network's logits of float RGB ``x01`` in float32, divided by ``spec.temperature``, shape (N, num_classes)."""
    return model(normalise(x01, spec)).float() / spec.temperature


def class_proba_from_logits(logits: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Calibrated probabilities of every class from raw logits (N, num_classes): the softmax
    of ``logits / spec.temperature`` in float32, whatever the logits' dtype (autocast)."""
    return torch.softmax(logits.float() / spec.temperature, dim=1)


def predict_class_proba(model: nn.Module, spec: ModelSpec, x01: torch.Tensor) -> torch.Tensor:
    """Probabilities of every class, shape (N, num_classes), float32 (see :func:`predict_proba`)."""
    return torch.softmax(calibrated_logits(model, spec, x01), dim=1)


def predict_proba(model: nn.Module, spec: ModelSpec, x01: torch.Tensor) -> torch.Tensor:
    """Probability of ``spec.positive_class`` for each patch, shape (N,), float32.

    ``softmax(model(normalise(x01)) / temperature)``; the softmax runs in float32 even
    under autocast.  Call it under ``torch.inference_mode()`` with the model in eval().
    """
    return predict_class_proba(model, spec, x01)[:, spec.positive_class].float()


def tiny_expected_proba(patch_uint8_hwc: np.ndarray) -> float:
    """NumPy float64 reference of the ``tiny`` model's tumour probability for one patch."""
    patch = np.asarray(patch_uint8_hwc)
    if patch.ndim != 3 or patch.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB patch, got shape {patch.shape}")
    x = patch.astype(np.float64) / 255.0
    h, w = x.shape[:2]
    m = x[h // 3 : h - h // 3, w // 3 : w - w // 3, :].mean()
    return float(1.0 / (1.0 + np.exp(-10.0 * (0.5 - m))))
