"""Throughput measurement: the code behind ``wsiscan bench`` and ``benchmarks/*.py``.

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

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError

__all__ = ["BenchOptions", "PeakRss", "GpuSampler", "SIZES", "run_bench", "format_table", "benchmark_slide",
           "make_checkpoint", "device_info", "load_benchmark_script"]

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = REPO / "benchmarks"
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
    "model: wsiscan = the Ensemble predict uses (precision and channels_last as reported), naive = the same weights in"
    " fp32 NCHW; both on batches already on the device, after two warm-up batches",
    "end_to_end: wall time from starting `wsiscan predict` to all outputs written (subprocess, cold: no store to"
    " resume); naive = read_region per patch in a DataLoader (--naive-workers), fp32 model, probabilities pasted into a"
    " whole-slide numpy canvas, nothing written; peak RSS summed over each process tree, sampled every 20 ms",
    "ratio keys: *_vs_naive = wsiscan / naive for rates, speedup_vs_naive = naive seconds / wsiscan seconds,"
    " peak_rss_vs_naive = wsiscan / naive (< 1: wsiscan uses less); *_vs_before likewise against --compare-src",
]
SIZES = {"small": (8_000, 8_000), "20k": (20_000, 20_000), "camelyon": (100_000, 100_000)}


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
    compile: bool = False
    compare_src: Path | None = None
    smoke: bool = False
    cache_dir: Path = REPO / "bench-out" / "slides"
    work_dir: Path | None = None
    seed: int = 0
    skip: tuple[str, ...] = ()  # any of tiling, tissue, model, e2e
    progress: Callable[[str], None] = field(default=lambda msg: None)


# -- sampling ----------------------------------------------------------------------------


class PeakRss:
    """Peak resident memory of process ``pid`` (default: this one) plus its children, summed."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_bytes = 0

    def _sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, self._sample())

    def __enter__(self) -> "PeakRss":
        self.peak_bytes = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MiB


