"""The output folder's layout and its atomic writers: every file name in ``OUT`` lives here.

``OUT/`` holds one folder per slide and the run record::

    OUT/manifest.json                 every slide of every run into OUT (wsiscan.manifest)
    OUT/.wsiscan-attempts/<run-id>/   Dask attempt markers, removed when the run ends
    OUT/<slide-id>/store.zarr         the tile store: pixels, grids, heatmap (wsiscan.store)
    OUT/<slide-id>/qc.png             tissue mask and kept tiles
    OUT/<slide-id>/overlay.png        heatmap over the slide
    OUT/<slide-id>/tumor.geojson      regions above the threshold (QuPath)
    OUT/<slide-id>/summary.json       the commit record of a finished result (wsiscan.records)
    OUT/<slide-id>/summary.wav        the spoken summary (``--speak-wav``)

A file is written beside its final name (a hidden temporary file in the same folder),
flushed to disk and renamed over the final name (:func:`os.replace`), so a reader sees the
old file or the new one, never half of one.  Every writer of a result file goes through
:func:`atomic_path` or one of the ``write_*_atomic`` functions built on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "STORE_NAME", "SUMMARY_NAME", "OVERLAY_NAME", "GEOJSON_NAME", "QC_NAME", "MANIFEST_NAME", "ATTEMPTS_DIR",
    "WORK_DIR", "WORK_SUBDIRS", "lock_path", "staging_dir", "trash_dir", "swap_journal_path",
    "SPEECH_WAV_NAME", "RESULT_FILES", "MEDIA_TYPES", "json_default", "atomic_path", "write_json_atomic",
    "write_text_atomic", "write_png_atomic", "PNG_COMPRESS_LEVEL", "write_figure_atomic", "write_geojson_atomic", "slide_dir_for",
    "store_path", "summary_path", "is_result_folder", "has_store", "result_folders", "exported_geojson_name",
]

STORE_NAME = "store.zarr"
SUMMARY_NAME = "summary.json"
OVERLAY_NAME = "overlay.png"
GEOJSON_NAME = "tumor.geojson"
QC_NAME = "qc.png"
SPEECH_WAV_NAME = "summary.wav"
MANIFEST_NAME = "manifest.json"
ATTEMPTS_DIR = ".wsiscan-attempts"
WORK_DIR = ".wsiscan"  # OUT/.wsiscan: the slide locks and the builds not yet swapped in (wsiscan.staging)
LOCKS_SUBDIR, PARTIAL_SUBDIR, TRASH_SUBDIR = "locks", "partial", "trash"
WORK_SUBDIRS = (LOCKS_SUBDIR, PARTIAL_SUBDIR, TRASH_SUBDIR)  # what OUT/.wsiscan holds

# the files of a finished predict result that the summary lists under ``outputs`` (key -> name)
RESULT_FILES = {"overlay": OVERLAY_NAME, "geojson": GEOJSON_NAME, "qc": QC_NAME, "store": STORE_NAME}

# the files of a slide folder a web page may fetch, with their media types
MEDIA_TYPES = {
    QC_NAME: "image/png",
    OVERLAY_NAME: "image/png",
    GEOJSON_NAME: "application/geo+json",
    SUMMARY_NAME: "application/json",
    SPEECH_WAV_NAME: "audio/wav",
}


def exported_geojson_name(threshold: float) -> str:
    """The default name of regions exported at another threshold (the napari panel's export)."""
    return f"tumor-p{round(threshold * 100):02d}.geojson"


# -- where things are -----------------------------------------------------------------------
def slide_dir_for(out_dir: str | Path, slide_path: str | Path) -> Path:
    """``OUT/<slide-id>``: the folder of a slide's outputs (the id from :func:`wsiscan.slide_ids.slide_id_for`)."""
    from .slide_ids import slide_id_for

    return Path(out_dir) / slide_id_for(slide_path)


def lock_path(out_dir: str | Path, slide_id: str) -> Path:
    """``OUT/.wsiscan/locks/<slide-id>.lock``: the slide's lock (:mod:`wsiscan.slide_lock`)."""
    return Path(out_dir) / WORK_DIR / LOCKS_SUBDIR / f"{slide_id}.lock"


def staging_dir(out_dir: str | Path, slide_id: str) -> Path:
    """``OUT/.wsiscan/partial/<slide-id>``: where a run over an existing result builds (:mod:`wsiscan.staging`)."""
    return Path(out_dir) / WORK_DIR / PARTIAL_SUBDIR / slide_id


def swap_journal_path(out_dir: str | Path, slide_id: str) -> Path:
    """``OUT/.wsiscan/partial/<slide-id>.swap``: the record of a swap in progress."""
    return Path(out_dir) / WORK_DIR / PARTIAL_SUBDIR / f"{slide_id}.swap"


def trash_dir(out_dir: str | Path, slide_id: str) -> Path:
    """``OUT/.wsiscan/trash/<slide-id>``: a replaced result until it is removed."""
    return Path(out_dir) / WORK_DIR / TRASH_SUBDIR / slide_id


def store_path(slide_dir: str | Path) -> Path:
    return Path(slide_dir) / STORE_NAME


def summary_path(slide_dir: str | Path) -> Path:
    return Path(slide_dir) / SUMMARY_NAME


def is_result_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a finished predict result (its ``summary.json`` is written last)."""
    return (Path(path) / SUMMARY_NAME).is_file()


def has_store(path: str | Path) -> bool:
    """Whether ``path`` holds a tile store (finished or not)."""
    from .store import store_exists

    return store_exists(Path(path) / STORE_NAME)


def result_folders(out_dir: str | Path) -> list[Path]:
    """The slide folders directly under ``out_dir`` that hold a summary or a tile store, by name."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return [d for d in sorted(out.iterdir()) if d.is_dir() and (is_result_folder(d) or has_store(d))]


# -- atomic writes -----------------------------------------------------------------------------
def json_default(value: Any) -> Any:
    """The JSON form of the values results hold besides JSON's own: numpy scalars and arrays,
    tuples, sets and paths.  Every JSON writer of wsiscan uses it."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is synced and renamed
    over ``path``, on any error removed (``path`` is left as it was).

    ``suffix`` ends the temporary name, for writers that choose the format by extension
    (matplotlib's ``savefig``).  The name is unique per process and thread.
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:6]}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def write_text_atomic(text: str, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(data: Any, path: str | Path, *, indent: int | None = 2) -> Path:
    """``data`` as JSON (numpy values, tuples and paths through :func:`json_default`), atomically."""
    return write_text_atomic(json.dumps(data, indent=indent, default=json_default), path)


def write_geojson_atomic(collection: dict[str, Any], path: str | Path) -> Path:
    """A GeoJSON FeatureCollection, atomically; refuses anything else (a programming error)."""
    if collection.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: a GeoJSON file holds a FeatureCollection, got type {collection.get('type')!r}")
    return write_json_atomic(collection, path)


# zlib level of the PNGs wsiscan writes (qc.png, overlay.png): level 1 compresses a 2000 px picture
# in about half the time of PIL's default 6, for files about 10 % larger; the pixels are the same
PNG_COMPRESS_LEVEL = 1


def write_png_atomic(image: Any, path: str | Path) -> Path:
    """A PIL image as PNG, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def write_figure_atomic(save: Callable[[Path], Any], path: str | Path) -> Path:
    """Call ``save(tmp)`` (e.g. a matplotlib figure's ``savefig``) and rename the file it wrote
    over ``path``; the temporary name ends in ``path``'s own suffix so the format follows it."""
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        save(tmp)
    return Path(path)
