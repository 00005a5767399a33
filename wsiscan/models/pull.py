"""``pull``: a registered model made ready to run, from whichever source this machine has.

TIAToolbox ``.pth`` files are converted to a wsiscan checkpoint, stored in
:func:`cache_dir` under a name keyed by the source's revision and SHA-256
(:func:`cached_checkpoint_path`), with both recorded in ``spec.provenance``.  WSInfer
models run from their folder as they are: the Hugging Face snapshot folder, or for a
hand-brought copy a folder in wsiscan's cache.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import CheckpointError, OfflineError, OutputError
from .architectures import build_model
from .checkpoint import save_checkpoint
from .convert import convert_tiatoolbox_state_dict, tiatoolbox_spec
from .hub import SourceFile, load_foreign_weights, local_sources, locate_source, looked_in, wsiscan_version
from .registry import RegistryEntry, cache_dir, cached_checkpoint_path, find_cached_checkpoint, get_registry_entry
from .spec import ModelSpec
from .wsinfer import WSINFER_CONFIG_NAME, WSINFER_TORCHSCRIPT_NAME, is_wsinfer_folder

__all__ = ["PulledModel", "fetch_model", "pull_model", "local_copy"]


@dataclass(frozen=True)
class PulledModel:
    """What :func:`fetch_model` made ready: the file or folder to load and where it came from."""

    name: str
    path: Path  # a wsiscan checkpoint, or a WSInfer model folder
    origin: str  # "Hugging Face cache", "download", "TIAToolbox folder", "--from FILE", "wsiscan cache", "built in"
    source_path: Path | None
    source_sha256: str | None
    revision: str | None


def _cache_writable() -> None:
    """Create the model cache and check that a file can be written into it."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir()):
            pass
    except OSError as exc:
        raise OutputError(f"the model cache {cache_dir()} is not writable ({exc.strerror or exc}); "
                          "set WSISCAN_HOME to a writable folder (models go to $WSISCAN_HOME/models)") from exc


def _builtin(entry: RegistryEntry) -> PulledModel:
    target = cached_checkpoint_path(entry.name)
    if not target.is_file():
        spec = ModelSpec(
            arch=entry.arch, class_names=entry.class_names, positive_class=entry.positive_class,
            patch_size_px=entry.patch_size_px, input_mpp=entry.input_mpp, name=entry.name,
            provenance={"source": entry.source, "wsiscan_version": wsiscan_version()},
        )
        _cache_writable()
        save_checkpoint(target, build_model(spec), spec)
    return PulledModel(entry.name, target, "built in", None, None, None)


def _convert(entry: RegistryEntry, source: SourceFile) -> Path:
    """Convert a TIAToolbox source file to the keyed wsiscan checkpoint (kept if already there)."""
    target = cached_checkpoint_path(entry.name, revision=source.revision, source_sha256=source.sha256)
    if target.is_file():
        return target
    _cache_writable()
    raw = load_foreign_weights(source.path, f"{source.origin} file for '{entry.name}'")
    try:
        state_dict = convert_tiatoolbox_state_dict(raw, entry.arch)
    except CheckpointError as exc:
        raise CheckpointError(f"{source.path} ({source.origin}, sha256 {source.sha256[:12]}...) for "
                              f"'{entry.name}' does not convert: {exc}") from exc
    base = tiatoolbox_spec(entry.arch)
    num_classes = int(state_dict["fc.weight"].shape[0])
    if num_classes != base.num_classes:
        raise CheckpointError(f"{source.path} for '{entry.name}' has {num_classes} classes; "
                              f"expected {base.num_classes} ({', '.join(base.class_names)})")
    spec = replace(base, name=entry.name, provenance={
        **base.provenance,
        "source": entry.source,
        "source_origin": source.origin,
        "source_path": str(source.path),
        "hf_repo_id": entry.hf_repo_id,
        "hf_filename": entry.hf_filename,
        "hf_revision": source.revision,
        "source_sha256": source.sha256,
        "pinned_sha256": entry.sha256,
        "downloaded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "converted_by": "wsiscan.models.convert_tiatoolbox_state_dict",
        "licence": entry.licence,
        "wsiscan_version": wsiscan_version(),
        "torch_version": torch.__version__,
        "torchvision_version": _torchvision_version(),
    })
    model = build_model(spec)
    model.load_state_dict(state_dict, strict=True)
    save_checkpoint(target, model, spec)
    return target


def _torchvision_version() -> str:
    import torchvision  # imported when needed: it takes ~1.5 s (see architectures.build_model)

    return str(torchvision.__version__)


