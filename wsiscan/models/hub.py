"""Where a registered model's source file comes from: the Hugging Face cache, a download, TIAToolbox's folder.

Sources, in the order they are tried (:func:`locate_source`):

1. a file given with ``wsiscan models pull NAME --from FILE``;
2. the standard Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), as ``hf download`` or any huggingface_hub program fills
   it, at the entry's pinned revision (else ``refs/main``);
3. TIAToolbox's download folder, ``$TIATOOLBOX_HOME/models`` (default ``~/.tiatoolbox/models``);
4. a download with ``hf_hub_download`` into that same standard cache, unless
   ``HF_HUB_OFFLINE`` is set or the Hub cannot be reached.

Every source is checked the same way (:func:`verify_source`): its SHA-256 against the
entry's pin.  Environment variables are read when called, never at import.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import torch

from ..errors import CheckpointError, OfflineError
from .checkpoint import LOAD_ERRORS, file_sha256
from .registry import RegistryEntry
from .spec import one_line


@dataclass(frozen=True)
class SourceFile:
    """A model's source file as found: where (``origin``, for people), its hash and Hub revision."""

    path: Path
    origin: str  # "--from FILE", "Hugging Face cache", "download", "TIAToolbox folder"
    sha256: str
    revision: str | None = None  # the Hub commit the file belongs to, when known


