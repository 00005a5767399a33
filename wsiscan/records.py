"""The result records: ``summary.json`` of a slide, the manifest's entry of a slide, a run's totals.

Each record is a frozen dataclass written (``to_json``) and read (``from_json``) here and
nowhere else, so that ``predict``, ``tile``, the Dask client, the CLI, the napari plugin
and the web viewer agree on one shape.  ``summary.json`` carries ``schema_version``
(:data:`SCHEMA_VERSION`):

* a summary without it was written before the field existed; its shape is this one, so
  it is read as version 1 when it holds the blocks every reader needs;
* a summary of a newer version, or one that lacks a needed block, is refused with one
  line naming the file and the fix (:class:`~wsiscan.errors.RecordError`).

The nested blocks of a summary (``scores``, ``regions``, ``areas``, ``tiles`` ...) stay
JSON objects (read-only mappings), documented in the README's "Output layout"; the
figures a run manifest and the progress lines use have typed properties.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .errors import RecordError

__all__ = ["SCHEMA_VERSION", "SlideSummary", "SlideFigures", "ManifestEntry", "RunTotals", "read_summary",
           "read_summary_data", "summary_or_none", "summary_threshold"]

SCHEMA_VERSION = 1

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


def _frozen(value: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else _EMPTY


def _plain(value: Any) -> Any:
    """A record's value as JSON data: read-only mappings become dicts, tuples lists (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# the blocks of a summary, in the order summary.json lists them; ``None``: the block may be absent
_SUMMARY_BLOCKS = ("slide", "mpp", "resolution", "scores", "regions", "areas", "exports", "classes", "tiles",
                   "heatmap", "timings_s", "throughput", "store", "device", "config", "versions", "outputs",
                   "speech")
_REGION_SETTINGS = ("threshold", "top_k", "min_region_area_um2", "simplify_tolerance_um")
# the blocks (and keys in them) every reader of a summary needs
_NEEDED = {"resolution": ("effective_mpp",), "scores": ("max_probability", "top_k_mean_probability",
                                                         "tumour_area_mm2"),
           "regions": ("n",), "tiles": ("n_tiles",)}


