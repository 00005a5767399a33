"""``OUT/manifest.json``: the record of the runs into one output folder.

Each run merges its slides' entries into the manifest already there, by slide folder
(``slide_id``): a slide scored again replaces its old entry, the others are kept, so a
second ``predict`` into the same OUT no longer forgets the first one's slides.  Every
entry says which run wrote it (``run_id``); the top-level fields (``run_id``,
``started``/``finished``, ``totals``, models, hashes, versions) describe the latest run,
and ``runs`` lists every run that wrote into the folder.  Writes are atomic (a temporary
file, then a rename): a reader never sees half a manifest.

:class:`ManifestWriter` is the one writer: ``tile``, ``predict`` and the Dask runs (all
through :func:`wsiscan.runner.run_slides`) record their slides as
:class:`~wsiscan.records.ManifestEntry` values and their totals as
:class:`~wsiscan.records.RunTotals`, so every mode writes the same entries.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from .layout import MANIFEST_NAME, write_json_atomic
from .records import ManifestEntry, RunTotals

__all__ = ["MANIFEST_NAME", "new_run_id", "merge_manifest", "write_manifest_merged", "run_header", "ManifestWriter"]


def new_run_id() -> str:
    """A run id: UTC-free local timestamp and 8 hex digits (as the Dask runs have them)."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _read(path: Path) -> dict[str, Any]:
    """The manifest at ``path``; {} when there is none or it cannot be read (it is then rewritten)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("slides", []), list) else {}


def merge_manifest(previous: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """``run``'s manifest with the entries of ``previous`` for slides it does not have.

    Slides are matched by ``slide_id`` (their output folder), else by ``slide`` path.
    Entries of this run carry its ``run_id``; ``runs`` accumulates (run_id, started, finished).
    """
    run_id = run.get("run_id")
    mine = [{**e, "run_id": e.get("run_id", run_id)} for e in run.get("slides", [])]
    keys = {e.get("slide_id") or e.get("slide") for e in mine}
    kept = [e for e in previous.get("slides", []) if isinstance(e, dict) and (e.get("slide_id") or e.get("slide"))
            not in keys]
    runs = [r for r in previous.get("runs", []) if isinstance(r, dict) and r.get("run_id") != run_id]
    runs.append({"run_id": run_id, "command": run.get("command"), "started": run.get("started"),
                 "finished": run.get("finished"), "slides": len(mine)})
    return {**run, "slides": kept + mine, "runs": runs}


def write_manifest_merged(out_dir: str | Path, run: dict[str, Any]) -> dict[str, Any]:
    """Merge ``run`` into ``OUT/manifest.json`` (see :func:`merge_manifest`), atomically; returns what was written."""
    path = Path(out_dir) / MANIFEST_NAME
    merged = merge_manifest(_read(path), run)
    write_json_atomic(merged, path)
    return merged


def run_header(command: str, *, models: Sequence[dict[str, Any]] = (), model_hash: str | None = None,
               config_hash: str | None = None, cluster: str | None = None, n_workers: int = 1,
               retries: int = 0) -> dict[str, Any]:
    """The top-level fields of a run's manifest (the slides and totals are added as it goes)."""
    from .config import runtime_versions

    return {"command": command, "run_id": new_run_id(), "cluster": cluster, "scheduler": None, "dashboard": None,
            "n_workers": n_workers, "retries": retries, "models": list(models), "model_hash": model_hash,
            "config_hash": config_hash, "versions": runtime_versions(), "started": time.time(), "finished": None}


class ManifestWriter:
    """Writes one run's entries and totals into ``OUT/manifest.json`` (merged, atomically).

    ``every_s``: rewrite at most this often unless forced (a run of many slides rewrites
    O(slides) per write); the last write of a run is always forced.
    """

    def __init__(self, out_dir: str | Path, header: dict[str, Any], *, every_s: float = 0.0) -> None:
        self.out_dir = Path(out_dir)
        self.header = header  # the caller may add to it while the run goes (Dask: the scheduler's address)
        self.every_s = every_s
        self._last = -float("inf")

    def write(self, entries: Sequence[ManifestEntry], *, elapsed_s: float, force: bool = False,
              finished: bool = False) -> dict[str, Any] | None:
        """Merge the run into the manifest; returns the run's manifest (None when not due yet)."""
        now = time.perf_counter()
        if not (force or finished) and now - self._last < self.every_s:
            return None
        if finished:
            self.header["finished"] = time.time()
        run = {**self.header, "slides": [e.to_json() for e in entries],
               "totals": RunTotals.of(entries, elapsed_s=elapsed_s).to_json()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest_merged(self.out_dir, run)
        self._last = now
        return run
