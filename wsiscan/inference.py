"""Batched inference over the tile store.

Work is cut into *units*: blocks of U x U grid tiles whose pixels span about one
supertile.  A loader (a pool of threads) reads each unit's pixel region from the store
once; on the device the region is converted to float, cut into patches at the grid
stride with ``unfold`` (a strided view, no copy on the host), the kept tiles are picked
(channels_last) and classified in batches of one fixed size.  Each unit's probabilities
land in one heatmap chunk buffer, which is written (atomically, by zarr) once all its
units are done; a rerun skips the heatmap chunks already on disk.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import DeviceError
from .models import ModelSpec, normalise

__all__ = [
    "UnitPlan",
    "plan_units",
    "select_device",
    "resolve_precision",
    "Ensemble",
    "run_inference",
    "dihedral_views",
]


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is an error, never a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' requested but this machine has no usable CUDA GPU; use --device cpu or --device auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist; use cuda:0..{torch.cuda.device_count() - 1}"
            )
        return dev
    raise DeviceError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if device.type == "cpu" and precision == "fp16":
        raise DeviceError("fp16 inference is not supported on the CPU; use --precision fp32 or bf16")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class UnitPlan:
    """How the tile grid is cut into units and the heatmap into chunks."""

    tiles_per_unit: int  # U: a unit is U x U grid tiles
    units_per_chunk: int  # K: a heatmap chunk is (K*U) x (K*U) cells
    n_rows: int
    n_cols: int
    tile_size_px: int
    stride_px: int

    @property
    def hm_chunk(self) -> int:
        return self.tiles_per_unit * self.units_per_chunk

    @property
    def n_chunk_rows(self) -> int:
        return math.ceil(self.n_rows / self.hm_chunk)

    @property
    def n_chunk_cols(self) -> int:
        return math.ceil(self.n_cols / self.hm_chunk)

    def unit_px_box(self, ur: int, uc: int) -> tuple[int, int, int, int]:
        """Store px (x0, y0, x1, y1) covering every tile of unit (ur, uc) (full-size, may pass the edge)."""
        u, s, t = self.tiles_per_unit, self.stride_px, self.tile_size_px
        return (uc * u * s, ur * u * s, uc * u * s + (u - 1) * s + t, ur * u * s + (u - 1) * s + t)


def plan_units(*, n_rows: int, n_cols: int, tile_size_px: int, stride_px: int, supertile_px: int,
               hm_chunk_target: int = 256) -> UnitPlan:
    u = max(1, supertile_px // stride_px)
    k = max(1, hm_chunk_target // u)
    return UnitPlan(u, k, n_rows, n_cols, tile_size_px, stride_px)


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and 90-degree rotations of a (N, C, H, W) batch."""
    views = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        views.append(r)
        views.append(torch.flip(r, dims=(3,)))
    return views


class Ensemble:
    """One or more models whose positive-class probabilities are averaged.

    Models run channels_last (NHWC) on every device: measured on CPU (oneDNN, fp32)
    and the layout that bf16 tensor cores want on CUDA (``wsiscan bench``).
    """

    channels_last = True

    def __init__(self, models: Sequence[torch.nn.Module], specs: Sequence[ModelSpec], device: torch.device,
                 *, autocast_dtype: torch.dtype | None, tta: bool, compile: bool = False) -> None:
        self.device = device
        self.specs = list(specs)
        self.autocast_dtype = autocast_dtype
        self.tta = tta
        # more than 2 classes: every class's probability (N, C); else the positive class's (N,)
        self.n_channels = self.specs[0].num_classes if self.specs[0].num_classes > 2 else 0
        self.models = []
        for m in models:
            m = m.to(device).eval().to(memory_format=torch.channels_last)
            if compile:
                m = torch.compile(m)
            self.models.append(m)

    @torch.inference_mode()
    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        """(N,) float32 probabilities ((N, C) for more than 2 classes) for a (N, 3, H, W) float batch in [0, 1]."""
        x01 = x01.contiguous(memory_format=torch.channels_last)  # a no-op for batches cut by run_inference
        views = dihedral_views(x01) if self.tta else [x01]
        shape = (x01.shape[0], self.n_channels) if self.n_channels else (x01.shape[0],)
        total = torch.zeros(shape, device=self.device, dtype=torch.float32)
        for model, spec in zip(self.models, self.specs):
            for v in views:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    logits = model(normalise(v, spec))
                probs = torch.softmax(logits.float() / spec.temperature, dim=1)
                total += probs if self.n_channels else probs[:, spec.positive_class]
        return total / (len(self.models) * len(views))