def hf_cache_dir() -> Path:
    """The standard Hugging Face hub cache, read from the environment now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def tiatoolbox_models_dir() -> Path:
    """TIAToolbox's model folder: ``$TIATOOLBOX_HOME/models``, default ``~/.tiatoolbox/models``."""
    home = os.environ.get("TIATOOLBOX_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".tiatoolbox") / "models"


def _snapshot_revision(path: Path) -> str | None:
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


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


def load_foreign_weights(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        raise CheckpointError(
            f"{what} {path} cannot be read as PyTorch weights ({type(exc).__name__}: "
            f"{one_line(exc, 100) or 'no detail'}); pull it again with --force"
        ) from exc


def wsiscan_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("wsiscan")
    except metadata.PackageNotFoundError:
        return "unknown"



def verify_source(path: Path, entry: RegistryEntry, origin: str, revision: str | None = None) -> SourceFile:
    """Hash ``path`` and refuse it (one line) when the entry pins another SHA-256."""
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({origin}) for '{entry.name}': {exc.strerror or exc}") from exc
    if entry.sha256 and sha != entry.sha256.lower():
        raise CheckpointError(
            f"{path} ({origin}) has sha256 {sha}, but '{entry.name}' is pinned to {entry.sha256}: it is "
            "another file or a damaged copy; remove it and pull again, or bring the file the registry names"
        )
    return SourceFile(Path(path), origin, sha, revision)


def _hub_file(entry: RegistryEntry, filename: str) -> Path | None:
    """The file in the standard HF cache (no network), or None."""
    if entry.hf_repo_id is None:
        return None
    try:
        import huggingface_hub
    except ImportError:
        return None
    found = huggingface_hub.try_to_load_from_cache(entry.hf_repo_id, filename, cache_dir=hf_cache_dir(),
                                                   revision=entry.revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def local_sources(entry: RegistryEntry, filename: str) -> list[tuple[Path, str, str | None]]:
    out = []
    hub = _hub_file(entry, filename)
    if hub is not None:
        out.append((hub, "Hugging Face cache", _snapshot_revision(hub)))
    if entry.tiatoolbox_file and filename == entry.hf_filename:
        tia = tiatoolbox_models_dir() / entry.tiatoolbox_file
        if tia.is_file():
            out.append((tia, "TIAToolbox folder", None))
    return out


def looked_in(entry: RegistryEntry) -> str:
    """Where a source was looked for, for an error message."""
    places = [f"the Hugging Face cache {hf_cache_dir()}"]
    if entry.tiatoolbox_file:
        places.append(f"TIAToolbox's folder {tiatoolbox_models_dir()}")
    return " and ".join(places)


def _hub_repo_id(entry: RegistryEntry) -> str:
    """The entry's Hugging Face repo; :class:`CheckpointError` for an entry with another kind of source."""
    if entry.hf_repo_id is None:
        raise CheckpointError(f"model '{entry.name}' has no Hugging Face source (its source is {entry.source!r}); "
                              f"give its weights with `wsiscan models pull {entry.name} --from FILE`")
    return entry.hf_repo_id


def download_source(entry: RegistryEntry, filename: str, *, force: bool) -> Path:
    """``hf_hub_download`` into the standard cache; :class:`OfflineError` in one line when impossible."""
    repo_id = _hub_repo_id(entry)
    where = f"{entry.hf_repo_id}/{filename}" + (f" at {entry.revision}" if entry.revision else "")
    what = entry.hf_repo_id if entry.kind == "wsinfer" else f"{entry.hf_repo_id} {filename}"  # a WSInfer repo: all
    hint = (f"`hf download {what}` (or `wsiscan models pull {entry.name}`) on a connected "
            "machine and copy its ~/.cache/huggingface over (or set HF_HOME)")
    if entry.tiatoolbox_file:
        hint += f", put {entry.tiatoolbox_file} in {tiatoolbox_models_dir()}, or run " \
                f"`wsiscan models pull {entry.name} --from FILE`"
    elif entry.kind == "wsinfer":
        hint += f", or run `wsiscan models pull {entry.name} --from FOLDER` (config.json + torchscript_model.pt)"
    try:
        import huggingface_hub
    except ImportError as exc:
        raise OfflineError(f"model '{entry.name}' ({where}) is not in {looked_in(entry)} and huggingface_hub is "
                           f"not installed (pip install huggingface_hub); or run {hint}") from exc
    if _hub_offline() or not _hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else "no network"
        raise OfflineError(f"model '{entry.name}' ({where}) is not in {looked_in(entry)} and cannot be downloaded "
                           f"here ({reason}): run {hint}, or pass --model PATH to a checkpoint")
    try:
        local = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename,
                                                revision=entry.revision, cache_dir=hf_cache_dir(),
                                                force_download=force)
    except _network_errors() as exc:
        reason = f"{type(exc).__name__}: {one_line(exc, 120)}"
        raise OfflineError(f"model '{entry.name}' ({where}) could not be downloaded ({reason}): run {hint}, "
                           "or pass --model PATH to a checkpoint") from exc
    return Path(local)


@overload
def locate_source(entry: RegistryEntry, filename: str | None = None, *, force: bool = False,
                  from_file: Path | None = None, download: Literal[True] = True) -> SourceFile: ...
@overload
def locate_source(entry: RegistryEntry, filename: str | None = None, *, force: bool = False,
                  from_file: Path | None = None, download: bool) -> SourceFile | None: ...
def locate_source(entry: RegistryEntry, filename: str | None = None, *, force: bool = False,
                  from_file: Path | None = None, download: bool = True) -> SourceFile | None:
    """The entry's source file (``filename`` in its Hub repo), verified; None when it is
    not on this machine and ``download`` is False.  ``force`` skips the local copies."""
    filename = filename or entry.hf_filename
    if from_file is not None:
        if not from_file.is_file():
            what = "is a folder" if from_file.is_dir() else "no such file"
            raise CheckpointError(f"--from {from_file}: {what}; give the path of the model file ({entry.hf_filename})")
        return verify_source(from_file, entry, f"--from {from_file}")
    if not filename:
        raise CheckpointError(f"model '{entry.name}' names no file in its source {entry.source!r} (expected "
                              f"hf://OWNER/REPO/FILE); give the file with `wsiscan models pull {entry.name} --from FILE`")
    local = [] if force else local_sources(entry, filename)
    if local:  # the first found is the one used: a pinned hash it fails is refused, not skipped
        path, origin, revision = local[0]
        return verify_source(path, entry, origin, revision)
    if not download:
        return None
    path = download_source(entry, filename, force=force)
    return verify_source(path, entry, "download", _snapshot_revision(path) or entry.revision)
