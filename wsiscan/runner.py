"""The slide loop of ``tile``, ``predict`` and the Dask runs: one place for what they share.

:func:`run_slides` takes the slides of a run and a *backend* that does the work of each
(:class:`TileBackend`, :class:`InTurnBackend` here, ``distributed.DaskBackend`` on a
cluster) and owns everything around it:

* one :class:`~wsiscan.records.ManifestEntry` per slide, pending until its backend
  reports it; with ``skip_finished``, a slide whose result is finished and unchanged is
  recorded as skipped without work, and two slides that would write the same folder are
  refused (``refuse_shared_folders``);
* ``OUT/manifest.json`` written through one :class:`~wsiscan.manifest.ManifestWriter`
  before the first slide, as slides end and when the run ends (also when it is
  interrupted);
* a slide's own error (a :class:`~wsiscan.errors.WsiscanError`) is recorded and the run
  goes on to the next slide; a run of one slide raises it instead and writes nothing;
* ``on_entry(outcome, progress)`` is called as each slide ends, for the progress lines.

Backends yield :class:`SlideOutcome` values in the order slides end.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from .errors import StoreExistsError, WsiscanError
from .manifest import ManifestWriter
from .output_folder import check_writable
from .records import ManifestEntry, SlideFigures, SlideSummary

__all__ = ["SlideOutcome", "RunProgress", "SlideBackend", "TileBackend", "InTurnBackend", "run_slides"]


@dataclass(frozen=True)
class SlideOutcome:
    """How one slide of a run ended: its manifest entry, what its backend made
    (a :class:`SlideSummary` for predict, a ``TileResult`` for tile) and its error."""

    index: int
    entry: ManifestEntry
    result: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class RunProgress:
    done: int
    total: int
    patches: int
    elapsed_s: float

    @property
    def patches_per_s(self) -> float:
        return self.patches / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def slides_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


class SlideBackend(Protocol):
    """Does the work of the slides ``todo`` (index into the run's entries, job, pending entry)."""

    def run(self, todo: Sequence[tuple[int, Any, ManifestEntry]]) -> Iterator[SlideOutcome]: ...


def tile_figures(result: Any) -> SlideFigures:
    """What a run manifest records of a ``TileResult``."""
    return SlideFigures(n_tiles=int(result.n_tiles), effective_mpp=float(result.plan.geometry.effective_mpp),
                        pixel_chunks_written=int(result.n_chunks_written),
                        pixel_chunks_resumed=int(result.n_chunks_resumed), timings_s=dict(result.timings_s))


class TileBackend:
    """``wsiscan tile``: each slide's pixels into its tile store, one slide after the other."""

    def __init__(self, out_dir: str | Path, config: Any, *, overwrite: bool, progress: bool) -> None:
        self.out_dir, self.config, self.overwrite, self.progress = out_dir, config, overwrite, progress

    def run(self, todo: Sequence[tuple[int, Any, ManifestEntry]]) -> Iterator[SlideOutcome]:
        from .predict import slide_config
        from .tiling import tile_slide

        for index, job, entry in todo:
            entry = entry.replace(started=time.time(), attempts=1)
            t0 = time.perf_counter()
            try:
                r = tile_slide(job.path, self.out_dir, slide_config(self.config, job), overwrite=self.overwrite,
                               progress=self.progress, slide_id=job.slide_id)
            except WsiscanError as exc:
                yield SlideOutcome(index, entry.failed(exc, seconds=time.perf_counter() - t0), error=exc)
                continue
            yield SlideOutcome(index, entry.complete(tile_figures(r), seconds=r.timings_s["total_s"]), result=r)


class InTurnBackend:
    """Single-process ``predict``: the slides one after the other, each slide's outputs drawn
    while the next one is decoding (:func:`wsiscan.predict.predict_in_turn`)."""

    def __init__(self, out_dir: str | Path, config: Any, models: Any, *, device: Any, overwrite: bool,
                 progress: bool) -> None:
        self.out_dir, self.config, self.models, self.device = out_dir, config, models, device
        self.overwrite, self.progress = overwrite, progress

    def run(self, todo: Sequence[tuple[int, Any, ManifestEntry]]) -> Iterator[SlideOutcome]:
        from .predict import predict_in_turn, slide_config

        by_job = {id(job): (index, entry) for index, job, entry in todo}
        t0, started = time.perf_counter(), time.time()
        results = predict_in_turn([job for _, job, _ in todo], self.out_dir, self.config, self.models,
                                  device=self.device, overwrite=self.overwrite, progress=self.progress,
                                  job_config=lambda job: slide_config(self.config, job))
        for job, summary, exc in results:
            index, entry = by_job[id(job)]
            entry = entry.replace(started=started, attempts=1)
            if exc is not None or summary is None:
                error = exc if exc is not None else RuntimeError("no summary")
                yield SlideOutcome(index, entry.failed(error, seconds=time.perf_counter() - t0), error=error)
            else:
                yield SlideOutcome(index, entry.complete(summary.figures(), seconds=summary.total_s), result=summary)
            t0, started = time.perf_counter(), time.time()


def pending_entry(job: Any, *, worker: str | None, model_hash: str | None, config_hash: str | None) -> ManifestEntry:
    """The entry of a slide before its work starts (the slide's path made absolute; its id is
    the run's unique id, ``job.slide_id``)."""
    return ManifestEntry(slide=os.path.abspath(job.path), slide_id=job.slide_id, slide_mpp=job.slide_mpp,
                         worker=worker, workers=(worker,) if worker else (), model_hash=model_hash,
                         config_hash=config_hash)


def run_slides(
    jobs: Sequence[Any],
    out_dir: str | Path,
    backend: SlideBackend,
    *,
    header: dict[str, Any],
    entry_for: Callable[[Any], ManifestEntry],
    finished: Callable[[Any], SlideSummary | None] | None = None,
    refuse_shared_folders: bool = False,
    raise_single: bool = True,
    write_every_s: float = 0.0,
    on_entry: Callable[[SlideOutcome, RunProgress], None] | None = None,
) -> dict[str, Any]:
    """Run ``backend`` over ``jobs`` (``SlideJob`` values); returns the run's manifest (JSON form).

    ``entry_for(job)``: the slide's pending entry.  ``finished(job)``: the finished and
    unchanged result of a slide, recorded as skipped without work (None: do it).
    ``raise_single``: a run of one slide raises that slide's WsiscanError instead of
    returning, and writes no manifest (a failed single-slide run leaves nothing behind).
    """
    t_start = time.perf_counter()
    writer = ManifestWriter(out_dir, header, every_s=write_every_s)
    entries: list[ManifestEntry] = []
    todo: list[tuple[int, Any, ManifestEntry]] = []
    owner: dict[str, str] = {}
    done_now: list[SlideOutcome] = []
    for job in jobs:
        entry = entry_for(job)
        index = len(entries)
        entries.append(entry)
        if refuse_shared_folders and entry.slide_id in owner:
            error = StoreExistsError(
                f"{job.path}: writes to the same folder {Path(out_dir) / entry.slide_id} as {owner[entry.slide_id]}; "
                f"rename one of the files or score them into separate -o folders")
            done_now.append(SlideOutcome(index, entry.failed(error), error=error))
            continue
        owner[entry.slide_id] = str(job.path)
        summary = finished(job) if finished is not None else None
        if summary is not None:  # finished and unchanged: no work
            figures = dataclasses.replace(summary.figures(), scored_this_run=0, pixel_chunks_written=0)
            done_now.append(SlideOutcome(index, entry.complete(figures, skipped=True, seconds=0.0, finished=None),
                                         result=summary))
            continue
        todo.append((index, job, entry))

    n_done, patches = 0, 0

    def record(outcome: SlideOutcome) -> None:
        nonlocal n_done, patches
        entries[outcome.index] = outcome.entry
        n_done += 1
        if not outcome.entry.skipped:
            patches += outcome.entry.scored_this_run
        if on_entry is not None:
            on_entry(outcome, RunProgress(n_done, len(entries), patches, time.perf_counter() - t_start))

    for outcome in done_now:
        record(outcome)
    # a run of one slide that fails writes nothing; any other run is recorded from its start
    recording = bool(done_now) or not raise_single or len(jobs) > 1
    if recording:
        check_writable(Path(out_dir))  # OutputError in one line, before the first slide
        writer.write(entries, elapsed_s=time.perf_counter() - t_start, force=True)
    single_error: BaseException | None = None
    run: dict[str, Any] | None = None
    try:
        if todo:
            for outcome in backend.run(todo):
                if outcome.error is not None and raise_single and len(jobs) == 1:
                    single_error = outcome.error
                    break
                record(outcome)
                recording = True
                writer.write(entries, elapsed_s=time.perf_counter() - t_start)
    finally:
        if recording:
            run = writer.write(entries, elapsed_s=time.perf_counter() - t_start, finished=True)
    if single_error is not None:
        raise single_error
    return run if run is not None else {}
