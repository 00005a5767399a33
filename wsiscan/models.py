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

This module imports torch and torchvision; it never imports click or zarr.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import math
import os
import pickle
import socket
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision
from torch import nn

from .errors import (
    CheckpointError,
    DeviceError,
    OfflineError,
    OutputError,
    UnknownModelError,
)

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

CHECKPOINT_FORMAT = "wsiscan-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

_RESNETS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ARCHITECTURES: tuple[str, ...] = (*_RESNETS, "smallcnn", "logreg", "tiny")

_MPP_MIN, _MPP_MAX = 0.05, 20.0
_RESERVED_KEYS = frozenset({"format", "format_version", "spec", "state_dict"})

# --------------------------------------------------------------------------- spec


def _one_line(text: object, limit: int = 200) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ModelSpec:
    """Everything inference needs to know about a network besides its weights.

    ``mean``/``std`` of ``None`` mean the network sees RGB scaled to [0, 1] and nothing
    else.  ``temperature`` calibrates: probabilities are ``softmax(logits / T)``.
    ``provenance`` and ``metrics`` are JSON-serialisable dicts (source, sha256, training
    configuration; validation AUC...).  Invalid values raise :class:`CheckpointError`.
    """

    arch: str
    class_names: tuple[str, ...] = ("normal", "tumor")
    positive_class: int = 1
    patch_size_px: int = 96
    input_mpp: float = 0.972
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    temperature: float = 1.0
    name: str = ""
    provenance: dict = field(default_factory=dict, hash=False)
    metrics: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Normalise containers (JSON gives lists) so equal specs compare equal.
        if isinstance(self.class_names, (list, tuple)):
            object.__setattr__(self, "class_names", tuple(self.class_names))
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, key, tuple(value))
        for key in ("input_mpp", "temperature"):
            value = getattr(self, key)
            if _is_real(value):
                object.__setattr__(self, key, float(value))
        problem = self._problem()
        if problem:
            raise CheckpointError(f"invalid model spec: {problem}")
        if self.mean is not None:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def _problem(self) -> str | None:  # noqa: C901 - a flat list of checks
        if self.arch not in ARCHITECTURES:
            return f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHITECTURES)}"
        names = self.class_names
        if not isinstance(names, tuple) or len(names) < 2:
            return f"class_names must list at least 2 classes, got {names!r}"
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            return f"class_names must be distinct non-empty strings, got {list(names)!r}"
        if self.arch == "tiny" and len(names) != 2:
            return f"arch 'tiny' has exactly 2 classes, got {len(names)}"
        if not _is_int(self.positive_class) or not 0 <= self.positive_class < len(names):
            return (f"positive_class must be an index into class_names (0..{len(names) - 1}), "
                    f"got {self.positive_class!r}")
        if not _is_int(self.patch_size_px) or self.patch_size_px < 8:
            return f"patch_size_px must be an integer >= 8, got {self.patch_size_px!r}"
        if not _is_real(self.input_mpp) or not _MPP_MIN <= self.input_mpp <= _MPP_MAX:
            return f"input_mpp must be within {_MPP_MIN}..{_MPP_MAX} um/px, got {self.input_mpp!r}"
        if (self.mean is None) != (self.std is None):
            return "mean and std must both be set or both be None"
        if self.mean is not None:
            for key in ("mean", "std"):
                value = getattr(self, key)
                if not isinstance(value, tuple) or len(value) != 3 or not all(map(_is_real, value)):
                    return f"{key} must be 3 finite numbers (R, G, B), got {value!r}"
            if min(self.std) <= 0:
                return f"std must be > 0, got {list(self.std)!r}"
        if not _is_real(self.temperature) or self.temperature <= 0:
            return f"temperature must be a finite number > 0, got {self.temperature!r}"
        if not isinstance(self.name, str):
            return f"name must be a string, got {self.name!r}"
        for key in ("provenance", "metrics"):
            value = getattr(self, key)
            if not isinstance(value, dict):
                return f"{key} must be a dict, got {type(value).__name__}"
            try:
                json.dumps(value, allow_nan=True)
            except (TypeError, ValueError) as exc:
                return f"{key} is not JSON-serialisable ({_one_line(exc, 120)})"
        return None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def positive_class_name(self) -> str:
        return self.class_names[self.positive_class]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict; :meth:`from_dict` reads it back."""
        return {
            "arch": self.arch,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "patch_size_px": self.patch_size_px,
            "input_mpp": self.input_mpp,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "temperature": self.temperature,
            "name": self.name,
            "provenance": json.loads(json.dumps(self.provenance)),
            "metrics": json.loads(json.dumps(self.metrics)),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Validate and build a spec; raise :class:`CheckpointError` saying what is wrong."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"invalid model spec: expected a dict, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise CheckpointError(
                f"invalid model spec: unknown field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(known))} (written by a newer wsiscan?)"
            )
        if "arch" not in d:
            raise CheckpointError("invalid model spec: the required field 'arch' is missing")
        return cls(**dict(d))


# --------------------------------------------------------------------- architectures


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


def _expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of ``build_model(spec)``, built on the meta device."""
    with torch.device("meta"):
        model = build_model(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _state_dict_problem(state_dict: Mapping[str, Any], expected: Mapping[str, tuple]) -> str | None:
    """The first way ``state_dict`` fails to match ``expected`` (keys, then shapes)."""
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"entry '{not_tensors[0]}' is a {type(state_dict[not_tensors[0]]).__name__}, not a tensor"
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    parts = []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        parts.append(f"missing key '{missing[0]}'{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        parts.append(f"unexpected key '{unexpected[0]}'{more}")
    if parts:
        return ", ".join(parts)
    for key, shape in expected.items():
        got = tuple(state_dict[key].shape)
        if got != tuple(shape):
            return f"shape mismatch for '{key}': file has {list(got)}, architecture expects {list(shape)}"
    return None


# ------------------------------------------------------------------------ inference


def normalise(x01: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Apply ``spec.mean``/``spec.std`` to float RGB in [0, 1], shape (N, 3, H, W).

    Identity when the spec has no normalisation; keeps device and dtype.
    """
    if not x01.is_floating_point():
        raise TypeError(
            f"normalise expects float RGB scaled to [0, 1], got {x01.dtype}: divide by 255 first"
        )
    if spec.mean is None:
        return x01
    mean = torch.tensor(spec.mean, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - mean) / std


def predict_proba(model: nn.Module, spec: ModelSpec, x01: torch.Tensor) -> torch.Tensor:
    """Probability of ``spec.positive_class`` for each patch, shape (N,), float32.

    ``softmax(model(normalise(x01)) / temperature)``; the softmax runs in float32 even
    under autocast.  Call it under ``torch.inference_mode()`` with the model in eval().
    """
    logits = model(normalise(x01, spec)).float()
    proba = torch.softmax(logits / spec.temperature, dim=1)
    return proba[:, spec.positive_class].float()


def tiny_expected_proba(patch_uint8_hwc: np.ndarray) -> float:
    """NumPy float64 reference of the ``tiny`` model's tumour probability for one patch."""
    patch = np.asarray(patch_uint8_hwc)
    if patch.ndim != 3 or patch.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB patch, got shape {patch.shape}")
    x = patch.astype(np.float64) / 255.0
    h, w = x.shape[:2]
    m = x[h // 3 : h - h // 3, w // 3 : w - w // 3, :].mean()
    return float(1.0 / (1.0 + np.exp(-10.0 * (0.5 - m))))


# ---------------------------------------------------------------------- checkpoints


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if out and all(isinstance(k, str) and k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    sd = _strip_prefixes(model.state_dict())
    return {k: v.detach().cpu() for k, v in sd.items()}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec,
    *,
    extra: dict | None = None,
) -> None:
    """Write ``model`` and ``spec`` as one wsiscan checkpoint file, atomically.

    The state dict is moved to the CPU; ``extra`` (e.g. optimizer state, epoch) is
    stored alongside and must hold only what ``torch.load(weights_only=True)`` reads
    (tensors, numbers, strings, lists, dicts).  The file is written to a temporary
    name in the same folder and renamed, so readers never see a half-written file.
    """
    path = Path(path)
    extra = dict(extra or {})
    clash = sorted(_RESERVED_KEYS & extra.keys())
    if clash:
        raise ValueError(f"extra must not contain the reserved key(s) {', '.join(clash)}")
    state_dict = _plain_state_dict(model)
    problem = _state_dict_problem(state_dict, _expected_shapes(spec))
    if problem:
        raise CheckpointError(
            f"cannot save {path}: the model's weights do not match arch '{spec.arch}' "
            f"with {spec.num_classes} classes ({problem}); pass the spec the model was built from"
        )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "spec": spec.to_dict(),
        "state_dict": state_dict,
        **extra,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create folder {path.parent} for checkpoint {path.name}: "
            f"{exc.strerror or exc}; choose a writable location"
        ) from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; "
            "check free disk space and permissions, or choose another location"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# What torch.load raises on damaged or foreign files (an OSError too: a few bytes of a
# zip file give EINVAL).  Permission problems are caught earlier, when opening.
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    ImportError,
    UnicodeDecodeError,
    OverflowError,
    zipfile.BadZipFile,
)


def _looks_like_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(v, torch.Tensor) for v in _unwrap_state_dict(obj).values())
    )


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check the envelope of a wsiscan checkpoint; return the raw payload dict.

    The payload holds ``format``, ``format_version``, ``spec`` (a dict, not yet
    validated), ``state_dict`` (CPU tensors) and any ``extra`` keys given to
    :func:`save_checkpoint` (use this to resume training).  Raises
    :class:`CheckpointError` naming the file for every problem.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist: check the path, or give a registered model "
            "name instead (see `wsiscan models list`)"
        )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the path of a .pt file inside it")
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CheckpointError(
            f"cannot open checkpoint {path}: {exc.strerror or exc}; check its permissions"
        ) from exc
    with f:
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except _LOAD_ERRORS as exc:
            if "Unsupported global" in str(exc):
                raise CheckpointError(
                    f"checkpoint {path} contains pickled Python objects, which wsiscan does not "
                    "load (unsafe); re-save the weights with wsiscan.models.save_checkpoint"
                ) from exc
            raise CheckpointError(
                f"checkpoint {path} cannot be read as a PyTorch file "
                f"({type(exc).__name__}: {_one_line(exc, 100) or 'no detail'}): it is truncated "
                "or not a checkpoint; download or save it again"
            ) from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        if isinstance(obj, dict) and "format" in obj:
            hint = f"its format is {_one_line(obj['format'], 60)!r}, not {CHECKPOINT_FORMAT!r}"
        elif _looks_like_state_dict(obj):
            hint = ("it holds a bare state dict (e.g. a TIAToolbox .pth); fetch registered weights "
                    "with `wsiscan models pull NAME`, or convert them with "
                    "wsiscan.models.convert_tiatoolbox_state_dict and save_checkpoint")
        else:
            hint = f"it holds a {type(obj).__name__} without a 'format' key"
        raise CheckpointError(f"{path} is not a wsiscan checkpoint: {hint}")
    version = obj.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        if _is_int(version) and version > CHECKPOINT_FORMAT_VERSION:
            fix = "upgrade wsiscan to read it"
        else:
            fix = "the file is damaged; save it again"
        raise CheckpointError(
            f"checkpoint {path} has format_version {version!r}; this wsiscan reads "
            f"format_version {CHECKPOINT_FORMAT_VERSION}: {fix}"
        )
    for key in ("spec", "state_dict"):
        if key not in obj:
            raise CheckpointError(f"checkpoint {path} has no '{key}' entry: the file is damaged; save it again")
    if not isinstance(obj["state_dict"], dict):
        raise CheckpointError(f"checkpoint {path}: 'state_dict' is not a dict; the file is damaged; save it again")
    return obj


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec]:
    """Read a checkpoint; return ``(model in eval mode on map_location, spec)``.

    Every problem (missing or damaged file, other format, invalid spec, weights that
    do not fit the architecture) raises a one-line :class:`CheckpointError` naming the
    file and the fix; a device that cannot be used raises :class:`DeviceError`.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}; the file is damaged or from another tool") from exc
    state_dict = _strip_prefixes(payload["state_dict"])
    problem = _state_dict_problem(state_dict, _expected_shapes(spec))
    if problem:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match its spec (arch '{spec.arch}', "
            f"{spec.num_classes} classes): {problem}; the file is damaged or its spec names "
            "the wrong architecture"
        )
    model = build_model(spec)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # defensive: the check above should catch everything
        raise CheckpointError(f"checkpoint {path}: {_one_line(exc)}") from exc
    model.eval()
    if isinstance(map_location, (str, torch.device)) and str(map_location) != "cpu":
        try:
            model.to(map_location)
        except (RuntimeError, AssertionError) as exc:
            raise DeviceError(
                f"cannot move model from {path.name} to device {map_location!s}: "
                f"{_one_line(exc, 120)}; choose another device (e.g. cpu)"
            ) from exc
    return model, spec


# ------------------------------------------------------------------------- registry


_TIA_REPO = "TIACentre/TIAToolbox_pretrained_weights"
_TIA_LICENCE = (
    "weights published by the TIA Centre (University of Warwick) with TIAToolbox (BSD-3-Clause "
    "code); check the licence on https://huggingface.co/TIACentre/TIAToolbox_pretrained_weights "
    "before redistributing; trained on PatchCamelyon (CC0)"
)


@dataclass(frozen=True)
class RegistryEntry:
    """A named model wsiscan knows how to fetch (``source``) and describe."""

    name: str
    arch: str
    description: str
    source: str  # "hf://<repo owner>/<repo name>/<file>" or "builtin:<arch>"
    patch_size_px: int = 96
    input_mpp: float = 1.0
    class_names: tuple[str, ...] = ("normal", "tumor")
    positive_class: int = 1
    dataset: str = "PatchCamelyon (PCam)"
    licence: str = ""

    @property
    def hf_repo_id(self) -> str | None:
        if not self.source.startswith("hf://"):
            return None
        return "/".join(self.source[len("hf://") :].split("/")[:2])

    @property
    def hf_filename(self) -> str | None:
        if not self.source.startswith("hf://"):
            return None
        return "/".join(self.source[len("hf://") :].split("/")[2:])

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "description": self.description,
            "source": self.source,
            "patch_size_px": self.patch_size_px,
            "input_mpp": self.input_mpp,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "dataset": self.dataset,
            "licence": self.licence,
        }


def _tia_entry(arch: str) -> RegistryEntry:
    return RegistryEntry(
        name=f"tiatoolbox/{arch}-pcam",
        arch=arch,
        description=(f"TIAToolbox {arch} trained on PatchCamelyon; 96 px patches at 1.0 um/px, "
                     "RGB in [0, 1], class 1 = tumour"),
        source=f"hf://{_TIA_REPO}/{arch}-pcam.pth",
        patch_size_px=96,
        input_mpp=1.0,
        licence=_TIA_LICENCE,
    )


_REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        *(_tia_entry(a) for a in ("resnet18", "resnet34", "resnet50", "resnet101")),
        RegistryEntry(
            name="wsiscan/tiny",
            arch="tiny",
            description=("deterministic smoke-test model, p = sigmoid(10 (0.5 - mean centre "
                         "intensity)): dark patch centres score high; NOT a tumour classifier"),
            source="builtin:tiny",
            patch_size_px=96,
            input_mpp=0.972,
            dataset="none (closed-form)",
            licence="part of wsiscan",
        ),
    )
}


def list_models() -> list[RegistryEntry]:
    """The registered models, in a stable order."""
    return list(_REGISTRY.values())


def _registered_names() -> str:
    return ", ".join(_REGISTRY)


def get_registry_entry(name: str) -> RegistryEntry:
    """The registry entry for ``name``; :class:`UnknownModelError` listing the names if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"'{name}' is not a registered model{_did_you_mean(name)}; registered: "
            f"{_registered_names()} (see `wsiscan models list`); for your own weights pass "
            "--model PATH to a checkpoint"
        ) from None


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def cache_dir() -> Path:
    """Where pulled models live: ``$WSISCAN_HOME/models``, else ``~/.cache/wsiscan/models``."""
    home = os.environ.get("WSISCAN_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path.home() / ".cache" / "wsiscan" / "models"


def cached_checkpoint_path(name: str) -> Path:
    """The cache file for a registry name (it need not exist): ``/`` becomes ``--``."""
    return cache_dir() / f"{name.replace('/', '--')}.pt"


def _offline_message(name: str, reason: str | None = None) -> str:
    target = cached_checkpoint_path(name)
    what = ("cannot be downloaded here (no network)" if reason is None
            else f"could not be downloaded ({reason})")
    return (
        f"model '{name}' is not in the local cache ({cache_dir()}) and {what}: run "
        f"`wsiscan models pull {name}` on a connected machine and copy {target.name} into "
        f"{cache_dir()}, or pass --model PATH to a checkpoint"
    )


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


# ---------------------------------------------------------------------- TIAToolbox

# TIAToolbox's CNNModel (tiatoolbox/models/architecture/vanilla.py) is
# feat_extract = nn.Sequential(*torchvision_resnet.children()[:-2]),
# pool = AdaptiveAvgPool2d(1), classifier = nn.Linear(C, num_classes), softmax output.
# Children of a torchvision ResNet: 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7 layer1..4.
_TIA_PREFIXES: tuple[tuple[str, str], ...] = (
    ("feat_extract.0.", "conv1."),
    ("feat_extract.1.", "bn1."),
    ("feat_extract.4.", "layer1."),
    ("feat_extract.5.", "layer2."),
    ("feat_extract.6.", "layer3."),
    ("feat_extract.7.", "layer4."),
    ("classifier.", "fc."),
)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def _unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Unwrap ``{"state_dict": {...}}``-style containers and ``module.`` prefixes."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    return _strip_prefixes(obj) if isinstance(obj, Mapping) else {}


def convert_tiatoolbox_state_dict(state_dict: Mapping[str, Any], arch: str) -> dict[str, torch.Tensor]:
    """Map a TIAToolbox ``CNNModel`` state dict onto torchvision's ResNet layout.

    Accepts a bare state dict or a wrapped one (``{"state_dict": ...}``, ``module.``
    prefixes).  The number of classes is read from ``classifier.weight``.  Unexpected
    keys or shapes raise :class:`CheckpointError` naming the first one.
    """
    if arch not in _RESNETS:
        raise CheckpointError(
            f"TIAToolbox conversion supports {', '.join(_RESNETS)}, not {arch!r}"
        )
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"TIAToolbox weights must be a state dict, got {type(state_dict).__name__}"
        )
    source = _unwrap_state_dict(state_dict)
    if not source:
        raise CheckpointError("the TIAToolbox weights are empty: no state dict found in the file")
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"TIAToolbox state dict entry '{key}' is a {type(value).__name__}, not a tensor"
            )
        for src, dst in _TIA_PREFIXES:
            if isinstance(key, str) and key.startswith(src):
                out[dst + key[len(src) :]] = value
                break
        else:
            raise CheckpointError(
                f"unexpected key '{key}' in TIAToolbox weights: expected feat_extract.{{0,1,4-7}}.* "
                f"and classifier.* of a TIAToolbox CNNModel({arch!r})"
            )
    if "fc.weight" not in out or out["fc.weight"].ndim != 2:
        raise CheckpointError(
            "TIAToolbox weights have no 2-D 'classifier.weight': not a CNNModel classifier"
        )
    num_classes = int(out["fc.weight"].shape[0])
    if num_classes < 2:
        raise CheckpointError(f"TIAToolbox classifier has {num_classes} output(s); expected at least 2")
    class_names = ("normal", "tumor") if num_classes == 2 else tuple(f"class{i}" for i in range(num_classes))
    expected = _expected_shapes(ModelSpec(arch=arch, class_names=class_names))
    for key in expected:  # weights saved by old torch versions lack num_batches_tracked
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.tensor(0, dtype=torch.long)
    problem = _state_dict_problem(out, expected)
    if problem:
        raise CheckpointError(
            f"TIAToolbox weights do not fit a {arch} (keys after conversion): {problem}; "
            "is the file for another architecture?"
        )
    return out


