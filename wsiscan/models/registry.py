"""The registry of named models (TIAToolbox PCam ResNets, WSInfer's zoo, wsiscan/tiny) and wsiscan's own cache.

Entries can pin a Hub ``revision`` and the ``sha256`` of the source file; every
source (Hugging Face cache, download, TIAToolbox folder, a file given with
``models pull --from``) is checked against the pin in :mod:`wsiscan.models.hub`.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, UnknownModelError

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
    revision: str | None = None  # Hub branch, tag or commit; None = the repo's default branch
    sha256: str | None = None  # expected SHA-256 of the source file; None = not pinned
    kind: str = "tiatoolbox"  # "tiatoolbox" (converted .pth), "wsinfer" (TorchScript folder), "builtin"

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
            "kind": self.kind,
            "revision": self.revision,
            "sha256": self.sha256,
        }

    @property
    def tiatoolbox_file(self) -> str | None:
        """The file name TIAToolbox keeps this model under in ``$TIATOOLBOX_HOME/models``."""
        return self.hf_filename.rsplit("/", 1)[-1] if self.kind == "tiatoolbox" and self.hf_filename else None


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
            kind="builtin",
        ),
    )
}

# WSInfer's zoo as its registry file (wsinfer-zoo-registry.json, SBU-BMI/wsinfer-zoo) lists it:
# name -> Hugging Face repo holding config.json + torchscript_model.pt.  A newer registry
# file is read from $WSINFER_ZOO_REGISTRY or ~/.wsinfer-zoo-registry.json when present.
_WSINFER_ZOO: dict[str, tuple[str, str]] = {
    "breast-tumor-resnet34.tcga-brca": ("Breast tumor", "kaczmarj/breast-tumor-resnet34.tcga-brca"),
    "lung-tumor-resnet34.tcga-luad": ("Lung tumor", "kaczmarj/lung-tumor-resnet34.tcga-luad"),
    "pancancer-lymphocytes-inceptionv4.tcga": ("Pancancer lymphocytes",
                                               "kaczmarj/pancancer-lymphocytes-inceptionv4.tcga"),
    "prostate-tumor-resnet34.tcga-prad": ("Prostate tumor", "kaczmarj/prostate-tumor-resnet34.tcga-prad"),
}
WSINFER_PREFIX = "wsinfer/"


def _wsinfer_entry(zoo_name: str, description: str, repo_id: str, revision: str | None) -> RegistryEntry:
    return RegistryEntry(
        name=WSINFER_PREFIX + zoo_name, arch="torchscript",
        description=f"WSInfer zoo: {description} (patch size, resolution and classes from its config.json)",
        source=f"hf://{repo_id}/torchscript_model.pt", patch_size_px=0, input_mpp=0.0, class_names=(),
        positive_class=-1, dataset="see the model card on the Hub", licence="see the model card on the Hub",
        revision=revision, kind="wsinfer",
    )


def wsinfer_registry_path() -> Path:
    """The WSInfer zoo registry file read besides the built-in list (it need not exist)."""
    env = os.environ.get("WSINFER_ZOO_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".wsinfer-zoo-registry.json"


def _wsinfer_entries() -> dict[str, RegistryEntry]:
    entries = {f"{WSINFER_PREFIX}{n}": _wsinfer_entry(n, d, r, "main") for n, (d, r) in _WSINFER_ZOO.items()}
    path = wsinfer_registry_path()
    if not path.is_file():
        return entries
    try:
        models = json.loads(path.read_text())["models"]
        for zoo_name, item in models.items():
            entries[WSINFER_PREFIX + zoo_name] = _wsinfer_entry(
                zoo_name, str(item.get("description", "")), str(item["hf_repo_id"]), item.get("hf_revision"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"WSInfer zoo registry {path}: cannot read it ({type(exc).__name__}: {exc}); expected "
            '{"models": {NAME: {"description": ..., "hf_repo_id": ..., "hf_revision": ...}}}; fix or remove it'
        ) from exc
    return entries


def register_weights(entry: RegistryEntry, *, replace: bool = False) -> None:
    """Add a named model (e.g. your lab's weights on the Hub, pinned) to the registry of this process."""
    if entry.name in _all_entries() and not replace:
        raise ValueError(f"a model named {entry.name!r} is registered already; pass replace=True")
    _REGISTRY[entry.name] = entry


def _all_entries() -> dict[str, RegistryEntry]:
    return {**_REGISTRY, **{k: v for k, v in _wsinfer_entries().items() if k not in _REGISTRY}}


def list_models() -> list[RegistryEntry]:
    """The registered models, in a stable order (wsiscan's, then WSInfer's zoo)."""
    return list(_all_entries().values())


def registered_names() -> str:
    return ", ".join(_all_entries())


def registry_name(name: str) -> str | None:
    """The registry name ``name`` stands for (a bare WSInfer zoo name gains ``wsinfer/``), or None."""
    entries = _all_entries()
    if name in entries:
        return name
    return WSINFER_PREFIX + name if WSINFER_PREFIX + name in entries else None


def get_registry_entry(name: str) -> RegistryEntry:
    """The registry entry for ``name``; :class:`UnknownModelError` listing the names if none."""
    key = registry_name(name)
    if key is not None:
        return _all_entries()[key]
    raise UnknownModelError(
            f"'{name}' is not a registered model{did_you_mean(name)}; registered: "
            f"{registered_names()} (see `wsiscan models list`); for your own weights pass "
            "--model PATH to a checkpoint or a WSInfer model folder"
        )


def did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(str(name), list(_all_entries()), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def cache_dir() -> Path:
    """Where pulled models live: ``$WSISCAN_HOME/models``, else ``~/.cache/wsiscan/models``."""
    home = os.environ.get("WSISCAN_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path.home() / ".cache" / "wsiscan" / "models"


def cached_checkpoint_path(name: str, *, revision: str | None = None, source_sha256: str | None = None) -> Path:
    """wsiscan's converted checkpoint for a registry name (it need not exist): ``/`` becomes ``--``.

    With the source's ``revision`` and ``source_sha256`` the name is keyed by them
    (``NAME--<revision[:12] or local>--<sha256[:16]>.pt``), so another source file never
    reuses a checkpoint converted from a different one.  Without, the plain
    ``NAME.pt`` (built-in models, and copies placed by hand).
    """
    safe = name.replace("/", "--")
    if source_sha256 is None:
        return cache_dir() / f"{safe}.pt"
    rev = (revision or "local")[:12].replace("/", "-")
    return cache_dir() / f"{safe}--{rev}--{source_sha256[:16]}.pt"


def find_cached_checkpoint(name: str, *, source_sha256: str | None = None, suffix: str = ".pt") -> Path | None:
    """The newest converted checkpoint of ``name`` in the cache (of that source hash when given);
    ``suffix=""`` finds a WSInfer folder copied in with ``models pull --from``."""
    safe = name.replace("/", "--")
    folder = cache_dir()
    if not folder.is_dir():
        return None
    pattern = f"{safe}--*--{source_sha256[:16] if source_sha256 else '*'}{suffix}"
    found = [p for p in folder.glob(pattern) if p.is_file() or (not suffix and p.is_dir())]
    plain = folder / f"{safe}{suffix}"
    if source_sha256 is None and suffix and plain.is_file():
        found.append(plain)
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None
