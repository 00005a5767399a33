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

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import DeviceError
from .models import ModelSpec, class_proba_from_logits

if TYPE_CHECKING:
    from .scan import Channel, Pipeline

__all__ = [
    "UnitPlan",
    "plan_units",
    "select_device",
    "resolve_precision",
    "Ensemble",
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
    and the layout that bf16 tensor cores want on CUDA (``wsiscan bench``).  Built
    once per run: the weights are cast to the inference dtype once (bf16/fp16: no
    per-batch weight casts), each model's normalisation becomes one (scale, bias)
    pair of device tensors, and on CUDA ``cudnn.benchmark`` picks kernels for the one
    batch shape inference uses.  ``compile`` wraps each model in ``torch.compile`` (one
    static shape); callers then pad the last partial batch (:attr:`fixed_shape`) so that
    nothing recompiles.
    """

    channels_last = True

    def __init__(self, models: Sequence[torch.nn.Module], specs: Sequence[ModelSpec], device: torch.device,
                 *, autocast_dtype: torch.dtype | None, tta: bool, compile: bool = False) -> None:
        self.device = device
        self.specs = list(specs)
        self.autocast_dtype = autocast_dtype
        self.input_dtype = autocast_dtype or torch.float32
        self.tta = tta
        self.compiled = bool(compile)
        # more than 2 classes: every class's probability (N, C); else the positive class's (N,)
        self.n_channels = self.specs[0].num_classes if self.specs[0].num_classes > 2 else 0
        # torch.compile returns a callable wrapper, not an nn.Module, as far as its typing says
        self.models: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one batch shape: the fastest kernels once
        for m in models:
            m = m.to(device).eval().to(memory_format=torch.channels_last)
            if autocast_dtype is not None:
                m = m.to(dtype=autocast_dtype)  # once, not per batch as autocast would
            # not mode="reduce-overhead" (CUDA graphs): the graphs are recorded per thread, and the
            # model is warmed up in the thread that plans the slide, then run in another
            self.models.append(torch.compile(m, dynamic=False) if compile else m)
        # x_model = x_uint8 * scale + bias  ==  (x_uint8 / 255 - mean) / std
        self._affine = []
        for spec in self.specs:
            mean = torch.tensor(spec.mean or (0.0, 0.0, 0.0), dtype=torch.float64)
            std = torch.tensor(spec.std or (1.0, 1.0, 1.0), dtype=torch.float64)
            scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
            bias = (-mean / std).view(1, 3, 1, 1)
            self._affine.append((scale.to(device, torch.float32), bias.to(device, torch.float32)))

    @property
    def fixed_shape(self) -> bool:
        """Whether every batch should have the same shape (CUDA graphs, compiled models, cuDNN autotuning)."""
        return self.compiled or self.device.type == "cuda"

    def _forward(self, x_by_model: Sequence[torch.Tensor]) -> torch.Tensor:
        n = x_by_model[0].shape[0]
        shape = (n, self.n_channels) if self.n_channels else (n,)
        total = torch.zeros(shape, device=self.device, dtype=torch.float32)
        n_views = 8 if self.tta else 1
        for model, spec, x in zip(self.models, self.specs, x_by_model, strict=True):
            size = spec.input_size_px  # a WSInfer model's Resize; linear with weights summing
            # to one, so resizing the normalised patch equals normalising the resized one (as normalise does)
            if size is not None and tuple(x.shape[-2:]) != (size, size):
                x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear",
                                                    align_corners=False, antialias=True)
            for v in dihedral_views(x) if self.tta else [x]:
                with torch.autocast(self.device.type, dtype=self.input_dtype, enabled=self.autocast_dtype is not None):
                    logits = model(v.to(self.input_dtype))
                probs = class_proba_from_logits(logits, spec)
                total += probs if self.n_channels else probs[:, spec.positive_class]
        return total / (len(self.models) * n_views)

    @torch.inference_mode()
    def score_uint8(self, x_u8: torch.Tensor) -> torch.Tensor:
        """(N,) float32 probabilities (on the device, not synchronised) for a (N, 3, H, W) uint8 batch.

        The bytes become float32 channels_last once; one step per model normalises them,
        then the model's dtype.
        """
        x = x_u8.to(dtype=torch.float32, memory_format=torch.channels_last)
        return self._forward([torch.addcmul(bias, x, scale) for scale, bias in self._affine])

    def shared_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scale, bias) as (3,) tensors when every model normalises alike, else None."""
        first = self._affine[0]
        if all(torch.equal(a[0], first[0]) and torch.equal(a[1], first[1]) for a in self._affine[1:]):
            return first[0].view(3), first[1].view(3)
        return None

    @torch.inference_mode()
    def score_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) float32 probabilities for a batch already normalised (float32, see :meth:`shared_affine`)."""
        return self._forward([x] * len(self.models))

    @torch.inference_mode()
    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        """(N,) float32 probabilities ((N, C) for more than 2 classes) for a (N, 3, H, W) float batch in [0, 1]."""
        x01 = x01.contiguous(memory_format=torch.channels_last)
        return self._forward([torch.addcmul(bias, x01.float(), scale * 255.0) for scale, bias in self._affine])


def default_batch_size(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # ResNet-50 at 96 px in bf16 needs ~2.5 MB of activations per patch; stay well clear
        return int(max(256, min(4096, free // (8 << 20))))
    return 128




def _recorded_event(device: torch.device) -> torch.cuda.Event:
    """A CUDA event recorded on ``device``'s current stream: it completes when the work queued so far has."""
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch leaves Event.__new__ unannotated
    event.record(torch.cuda.current_stream(device))
    return event