@dataclass(frozen=True)
class SlideSummary:
    """``OUT/<slide-id>/summary.json``: the commit record of a finished predict result."""

    slide_id: str
    resolution: Mapping[str, Any]
    scores: Mapping[str, Any]
    regions: Mapping[str, Any]
    tiles: Mapping[str, Any]
    slide: Mapping[str, Any] = field(default_factory=_empty)  # the slide file's fingerprint: path, size_bytes, mtime_ns, quick_sha256
    mpp: Mapping[str, Any] = field(default_factory=_empty)
    areas: Mapping[str, Any] = field(default_factory=_empty)
    heatmap: Mapping[str, Any] = field(default_factory=_empty)
    timings_s: Mapping[str, Any] = field(default_factory=_empty)
    exports: Mapping[str, Any] = field(default_factory=_empty)
    classes: Mapping[str, Any] | None = None
    throughput: Mapping[str, Any] = field(default_factory=_empty)
    store: Mapping[str, Any] = field(default_factory=_empty)
    device: Mapping[str, Any] = field(default_factory=_empty)
    config: Mapping[str, Any] = field(default_factory=_empty)
    versions: Mapping[str, Any] = field(default_factory=_empty)
    outputs: Mapping[str, Any] = field(default_factory=_empty)
    speech: Mapping[str, Any] | None = None
    smoke_model: bool = False
    models: tuple[Mapping[str, Any], ...] = ()
    model_hash: str | None = None
    config_hash: str | None = None
    precision: str | None = None
    batch_size: int | None = None
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=_empty)  # keys this version does not know, kept as they are

    # -- read like the JSON object it is written as (summary["tiles"]["n_tiles"]) ---------------
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_json()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)

    # -- the figures a manifest entry and the progress lines show --------------------------
    @property
    def n_tiles(self) -> int:
        return int(self.tiles["n_tiles"])

    @property
    def effective_mpp(self) -> float:
        return float(self.resolution["effective_mpp"])

    @property
    def n_regions(self) -> int:
        return int(self.regions["n"])

    def score(self, key: str) -> float | None:
        """A figure of the ``scores`` block as a float (None when it is null or absent)."""
        return _float_or_none(self.scores.get(key))

    max_probability = property(lambda self: self.score("max_probability"), doc="scores.max_probability")
    top_k_mean_probability = property(lambda self: self.score("top_k_mean_probability"),
                                      doc="scores.top_k_mean_probability")
    tumour_area_mm2 = property(lambda self: self.score("tumour_area_mm2"), doc="scores.tumour_area_mm2")
    threshold = property(lambda self: summary_threshold(self.to_json()),
                         doc="The threshold the summary's figures were computed at (see summary_threshold).")

    def region_settings(self) -> dict[str, Any]:
        """The run's own threshold and region settings (``config.predict``: threshold, top_k,
        min_region_area_um2, simplify_tolerance_um), those it records; the threshold falls
        back to the one the scores were computed at."""
        run = self.config.get("predict")
        settings = {k: run[k] for k in _REGION_SETTINGS if k in run} if isinstance(run, Mapping) else {}
        if "threshold" not in settings and self.threshold is not None:
            settings["threshold"] = self.threshold
        return settings

    @property
    def total_s(self) -> float | None:
        return _float_or_none(self.timings_s.get("total_s"))

    @property
    def model_names(self) -> list[str]:
        return [str(m["model"]) for m in self.models if m.get("model")]

    def figures(self) -> SlideFigures:
        """What a run manifest records of this result."""
        tiles = self.tiles
        return SlideFigures(
            n_tiles=self.n_tiles, scored_this_run=int(tiles.get("scored_this_run") or 0),
            resumed_tiles=int(tiles.get("resumed_tiles") or 0),
            pixel_chunks_written=int(tiles.get("pixel_chunks_written") or 0),
            pixel_chunks_resumed=int(tiles.get("pixel_chunks_resumed") or 0), effective_mpp=self.effective_mpp,
            max_probability=self.max_probability, top_k_mean_probability=self.top_k_mean_probability,
            tumour_area_mm2=self.tumour_area_mm2, n_regions=self.n_regions, timings_s=self.timings_s)

    def with_blocks(self, **blocks: Any) -> SlideSummary:
        """This summary with some top-level blocks replaced (``heatmap --threshold``, ``--speak``)."""
        return SlideSummary.from_json({**self.to_json(), **blocks})

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version, "slide": _plain(self.slide),
                               "slide_id": self.slide_id}
        for name in _SUMMARY_BLOCKS:
            value = getattr(self, name)
            if name == "slide" or value is None or (not value and name not in _NEEDED):
                continue  # a block an older summary did not have stays absent
            out[name] = _plain(value)
            if name == "areas":
                out["smoke_model"] = self.smoke_model
        out.setdefault("smoke_model", self.smoke_model)
        out.update(models=_plain(self.models), model_hash=self.model_hash, config_hash=self.config_hash,
                   precision=self.precision, batch_size=self.batch_size)
        out.update(_plain(self.extra))
        return out

    @classmethod
    def from_json(cls, data: Any, *, source: str | Path = "summary.json") -> SlideSummary:
        """The record of ``data`` (a parsed summary.json); RecordError names ``source`` and the fix."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{source}: is not a wsiscan summary (a JSON object); rerun `wsiscan predict` on the "
                              f"slide to rewrite it")
        version = data.get("schema_version", 1)  # no version: written before the field, in this shape
        if not isinstance(version, int) or version < 1:
            raise RecordError(f"{source}: has schema_version {version!r}, not a wsiscan summary version; rerun "
                              f"`wsiscan predict` on the slide to rewrite it")
        if version > SCHEMA_VERSION:
            raise RecordError(f"{source}: was written by a newer wsiscan (summary schema {version}; this one reads "
                              f"up to {SCHEMA_VERSION}); upgrade wsiscan or rerun `wsiscan predict` on the slide")
        missing = [f"{block}.{key}" if block in data else block for block, keys in _NEEDED.items()
                   for key in keys if not isinstance(data.get(block), Mapping) or key not in data[block]]
        if not isinstance(data.get("slide_id"), str):
            missing.insert(0, "slide_id")
        if missing:
            raise RecordError(f"{source}: is not a complete wsiscan summary (no {', '.join(dict.fromkeys(missing))}); "
                              f"rerun `wsiscan predict` on the slide to rewrite it")
        known = {f.name for f in fields(cls)} - {"extra"}
        blocks = {name: _frozen(data[name]) for name in _SUMMARY_BLOCKS if isinstance(data.get(name), Mapping)}
        models = data.get("models")
        return cls(
            slide_id=str(data["slide_id"]), **blocks,
            smoke_model=bool(data.get("smoke_model", False)),
            models=tuple(_frozen(m) for m in models if isinstance(m, Mapping)) if isinstance(models, list) else (),
            model_hash=_str_or_none(data.get("model_hash")), config_hash=_str_or_none(data.get("config_hash")),
            precision=_str_or_none(data.get("precision")),
            batch_size=data["batch_size"] if isinstance(data.get("batch_size"), int) else None,
            schema_version=SCHEMA_VERSION,
            extra=MappingProxyType({k: v for k, v in data.items() if k not in known}),
        )

    def write(self, path: str | Path) -> Path:
        """Write this summary to ``path`` atomically (:func:`wsiscan.layout.write_json_atomic`)."""
        from .layout import write_json_atomic

        return write_json_atomic(self.to_json(), path)


def read_summary_data(path: str | Path) -> dict[str, Any]:
    """The JSON object of the summary at ``path`` (a summary.json or its slide folder), unchecked.

    RecordError (one line: the file, what is wrong, the fix) when it is missing, unreadable
    or not a JSON object.  :func:`read_summary` checks its shape too.
    """
    from .layout import SUMMARY_NAME

    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY_NAME
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise RecordError(f"{p}: no summary; the result is not finished, rerun `wsiscan predict` on the slide") from exc
    except OSError as exc:
        raise RecordError(f"{p}: cannot be read ({exc.strerror or exc}); check the file's permissions") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"{p}: is not valid JSON ({exc}); rerun `wsiscan predict` on the slide to rewrite it") \
            from exc
    if not isinstance(data, dict):
        raise RecordError(f"{p}: is not a wsiscan summary (a JSON object); rerun `wsiscan predict` on the slide "
                          f"to rewrite it")
    return data


def read_summary(path: str | Path) -> SlideSummary:
    """The summary at ``path`` (a summary.json or the slide folder holding one).

    RecordError (one line: the file, what is wrong, the fix) when it is missing, not JSON,
    of a newer schema or lacking a block every reader needs.
    """
    from .layout import SUMMARY_NAME

    p = Path(path)
    return SlideSummary.from_json(read_summary_data(p), source=p / SUMMARY_NAME if p.is_dir() else p)


def summary_threshold(data: Mapping[str, Any]) -> float | None:
    """The threshold a summary's regions and scores were computed at (``regions.threshold``, else
    ``scores.threshold``): predict's, or the last ``wsiscan heatmap --threshold``'s."""
    for block in ("regions", "scores"):
        part = data.get(block)
        if isinstance(part, Mapping) and part.get("threshold") is not None:
            return float(part["threshold"])
    return None


def summary_or_none(path: str | Path) -> SlideSummary | None:
    """The summary at ``path``, or None when there is none or it cannot be read as one."""
    try:
        return read_summary(path)
    except RecordError:
        return None


@dataclass(frozen=True)
class SlideFigures:
    """The figures of a slide's result that a run manifest records (tile: no probabilities)."""

    n_tiles: int
    effective_mpp: float
    scored_this_run: int | None = None
    resumed_tiles: int | None = None
    pixel_chunks_written: int = 0
    pixel_chunks_resumed: int = 0
    max_probability: float | None = None
    top_k_mean_probability: float | None = None
    tumour_area_mm2: float | None = None
    n_regions: int | None = None
    timings_s: Mapping[str, Any] = field(default_factory=_empty)

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SlideFigures | None:
        """The figures of a manifest entry's JSON; None when it has none (pending, failed)."""
        if data.get("n_tiles") is None or data.get("effective_mpp") is None:
            return None
        values: dict[str, Any] = {f.name: data[f.name] for f in fields(cls)
                                  if f.name in data and data[f.name] is not None}
        values["timings_s"] = _frozen(data.get("timings_s"))
        return cls(**values)


