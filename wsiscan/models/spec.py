"""ModelSpec: what inference needs to know about a network besides its weights, validated on construction."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeGuard

from ..errors import CheckpointError

RESNETS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# The built-in architectures; :func:`wsiscan.models.register_model` adds more at run time,
# ``timm:<name>`` names a timm network (optional extra), ``torchscript`` a WSInfer model.
ARCHITECTURES: tuple[str, ...] = (*RESNETS, "smallcnn", "logreg", "tiny")
TORCHSCRIPT_ARCH = "torchscript"
EXTERNAL_ARCH = "external"  # a network not built from its spec: a callable given to wsiscan.predict
REGISTERED: dict[str, Any] = {}  # name -> factory(spec) -> nn.Module, filled by register_model


def known_architectures() -> tuple[str, ...]:
    """Every arch a spec may name now: built-in, registered, ``torchscript`` and ``external``."""
    return (*ARCHITECTURES, *REGISTERED, TORCHSCRIPT_ARCH, EXTERNAL_ARCH)


def _arch_problem(arch: object) -> str | None:
    if isinstance(arch, str) and (arch in ARCHITECTURES or arch in REGISTERED or arch in (TORCHSCRIPT_ARCH,
                                                                                           EXTERNAL_ARCH)):
        return None
    if isinstance(arch, str) and arch.startswith("timm:") and len(arch) > 5:
        return None
    return (f"unknown arch {arch!r}; expected one of {', '.join(known_architectures())}, "
            "timm:<name>, or a name given to wsiscan.register_model first")

_MPP_MIN, _MPP_MAX = 0.05, 20.0


def one_line(text: object, limit: int = 200) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def is_int(value: object) -> TypeGuard[int]:
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
    input_size_px: int | None = None  # resize each patch to this side before the network (WSInfer's Resize)
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
        if self.mean is not None and self.std is not None:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def _problem(self) -> str | None:
        arch_problem = _arch_problem(self.arch)
        if arch_problem:
            return arch_problem
        names = self.class_names
        if not isinstance(names, tuple) or len(names) < 2:
            return f"class_names must list at least 2 classes, got {names!r}"
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            return f"class_names must be distinct non-empty strings, got {list(names)!r}"
        if self.arch == "tiny" and len(names) != 2:
            return f"arch 'tiny' has exactly 2 classes, got {len(names)}"
        if not is_int(self.positive_class) or not 0 <= self.positive_class < len(names):
            return (f"positive_class must be an index into class_names (0..{len(names) - 1}), "
                    f"got {self.positive_class!r}")
        if not is_int(self.patch_size_px) or self.patch_size_px < 8:
            return f"patch_size_px must be an integer >= 8, got {self.patch_size_px!r}"
        if not _is_real(self.input_mpp) or not _MPP_MIN <= self.input_mpp <= _MPP_MAX:
            return f"input_mpp must be within {_MPP_MIN}..{_MPP_MAX} um/px, got {self.input_mpp!r}"
        if (self.mean is None) != (self.std is None):
            return "mean and std must both be set or both be None"
        if self.mean is not None and self.std is not None:
            for key in ("mean", "std"):
                value = getattr(self, key)
                if not isinstance(value, tuple) or len(value) != 3 or not all(map(_is_real, value)):
                    return f"{key} must be 3 finite numbers (R, G, B), got {value!r}"
            if min(self.std) <= 0:
                return f"std must be > 0, got {list(self.std)!r}"
        if not _is_real(self.temperature) or self.temperature <= 0:
            return f"temperature must be a finite number > 0, got {self.temperature!r}"
        if self.input_size_px is not None and (not is_int(self.input_size_px) or self.input_size_px < 8):
            return f"input_size_px must be None or an integer >= 8, got {self.input_size_px!r}"
        if not isinstance(self.name, str):
            return f"name must be a string, got {self.name!r}"
        for key in ("provenance", "metrics"):
            value = getattr(self, key)
            if not isinstance(value, dict):
                return f"{key} must be a dict, got {type(value).__name__}"
            try:
                json.dumps(value, allow_nan=True)
            except (TypeError, ValueError) as exc:
                return f"{key} is not JSON-serialisable ({one_line(exc, 120)})"
        return None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def positive_class_name(self) -> str:
        return self.class_names[self.positive_class]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict; :meth:`from_dict` reads it back (``input_size_px`` only when set)."""
        out = {
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
        if self.input_size_px is not None:
            out["input_size_px"] = self.input_size_px
        return out

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