class GpuSampler:
    """GPU utilisation (%) and memory used (MiB) of one device, sampled every ``interval_s``.

    pynvml when installed, else ``nvidia-smi``; ``result()`` is None when neither works
    or ``enabled`` is False (no CUDA).  Memory is device-wide: the peak minus the level
    before the run is reported.
    """

    def __init__(self, index: int = 0, *, enabled: bool, interval_s: float = 0.1) -> None:
        self.index, self.enabled, self.interval_s = index, enabled, interval_s
        self.samples: list[tuple[float, float]] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._read: Callable[[], tuple[float, float]] | None = None
        self._before_mb = 0.0
        if enabled:
            self._read = self._reader()

    def _reader(self) -> Callable[[], tuple[float, float]] | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "pynvml"
            return lambda: (float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                            pynvml.nvmlDeviceGetMemoryInfo(handle).used / MiB)
        except Exception:  # noqa: BLE001 - pynvml absent or unusable: try nvidia-smi
            pass
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return None

        def smi() -> tuple[float, float]:
            out = subprocess.run([exe, "-i", str(self.index), "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            util, mem = out.stdout.strip().splitlines()[0].split(",")
            return float(util), float(mem)

        try:
            smi()
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None
        self.source = "nvidia-smi"
        return smi

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(self._read())
            except Exception:  # noqa: BLE001 - a failed sample is skipped, never fatal
                continue

    def __enter__(self) -> "GpuSampler":
        if self._read is not None:
            try:
                self._before_mb = self._read()[1]
            except Exception:  # noqa: BLE001
                self._before_mb = 0.0
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._read is not None:
            self._stop.set()
            self._thread.join()

    def result(self) -> dict[str, Any] | None:
        if self._read is None or not self.samples:
            return None
        util = [u for u, _ in self.samples]
        return {"source": self.source, "samples": len(util), "interval_s": self.interval_s,
                "utilisation_mean_percent": float(np.mean(util)), "utilisation_max_percent": float(max(util)),
                "memory_peak_mb": max(m for _, m in self.samples) - self._before_mb}


# -- environment --------------------------------------------------------------------------


def device_info(device: Any = None) -> dict[str, Any]:
    """CPU model, cores, memory; the CUDA device's name when ``device`` is CUDA (default: the CPU)."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    kind = getattr(device, "type", None) or "cpu"
    info: dict[str, Any] = {"type": kind, "name": cpu, "cpu_model": cpu, "cores_usable": cores,
                            "cores_logical": os.cpu_count(), "cores_physical": psutil.cpu_count(logical=False),
                            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "hostname": platform.node(),
                            "cuda": None}
    if kind == "cuda":
        import torch

        props = torch.cuda.get_device_properties(device)
        info["name"] = props.name
        info["cuda"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1), "torch_cuda": torch.version.cuda}
    return info


def load_avg_1m() -> float:
    return round(os.getloadavg()[0], 2)


# -- inputs ---------------------------------------------------------------------------------


def load_benchmark_script(name: str):
    """A script of the repository's ``benchmarks/`` folder (a folder of scripts, not a package)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    path = BENCHMARKS_DIR / f"{name}.py"
    if not path.exists():
        raise ConfigError(f"{path}: not found; generated benchmark slides need a source checkout of wsiscan "
                          f"(benchmarks/); pass --slide PATH to measure an existing slide instead")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # worker processes and dataclasses find the module by this name
    spec.loader.exec_module(module)
    return module


def benchmark_slide(size: str, cache_dir: Path, *, seed: int = 0) -> tuple[Path, dict[str, Any] | None]:
    """The cached benchmark slide of a preset size, generated (make_slide.py) when missing."""
    if size not in SIZES:
        raise ConfigError(f"unknown benchmark size {size!r}; use one of {', '.join(SIZES)}")
    path = Path(cache_dir) / f"bench-{size}-seed{seed}.tif"
    if path.exists():
        return path, None
    make_slide = load_benchmark_script("make_slide")
    if not Path(make_slide.DEFAULT_SOURCE).exists():
        raise ConfigError(f"{make_slide.DEFAULT_SOURCE}: the tissue source of generated benchmark slides is missing; "
                          f"pass --slide PATH to measure an existing slide instead")
    w, h = SIZES[size]
    return path, make_slide.make_benchmark_slide(path, width_px=w, height_px=h, seed=seed)


def smoke_slide(work: Path) -> Path:
    """A tiny synthetic slide (no real data needed): CI-sized runs."""
    from .testing import write_synthetic_slide

    return write_synthetic_slide(work / "smoke.tif", dimensions_px=(2048, 1536)).path


def make_checkpoint(arch: str, path: Path) -> Path:
    """A randomly initialised (seeded) checkpoint: speed does not depend on the weights."""
    import torch

    from .models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, name=f"random {arch} (benchmark)")
    save_checkpoint(path, build_model(spec), spec)
    return path


# -- subprocess contenders ---------------------------------------------------------------------


def _run_child(cmd: list[str], *, env_src: Path | None = None, gpu: GpuSampler | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if env_src is not None:  # another source tree of wsiscan, ahead of the installed one
        env["PYTHONPATH"] = os.pathsep.join([str(env_src), *filter(None, [env.get("PYTHONPATH")])])
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakRss(proc.pid) as rss:
        if gpu is not None:
            with gpu:
                out, err = proc.communicate()
        else:
            out, err = proc.communicate()
    wall = time.perf_counter() - t0
    cpu1 = _children_cpu_s()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark contender failed ({' '.join(cmd[:6])} ...): {err.strip()[-2000:]}")
    return {"wall_s": wall, "cpu_s": cpu1 - cpu0 if cpu0 is not None else None, "peak_rss_mb": rss.peak_mb,
            "stdout": out}


def _children_cpu_s() -> float | None:
    """User + system CPU seconds of every finished child process (and theirs): CPU time, unlike wall
    time, hardly changes when other work shares the cores, so it compares runs on a loaded machine."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _child_cmd(kind: str, args: dict[str, Any], work: Path) -> list[str]:
    path = work / f"{kind}-args.json"
    path.write_text(json.dumps(args))
    return [sys.executable, "-c", "import sys, wsiscan.bench as b; b.child_main(sys.argv[1:])", kind, str(path)]


def child_main(argv: list[str]) -> None:
    """Entry point of the naive contenders' subprocesses (so their memory is measured alone)."""
    kind, path = argv
    args = json.loads(Path(path).read_text())
    result = {"naive-tiles": _naive_tiles, "naive-predict": _naive_predict}[kind](**args)
    Path(args["result_path"]).write_text(json.dumps(result))


def _naive_tiles(*, slide: str, l0_xy_path: str, level: int, read_px: int, patch_px: int,
                 result_path: str) -> dict[str, Any]:
    """One read per patch (OpenSlide read_region via wsiscan.slide), BOX resize when resampling."""
    from PIL import Image

    from .slide import open_slide

    l0_xy = np.load(l0_xy_path)
    t0 = time.perf_counter()
    checksum = 0
    with open_slide(slide) as s:
        ds = s.info.levels[level].downsample
        for x, y in l0_xy:
            rgb = s.read_level(level=level, lv_xy=(int(round(x / ds)), int(round(y / ds))), size_px=(read_px, read_px))
            if read_px != patch_px:
                rgb = np.asarray(Image.fromarray(rgb).resize((patch_px, patch_px), Image.Resampling.BOX))
            checksum += int(rgb[0, 0, 0])
    return {"seconds": time.perf_counter() - t0, "n_tiles": int(len(l0_xy)), "checksum": checksum}


def _naive_predict(*, slide: str, ckpt: str, stride_px: int, device: str, workers: int, batch_size: int,
                   result_path: str) -> dict[str, Any]:
    """The pipeline many research scripts use: read_region per patch, DataLoader, fp32 model, canvas."""
    import torch
    from PIL import Image

    from .config import load_config
    from .models import load_checkpoint, predict_proba
    from .slide import open_slide
    from .tiling import plan_tiling

    t0 = time.perf_counter()
    model, spec = load_checkpoint(ckpt, map_location=device)
    cfg = load_config().replace("tile", target_mpp=spec.input_mpp, tile_size_px=spec.patch_size_px, stride_px=stride_px)
    plan = plan_tiling(slide, cfg)
    level = plan.selection.level
    lv_size = int(math.ceil(spec.patch_size_px * plan.selection.lv_per_px - 1e-9))
    l0_xy = plan.l0_xy()

    class Patches(torch.utils.data.Dataset):
        handle = None  # one handle per DataLoader worker process, opened there

        def __len__(self) -> int:
            return len(l0_xy)

        def __getitem__(self, i: int):
            if Patches.handle is None:
                Patches.handle = open_slide(slide)
            ds = Patches.handle.info.levels[level].downsample
            x, y = (int(v) for v in l0_xy[i])
            rgb = Patches.handle.read_level(level=level, lv_xy=(int(round(x / ds)), int(round(y / ds))),
                                            size_px=(lv_size, lv_size))
            if lv_size != spec.patch_size_px:
                rgb = np.asarray(Image.fromarray(rgb).resize((spec.patch_size_px,) * 2, Image.Resampling.BOX))
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0, i

    loader = torch.utils.data.DataLoader(Patches(), batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.startswith("cuda"))
    s = plan.grid.stride_px
    canvas = np.full((plan.grid.n_rows * s, plan.grid.n_cols * s), np.nan, np.float32)  # the whole-slide canvas
    with torch.inference_mode():
        for x, idx in loader:
            probs = predict_proba(model, spec, x.to(device)).cpu().numpy()
            for p, i in zip(probs, idx.numpy()):
                r, c = plan.kept_rc[i]
                canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] = p
    return {"n_patches": int(len(l0_xy)), "inner_s": time.perf_counter() - t0}


def _wsiscan_tile(slide: Path, out: Path, *, stride_px: int, workers: int | None, src: Path | None) -> dict[str, Any]:
    from .store import open_tile_store
    from .tiling import slide_id_for

    cmd = [sys.executable, "-m", "wsiscan", "tile", str(slide), "-o", str(out), "-q", "--overwrite",
           "--stride-px", str(stride_px)]
    if workers:
        cmd += ["--workers", str(workers)]
    run = _run_child(cmd, env_src=src)
    meta = open_tile_store(out / slide_id_for(slide) / "store.zarr", mode="r").meta
    tm, last = meta["timings_s"], meta["last_run"]
    return {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "seconds": tm["total_s"], "pixels_seconds": tm["pixels_s"],
            "decoded_bytes": last["decoded_bytes"], "chunks_written": last["chunks_written"],
            "workers": meta.get("workers"), "peak_rss_mb": run["peak_rss_mb"], "timings_s": tm}


def _wsiscan_predict(slide: Path, out: Path, ckpt: Path, *, stride_px: int, device: str, precision: str,
                     batch_size: int | None, workers: int | None, src: Path | None, gpu: GpuSampler) -> dict[str, Any]:
    from .tiling import slide_id_for

    shutil.rmtree(out, ignore_errors=True)  # a cold run: nothing to resume
    cmd = [sys.executable, "-m", "wsiscan", "predict", str(slide), "-o", str(out), "--model", str(ckpt), "-q",
           "--stride-px", str(stride_px), "--device", device, "--precision", precision]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    if workers:  # `predict --workers` starts a Dask cluster since 232ee83; older trees took it for decoding
        cmd += [_decode_workers_option(src), str(workers)]
    run = _run_child(cmd, env_src=src, gpu=gpu)
    summary = json.loads((out / slide_id_for(slide) / "summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "n_patches": summary["tiles"]["n_tiles"],
            "peak_rss_mb": run["peak_rss_mb"],
            "gpu": gpu.result(), "stage_timings_s": summary["timings_s"], "batch_size": summary.get("batch_size"),
            "precision": summary.get("precision")}


def _decode_workers_option(src: Path | None) -> str:
    """The `wsiscan predict` option for decode workers in the tree that runs (this one or --compare-src)."""
    cli = (Path(src) / "wsiscan" if src else Path(__file__).parent) / "cli" / "predict.py"
    try:
        return "--decode-workers" if "--decode-workers" in cli.read_text() else "--workers"
    except OSError:
        return "--decode-workers"


def _best(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The fastest run, with every run's time and the largest peak memory of all runs."""
    best = dict(min(runs, key=lambda r: r[key]))
    best["runs_" + key] = [r[key] for r in runs]
    if all(r.get("cpu_s") is not None for r in runs):
        best["cpu_s_min"] = min(r["cpu_s"] for r in runs)  # least disturbed by other work on the machine
    best["peak_rss_mb"] = max(r.get("peak_rss_mb") or 0.0 for r in runs) or None
    return best


def _interleave(contenders: dict[str, Callable[[], dict[str, Any]]], repeats: int, key: str) -> dict[str, Any]:
    runs: dict[str, list] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            runs[name].append(fn())
    return {name: _best(r, key) for name, r in runs.items()}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# -- the sections ---------------------------------------------------------------------------------


def bench_tiling(slide: Path, stride_px: int, opts: BenchOptions, work: Path) -> dict[str, Any]:
    """wsiscan tile (and the --compare-src tree) against one read per kept patch, at one stride.

    wsiscan decodes the pixels near tissue once whatever the stride; one read per patch
    reads (tile / stride)^2 times as many patches at a finer stride.
    """
    from .config import load_config
    from .tiling import plan_tiling

    plan = plan_tiling(slide, load_config().replace("tile", stride_px=stride_px))
    sel, n = plan.selection, plan.n_tiles
    patch_px = plan.grid.tile_size_px
    read_px = int(math.ceil(patch_px * sel.lv_per_px - 1e-9))
    m = min(n, opts.naive_max_tiles)
    start = int(np.random.default_rng(opts.seed).integers(0, n - m + 1))
    np.save(work / "l0_xy.npy", plan.l0_xy()[start : start + m])  # a contiguous row-major run: the order of a full run
    naive_args = {"slide": str(slide), "l0_xy_path": str(work / "l0_xy.npy"), "level": sel.level, "read_px": read_px,
                  "patch_px": patch_px, "result_path": str(work / "naive-tiles.json")}

    def naive() -> dict[str, Any]:
        run = _run_child(_child_cmd("naive-tiles", naive_args, work))
        res = json.loads((work / "naive-tiles.json").read_text())
        return {"seconds_timed": res["seconds"], "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                "peak_rss_mb": run["peak_rss_mb"]}

    contenders: dict[str, Callable] = {"wsiscan": lambda: _wsiscan_tile(slide, work / "tile", stride_px=stride_px,
                                                                        workers=opts.workers, src=None)}
    if opts.compare_src:
        contenders["before"] = lambda: _wsiscan_tile(slide, work / "tile-before", stride_px=stride_px,
                                                     workers=opts.workers, src=opts.compare_src)
    contenders["naive"] = naive
    key = {"wsiscan": "seconds", "before": "seconds", "naive": "seconds_timed"}
    runs: dict[str, list] = {k: [] for k in contenders}
    for _ in range(opts.repeats):
        for name, fn in contenders.items():
            runs[name].append(fn())
    best = {name: _best(r, key[name]) for name, r in runs.items()}
    out: dict[str, Any] = {"n_tiles": n, "tile_size_px": patch_px, "stride_px": plan.grid.stride_px,
                           "level_read": sel.level, "level_mpp": sel.level_mpp, "effective_mpp": sel.effective_mpp,
                           "resample": sel.resample, "supertile_px": plan.geometry.supertile_px,
                           "chunks_needed": int(plan.chunks_needed.sum()),
                           "chunks_total": int(plan.chunks_needed.size)}
    for name in ("wsiscan", "before"):
        if name not in best:
            continue
        b = best[name]
        b.update(tiles_per_s=n / b["seconds"], decoded_mb_per_s=b["decoded_bytes"] / b["seconds"] / MB,
                 pixels_tiles_per_s=n / b["pixels_seconds"],
                 pixels_decoded_mb_per_s=b["decoded_bytes"] / b["pixels_seconds"] / MB)
        out[name] = b
    nv = best["naive"]
    rate = m / nv["seconds_timed"]
    nv.update(n_tiles=n, n_tiles_timed=m, extrapolated=m < n, read_px=read_px, seconds=n / rate, tiles_per_s=rate,
              decoded_bytes=n * read_px * read_px * 3, decoded_mb_per_s=rate * read_px * read_px * 3 / MB)
    out["naive"] = nv
    ws = out["wsiscan"]
    out["ratio"] = {
        "tiles_per_s_vs_naive": _ratio(ws["tiles_per_s"], nv["tiles_per_s"]),
        "pixels_tiles_per_s_vs_naive": _ratio(ws["pixels_tiles_per_s"], nv["tiles_per_s"]),
        "decoded_bytes_vs_naive": _ratio(ws["decoded_bytes"], nv["decoded_bytes"]),
        "tiles_per_s_vs_before": _ratio(ws["tiles_per_s"], out["before"]["tiles_per_s"]) if "before" in out else None,
        "pixels_tiles_per_s_vs_before": (_ratio(ws["pixels_tiles_per_s"], out["before"]["pixels_tiles_per_s"])
                                         if "before" in out else None),
    }
    return out


def bench_tissue(slide: Path, opts: BenchOptions) -> dict[str, Any]:
    """wsiscan's thumbnail + mask against one read of the whole level + PIL resize + the same mask."""
    from PIL import Image

    from .config import load_config
    from .slide import open_slide
    from .tissue import detect_tissue

    cfg = load_config().tissue

    def ours() -> dict[str, Any]:
        t0 = time.perf_counter()
        with open_slide(slide) as s:
            thumb = s.read_thumbnail(mpp=cfg.mask_mpp)
        mask = detect_tissue(thumb, mask_mpp=cfg.mask_mpp, config=cfg)
        return {"seconds": time.perf_counter() - t0, "shape": list(mask.mask.shape)}

    def naive() -> dict[str, Any]:
        t0 = time.perf_counter()
        with open_slide(slide) as s:
            base = s.require_mpp().mpp
            level = s.level_for_mpp(cfg.mask_mpp, tolerance=0.0)
            lw, lh = s.info.levels[level].dimensions_px
            whole = s.read_level(level=level, lv_xy=(0, 0), size_px=(lw, lh))
            w0, h0 = s.info.dimensions_px
        size = (max(1, math.ceil(w0 * base / cfg.mask_mpp)), max(1, math.ceil(h0 * base / cfg.mask_mpp)))
        thumb = np.asarray(Image.fromarray(whole).resize(size, Image.Resampling.BOX))
        mask = detect_tissue(thumb, mask_mpp=cfg.mask_mpp, config=cfg)
        return {"seconds": time.perf_counter() - t0, "shape": list(mask.mask.shape)}

    best = _interleave({"wsiscan": ours, "naive": naive}, opts.repeats, "seconds")
    best["ratio"] = {"speedup_vs_naive": _ratio(best["naive"]["seconds"], best["wsiscan"]["seconds"])}
    return best


def bench_model(arch: str, device: Any, opts: BenchOptions) -> dict[str, Any]:
    """Patches/s of the network as predict runs it against plain fp32 NCHW, same weights and device."""
    import torch

    from .inference import Ensemble, default_batch_size, resolve_precision
    from .models import ModelSpec, build_model, normalise

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, name=f"random {arch} (benchmark)")
    model = build_model(spec).eval()
    autocast = resolve_precision(opts.precision, device)
    bs = opts.batch_size or default_batch_size(device)
    ens = Ensemble([copy.deepcopy(model)], [spec], device, autocast_dtype=autocast, tta=False, compile=opts.compile)
    plain = copy.deepcopy(model).to(device).eval()
    x = torch.rand(bs, 3, spec.patch_size_px, spec.patch_size_px, device=device)
    x_ens = x.contiguous(memory_format=torch.channels_last) if ens.channels_last else x
    cuda = device.type == "cuda"

    def baseline(inp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(plain(normalise(inp, spec)), dim=1)[:, spec.positive_class]

    def timed(fn: Callable, inp: torch.Tensor) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            gpu = GpuSampler(device.index or 0, enabled=cuda)
            for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN algorithm choice
                fn(inp)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            with gpu:
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(opts.model_batches):
                    fn(inp)
                if cuda:
                    torch.cuda.synchronize(device)
                seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            n = opts.model_batches * bs
            return {"seconds": seconds, "cpu_s": cpu_s, "n_patches": n, "patches_per_s": n / seconds,
                    "cpu_s_per_1k_patches": 1000 * cpu_s / n, "gpu": gpu.result(),
                    "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / MiB if cuda else None}
        return run

    best = _interleave({"wsiscan": timed(ens, x_ens), "naive": timed(baseline, x)}, opts.repeats, "seconds")
    precision = str(autocast or "fp32").replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16")
    best["wsiscan"].update(precision=precision, channels_last=ens.channels_last, compile=opts.compile)
    best["naive"].update(precision="fp32", channels_last=False, compile=False)
    return {"arch": arch, "batch_size": bs, "patch_size_px": spec.patch_size_px, **best,
            "ratio": {"patches_per_s_vs_naive": _ratio(best["wsiscan"]["patches_per_s"],
                                                       best["naive"]["patches_per_s"])}}


def bench_end_to_end(slide: Path, ckpt: Path, stride_px: int, device: Any, opts: BenchOptions,
                     work: Path) -> dict[str, Any]:
    """wsiscan predict (and the --compare-src tree) against the naive pipeline, from start to outputs."""
    cuda = device.type == "cuda"
    dev = str(device)
    index = device.index or 0
    naive_args = {"slide": str(slide), "ckpt": str(ckpt), "stride_px": stride_px, "device": dev,
                  "workers": opts.naive_workers, "batch_size": opts.naive_batch_size,
                  "result_path": str(work / "naive-predict.json")}

    def naive() -> dict[str, Any]:
        gpu = GpuSampler(index, enabled=cuda)
        run = _run_child(_child_cmd("naive-predict", naive_args, work), gpu=gpu)
        res = json.loads((work / "naive-predict.json").read_text())
        return {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "n_patches": res["n_patches"],
                "peak_rss_mb": run["peak_rss_mb"],
                "gpu": gpu.result(), "workers": opts.naive_workers, "batch_size": opts.naive_batch_size}

    def ours(src: Path | None, name: str) -> Callable[[], dict[str, Any]]:
        return lambda: _wsiscan_predict(slide, work / name, ckpt, stride_px=stride_px, device=dev,
                                        precision=opts.precision, batch_size=opts.batch_size, workers=opts.workers, src=src,
                                        gpu=GpuSampler(index, enabled=cuda))

    contenders: dict[str, Callable] = {"wsiscan": ours(None, "predict")}
    if opts.compare_src:
        contenders["before"] = ours(opts.compare_src, "predict-before")
    contenders["naive"] = naive
    best = _interleave(contenders, opts.repeats, "wall_s")
    for b in best.values():
        b.update(s_per_slide=b["wall_s"], patches_per_s=b["n_patches"] / b["wall_s"],
                 gpu_utilisation_mean_percent=(b["gpu"] or {}).get("utilisation_mean_percent"),
                 peak_gpu_memory_mb=(b["gpu"] or {}).get("memory_peak_mb"))
    ws, nv = best["wsiscan"], best["naive"]
    out = {"stride_px": stride_px, "n_patches": ws["n_patches"], **best}
    out["ratio"] = {"speedup_vs_naive": _ratio(nv["wall_s"], ws["wall_s"]),
                    "cpu_s_naive_over_wsiscan": _ratio(nv.get("cpu_s_min"), ws.get("cpu_s_min")),
                    "peak_rss_vs_naive": _ratio(ws["peak_rss_mb"], nv["peak_rss_mb"]),
                    "speedup_vs_before": _ratio(best["before"]["wall_s"], ws["wall_s"]) if "before" in best else None,
                    "peak_rss_vs_before": (_ratio(ws["peak_rss_mb"], best["before"]["peak_rss_mb"])
                                           if "before" in best else None)}
    return out


# -- the whole run ---------------------------------------------------------------------------------


def run_bench(opts: BenchOptions, *, command: str) -> dict[str, Any]:
    """Every section of the benchmark; returns the JSON-ready report."""
    import tempfile

    from .config import runtime_versions
    from .inference import select_device
    from .slide import open_slide

    load_start = load_avg_1m()
    device = select_device(opts.device)
    if opts.smoke:
        opts.repeats = min(opts.repeats, 1)
        opts.model_batches = min(opts.model_batches, 2)
        opts.batch_size = opts.batch_size or 8
        opts.naive_max_tiles = min(opts.naive_max_tiles, 50)
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="wsiscan-bench-", dir=opts.work_dir)
    work = Path(tmp.name)
    try:
        generated = None
        if opts.slide is not None:
            slide = Path(opts.slide).resolve()
        elif opts.smoke:
            slide = smoke_slide(work)
        else:
            opts.progress(f"benchmark slide {opts.size} (generated once, then cached in {opts.cache_dir}) ...")
            slide, generated = benchmark_slide(opts.size, opts.cache_dir, seed=opts.seed)
        with open_slide(slide) as s:
            info = s.info
        with slide.open("rb") as fh:  # a warm page cache for every contender
            while fh.read(16 * MiB):
                pass
        report: dict[str, Any] = {
            "benchmark": "wsiscan-bench", "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "smoke": opts.smoke,
            "repeats": opts.repeats, "versions": runtime_versions(), "device": device_info(device),
            "load_avg_1m": {"start": load_start},
            "slide": {"path": str(slide), "dimensions_px": list(info.dimensions_px),
                      "mpp": info.mpp.mpp if info.mpp else None, "vendor": info.vendor,
                      "file_size_bytes": info.file_size_bytes, "generated": generated},
            "tiling": [], "tissue_mask": None, "model": [], "end_to_end": [],
            "compare_src": str(opts.compare_src) if opts.compare_src else None,
            "notes": NOTES,
        }
        sections = report["section_seconds"] = {}
        if "tiling" not in opts.skip:
            opts.progress("tiling: wsiscan tile vs one read_region per patch ...")
            t = time.perf_counter()
            for stride in opts.strides_px:
                report["tiling"].append(bench_tiling(slide, stride, opts, work))
            sections["tiling"] = time.perf_counter() - t
        if "tissue" not in opts.skip:
            opts.progress("tissue mask ...")
            t = time.perf_counter()
            report["tissue_mask"] = bench_tissue(slide, opts)
            sections["tissue_mask"] = time.perf_counter() - t
        if "model" not in opts.skip:
            t = time.perf_counter()
            for arch in opts.archs:
                opts.progress(f"model only: {arch} ...")
                report["model"].append(bench_model(arch, device, opts))
            sections["model"] = time.perf_counter() - t
        if "e2e" not in opts.skip:
            t = time.perf_counter()
            ckpt = make_checkpoint(opts.archs[0], work / f"{opts.archs[0]}.pt")
            for stride in opts.strides_px:
                opts.progress(f"end to end: wsiscan predict vs naive pipeline, {opts.archs[0]}, stride {stride} px ...")
                report["end_to_end"].append(bench_end_to_end(slide, ckpt, stride, device, opts, work))
            sections["end_to_end"] = time.perf_counter() - t
    finally:
        tmp.cleanup()
    report["load_avg_1m"]["end"] = load_avg_1m()
    report["seconds"] = time.perf_counter() - t0
    report["peak_gpu_memory_mb"] = _max_of(report, "peak_gpu_memory_mb")
    report["peak_rss_mb"] = max((e["wsiscan"]["peak_rss_mb"] for e in report["end_to_end"]), default=None)
    return report


def _max_of(report: dict[str, Any], key: str) -> float | None:
    vals = [m["wsiscan"].get(key) for m in report["model"]] + [e["wsiscan"].get(key) for e in report["end_to_end"]]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def format_table(r: dict[str, Any]) -> str:
    """The report as a readable table: each figure, its naive baseline and the ratio."""
    d, s = r["device"], r["slide"]
    cols = ["wsiscan", "before", "naive"] if r.get("compare_src") else ["wsiscan", "naive"]
    lines = [f"device: {d['name']} ({d['type']}, {d['cores_usable']} cores, {d['memory_gib']} GiB); 1-min load "
             f"{r['load_avg_1m']['start']} -> {r['load_avg_1m'].get('end')}; best of {r['repeats']}",
             f"slide: {Path(s['path']).name} {s['dimensions_px'][0]}x{s['dimensions_px'][1]} px at "
             f"{(s['mpp'] or 0):.4g} um/px", "",
             f"{'figure':<44}" + "".join(f"{c:>12}" for c in cols) + f"{'ratio':>9}"]

    def row(label: str, get: Callable[[dict], float | None], section: dict, ratio: float | None, fmt: str = ".1f"):
        vals = [get(section[c]) if c in section else None for c in cols]
        cells = "".join(f"{v:>12{fmt}}" if v is not None else f"{'-':>12}" for v in vals)
        lines.append(f"{label:<44}{cells}{(f'{ratio:>8.2f}x' if ratio else f'{chr(45):>9}')}")

    for t in r.get("tiling") or []:
        lines.append(f"tiling, stride {t['stride_px']} px: {t['n_tiles']} tiles of {t['tile_size_px']} px, level "
                     f"{t['level_read']} ({'resampled' if t['resample'] else 'as-is'}), "
                     f"{t['chunks_needed']}/{t['chunks_total']} chunks")
        row("  tiles/s (tile_slide end to end)", lambda x: x["tiles_per_s"], t, t["ratio"]["tiles_per_s_vs_naive"], ".0f")
        row("  tiles/s (decode + store only)", lambda x: x.get("pixels_tiles_per_s", x["tiles_per_s"]), t,
            t["ratio"]["pixels_tiles_per_s_vs_naive"], ".0f")
        row("  decode MB/s (decode + store only)", lambda x: x.get("pixels_decoded_mb_per_s", x["decoded_mb_per_s"]),
            t, _ratio(t["wsiscan"]["pixels_decoded_mb_per_s"], t["naive"]["decoded_mb_per_s"]))
        row("  CPU s of the run, user+sys (least)", lambda x: x.get("cpu_s_min"), t, None, ".2f")
        row("  peak RSS MB", lambda x: x["peak_rss_mb"], t, None, ".0f")
    tm = r.get("tissue_mask")
    if tm:
        row("tissue mask s", lambda x: x["seconds"], tm, tm["ratio"]["speedup_vs_naive"], ".2f")
    for m in r["model"]:
        w = m["wsiscan"]
        row(f"model {m['arch']} patches/s ({w['precision']}{', cl' if w['channels_last'] else ''}, bs {m['batch_size']})",
            lambda x: x["patches_per_s"], m, m["ratio"]["patches_per_s_vs_naive"], ".0f")
        row("  CPU s per 1,000 patches", lambda x: x["cpu_s_per_1k_patches"], m, None, ".2f")
    for e in r["end_to_end"]:
        lines.append(f"end to end, stride {e['stride_px']} px: {e['n_patches']} patches")
        row("  s/slide (speed-up)", lambda x: x["wall_s"], e, e["ratio"]["speedup_vs_naive"], ".2f")
        row("  patches/s", lambda x: x["patches_per_s"], e, e["ratio"]["speedup_vs_naive"], ".0f")
        row("  CPU s, user+sys (least of the runs)", lambda x: x.get("cpu_s_min"), e,
            e["ratio"].get("cpu_s_naive_over_wsiscan"), ".1f")
        row("  peak host RSS MB (wsiscan/naive)", lambda x: x["peak_rss_mb"], e, e["ratio"]["peak_rss_vs_naive"], ".0f")
        row("  GPU utilisation % (mean)", lambda x: x["gpu_utilisation_mean_percent"], e, None, ".0f")
        row("  peak GPU memory MB", lambda x: x["peak_gpu_memory_mb"], e, None, ".0f")
    lines.append("ratio: wsiscan over the naive baseline (rates and speed-ups: > 1 is better; RSS: < 1 is better)")
    return "\n".join(lines)