def _read_units(store_path: str, plan: UnitPlan, units: list[tuple[int, int]], *, threads: int,
                pin: bool) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (unit index, uint8 region (H, W, 3)) in order, read ahead by a pool of threads.

    Threads, not processes: zarr's Blosc decompression releases the GIL, and threads
    share the one open store without the seconds (and hundreds of MB) that starting
    a torch worker process costs.  At most ``2 * threads`` regions wait in memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .store import open_tile_store

    store = open_tile_store(store_path, mode="r")

    def read(i: int) -> torch.Tensor:
        ur, uc = units[i]
        t = torch.from_numpy(store.read_px(px_box=plan.unit_px_box(ur, uc)))
        return t.pin_memory() if pin else t

    if threads <= 0:
        for i in range(len(units)):
            yield i, read(i)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsiscan-read") as pool:
        ahead: deque = deque()
        nxt = 0
        while nxt < len(units) and len(ahead) < 2 * threads:
            ahead.append((nxt, pool.submit(read, nxt)))
            nxt += 1
        while ahead:
            i, fut = ahead.popleft()
            region = fut.result()
            if nxt < len(units):
                ahead.append((nxt, pool.submit(read, nxt)))
                nxt += 1
            yield i, region


def default_batch_size(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # ResNet-50 at 96 px in bf16 needs ~2.5 MB of activations per patch; stay well clear
        return int(max(256, min(4096, free // (8 << 20))))
    return 128


def run_inference(
    *,
    store_path: str,
    plan: UnitPlan,
    kept_rc: np.ndarray,
    ensemble: Ensemble,
    batch_size: int,
    loader_workers: int,
    chunk_done: Callable[[int, int], bool],
    write_chunk: Callable[[int, int, np.ndarray], None],
    progress: bool = True,
    desc: str = "inference",
) -> dict[str, float]:
    """Classify every kept tile whose heatmap chunk is not yet written.  Returns counters and timings."""
    from tqdm import tqdm

    hc = plan.hm_chunk
    u = plan.tiles_per_unit
    # kept tiles by unit, and units by heatmap chunk
    kept_rc = np.asarray(kept_rc, np.int64).reshape(-1, 2)
    unit_r, unit_c = kept_rc[:, 0] // u, kept_rc[:, 1] // u
    order = np.lexsort((kept_rc[:, 1], kept_rc[:, 0], unit_c, unit_r))
    kept_rc, unit_r, unit_c = kept_rc[order], unit_r[order], unit_c[order]
    keys = unit_r * (plan.n_cols // u + 2) + unit_c
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]

    units: list[tuple[int, int]] = []
    unit_tiles: list[np.ndarray] = []
    remaining: dict[tuple[int, int], int] = {}
    skipped_tiles = 0
    for a, b in zip(starts, ends):
        ur, uc = int(unit_r[a]), int(unit_c[a])
        chunk = (ur * u // hc, uc * u // hc)
        if chunk_done(*chunk):
            skipped_tiles += b - a
            continue
        units.append((ur, uc))
        unit_tiles.append(kept_rc[a:b])
        remaining[chunk] = remaining.get(chunk, 0) + 1

    buffers: dict[tuple[int, int], np.ndarray] = {}
    device = ensemble.device
    t, s = plan.tile_size_px, plan.stride_px
    pin = device.type == "cuda"
    stats = {"tiles": 0, "tiles_resumed": int(skipped_tiles), "units": len(units), "model_s": 0.0, "wait_s": 0.0}
    if not units:
        return stats
    loader = _read_units(store_path, plan, units, threads=loader_workers, pin=pin)
    # Patches wait in ``pending`` (in unit order) until a full batch is there: the model
    # only ever sees batches of exactly ``batch_size`` (the last one excepted).  Each new
    # batch shape makes oneDNN/cuDNN build kernels and the allocator keep blocks of that
    # size (measured on CPU: 60 batches of random sizes grew RSS by 235 MB, 60 of one
    # size by 0), and one shape is what CUDA graphs and cudnn.benchmark want.
    pending: list[torch.Tensor] = []
    n_pending = 0
    waiting: deque[tuple[int, np.ndarray]] = deque()  # units whose patches are not all scored yet
    scored: list[np.ndarray] = []  # probabilities of the oldest waiting patches
    n_scored = 0

    def score(n: int) -> None:
        """Classify the first ``n`` pending patches and hand the results to the units they complete."""
        nonlocal pending, n_pending, scored, n_scored
        t0 = time.perf_counter()
        x = torch.cat(pending) if len(pending) > 1 else pending[0]
        probs = torch.cat([ensemble(x[i : min(i + batch_size, n)]) for i in range(0, n, batch_size)])
        scored.append(probs.cpu().numpy())
        stats["model_s"] += time.perf_counter() - t0
        pending = [x[n:]] if n < len(x) else []
        n_pending -= n
        n_scored += n
        done = np.concatenate(scored) if len(scored) > 1 else scored[0]
        pos = 0
        while waiting and len(waiting[0][1]) <= n_scored - pos:
            unit_index, tiles = waiting.popleft()
            _store_unit(unit_index, tiles, done[pos : pos + len(tiles)])
            pos += len(tiles)
        scored = [done[pos:]]
        n_scored -= pos

    def _store_unit(unit_index: int, tiles: np.ndarray, probs: np.ndarray) -> None:
        ur, uc = units[unit_index]
        chunk = (ur * u // hc, uc * u // hc)
        buf = buffers.get(chunk)
        if buf is None:
            r0, c0 = chunk[0] * hc, chunk[1] * hc
            lead = (ensemble.n_channels,) if ensemble.n_channels else ()
            buf = np.full((*lead, min(hc, plan.n_rows - r0), min(hc, plan.n_cols - c0)), np.nan, np.float32)
            buffers[chunk] = buf
        rows, cols = tiles[:, 0] - chunk[0] * hc, tiles[:, 1] - chunk[1] * hc
        if ensemble.n_channels:
            buf[:, rows, cols] = probs.T
        else:
            buf[rows, cols] = probs
        stats["tiles"] += len(tiles)
        remaining[chunk] -= 1
        if remaining[chunk] == 0:
            write_chunk(chunk[0], chunk[1], buffers.pop(chunk))
            bar.update(1)

    bar = tqdm(total=len(remaining), unit="chunk", desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        t_wait = time.perf_counter()
        for unit_index, region in loader:
            stats["wait_s"] += time.perf_counter() - t_wait
            ur, uc = units[unit_index]
            tiles = unit_tiles[unit_index]
            region = region.to(device, non_blocking=True)
            # (1, 3, H, W) float view of the (H, W, 3) region: channels stay innermost in memory
            x = region.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            # patches at the stride: (3, nr, nc, t, t) strided view
            patches = x[0].unfold(1, t, s).unfold(2, t, s)
            lr = torch.as_tensor(tiles[:, 0] - ur * u, device=device)
            lc = torch.as_tensor(tiles[:, 1] - uc * u, device=device)
            sel = patches[:, lr, lc].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)  # (k, 3, t, t)
            pending.append(sel)
            waiting.append((unit_index, tiles))
            n_pending += len(tiles)
            if n_pending >= batch_size:
                score(n_pending - n_pending % batch_size)
            t_wait = time.perf_counter()
        if n_pending:
            score(n_pending)
    finally:
        bar.close()
    if buffers:  # every unit of every chunk ran, so nothing may be left unwritten
        raise RuntimeError(f"heatmap chunks {sorted(buffers)} were left incomplete")
    return stats
