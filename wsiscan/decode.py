"""Store chunks decoded from the slide: one read call per run of neighbouring chunks, and
the worker processes that decode many chunks straight into the store.

Every path that needs a chunk's pixels (the scan's decode threads, the worker processes,
a result's pixels read back from the slide) reads them with :func:`read_chunk_run`, so
they are the same bit for bit whichever path made them.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable

import numpy as np

from .config import Config
from .grid import LevelSelection, StoreGeometry
from .store import TileStore, open_tile_store
from .tiling import TilingPlan, open_configured_slide
from .tissue import usable_cores
from .workers import die_with_parent

if TYPE_CHECKING:
    from .slide import Slide

__all__ = ["PROCESS_MIN_CHUNKS", "CHUNKS_PER_WRITE", "DECODE_WORKER_BYTES", "chunk_runs", "read_chunks", "read_chunk_run",
           "use_processes", "write_pixels", "default_workers"]

# Thread or process, one slide handle each (a shared handle serialises its reads).
# Threads start at once; processes take longer to start but scale further: OpenSlide's
# decode runs outside the GIL in threads, zarr's chunk write (Python) does not.  The
# crossover is measured by the tile benchmarks (README, "Performance").
PROCESS_MIN_CHUNKS = 256  # decode in worker processes from this many chunks on (and workers > 1)
CHUNKS_PER_WRITE = 4  # neighbouring chunks of one chunk row read, and written, by one call
DECODE_WORKER_BYTES = 256 << 20  # host memory one decode worker may hold: a run of chunks at the level read, copies
_WORKER: dict[str, Any] = {}  # what _worker_init opened in a worker process


def chunk_runs(chunks: Iterable[tuple[int, int]], *, max_len: int,
               from_store: Collection[tuple[int, int]] = ()) -> list[tuple[int, int, int, bool]]:
    """(ci, cj0, cj1, stored): runs of up to ``max_len`` consecutive chunks of one chunk row,
    in ``chunks`` order; a run's chunks are all in ``from_store`` (stored True) or all not."""
    runs: list[tuple[int, int, int, bool]] = []
    for ci, cj in chunks:
        stored = (ci, cj) in from_store
        if runs:
            lci, lcj0, lcj1, lstored = runs[-1]
            if lci == ci and lcj1 == cj and lstored == stored and lcj1 - lcj0 < max_len:
                runs[-1] = (ci, lcj0, cj + 1, stored)
                continue
        runs.append((ci, cj, cj + 1, stored))
    return runs


def read_chunks(slide: Slide, selection: LevelSelection, geometry: StoreGeometry, ci: int, cj0: int, cj1: int,
                tile_keep: np.ndarray | None = None, buffer: Callable[[tuple[int, int, int]], np.ndarray] | None = None,
                ) -> tuple[list[np.ndarray], int, int]:
    """Read and resample store chunks (ci, cj0) .. (ci, cj1 - 1): one (rows, cols, 3) uint8
    array each, with the bytes decoded and the glass bytes skipped (as :func:`read_chunk_run`).
    ``buffer(shape)`` gives the array each chunk is read into (reused memory, see
    :class:`wsiscan.heap.BufferPool`); None reads into fresh arrays."""
    parts = []
    decoded0, skipped0 = sum(slide.decoded_px.values()), slide.skipped_px
    s = selection.lv_per_px
    for cj in range(cj0, cj1):
        x0, y0, x1, y1 = geometry.chunk_box_px(ci, cj)
        box = (x0 * s, y0 * s, x1 * s, y1 * s)
        out = buffer((y1 - y0, x1 - x0, 3)) if buffer is not None else None
        parts.append(slide.read_resampled(level=selection.level, lv_box=box, out_size_px=(x1 - x0, y1 - y0),
                                          tile_keep=tile_keep, out=out))
    return parts, (sum(slide.decoded_px.values()) - decoded0) * 3, (slide.skipped_px - skipped0) * 3