def tiatoolbox_spec(arch: str) -> ModelSpec:
    """The spec of TIAToolbox's ``<arch>-pcam`` weights: 96 px at 1.0 um/px, RGB in [0, 1]."""
    if arch not in _RESNETS:
        raise CheckpointError(f"TIAToolbox PCam weights exist here for {', '.join(_RESNETS)}, not {arch!r}")
    return ModelSpec(
        arch=arch,
        class_names=("normal", "tumor"),
        positive_class=1,
        patch_size_px=96,
        input_mpp=1.0,
        mean=None,
        std=None,
        temperature=1.0,
        name=f"tiatoolbox/{arch}-pcam",
        provenance={
            "source": "TIAToolbox",
            "architecture": f"tiatoolbox.models.architecture.vanilla.CNNModel(backbone={arch!r}, num_classes=2)",
            "preprocessing": "torchvision ToTensor only (RGB scaled to [0, 1])",
            "training_data": "PatchCamelyon (PCam)",
        },
    )


# ------------------------------------------------------------------------- pulling


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_offline() -> bool:
    """Whether downloads are switched off (HF_HUB_OFFLINE, read now, not at import)."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP check of the Hub endpoint, so a machine without network fails in
    seconds rather than after huggingface_hub's retries.  Assumed reachable behind a proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the download failed" for the installed HTTP stack."""
    types: list[type[BaseException]] = [OSError]  # ConnectionError, timeouts, FileNotFoundError
    try:
        from huggingface_hub import errors as hf_errors

        for name in ("HfHubHTTPError", "LocalEntryNotFoundError", "EntryNotFoundError",
                     "OfflineModeIsEnabled"):
            t = getattr(hf_errors, name, None)
            if isinstance(t, type):
                types.append(t)
    except ImportError:
        pass
    import importlib

    for module, attr in (("httpx", "HTTPError"), ("httpx2", "HTTPError"),
                         ("requests", "RequestException")):
        try:
            t = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            continue
        if isinstance(t, type):
            types.append(t)
    return tuple(types)


