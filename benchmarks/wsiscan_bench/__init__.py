"""Throughput measurement: the code behind ``wsiscan bench`` and the scripts in ``benchmarks/``.

This package lives in the source checkout only (``benchmarks/wsiscan_bench``), never in the
installed ``wsiscan``: ``wsiscan bench`` imports it from a checkout, the scripts beside it
import it as their sibling package.

Every figure comes with a naive baseline measured in the same run on the same slide;
contenders are interleaved (A, B, A, B, ...) and repeated, the fastest run of each is
reported, and the 1-minute load average is recorded at the start and the end (other
work on the machine skews timings).

* **tiling**: ``wsiscan tile`` (a subprocess, as a user runs it; its own stage timings
  read back from the store) against one ``read_region`` per kept patch in one process
  (PIL BOX resize when the level is resampled), the way many research scripts cut
  patches.  Decode MB/s counts the RGB bytes decoded at the level read.
* **tissue mask**: wsiscan's block-by-block thumbnail + mask against reading the whole
  level in one call, resizing with PIL and computing the same mask.
* **model only**: patches/s of the network as ``predict`` runs it (``Ensemble``: bf16
  autocast and channels_last on CUDA, fp32 channels_last on CPU) against the same
  weights in fp32 without channels_last, on batches already on the device.
* **end to end**: ``wsiscan predict`` (a subprocess, from start to all outputs written)
  against the naive pipeline (one ``read_region`` per patch, a PyTorch DataLoader, an
  fp32 model, probabilities pasted into a whole-slide canvas), at each stride asked.

Peak host RSS is sampled (20 ms) over a contender's process tree; GPU utilisation and
memory with pynvml or ``nvidia-smi`` while CUDA is in use (``None`` without CUDA).
"""

from .environment import device_info, load_avg_1m
from .inputs import benchmark_slide, make_checkpoint, smoke_slide
from .options import SIZES, BenchOptions
from .report import format_table, run_bench
from .sampling import GpuSampler, PeakRss
from .stages import bench_end_to_end, bench_model, bench_tiling, bench_tissue

__all__ = ["BenchOptions", "PeakRss", "GpuSampler", "SIZES", "run_bench", "format_table", "benchmark_slide",
           "make_checkpoint", "smoke_slide", "device_info", "load_avg_1m", "bench_end_to_end", "bench_model",
           "bench_tiling", "bench_tissue"]
