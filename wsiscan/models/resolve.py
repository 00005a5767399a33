"""A registry name, a checkpoint file or a WSInfer folder (pulled when needed), and the model loaded from it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, UnknownModelError
from .checkpoint import file_sha256, load_checkpoint
from .pull import pull_model
from .registry import did_you_mean, registered_names, registry_name
from .spec import ModelSpec
from .wsinfer import WSINFER_CONFIG_NAME, WSINFER_TORCHSCRIPT_NAME, is_wsinfer_folder, load_wsinfer_folder


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file or WSInfer folder for an existing path or a registry name (pulled if needed)."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file() or is_wsinfer_folder(path):
        return path
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder but not a WSInfer model (it needs {WSINFER_CONFIG_NAME} and "
            f"{WSINFER_TORCHSCRIPT_NAME}); for a wsiscan checkpoint give the path of the .pt file inside it"
        )
    key = registry_name(text)
    if key is not None:
        return pull_model(key)
    raise UnknownModelError(
        f"'{text}' is neither an existing checkpoint file, a WSInfer model folder nor a registered model"
        f"{did_you_mean(text)}; registered: {registered_names()} (see `wsiscan models list`)"
    )


def load_model(
    name_or_path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, str]:
    """Resolve and load; return ``(model in eval mode, spec, sha256)``.

    A wsiscan checkpoint loads with ``torch.load(weights_only=True)`` (data only); a
    WSInfer folder's TorchScript with ``torch.jit.load`` (see :mod:`wsiscan.models.wsinfer`).
    """
    path = resolve_model(name_or_path)
    name = os.fspath(name_or_path)
    key = registry_name(name)
    if path.is_dir():
        return load_wsinfer_folder(path, name=key or path.name, map_location=map_location)
    try:
        model, spec = load_checkpoint(path, map_location=map_location)
    except CheckpointError as exc:
        if key is not None and not Path(name).expanduser().exists():
            raise CheckpointError(
                f"{exc}; for the cached copy of '{key}' run `wsiscan models pull {key} --force`"
            ) from exc
        raise
    return model, spec, file_sha256(path)
