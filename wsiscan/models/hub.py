"""Pulling registered models from the Hugging Face Hub into the cache, and the error saying what to do offline."""

from __future__ import annotations

import datetime as _dt
import os
import socket
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torchvision

from ..errors import CheckpointError, OfflineError, OutputError
from .architectures import build_model
from .checkpoint import _LOAD_ERRORS, file_sha256, save_checkpoint
from .convert import convert_tiatoolbox_state_dict, tiatoolbox_spec
from .registry import RegistryEntry, cache_dir, cached_checkpoint_path, get_registry_entry
from .spec import ModelSpec, _one_line


def _offline_message(name: str, reason: str | None = None) -> str:
    target = cached_checkpoint_path(name)
    what = ("cannot be downloaded here (no network)" if reason is None
            else f"could not be downloaded ({reason})")
    return (
        f"model '{name}' is not in the local cache ({cache_dir()}) and {what}: run "
        f"`wsiscan models pull {name}` on a connected machine and copy {target.name} into "
        f"{cache_dir()}, or pass --model PATH to a checkpoint"
    )


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