_STATUSES = ("pending", "complete", "failed")


@dataclass(frozen=True)
class ManifestEntry:
    """One slide of a run in ``OUT/manifest.json``, the same in ``tile``, ``predict`` and on Dask.

    ``status``: pending, complete or failed.  ``skipped``: finished and unchanged earlier,
    not redone.  ``attempts``: how often a task started for it (Dask retries after a worker
    died); ``workers``: where.  ``figures``: the result's numbers, when complete.
    """

    slide: str
    slide_id: str
    status: str = "pending"
    slide_mpp: float | None = None
    skipped: bool = False
    error: str | None = None
    error_type: str | None = None
    worker: str | None = None
    host: str | None = None
    pid: int | None = None
    attempts: int = 0
    retries: int = 0
    workers: tuple[str, ...] = ()
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    model_hash: str | None = None
    config_hash: str | None = None
    run_id: str | None = None
    figures: SlideFigures | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}, got {self.status!r}")

    def failed(self, exc: BaseException, *, error: str | None = None, **changes: Any) -> ManifestEntry:
        """This entry as failed by ``exc`` (its message, or ``error``)."""
        return self.replace(**{"status": "failed", "error": error if error is not None else str(exc),
                               "error_type": type(exc).__name__, "finished": time.time(), **changes})

    def complete(self, figures: SlideFigures, **changes: Any) -> ManifestEntry:
        return self.replace(**{"status": "complete", "figures": figures, "error": None, "error_type": None,
                               "finished": time.time(), **changes})

    def replace(self, **changes: Any) -> ManifestEntry:
        import dataclasses

        return dataclasses.replace(self, **changes)

    @property
    def scored_this_run(self) -> int:
        if self.figures is None or self.status != "complete":
            return 0
        return self.figures.scored_this_run or 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "figures":
                out.update(value.to_json() if value is not None else {})
            elif f.name in ("host", "pid", "run_id") and value is None:
                continue  # where a slide ran is known on Dask only; merge_manifest adds the run id
            else:
                out[f.name] = _plain(value)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestEntry:
        names = {f.name for f in fields(cls)} - {"figures", "workers"}
        kwargs = {k: data[k] for k in names if k in data}
        status = kwargs.get("status")
        if status not in _STATUSES:
            kwargs["status"] = "failed" if data.get("error") else "pending"
        workers = data.get("workers")
        return cls(**kwargs, workers=tuple(str(w) for w in workers) if isinstance(workers, list) else (),
                   figures=SlideFigures.from_json(data))


@dataclass(frozen=True)
class RunTotals:
    """A run's ``totals`` in the manifest: counts of its entries and its speed."""

    slides: int
    complete: int
    skipped: int
    failed: int
    pending: int
    retried: int
    patches_scored: int
    elapsed_s: float
    slides_per_s: float
    patches_per_s: float

    @classmethod
    def of(cls, entries: Iterable[ManifestEntry], *, elapsed_s: float) -> RunTotals:
        es = list(entries)
        complete = sum(e.status == "complete" for e in es)
        failed = sum(e.status == "failed" for e in es)
        patches = sum(e.scored_this_run for e in es)
        return cls(slides=len(es), complete=complete, skipped=sum(e.status == "complete" and e.skipped for e in es),
                   failed=failed, pending=sum(e.status == "pending" for e in es),
                   retried=sum(1 for e in es if e.retries), patches_scored=patches, elapsed_s=elapsed_s,
                   slides_per_s=(complete + failed) / elapsed_s if elapsed_s > 0 else 0.0,
                   patches_per_s=patches / elapsed_s if elapsed_s > 0 else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)

