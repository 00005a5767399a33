"""BenchOptions, the preset slide sizes, the notes printed with every report, and where the checkout is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .make_slide import PRESETS

SCHEMA_VERSION = 1
BENCHMARKS_DIR = Path(__file__).resolve().parents[1]  # this package sits in the checkout's benchmarks/
REPO = BENCHMARKS_DIR.parent
MB = 1e6
MiB = 2**20
NOTES = [
    "contenders run interleaved (A, B, A, B, ...), the fastest of --repeats runs is reported with every run's time;"
    " cpu_s (user + system seconds of the contender's processes) is shown because it changes far less than wall time"
    " when other work shares the cores: load_avg_1m says how busy the machine was",
    "tiling: wsiscan = `wsiscan tile` in a subprocess, seconds = its own end-to-end timing (plan, decode, store, grid,"
    " QC image; interpreter start-up excluded), pixels_seconds = decode + store write; naive = one read_region per kept"
    " patch in one process (a contiguous row-major run of at most --naive-max-tiles patches, rate extrapolated);"
    " decoded bytes are RGB bytes requested at the level read",
    "tissue_mask: wsiscan = block-by-block thumbnail + detect_tissue; naive = the whole level in one read_region call,"
    " PIL BOX resize, the same detect_tissue",
    "feed: the streaming pipeline of predict (decode threads -> unit regions -> cut, gather and uint8 -> float32"
    " channels_last on the device) with the model skipped, on an empty store (every chunk decoded); planning apart",
    "model: wsiscan = the Ensemble predict uses (precision and channels_last as reported), naive = the same weights in"
    " fp32 NCHW; both on batches already on the device, after two warm-up batches; each timed run lasts at least"
    " --model-seconds (and --model-batches batches)",
    "end_to_end: wall time from starting `wsiscan predict` to all outputs written (subprocess, cold: no store to"
    " resume); naive = read_region per patch in a DataLoader (--naive-workers), fp32 model, probabilities pasted into a"
    " whole-slide numpy canvas, nothing written; peak RSS summed over each process tree, sampled every 20 ms",
    "ratio keys: *_vs_naive = wsiscan / naive for rates, speedup_vs_naive = naive seconds / wsiscan seconds,"
    " peak_rss_vs_naive = wsiscan / naive (< 1: wsiscan uses less); *_vs_before likewise against --compare-src",
]
SIZES = PRESETS


@dataclass
class BenchOptions:
    slide: Path | None = None
    size: str = "20k"
    archs: tuple[str, ...] = ("resnet18",)
    strides_px: tuple[int, ...] = (96,)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    repeats: int = 3
    workers: int | None = None
    naive_workers: int = 2
    naive_batch_size: int = 64
    naive_max_tiles: int = 2000
    model_batches: int = 10
    model_seconds: float = 5.0  # shortest timed model-only run
    compile: bool = False
    compare_src: Path | None = None
    smoke: bool = False
    cache_dir: Path = REPO / "bench-out" / "slides"
    work_dir: Path | None = None
    seed: int = 0
    skip: tuple[str, ...] = ()  # any of tiling, feed, decode, tissue, model, e2e
    progress: Callable[[str], None] = field(default=lambda msg: None)
