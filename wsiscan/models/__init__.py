"""Model registry, architectures and checkpoints.

A wsiscan checkpoint is ONE file written with :func:`torch.save`::

    {"format": "wsiscan-checkpoint", "format_version": 1,
     "spec": ModelSpec.to_dict(), "state_dict": {...CPU tensors...}, **extra}

It carries its :class:`ModelSpec` (architecture, class names, positive class, patch
size, input resolution, normalisation, calibration temperature, provenance, metrics),
so a checkpoint file is all that inference needs.  Files are read with
``torch.load(weights_only=True)``: no pickled Python objects are ever executed.  WSInfer
models are TorchScript, loaded with ``torch.jit.load``: that runs the TorchScript program
in the file (interpreted by TorchScript, not pickled Python), so trust its source as you
would any program's (:mod:`.wsinfer`).

The registry names published weights: the TIAToolbox PatchCamelyon ResNets, which
:func:`pull_model` finds in the standard Hugging Face cache, TIAToolbox's folder or a
file given by hand (else downloads into the Hugging Face cache), verifies against a
pinned SHA-256, converts to torchvision layout and stores in :func:`cache_dir`; and
WSInfer's zoo, whose TorchScript folders run as they are (:mod:`.wsinfer`).
:func:`resolve_model` turns a registry name, a checkpoint path or a WSInfer folder into
what :func:`load_model` loads, and says in one line what to do when that is impossible.
:func:`register_model` adds your own architectures (any ``nn.Module`` factory).

This package imports torch (torchvision only when a ResNet is built); it never imports click or zarr.
"""

from .architectures import (
    PixelLogReg,
    SmallCNN,
    TinyModel,
    build_model,
    list_architectures,
    register_model,
    unregister_model,
)
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .convert import convert_tiatoolbox_state_dict, tiatoolbox_spec
from .hub import hf_cache_dir, tiatoolbox_models_dir
from .proba import (
    calibrated_logits,
    class_proba_from_logits,
    normalise,
    predict_class_proba,
    predict_proba,
    tiny_expected_proba,
)
from .pull import PulledModel, fetch_model, local_copy, pull_model
from .registry import (
    RegistryEntry,
    cache_dir,
    cached_checkpoint_path,
    find_cached_checkpoint,
    get_registry_entry,
    list_models,
    register_weights,
    registry_name,
    wsinfer_registry_path,
)
from .resolve import load_model, resolve_model
from .spec import ARCHITECTURES, ModelSpec
from .wsinfer import is_wsinfer_folder, load_wsinfer_folder, wsinfer_spec

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "ModelSpec",
    "RegistryEntry",
    "build_model",
    "normalise",
    "predict_proba",
    "predict_class_proba",
    "calibrated_logits",
    "class_proba_from_logits",
    "register_model",
    "unregister_model",
    "list_architectures",
    "register_weights",
    "registry_name",
    "find_cached_checkpoint",
    "fetch_model",
    "local_copy",
    "PulledModel",
    "hf_cache_dir",
    "tiatoolbox_models_dir",
    "wsinfer_registry_path",
    "is_wsinfer_folder",
    "load_wsinfer_folder",
    "wsinfer_spec",
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