def _download(entry: RegistryEntry, dest_dir: Path, *, force: bool) -> Path:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise OfflineError(
            f"{_offline_message(entry.name, 'huggingface_hub is not installed')} "
            "(or `pip install huggingface_hub`)"
        ) from exc
    offline = _hub_offline() or not _hub_reachable()
    errors = _network_errors()
    try:
        local = huggingface_hub.hf_hub_download(
            repo_id=entry.hf_repo_id,
            filename=entry.hf_filename,
            local_dir=dest_dir,
            force_download=force,
            local_files_only=offline,
        )
    except errors as exc:
        if offline or type(exc).__name__ in {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
            raise OfflineError(_offline_message(entry.name)) from exc
        reason = f"{type(exc).__name__}: {_one_line(exc, 120)}"
        raise OfflineError(_offline_message(entry.name, reason)) from exc
    return Path(local)


def _load_foreign_weights(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        raise CheckpointError(
            f"{what} {path} cannot be read as PyTorch weights ({type(exc).__name__}: "
            f"{_one_line(exc, 100) or 'no detail'}); pull it again with --force"
        ) from exc


def _wsiscan_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("wsiscan")
    except metadata.PackageNotFoundError:
        return "unknown"


def pull_model(name: str, *, force: bool = False) -> Path:
    """Fetch a registered model into :func:`cache_dir` as a wsiscan checkpoint.

    Hub weights are downloaded with ``huggingface_hub.hf_hub_download`` (honouring
    ``HF_HUB_OFFLINE``), their SHA-256 recorded in ``spec.provenance``, converted to
    torchvision layout and saved.  Returns the cached file; an existing one is kept
    unless ``force``.  No network raises :class:`OfflineError` saying what to do.
    """
    entry = get_registry_entry(name)
    target = cached_checkpoint_path(name)
    if target.is_file() and not force:
        return target
    if entry.source.startswith("builtin:"):
        spec = ModelSpec(
            arch=entry.arch, class_names=entry.class_names, positive_class=entry.positive_class,
            patch_size_px=entry.patch_size_px, input_mpp=entry.input_mpp, name=entry.name,
            provenance={"source": entry.source, "wsiscan_version": _wsiscan_version()},
        )
        save_checkpoint(target, build_model(spec), spec)
        return target
    if not entry.source.startswith("hf://"):  # pragma: no cover - registry is static
        raise CheckpointError(f"registry entry {name!r} has an unsupported source {entry.source!r}")

    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp_ctx = tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-")
    except OSError as exc:
        raise OutputError(
            f"cannot create the model cache {cache_dir()}: {exc.strerror or exc}; "
            "set WSISCAN_HOME to a writable folder"
        ) from exc
    with tmp_ctx as tmp:
        source_file = _download(entry, Path(tmp), force=force)
        source_sha256 = file_sha256(source_file)
        raw = _load_foreign_weights(source_file, f"downloaded file for '{name}'")
        try:
            state_dict = convert_tiatoolbox_state_dict(raw, entry.arch)
        except CheckpointError as exc:
            raise CheckpointError(
                f"downloaded file {entry.source} (sha256 {source_sha256[:12]}...) for '{name}' "
                f"does not convert: {exc}"
            ) from exc
    base = tiatoolbox_spec(entry.arch)
    num_classes = int(state_dict["fc.weight"].shape[0])
    if num_classes != base.num_classes:
        raise CheckpointError(
            f"downloaded file {entry.source} for '{name}' has {num_classes} classes; "
            f"expected {base.num_classes} ({', '.join(base.class_names)})"
        )
    spec = replace(
        base,
        name=entry.name,
        provenance={
            **base.provenance,
            "source": entry.source,
            "hf_repo_id": entry.hf_repo_id,
            "hf_filename": entry.hf_filename,
            "source_sha256": source_sha256,
            "downloaded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "converted_by": "wsiscan.models.convert_tiatoolbox_state_dict",
            "licence": entry.licence,
            "wsiscan_version": _wsiscan_version(),
            "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__,
        },
    )
    model = build_model(spec)
    model.load_state_dict(state_dict, strict=True)
    save_checkpoint(target, model, spec)
    return target
