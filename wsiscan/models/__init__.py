"""Model registry, architectures and checkpoints.

A wsiscan checkpoint is ONE file written with :func:`torch.save`::

    {"format": "wsiscan-checkpoint", "format_version": 1,
     "spec": ModelSpec.to_dict(), "state_dict": {...CPU tensors...}, **extra}

It carries its :class:`ModelSpec` (architecture, class names, positive class, patch
size, input resolution, normalisation, calibration temperature, provenance, metrics),
so a checkpoint file is all that inference needs.  Files are read with
``torch.load(weights_only=True)``: no pickled Python objects are ever executed.

The registry names published weights (the TIAToolbox PatchCamelyon ResNets) that
:func:`pull_model` downloads from the Hugging Face Hub, converts to torchvision layout
and stores in :func:`cache_dir`.  :func:`resolve_model` turns a registry name or a path
into a checkpoint file, and says in one line what to do when that is impossible (no
network, unknown name).

This package imports torch and torchvision; it never imports click or zarr.
"""

from .architectures import PixelLogReg, SmallCNN, TinyModel, build_model
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .convert import convert_tiatoolbox_state_dict, tiatoolbox_spec
from .hub import pull_model
from .proba import normalise, predict_proba, tiny_expected_proba
from .registry import RegistryEntry, cache_dir, cached_checkpoint_path, get_registry_entry, list_models
from .resolve import load_model, resolve_model
from .spec import ARCHITECTURES, ModelSpec

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "ModelSpec",
    "RegistryEntry",
    "build_model",
    "normalise",
    "predict_proba",
    "save_checkpoint",
    "read_checkpoint",
    "load_checkpoint",
    "file_sha256",
    "cache_dir",
    "cached_checkpoint_path",
    "list_models",
    "get_registry_entry",
    "resolve_model",
    "load_model",
    "pull_model",
    "convert_tiatoolbox_state_dict",
    "tiatoolbox_spec",
    "tiny_expected_proba",
    "SmallCNN",
    "PixelLogReg",
    "TinyModel",
]
