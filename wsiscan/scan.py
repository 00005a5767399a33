"""The streaming scan engine: one pipeline behind ``tile`` and ``predict``.

Stages run concurrently, joined by bounded queues (memory stays flat whatever the
slide size)::

    plan (thumbnail, tissue, grid)        main thread, while the device side is prepared
      -> decode      store chunks, in worker threads (one slide handle each), row-major;
                     a chunk already in the store is read from it instead
      -> pixels      optional: a writer behind the stream keeps the decoded chunks in
                     the store; the stream never reads them back
      -> units       regions of U x U tiles cut from the decoded chunks (a small cache
                     holds a chunk until the last unit that overlaps it has been cut)
      -> device      :class:`wsiscan.inference.DeviceScorer`: uint8 -> model input in one
                     step, batches of one size, probabilities kept on the device
      -> heatmap     a writer thread writes each heatmap chunk once all its units are
                     scored (the unit of resume)

The pixels of a unit are exactly those a store read would give (each store chunk is
decoded by the same call, and glass outside ``chunks_needed`` is white, the store's
fill value), so a streamed heatmap equals one made from stored pixels bit for bit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Generator, Iterator

import numpy as np

from . import decode
from .decode import CHUNKS_PER_WRITE, chunk_runs, read_chunks, write_pixels
from .grid import paste_overlap
from .heap import BufferPool, bound_heap
from .inference import UnitPlan
from .rowimage import WorkingFile
from .slide import Slide
from .store import TileStore
from .store_meta import decode_record
from .tiling import TilingPlan, open_configured_slide

__all__ = ["Pipeline", "ScanStats", "units_with_work", "stream_chunks", "stream_units", "scan_slide"]

_END = object()


class _Aborted(Exception):
    """Another stage failed: this one stops quietly (the first error is raised by ``join``)."""


class Channel:
    """A bounded queue whose waits give up when the pipeline is aborted."""

    def __init__(self, pipeline: "Pipeline", maxsize: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._abort = pipeline.abort

    def put(self, item: Any) -> None:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self) -> Any:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                return self._q.get(timeout=0.05)
            except queue.Empty:
                continue

    def __iter__(self) -> Iterator[Any]:
        while (item := self.get()) is not _END:
            yield item

    def close(self, n_readers: int = 1) -> None:
        for _ in range(n_readers):
            self.put(_END)


class Pipeline:
    """Threads of one scan; the first error (any ``BaseException``) aborts all and is re-raised by ``join``."""

    def __init__(self) -> None:
        self.abort = threading.Event()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def channel(self, maxsize: int) -> Channel:
        return Channel(self, maxsize)

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, _Aborted):
            self._errors.append(exc)
        self.abort.set()

    def start(self, name: str, fn: Callable[[], None]) -> None:
        def body() -> None:
            try:
                fn()
            except BaseException as exc:
                self.fail(exc)

        t = threading.Thread(target=body, name=f"wsiscan-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def join(self) -> None:
        for t in self._threads:
            t.join()
        if self._errors:
            raise self._errors[0]


@dataclass
class ScanStats:
    chunks_needed: int = 0  # pixel chunks of the plan (``chunks_needed``)
    chunks_resumed: int = 0  # of those, in the store before this run
    chunks_decoded: int = 0
    chunks_from_store: int = 0  # chunks the stream read from the store
    chunks_written: int = 0  # pixel chunks kept in the store by this run
    decoded_bytes: int = 0  # bytes decoded at the level read
    glass_skipped_bytes: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def pixels_complete(self) -> bool:
        """Whether every needed chunk is in the store after this run."""
        return self.chunks_resumed + self.chunks_written == self.chunks_needed


def units_with_work(plan: UnitPlan, kept_rc: np.ndarray, hm_chunk_done: Callable[[int, int], bool]
                    ) -> tuple[list[tuple[int, int]], list[np.ndarray], dict[tuple[int, int], int], int]:
    """Group the kept tiles whose heatmap chunk is not yet written into units.

    Returns (units row-major, each unit's (k, 2) tile row/col, units per heatmap chunk,
    tiles already scored).  A unit's tiles all lie in one heatmap chunk (a chunk is
    K x K units).
    """
    hc, u = plan.hm_chunk, plan.tiles_per_unit
    kept_rc = np.asarray(kept_rc, np.int64).reshape(-1, 2)
    unit_r, unit_c = kept_rc[:, 0] // u, kept_rc[:, 1] // u
    order = np.lexsort((kept_rc[:, 1], kept_rc[:, 0], unit_c, unit_r))
    kept_rc, unit_r, unit_c = kept_rc[order], unit_r[order], unit_c[order]
    keys = unit_r * (plan.n_cols // u + 2) + unit_c
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(keys)]
    units: list[tuple[int, int]] = []
    tiles: list[np.ndarray] = []
    per_chunk: dict[tuple[int, int], int] = {}
    done_cache: dict[tuple[int, int], bool] = {}
    resumed = 0
    for a, b in zip(starts, ends, strict=True):
        ur, uc = int(unit_r[a]), int(unit_c[a])
        chunk = (ur * u // hc, uc * u // hc)
        if chunk not in done_cache:
            done_cache[chunk] = hm_chunk_done(*chunk)
        if done_cache[chunk]:
            resumed += int(b - a)
            continue
        units.append((ur, uc))
        tiles.append(kept_rc[a:b])
        per_chunk[chunk] = per_chunk.get(chunk, 0) + 1
    return units, tiles, per_chunk, resumed


def stream_chunks(tplan: TilingPlan, store: TileStore, chunks: list[tuple[int, int]], *, workers: int,
                  stats: ScanStats, tile_keep: np.ndarray | None, stored: Collection[tuple[int, int]],
                  max_run: int = CHUNKS_PER_WRITE) -> Iterator[tuple[tuple[int, int], np.ndarray, bool]]:
    """Yield ((ci, cj), pixels, decoded) for ``chunks`` in row-major order.

    A chunk in ``stored`` (those the store holds) is read from the store (``decoded``
    False); the others are decoded from the slide by ``workers`` threads, each with its
    own slide handle, in runs of up to ``max_run`` neighbours (one read call each, as
    ``tile`` stores them).  At most ``2 * workers`` runs are in flight.  ``tile_keep``:
    the TIFF tiles to decode (``TilingPlan.glass_tile_keep``; None decodes every tile).
    """
    runs = chunk_runs(sorted(chunks), max_len=max_run, from_store=stored)
    sel, geo, s = tplan.selection, tplan.geometry, tplan.geometry.supertile_px
    local = threading.local()
    handles: list[Slide] = []
    lock = threading.Lock()
    n_workers = max(1, workers)
    # decoded chunks are read into buffers used again once the stages behind have let go of
    # them (each fresh 1.7 MB buffer cost ~430 page faults and an unmap): about as many as
    # the runs in flight hold
    buffers = BufferPool(s * s * 3, max_free=2 * n_workers * max_run + 2)

    def work(run: tuple[int, int, int, bool]) -> tuple[list[np.ndarray], int, int]:
        """The run's chunks, one array each (a run decoded is never joined into one array)."""
        ci, cj0, cj1, from_store = run
        if from_store:
            x0, y0, _, y1 = geo.chunk_box_px(ci, cj0)
            x1 = geo.chunk_box_px(ci, cj1 - 1)[2]
            data = np.asarray(store.pixels[y0:y1, x0:x1])
            return [data[:, (cj - cj0) * s : (cj - cj0 + 1) * s] for cj in range(cj0, cj1)], 0, 0
        slide = getattr(local, "slide", None)
        if slide is None:
            slide = local.slide = open_configured_slide(tplan.slide_path, tplan.config)
            with lock:
                handles.append(slide)
        return read_chunks(slide, sel, geo, ci, cj0, cj1, tile_keep, buffer=buffers.array)

    try:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="wsiscan-decode") as pool:
            ahead: deque = deque()
            it = iter(runs)
            for run in it:
                ahead.append((run, pool.submit(work, run)))
                if len(ahead) >= 2 * n_workers:
                    break
            try:
                while ahead:
                    run, fut = ahead.popleft()
                    data, decoded, skipped = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        ahead.append((nxt, pool.submit(work, nxt)))
                    ci, cj0, cj1, from_store = run
                    stats.decoded_bytes += decoded
                    stats.glass_skipped_bytes += skipped
                    for cj, part in zip(range(cj0, cj1), data, strict=True):
                        if from_store:
                            stats.chunks_from_store += 1
                        else:
                            stats.chunks_decoded += 1
                        yield (ci, cj), part, not from_store
            finally:
                for _, fut in ahead:
                    fut.cancel()
    finally:
        for h in handles:
            h.close()
        buffers.close()


