"""WSInfer models: a folder with ``config.json`` + ``torchscript_model.pt``, mapped onto a ModelSpec.

The config format is WSInfer's (``wsinfer_zoo/schemas/model-config.schema.json``,
spec_version 1.0): ``architecture``, ``num_classes``, ``class_names``,
``patch_size_pixels``, ``spacing_um_px`` and ``transform``, a list of ``Resize``
(``size``), ``ToTensor`` and ``Normalize`` (``mean``, ``std``).  They map onto
:class:`ModelSpec` as ``patch_size_px``, ``input_mpp``, ``class_names``,
``input_size_px`` and ``mean``/``std``; the network's outputs are logits, turned into
probabilities with a softmax as WSInfer does.

Trust: the weights are TorchScript, read with :func:`torch.jit.load`.  That runs the
TorchScript program in the file (the serialized model code, interpreted by TorchScript),
not pickled Python, so it cannot import or call arbitrary Python; but it is code, so a
TorchScript file is trusted as a program is.  wsiscan's own checkpoints stay
``torch.load(weights_only=True)``: data only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import file_sha256
from .spec import TORCHSCRIPT_ARCH, ModelSpec, one_line

WSINFER_CONFIG_NAME = "config.json"
WSINFER_TORCHSCRIPT_NAME = "torchscript_model.pt"
_REQUIRED = ("spec_version", "architecture", "num_classes", "patch_size_pixels", "spacing_um_px", "class_names",
             "transform")
_TRANSFORMS = ("Resize", "ToTensor", "Normalize")

__all__ = ["WSINFER_CONFIG_NAME", "WSINFER_TORCHSCRIPT_NAME", "is_wsinfer_folder", "wsinfer_spec",
           "load_wsinfer_folder", "wsinfer_sha256"]


def is_wsinfer_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a WSInfer ``config.json`` and ``torchscript_model.pt``."""
    p = Path(path)
    return p.is_dir() and (p / WSINFER_CONFIG_NAME).is_file() and (p / WSINFER_TORCHSCRIPT_NAME).is_file()


def _positive_class(names: tuple[str, ...]) -> int:
    """The tumour class when one is named so (not 'notumor'/'non-tumor'), else the last class."""
    for i, n in enumerate(names):
        low = n.lower().replace("_", "-")
        if ("tumor" in low or "tumour" in low) and not low.startswith(("no", "non")):
            return i
    return len(names) - 1


def _transform_fields(transform: Any, where: str) -> dict[str, Any]:
    if not isinstance(transform, list):
        raise CheckpointError(f"{where}: 'transform' must be a list of {{name, arguments}}, got {transform!r}")
    out: dict[str, Any] = {}
    for item in transform:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in _TRANSFORMS:
            raise CheckpointError(f"{where}: transform {item!r} is not one of {', '.join(_TRANSFORMS)}")
        args = item.get("arguments") or {}
        if name == "Resize":
            size = args.get("size")
            if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
                size = size[0]
            if not isinstance(size, int) or isinstance(size, bool) or size < 8:
                raise CheckpointError(f"{where}: Resize size must be one integer >= 8 (square), got {size!r}")
            out["input_size_px"] = size
        elif name == "Normalize":
            out["mean"], out["std"] = args.get("mean"), args.get("std")
    return out


def wsinfer_spec(config: Mapping[str, Any], *, where: str = "config.json", name: str = "",
                 provenance: dict | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a WSInfer ``config.json`` (its fields mapped one to one)."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(config).__name__}")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise CheckpointError(f"{where}: not a WSInfer model config, missing {', '.join(missing)} "
                              f"(required: {', '.join(_REQUIRED)})")
    if str(config["spec_version"]) != "1.0":
        raise CheckpointError(f"{where}: spec_version {config['spec_version']!r} is not supported; expected '1.0'")
    n, names = config["num_classes"], config["class_names"]
    if not isinstance(names, list) or len(names) != n:
        raise CheckpointError(f"{where}: class_names {names!r} must list num_classes={n!r} names")
    if n < 2:
        raise CheckpointError(f"{where}: a single-output (sigmoid) model is not supported; wsiscan needs >= 2 classes")
    spacing = config["spacing_um_px"]
    if not isinstance(spacing, (int, float)) or not math.isfinite(spacing) or spacing <= 0:
        raise CheckpointError(f"{where}: spacing_um_px must be a positive number (um/px), got {spacing!r}")
    fields = _transform_fields(config["transform"], where)
    try:
        return ModelSpec(
            arch=TORCHSCRIPT_ARCH, class_names=tuple(names), positive_class=_positive_class(tuple(names)),
            patch_size_px=config["patch_size_pixels"], input_mpp=float(spacing), name=name,
            provenance={"format": "wsinfer", "architecture": str(config["architecture"]), **(provenance or {})},
            **fields,
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def wsinfer_sha256(folder: str | os.PathLike, *, torchscript_sha256: str | None = None) -> str:
    """One SHA-256 for the model: of the TorchScript file's and the config's hashes
    (``torchscript_sha256``: the TorchScript file's, when the caller has it already)."""
    folder = Path(folder)
    ts = torchscript_sha256 or file_sha256(folder / WSINFER_TORCHSCRIPT_NAME)
    return hashlib.sha256(f"{ts}:{file_sha256(folder / WSINFER_CONFIG_NAME)}".encode()).hexdigest()


def load_wsinfer_folder(folder: str | os.PathLike, *, name: str = "", provenance: dict | None = None,
                        map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec, str]:
    """``(TorchScript module in eval mode, spec, sha256)`` of a WSInfer model folder."""
    folder = Path(folder)
    config_path, weights_path = folder / WSINFER_CONFIG_NAME, folder / WSINFER_TORCHSCRIPT_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"WSInfer model folder {folder} has no {p.name}; it needs "
                                  f"{WSINFER_CONFIG_NAME} and {WSINFER_TORCHSCRIPT_NAME}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: cannot read it as JSON ({one_line(exc, 100)}); "
                              "fetch the model again") from exc
    ts_sha256 = file_sha256(weights_path)
    spec = wsinfer_spec(config, where=str(config_path), name=name or folder.name,
                        provenance={"source_folder": str(folder), "torchscript_sha256": ts_sha256,
                                    **(provenance or {})})
    try:
        model = torch.jit.load(str(weights_path), map_location=map_location)
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: not a TorchScript file ({one_line(exc, 100)}); "
                              "fetch the model again") from exc
    model.eval()
    return model, spec, wsinfer_sha256(folder, torchscript_sha256=ts_sha256)
