"""A registry name or a path to a checkpoint file (pulled when needed), and the model loaded from it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, UnknownModelError
from .checkpoint import file_sha256, load_checkpoint
from .hub import pull_model
from .registry import _REGISTRY, _did_you_mean, _registered_names, cached_checkpoint_path
from .spec import ModelSpec


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file for an existing path or a registry name (pulling it if needed)."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the path of a .pt file inside it")
    if text in _REGISTRY:
        cached = cached_checkpoint_path(text)
        if cached.is_file():
            return cached
        return pull_model(text)
    raise UnknownModelError(
        f"'{text}' is neither an existing checkpoint file nor a registered model"
        f"{_did_you_mean(text)}; registered: {_registered_names()} (see `wsiscan models list`)"
    )


def load_model(
    name_or_path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, str]:
    """Resolve and load; return ``(model in eval mode, spec, checkpoint sha256)``."""
    path = resolve_model(name_or_path)
    name = os.fspath(name_or_path)
    try:
        model, spec = load_checkpoint(path, map_location=map_location)
    except CheckpointError as exc:
        if name in _REGISTRY and path == cached_checkpoint_path(name):
            raise CheckpointError(
                f"{exc}; for the cached copy of '{name}' run `wsiscan models pull {name} --force`"
            ) from exc
        raise
    return model, spec, file_sha256(path)
