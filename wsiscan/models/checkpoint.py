"""The wsiscan checkpoint file: save_checkpoint (atomic), read_checkpoint, load_checkpoint, file_sha256."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, DeviceError, OutputError
from ..layout import atomic_path
from .architectures import build_model
from .convert import unwrap_state_dict
from .spec import ModelSpec, is_int, one_line
from .state_dict import expected_shapes, state_dict_problem, strip_prefixes

CHECKPOINT_FORMAT = "wsiscan-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_RESERVED_KEYS = frozenset({"format", "format_version", "spec", "state_dict"})


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    sd = strip_prefixes(model.state_dict())
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
    problem = state_dict_problem(state_dict, expected_shapes(spec))
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
    try:
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            torch.save(payload, f)
    except OSError as exc:
        raise OutputError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; "
            "check free disk space and permissions, or choose another location"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# What torch.load raises on damaged or foreign files (an OSError too: a few bytes of a
# zip file give EINVAL).  Permission problems are caught earlier, when opening.
LOAD_ERRORS = (
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


def _refused_by_safe_loader(exc: BaseException) -> str | None:
    """The global torch's weights-only unpickler refused to load, or None when ``exc`` is no
    such refusal (a truncated or foreign file)."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", text)
    # an "Unsupported operand" is no evidence of objects: random bytes read as a pickle give it too
    return f"the global {found.group(1)}" if found else None


def _looks_like_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(v, torch.Tensor) for v in unwrap_state_dict(obj).values())
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
        except LOAD_ERRORS as exc:
            refused = _refused_by_safe_loader(exc)
            if refused is not None:
                raise CheckpointError(
                    f"checkpoint {path} contains pickled Python objects ({refused}), which wsiscan refuses "
                    "to load (unsafe: they could run code; nothing was run); re-save the weights with "
                    "wsiscan.models.save_checkpoint, or use a checkpoint from a trusted source"
                ) from exc
            raise CheckpointError(
                f"checkpoint {path} cannot be read as a PyTorch file "
                f"({type(exc).__name__}: {one_line(exc, 100) or 'no detail'}): it is truncated "
                "or not a checkpoint; download or save it again"
            ) from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        if isinstance(obj, dict) and "format" in obj:
            hint = f"its format is {one_line(obj['format'], 60)!r}, not {CHECKPOINT_FORMAT!r}"
        elif _looks_like_state_dict(obj):
            hint = ("it holds a bare state dict (e.g. a TIAToolbox .pth); fetch registered weights "
                    "with `wsiscan models pull NAME`, or convert them with "
                    "wsiscan.models.convert_tiatoolbox_state_dict and save_checkpoint")
        else:
            hint = f"it holds a {type(obj).__name__} without a 'format' key"
        raise CheckpointError(f"{path} is not a wsiscan checkpoint: {hint}")
    version = obj.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        if is_int(version) and version > CHECKPOINT_FORMAT_VERSION:
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
    state_dict = strip_prefixes(payload["state_dict"])
    problem = state_dict_problem(state_dict, expected_shapes(spec))
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
        raise CheckpointError(f"checkpoint {path}: {one_line(exc)}") from exc
    model.eval()
    if isinstance(map_location, (str, torch.device)) and str(map_location) != "cpu":
        try:
            model.to(map_location)
        except (RuntimeError, AssertionError) as exc:
            raise DeviceError(
                f"cannot move model from {path.name} to device {map_location!s}: "
                f"{one_line(exc, 120)}; choose another device (e.g. cpu)"
            ) from exc
    return model, spec