class _ChunkSpill:
    """Decoded chunks parked in an unlinked temporary file (TMPDIR) until a later unit needs them.

    With units that overlap the chunks below them (stride < tile), a unit row can only be cut
    once the next chunk row has arrived, so every chunk of a row would wait in memory for the
    next row: memory growing with the slide's width.  Parked here instead, such a chunk costs a
    write and a read of its bytes (page cache, not this process's memory).  Slots are reused.
    """

    def __init__(self, slot_bytes: int) -> None:
        self.slot_bytes = int(slot_bytes)
        self._file: WorkingFile | None = None  # made when the first chunk is parked
        self._free: list[int] = []
        self._n_slots = 0
        self.parked = 0  # chunks written, for tests and figures

    def put(self, data: np.ndarray) -> tuple[int, tuple[int, ...]]:
        """Write ``data`` (uint8, at most ``slot_bytes``) to a free slot: (slot, shape)."""
        if self._file is None:
            self._file = WorkingFile(prefix="wsiscan-chunks-")
        slot = self._free.pop() if self._free else self._n_slots
        self._file.write_at(slot * self.slot_bytes, data)
        self._n_slots = max(self._n_slots, slot + 1)
        self.parked += 1
        return slot, tuple(data.shape)

    def take(self, slot: int, shape: tuple[int, ...], out: np.ndarray) -> np.ndarray:
        """The chunk in ``slot`` read into ``out`` (uint8 of ``shape``); the slot is free again."""
        assert self._file is not None
        self._file.read_into(slot * self.slot_bytes, out)
        self._free.append(slot)
        return out.reshape(shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# chunks per decode task of a scan: each chunk is read by its own call and handed on (and
# written) on its own whatever the run, so longer runs only hold more buffers in flight
# (2 * workers runs: 16 chunk buffers, 28 MB, in runs of 4)
STREAM_RUN_CHUNKS = 1

# a chunk not needed again within this many units is parked in a _ChunkSpill meanwhile
SPILL_AFTER_UNITS = 2


def stream_units(tplan: TilingPlan, uplan: UnitPlan, units: list[tuple[int, int]],
                 chunks: Iterator[tuple[tuple[int, int], np.ndarray, bool]],
                 region_buffer: Callable[[tuple[int, int, int]], np.ndarray] | None = None,
                 on_chunk: Callable[[tuple[int, int], np.ndarray, bool], None] | None = None,
                 spill_after_units: int = SPILL_AFTER_UNITS,
                 ) -> Generator[tuple[int, np.ndarray], None, None]:
    """Yield (unit index, (H, W, 3) uint8 region) in unit order as the chunks arrive.

    A region holds exactly what ``TileStore.read_px(unit_px_box)`` would return: the
    chunks it overlaps, white outside the slide and where no chunk is streamed (glass).
    ``region_buffer(shape)`` gives the array to fill (pinned host memory for CUDA).
    Every chunk is also handed to ``on_chunk`` (the pixel writer) as it arrives.

    A chunk is held until the last unit that overlaps it is cut; one whose next unit is
    more than ``spill_after_units`` units away (the chunk row below is needed first) waits
    in a temporary file instead (:class:`_ChunkSpill`), so memory does not grow with the
    slide's width.
    """
    geo = tplan.geometry
    s = geo.supertile_px
    needs = [geo.chunks_in_box(uplan.unit_px_box(ur, uc)) for ur, uc in units]
    uses: dict[tuple[int, int], deque[int]] = {}  # the units that overlap each chunk, in order
    for i, cs in enumerate(needs):
        for c in cs:
            uses.setdefault(c, deque()).append(i)
    cache: dict[tuple[int, int], np.ndarray] = {}
    parked: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
    spill = _ChunkSpill(s * s * 3)
    reloads = BufferPool(s * s * 3, max_free=4)
    frontier: tuple[int, int] = (-1, -1)  # the last chunk streamed (row-major)
    next_unit = 0

    def park_if_idle(c: tuple[int, int], unit: int) -> None:
        """Park chunk ``c`` when its next unit is far beyond ``unit`` (the next one to cut)."""
        if c in cache and uses[c][0] > unit + spill_after_units:
            parked[c] = spill.put(cache.pop(c))

    def chunk_data(c: tuple[int, int]) -> np.ndarray | None:
        if c in parked:
            slot, shape = parked.pop(c)
            cache[c] = spill.take(slot, shape, reloads.array(shape))
        return cache.get(c)

    def emit_ready() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal next_unit
        while next_unit < len(units) and needs[next_unit][-1] <= frontier:
            i = next_unit
            ur, uc = units[i]
            x0, y0, x1, y1 = uplan.unit_px_box(ur, uc)
            shape = (y1 - y0, x1 - x0, 3)
            region = region_buffer(shape) if region_buffer else np.empty(shape, np.uint8)
            # white first, unless the streamed chunks cover the whole region (they never overlap)
            covered = 0
            parts = [(c, chunk_data(c)) for c in needs[i]]
            for c, data in parts:
                if data is not None:
                    w = min(x1, c[1] * s + data.shape[1]) - max(x0, c[1] * s)
                    h = min(y1, c[0] * s + data.shape[0]) - max(y0, c[0] * s)
                    covered += max(0, w) * max(0, h)
            if covered < shape[0] * shape[1]:
                region[...] = 255
            for c, data in parts:
                if data is not None:
                    paste_overlap(region, (x0, y0), data, (c[1] * s, c[0] * s))
            del parts
            for c in needs[i]:
                uses[c].popleft()
                if not uses[c]:
                    cache.pop(c, None)
                else:
                    park_if_idle(c, i + 1)
            next_unit += 1
            yield i, region

    try:
        for key, data, decoded in chunks:
            if on_chunk is not None:
                on_chunk(key, data, decoded)
            if uses.get(key):
                cache[key] = data
                park_if_idle(key, next_unit)
            del data
            frontier = key
            yield from emit_ready()
        frontier = (1 << 30, 0)  # the rest overlap only chunks that are not streamed: white
        yield from emit_ready()
    finally:
        spill.close()
        reloads.close()


def scan_slide(tplan: TilingPlan, store: TileStore, *, workers: int, keep_pixels: bool,
               uplan: UnitPlan | None = None, units: list[tuple[int, int]] | None = None,
               consume: Callable[[Iterator[tuple[int, np.ndarray]]], None] | None = None,
               region_buffer: Callable[[tuple[int, int, int]], np.ndarray] | None = None,
               pipeline: Pipeline | None = None, queue_units: int = 4, progress: bool = False) -> ScanStats:
    """Decode the chunks the ``units`` need (and, with ``keep_pixels``, every needed chunk
    not yet stored, written behind the stream) and hand the unit regions to ``consume``
    (run in this thread; the device stage).  Returns the counters."""
    bound_heap()
    stats = ScanStats()
    t0 = time.perf_counter()
    needed = [(int(ci), int(cj)) for ci, cj in np.argwhere(tplan.chunks_needed)]
    stored = {c for c in needed if store.chunk_done(*c)}  # the one look at the store's chunks
    stats.chunks_needed, stats.chunks_resumed = len(needed), len(stored)
    units = units or []
    want: set[tuple[int, int]] = set()
    if uplan is not None:
        needed_set = set(needed)
        for ur, uc in units:
            want.update(c for c in tplan.geometry.chunks_in_box(uplan.unit_px_box(ur, uc)) if c in needed_set)
    if keep_pixels:
        want.update(c for c in needed if c not in stored)
    tile_keep = tplan.glass_tile_keep()  # for the decoders and the store's decode record
    if consume is None and keep_pixels and decode.use_processes(len(want), workers):
        # nothing consumes the pixels (``tile``) and there are many: decoding processes
        # write their chunks themselves (zarr's per-chunk Python does not scale in threads)
        todo = sorted(c for c in want if c not in stored)
        stats.decoded_bytes, stats.glass_skipped_bytes = write_pixels(tplan, store, todo, workers=workers,
                                                                      tile_keep=tile_keep, progress=progress)
        stats.chunks_decoded = stats.chunks_written = len(todo)
        stats.timings_s["scan_s"] = stats.timings_s["decode_s"] = time.perf_counter() - t0
        store.update_meta(decode=decode_record(tplan, tile_keep, decoded_bytes=stats.decoded_bytes,
                                               glass_skipped_bytes=stats.glass_skipped_bytes))
        return stats
    pipe = pipeline or Pipeline()
    # several writers: zarr compresses and writes distinct chunks independently
    n_writers = max(1, min(4, workers))
    writer_q = pipe.channel(2 * max(1, workers)) if keep_pixels else None
    lock = threading.Lock()

    def write_behind() -> None:
        assert writer_q is not None
        for (ci, cj), data in writer_q:
            store.write_chunk(ci, cj, data)
            with lock:
                stats.chunks_written += 1

    if writer_q is not None:
        for k in range(n_writers):
            pipe.start(f"pixel-writer-{k}", write_behind)

    from tqdm import tqdm

    bar = tqdm(total=len(want), unit="chunk", desc=f"decoding {tplan.slide_path.name}", disable=not progress,
               leave=False, dynamic_ncols=True)

    def on_chunk(key: tuple[int, int], data: np.ndarray, decoded: bool) -> None:
        bar.update(1)
        if writer_q is not None and decoded:
            writer_q.put((key, data))

    try:
        chunk_stream = stream_chunks(tplan, store, sorted(want), workers=workers, stats=stats, tile_keep=tile_keep,
                                     stored=stored, max_run=STREAM_RUN_CHUNKS)
        if uplan is None or consume is None:
            for key, data, decoded in chunk_stream:
                on_chunk(key, data, decoded)
            stats.timings_s["decode_s"] = time.perf_counter() - t0
        else:
            regions = stream_units(tplan, uplan, units, chunk_stream, region_buffer=region_buffer,
                                   on_chunk=on_chunk)
            unit_q = pipe.channel(queue_units)

            def produce() -> None:
                try:
                    for item in regions:
                        unit_q.put(item)
                    stats.timings_s["decode_s"] = time.perf_counter() - t0
                    unit_q.close()
                finally:
                    regions.close()  # stops the decoders and closes their slide handles

            pipe.start("decode", produce)
            consume(iter(unit_q))
        if writer_q is not None:
            writer_q.close(n_writers)
    except BaseException as exc:
        pipe.fail(exc)
    finally:
        bar.close()
    pipe.join()
    stats.timings_s["scan_s"] = time.perf_counter() - t0
    store.update_meta(decode=decode_record(tplan, tile_keep, decoded_bytes=stats.decoded_bytes,
                                           glass_skipped_bytes=stats.glass_skipped_bytes))
    return stats