class RegionRing:
    """Host buffers for unit regions, handed out in turn; pinned (page-locked) on CUDA.

    The device stage releases a region with :meth:`copied` once it no longer reads it: on
    CUDA when its non-blocking copy to the device is queued (an event is recorded; the
    buffer is handed out again only after that copy has finished), on the CPU once its
    patches are cut.  Regions are filled and consumed in the same order (FIFO), so
    ``n_slots`` must exceed the regions that can wait between the two (queue depth + 2).
    The same few buffers serve the whole scan: no fresh memory is faulted in per unit.
    After :meth:`close` (the device stage has stopped) every call gets a fresh array, so
    a producer waiting for a slot never blocks a failed pipeline.
    """

    def __init__(self, shape: tuple[int, int, int], *, n_slots: int, device: torch.device) -> None:
        import threading

        self.device = device
        self.pinned = device.type == "cuda"
        self.shape = tuple(shape)
        self._slots = [torch.empty(shape, dtype=torch.uint8, pin_memory=self.pinned) for _ in range(n_slots)]
        self._events: list[torch.cuda.Event | None] = [None] * n_slots
        self._free = [True] * n_slots
        self._next_fill = 0
        self._next_copied = 0
        self._closed = False
        self._cond = threading.Condition()

    def __call__(self, shape: tuple[int, int, int]) -> np.ndarray:
        if tuple(shape) != self.shape:
            raise ValueError(f"region shape {tuple(shape)} differs from the ring's {self.shape}")
        with self._cond:
            i = self._next_fill
            while not self._free[i] and not self._closed:
                self._cond.wait(timeout=0.05)
            if self._closed:
                return np.empty(shape, np.uint8)
            self._free[i] = False
            event = self._events[i]
            self._next_fill = (i + 1) % len(self._slots)
        if event is not None:
            event.synchronize()  # the copy out of this buffer has finished
        return self._slots[i].numpy()

    def copied(self) -> None:
        """The oldest handed-out region is no longer read (on CUDA: its copy to the device is queued)."""
        event = _recorded_event(self.device) if self.pinned else None
        with self._cond:
            i = self._next_copied
            self._events[i] = event
            self._free[i] = True
            self._next_copied = (i + 1) % len(self._slots)
            self._cond.notify_all()

    def close(self) -> None:
        """The device stage has stopped: wake a waiting producer and hand out fresh arrays from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class DeviceScorer:
    """The device stage: unit regions in, heatmap chunks out.

    For each unit the uint8 region goes to the device (non-blocking, from pinned
    memory on CUDA), patches are cut at the stride with ``unfold`` (a view) and the
    kept ones gathered with tile indices uploaded once for the whole run (no host
    index copies per unit); on the CPU they are copied straight into one batch buffer
    reused for the run (:meth:`_run_cpu`).  Patches wait until a full batch of ``batch_size`` is
    there, so the model sees one batch shape (the last one padded when
    :attr:`Ensemble.fixed_shape`).  Probabilities stay on the device, without any
    synchronisation, until every unit of a heatmap chunk is scored; then one
    non-blocking copy brings the chunk to the host and a writer thread (behind an
    event) writes it.  Several batches are therefore in flight on CUDA.
    """

    def __init__(self, ensemble: Ensemble, plan: UnitPlan, units: list[tuple[int, int]],
                 unit_tiles: list[np.ndarray], per_chunk: dict[tuple[int, int], int], *, batch_size: int,
                 write_chunk: Callable[[int, int, np.ndarray], None], ring: RegionRing | None = None,
                 on_chunk_written: Callable[[], None] | None = None) -> None:
        self.ensemble = ensemble
        self.plan = plan
        self.units = units
        self.unit_tiles = unit_tiles
        self.remaining = dict(per_chunk)
        self.batch_size = int(batch_size)
        self.write_chunk = write_chunk
        self.ring = ring
        self.on_chunk_written = on_chunk_written
        self.device = ensemble.device
        self.stats = {"tiles": 0, "device_s": 0.0, "wait_s": 0.0}
        u = plan.tiles_per_unit
        offsets = np.zeros(len(units) + 1, np.int64)
        offsets[1:] = np.cumsum([len(t) for t in unit_tiles])
        self._offsets = offsets
        if units:
            all_rc = np.concatenate(unit_tiles).astype(np.int64)
            base = np.repeat(np.asarray(units, np.int64) * u, np.diff(offsets), axis=0)
            local = torch.from_numpy(all_rc - base)
        else:
            local = torch.zeros((0, 2), dtype=torch.int64)
        self._local = local.to(self.device)  # (N, 2) unit-local row, col: one upload for the run
        self._local_np = local.numpy()  # the CPU cuts patches with numpy (faster than torch's indexing)

    def run(self, regions: Iterator[tuple[int, np.ndarray]], pipeline: Pipeline) -> None:
        """Score every region of ``regions``; heatmap chunks are written by a thread of ``pipeline``."""
        try:
            self._run(regions, pipeline)
        finally:
            if self.ring is not None:
                self.ring.close()  # a producer waiting for a buffer must not outlive this stage

    def _run(self, regions: Iterator[tuple[int, np.ndarray]], pipeline: Pipeline) -> None:
        t, s, bs = self.plan.tile_size_px, self.plan.stride_px, self.batch_size
        hc, u = self.plan.hm_chunk, self.plan.tiles_per_unit
        cuda = self.device.type == "cuda"
        out_q = pipeline.channel(4)
        pipeline.start("heatmap-writer", lambda: self._write(out_q))
        pending: list[torch.Tensor] = []
        n_pending = 0
        waiting: deque[int] = deque()  # units whose patches are not all scored yet
        scored: list[torch.Tensor] = []
        n_scored = 0
        parts: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}

        def finish_unit(i: int, probs: torch.Tensor) -> None:
            ur, uc = self.units[i]
            chunk = (ur * u // hc, uc * u // hc)
            parts.setdefault(chunk, []).append((i, probs))
            self.stats["tiles"] += len(probs)
            self.remaining[chunk] -= 1
            if self.remaining[chunk] == 0:
                done = parts.pop(chunk)
                rc = np.concatenate([self.unit_tiles[j] for j, _ in done])
                p = torch.cat([q for _, q in done])
                if cuda:
                    host = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
                    host.copy_(p, non_blocking=True)
                    event = _recorded_event(self.device)
                else:
                    host, event = p, None
                out_q.put((chunk, rc, host, event))

        def hand_out(probs: list[torch.Tensor], n: int) -> None:
            """``n`` more patches are scored (``probs``, in patch order): finish the units now complete."""
            nonlocal scored, n_scored
            scored.extend(probs)
            n_scored += n
            if not waiting or self._count(waiting[0]) > n_scored:
                return
            done = torch.cat(scored) if len(scored) > 1 else scored[0]
            pos = 0
            while waiting and self._count(waiting[0]) <= n_scored - pos:
                i = waiting.popleft()
                k = self._count(i)
                finish_unit(i, done[pos : pos + k])
                pos += k
            scored = [done[pos:]]
            n_scored -= pos

        def score(n: int) -> None:
            nonlocal pending, n_pending
            x = torch.cat(pending) if len(pending) > 1 else pending[0]
            out = []
            for i in range(0, n, bs):
                batch = x[i : min(i + bs, n)]
                k = len(batch)
                if k < bs and self.ensemble.fixed_shape:  # pad: one shape for compile and cuDNN
                    batch = torch.cat([batch, batch.new_zeros((bs - k,) + tuple(batch.shape[1:]))])
                # (k, t, t, 3) -> (k, 3, t, t) channels_last: a view
                out.append(self.ensemble.score_uint8(batch.permute(0, 3, 1, 2))[:k])
            pending = [x[n:]] if n < len(x) else []
            n_pending -= n
            hand_out(out, n)

        if not cuda:
            self._run_cpu(regions, waiting, hand_out)
        else:
            with torch.inference_mode():
                t_wait = time.perf_counter()
                for i, region in regions:
                    t0 = time.perf_counter()
                    self.stats["wait_s"] += t0 - t_wait
                    a, b = self._offsets[i], self._offsets[i + 1]
                    # the kept patches as (k, t, t, 3) uint8, cut from a (nr, nc, t, t, 3) view of
                    # the region at the stride; channels stay innermost, so each batch is channels_last
                    dev = torch.from_numpy(region).to(self.device, non_blocking=True)
                    if self.ring is not None:
                        self.ring.copied()
                    loc = self._local[a:b]
                    pending.append(dev.unfold(0, t, s).unfold(1, t, s).permute(0, 1, 3, 4, 2)[loc[:, 0], loc[:, 1]])
                    waiting.append(i)
                    n_pending += self._count(i)
                    if n_pending >= bs:
                        score(n_pending - n_pending % bs)
                    t_wait = time.perf_counter()
                    self.stats["device_s"] += t_wait - t0
                if n_pending:
                    t0 = time.perf_counter()
                    score(n_pending)
                    self.stats["device_s"] += time.perf_counter() - t0
        out_q.close()
        if parts or any(self.remaining.values()):
            raise RuntimeError(f"heatmap chunks {sorted(parts)} were left incomplete")

    def _run_cpu(self, regions: Iterator[tuple[int, np.ndarray]], waiting: deque[int],
                 hand_out: Callable[[list[torch.Tensor], int], None]) -> None:
        """The CPU device stage: kept patches are copied straight into one batch buffer
        that serves the whole run (nothing is allocated or faulted in per unit or batch).

        When every model normalises alike (:meth:`Ensemble.shared_affine`) the patches
        are normalised on the way: a region whose patches overlap (stride < tile) once,
        into a float buffer of its own, else each patch as it is copied.  The values are
        those of ``uint8 -> float32, * scale, + bias`` whichever way (elementwise), so the
        batches equal the ones a whole-region normalisation gives bit for bit.  The batches
        hold the patches in unit order, ``batch_size`` at a time, the last one short (or
        zero-padded when :attr:`Ensemble.fixed_shape`), as on every device.  Cutting runs on
        one thread: on a few cores the decode threads use the others, and a fork-join
        across busy cores costs more than it gains.  The models run on torch's threads or
        on one, whichever is faster (see ``choice`` below).
        """
        t, s, bs = self.plan.tile_size_px, self.plan.stride_px, self.batch_size
        shared = getattr(self.ensemble, "shared_affine", lambda: None)
        affine = shared()
        fixed = bool(self.ensemble.fixed_shape)
        batch = torch.empty((bs, t, t, 3), dtype=torch.uint8 if affine is None else torch.float32)
        batch_np = batch.numpy()
        n_fill = 0
        norm_region: torch.Tensor | None = None  # the region normalised (overlapping patches)
        band = max(1, (256 << 10) // (4 * 3 * max(1, (self.plan.tiles_per_unit - 1) * s + t)))  # rows per ~256 KiB
        model_threads = torch.get_num_threads()
        batch_rows = batch.view(bs, t, t * 3)
        # the (3,) scale and bias repeated along a row of pixels: broadcasting a (3,) vector
        # makes torch's inner loop 3 elements long, a row of them keeps it vectorised
        row_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def affine_rows(width_px: int) -> tuple[torch.Tensor, torch.Tensor]:
            assert affine is not None
            if width_px not in row_cache:
                row_cache[width_px] = (affine[0].repeat(width_px), affine[1].repeat(width_px))
            return row_cache[width_px]

        def cut_threads(n: int) -> None:
            if model_threads > 1:
                torch.set_num_threads(n)

        # The models' threads: torch's, or one where that is faster.  On a few cores the decode
        # threads keep every core busy, and each fork-join of torch's threads then waits for a
        # core: a cheap model is many times slower on two threads than on one, an expensive one
        # faster.  The first full batch is scored both ways; only when the two agree bit for bit
        # (the model's results do not depend on its threads) are the next full batches timed
        # both ways (the check's two runs are the first timings: one 1.5 times faster than the
        # other decides at once, else the median of three each), and the faster count is kept,
        # timed again every ``reprobe`` full batches (the decode threads are busiest while the
        # queues fill, then a slow model idles them).  Otherwise torch's count stays.
        choice: int | None = model_threads if model_threads == 1 else None
        probe_s: dict[int, list[float]] = {model_threads: [], 1: []}
        checked = agree = False
        reprobe, since_probe = 64, 0

        def model(x: torch.Tensor, n_threads: int) -> tuple[torch.Tensor, float]:
            cut_threads(n_threads)
            try:
                t0 = time.perf_counter()
                if affine is None:
                    probs = self.ensemble.score_uint8(x.permute(0, 3, 1, 2))
                else:
                    probs = self.ensemble.score_normalised(x.permute(0, 3, 1, 2))
                return probs, time.perf_counter() - t0
            finally:
                cut_threads(1)

        def clear_winner() -> int | None:
            """The thread count whose first timing was at least 1.5 times faster, else None (time more
            batches): each probe of the slower count costs a batch at its speed."""
            if len(probe_s[model_threads]) != 1 or len(probe_s[1]) != 1:
                return None
            many, one = probe_s[model_threads][0], probe_s[1][0]
            return 1 if one * 1.5 <= many else model_threads if many * 1.5 <= one else None

        def score_batch() -> None:
            nonlocal n_fill, choice, checked, agree, since_probe
            k = n_fill
            if k < bs and fixed:  # pad: one shape for compile
                batch[k:].zero_()
            x = batch if fixed else batch[:k]
            if choice is not None:
                probs, _ = model(x, choice)
                since_probe += 1
                if since_probe >= reprobe and agree:
                    choice, since_probe = None, 0
                    probe_s[model_threads].clear()
                    probe_s[1].clear()
            elif not checked:
                probs, seconds = model(x, model_threads)
                if k == bs:
                    checked = True
                    probs_1, seconds_1 = model(x, 1)
                    agree = torch.equal(probs, probs_1)
                    if not agree:
                        choice = model_threads
                    else:  # the check's two runs are the first timings
                        probe_s[model_threads].append(seconds)
                        probe_s[1].append(seconds_1)
                        choice = clear_winner()
            else:
                n_threads = model_threads if len(probe_s[model_threads]) <= len(probe_s[1]) else 1
                probs, seconds = model(x, n_threads)
                if k == bs:
                    probe_s[n_threads].append(seconds)
                    choice = clear_winner()
                    if choice is None and min(len(v) for v in probe_s.values()) >= 3:  # the median of three each
                        choice = min(probe_s, key=lambda n: sorted(probe_s[n])[1])
            self.stats["model_threads"] = float(choice or model_threads)
            probs = probs[:k]
            if probs.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr():
                probs = probs.clone()  # the batch buffer is refilled next
            n_fill = 0
            hand_out([probs], k)

        with torch.inference_mode():
            cut_threads(1)
            try:
                t_wait = time.perf_counter()
                for i, region in regions:
                    t0 = time.perf_counter()
                    self.stats["wait_s"] += t0 - t_wait
                    a, b = self._offsets[i], self._offsets[i + 1]
                    loc = self._local_np[a:b]
                    src_t = torch.from_numpy(region)
                    normalise_each = False
                    if affine is not None and t > s:  # overlapping patches: normalise the region once
                        if norm_region is None or norm_region.shape != src_t.shape:
                            norm_region = torch.empty(src_t.shape, dtype=torch.float32)
                        rows_u8 = src_t.view(src_t.shape[0], -1)  # (H, W * 3): one long vectorised row each
                        rows = norm_region.view(rows_u8.shape)
                        scale_row, bias_row = affine_rows(rows.shape[1] // 3)
                        for y in range(0, rows.shape[0], band):  # in bands that stay in cache
                            dst = rows[y : y + band]
                            dst.copy_(rows_u8[y : y + band])
                            dst.mul_(scale_row).add_(bias_row)
                        src = norm_region.numpy()
                    else:
                        src = region
                        normalise_each = affine is not None
                    # (nr, nc, t, t, 3): a view of the patches at the stride, channels innermost
                    win = np.lib.stride_tricks.sliding_window_view(src, (t, t), axis=(0, 1), writeable=True)[::s, ::s]
                    win = win.transpose(0, 1, 3, 4, 2)
                    # runs of neighbouring kept tiles in one row: one copy each
                    k = len(loc)
                    brk = np.flatnonzero((loc[1:, 0] != loc[:-1, 0]) | (loc[1:, 1] != loc[:-1, 1] + 1)) + 1
                    starts, ends = np.r_[0, brk].tolist(), np.r_[brk, k].tolist()
                    waiting.append(i)
                    for p0, p1 in zip(starts, ends, strict=True):
                        r, c = int(loc[p0, 0]), int(loc[p0, 1])
                        while p0 < p1:
                            n = min(p1 - p0, bs - n_fill)
                            part = win[r, c : c + n]
                            if normalise_each:
                                # (n, t, t * 3): each patch row one long vectorised row
                                u8 = torch.from_numpy(part)
                                u8 = torch.as_strided(u8, (n, t, t * 3), (u8.stride(0), u8.stride(1), 1))
                                dst = batch_rows[n_fill : n_fill + n]
                                dst.copy_(u8)
                                scale_row, bias_row = affine_rows(t)
                                dst.mul_(scale_row).add_(bias_row)
                            else:
                                batch_np[n_fill : n_fill + n] = part
                            n_fill += n
                            p0 += n
                            c += n
                            if n_fill == bs:
                                score_batch()
                    if self.ring is not None:
                        self.ring.copied()  # the region's patches are cut: its buffer is free
                    t_wait = time.perf_counter()
                    self.stats["device_s"] += t_wait - t0
                if n_fill:
                    t0 = time.perf_counter()
                    score_batch()
                    self.stats["device_s"] += time.perf_counter() - t0
            finally:
                cut_threads(model_threads)

    def _count(self, i: int) -> int:
        return int(self._offsets[i + 1] - self._offsets[i])

    def _write(self, out_q: Channel) -> None:
        hc = self.plan.hm_chunk
        for (ci, cj), rc, host, event in out_q:
            if event is not None:
                event.synchronize()
            r0, c0 = ci * hc, cj * hc
            n_channels = getattr(self.ensemble, "n_channels", 0)
            lead = (n_channels,) if n_channels else ()
            buf = np.full((*lead, min(hc, self.plan.n_rows - r0), min(hc, self.plan.n_cols - c0)), np.nan, np.float32)
            rows, cols = rc[:, 0] - r0, rc[:, 1] - c0
            if n_channels:
                buf[:, rows, cols] = host.numpy().T
            else:
                buf[rows, cols] = host.numpy()
            self.write_chunk(ci, cj, buf)
            if self.on_chunk_written is not None:
                self.on_chunk_written()
