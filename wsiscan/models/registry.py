"""The registry of named models (TIAToolbox PCam ResNets, wsiscan/tiny) and the cache they are pulled into."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnknownModelError

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