def _fetch_tiatoolbox(entry: RegistryEntry, *, force: bool, from_file: Path | None) -> PulledModel:
    source = locate_source(entry, force=force, from_file=from_file, download=False)
    if source is None and not force:
        cached = find_cached_checkpoint(entry.name, source_sha256=entry.sha256)
        if cached is not None:  # converted earlier (or copied in by hand): no source needed
            return PulledModel(entry.name, cached, "wsiscan cache", None, None, None)
    if source is None:
        source = locate_source(entry, force=force)
    path = _convert(entry, source)
    return PulledModel(entry.name, path, source.origin, source.path, source.sha256, source.revision)


def _copy_wsinfer_folder(entry: RegistryEntry, folder: Path, source: SourceFile) -> Path:
    """A hand-brought WSInfer folder copied into wsiscan's cache, keyed like a checkpoint."""
    target = cached_checkpoint_path(entry.name, source_sha256=source.sha256).with_suffix("")
    if is_wsinfer_folder(target):
        return target
    _cache_writable()
    tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{target.name}.{uuid.uuid4().hex[:6]}."))
    try:
        for name in (WSINFER_CONFIG_NAME, WSINFER_TORCHSCRIPT_NAME):
            shutil.copyfile(folder / name, tmp / name)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot copy {folder} into {cache_dir()}: {exc.strerror or exc}") from exc
    return target


def _fetch_wsinfer(entry: RegistryEntry, *, force: bool, from_file: Path | None) -> PulledModel:
    if from_file is not None:
        folder = from_file if from_file.is_dir() else from_file.parent
        if not is_wsinfer_folder(folder):
            raise CheckpointError(f"--from {from_file}: '{entry.name}' is a WSInfer model; give its folder "
                                  f"with {WSINFER_CONFIG_NAME} and {WSINFER_TORCHSCRIPT_NAME}")
        source = locate_source(entry, from_file=folder / WSINFER_TORCHSCRIPT_NAME)
        path = _copy_wsinfer_folder(entry, folder, source)
        return PulledModel(entry.name, path, source.origin, source.path, source.sha256, None)
    weights = locate_source(entry, WSINFER_TORCHSCRIPT_NAME, force=force, download=False)
    if weights is None and not force:
        cached = find_cached_checkpoint(entry.name, source_sha256=entry.sha256, suffix="")
        if cached is not None and is_wsinfer_folder(cached):
            return PulledModel(entry.name, cached, "wsiscan cache", None, None, None)
    if weights is None:
        weights = locate_source(entry, WSINFER_TORCHSCRIPT_NAME, force=force)
    config = locate_source(replace(entry, sha256=None), WSINFER_CONFIG_NAME, force=force)
    if config is None or config.path.parent != weights.path.parent:
        raise OfflineError(f"'{entry.name}': {WSINFER_CONFIG_NAME} of the same revision as {weights.path} is not "
                           f"in {looked_in(entry)}; fetch both files of {entry.hf_repo_id}")
    return PulledModel(entry.name, weights.path.parent, weights.origin, weights.path, weights.sha256,
                       weights.revision)


def fetch_model(name: str, *, force: bool = False, from_file: str | os.PathLike | None = None) -> PulledModel:
    """Make a registered model ready to run and say where it came from.

    Looks in this order: ``from_file``; the Hugging Face cache and TIAToolbox's folder;
    a checkpoint converted earlier; a download (see :mod:`wsiscan.models.hub`).  Each
    source file is hashed and refused when the registry pins another SHA-256.
    ``force`` ignores local copies and downloads again.  Offline with no copy:
    :class:`OfflineError` in one line saying what to do.
    """
    entry = get_registry_entry(name)
    src = Path(from_file).expanduser() if from_file is not None else None
    if entry.kind == "builtin":
        return _builtin(entry)
    if entry.kind == "wsinfer":
        return _fetch_wsinfer(entry, force=force, from_file=src)
    return _fetch_tiatoolbox(entry, force=force, from_file=src)


def pull_model(name: str, *, force: bool = False, from_file: str | os.PathLike | None = None) -> Path:
    """:func:`fetch_model`, returning only the checkpoint file (or WSInfer folder) to load."""
    return fetch_model(name, force=force, from_file=from_file).path


def local_copy(name: str) -> tuple[str, Path] | None:
    """``(origin, path)`` of a copy of ``name`` on this machine, without hashing, converting or network."""
    entry = get_registry_entry(name)
    if entry.kind == "builtin":
        return "built in", cached_checkpoint_path(entry.name)
    filename = WSINFER_TORCHSCRIPT_NAME if entry.kind == "wsinfer" else entry.hf_filename
    local = local_sources(entry, filename) if filename else []
    if local:
        return local[0][1], local[0][0]
    cached = find_cached_checkpoint(entry.name, source_sha256=entry.sha256,
                                    suffix="" if entry.kind == "wsinfer" else ".pt")
    return ("wsiscan cache", cached) if cached is not None else None