def read_chunk_run(slide: Slide, selection: LevelSelection, geometry: StoreGeometry, ci: int, cj0: int, cj1: int,
                   tile_keep: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """Read and resample store chunks (ci, cj0) .. (ci, cj1 - 1): one (rows, cols, 3) uint8 array.

    Also returns the bytes decoded at the level read and the bytes of glass tiles left
    white instead (``tile_keep``: the TIFF tiles to decode, see
    :meth:`wsiscan.tiling.TilingPlan.glass_tile_keep`; None decodes every tile).
    """
    parts, decoded, skipped = read_chunks(slide, selection, geometry, ci, cj0, cj1, tile_keep)
    data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return data, decoded, skipped


def use_processes(n_chunks: int, workers: int) -> bool:
    """Whether ``n_chunks`` chunks are decoded faster in ``workers`` processes than in threads."""
    return workers > 1 and n_chunks >= PROCESS_MIN_CHUNKS


def _worker_init(slide_path: str, config: Config, store_path: str, tile_keep: np.ndarray | None) -> None:
    die_with_parent()
    _WORKER["slide"] = open_configured_slide(slide_path, config)
    _WORKER["store"] = open_tile_store(store_path)
    _WORKER["tile_keep"] = tile_keep


def _decode_and_write(ci: int, cj0: int, cj1: int, selection: LevelSelection,
                      geometry: StoreGeometry) -> tuple[int, int, int]:
    """In a worker process: read chunks (ci, cj0) .. (ci, cj1 - 1) and write them with one store call.

    Each chunk file is still written atomically on its own, so a killed run leaves only
    complete chunks.  Returns (chunks written, bytes decoded, glass bytes skipped).
    """
    data, decoded, skipped = read_chunk_run(_WORKER["slide"], selection, geometry, ci, cj0, cj1,
                                            _WORKER["tile_keep"])
    _WORKER["store"].write_chunk(ci, cj0, data)
    return cj1 - cj0, decoded, skipped


def write_pixels(plan: TilingPlan, store: TileStore, chunks: list[tuple[int, int]], *, workers: int,
                 tile_keep: np.ndarray | None, progress: bool) -> tuple[int, int]:
    """Decode ``chunks`` (row-major) in ``workers`` spawned processes, each with its own
    slide handle, writing them into ``store``.  Returns (bytes decoded, glass bytes skipped)."""
    from tqdm import tqdm

    runs = chunk_runs(chunks, max_len=CHUNKS_PER_WRITE)
    n_workers = max(1, min(workers, len(runs)))
    sel, geo = plan.selection, plan.geometry
    decoded = skipped = 0
    bar = tqdm(total=len(chunks), unit="chunk", desc=f"tiling {plan.slide_path.name}", disable=not progress,
               leave=False, dynamic_ncols=True)

    def drain(futures: Iterable[Future[tuple[int, int, int]]]) -> None:
        nonlocal decoded, skipped
        for f in futures:
            n, d, g = f.result()
            decoded += d
            skipped += g
            bar.update(n)

    try:
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(str(plan.slide_path), plan.config, str(store.path), tile_keep)) as pool:
            pending: set[Future[tuple[int, int, int]]] = set()
            try:
                for ci, cj0, cj1, _ in runs:  # a bounded number of runs in flight: memory stays flat
                    pending.add(pool.submit(_decode_and_write, ci, cj0, cj1, sel, geo))
                    if len(pending) >= 4 * n_workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        drain(done)
                drain(pending)
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
    finally:
        bar.close()
    return decoded, skipped


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_workers() -> int:
    """One decode worker per usable core (the process's CPU affinity), as many as half the
    available memory allows at ``DECODE_WORKER_BYTES`` each (at least one)."""
    cores = usable_cores(at_most=1 << 16)
    avail = _available_memory_bytes()
    if avail is None:
        return cores
    return max(1, min(cores, avail // 2 // DECODE_WORKER_BYTES))
