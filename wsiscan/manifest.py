"""``OUT/manifest.json``: the record of the runs into one output folder.

Each run merges its slides' entries into the manifest already there, by slide folder
(``slide_id``): a slide scored again replaces its old entry, the others are kept, so a
second ``predict`` into the same OUT no longer forgets the first one's slides.  Every
entry says which run wrote it (``run_id``); the top-level fields (``run_id``,
``started``/``finished``, ``totals``, models, hashes, versions) describe the latest run,
and ``runs`` lists every run that wrote into the folder.  Writes are atomic (a temporary
file, then a rename): a reader never sees half a manifest.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from .layout import write_json_atomic

__all__ = ["MANIFEST_NAME", "new_run_id", "merge_manifest", "write_manifest_merged", "run_totals"]

MANIFEST_NAME = "manifest.json"


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


def run_totals(entries: list[dict[str, Any]], *, elapsed_s: float) -> dict[str, Any]:
    """The ``totals`` of one run's entries (the same keys as a Dask run's)."""
    def count(status: str) -> int:
        return sum(1 for e in entries if e.get("status") == status)

    patches = sum(e.get("scored_this_run") or 0 for e in entries if e.get("status") == "complete")
    done = count("complete") + count("failed")
    return {"slides": len(entries), "complete": count("complete"),
            "skipped": sum(1 for e in entries if e.get("status") == "complete" and e.get("skipped")),
            "failed": count("failed"), "pending": count("pending"),
            "retried": sum(1 for e in entries if e.get("retries")), "patches_scored": patches,
            "elapsed_s": elapsed_s, "slides_per_s": done / elapsed_s if elapsed_s > 0 else 0.0,
            "patches_per_s": patches / elapsed_s if elapsed_s > 0 else 0.0}
