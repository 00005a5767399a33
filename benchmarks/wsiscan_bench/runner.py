"""Running contenders: subprocesses with their wall, CPU and peak memory, interleaved repeats, the best run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from wsiscan.errors import ConfigError

from .options import BENCHMARKS_DIR
from .sampling import GpuSampler, PeakRss


def _child_env(env_src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    # `python -m` and `-c` put the working folder first on sys.path, ahead of PYTHONPATH: run from
    # a checkout, every contender would import that checkout's wsiscan, --compare-src's too
    env["PYTHONSAFEPATH"] = "1"
    # another source tree of wsiscan ahead of the installed one; this package's folder last, for
    # the naive contenders (`python -m wsiscan_bench.naive`): it holds no wsiscan to shadow
    paths = [str(env_src)] if env_src is not None else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")]), str(BENCHMARKS_DIR)])
    return env


def check_compare_src(src: Path) -> Path:
    """The wsiscan package a contender run with ``src`` imports; raises unless it is the one in ``src``."""
    out = subprocess.run([sys.executable, "-c", "import wsiscan; print(wsiscan.__file__)"], env=_child_env(src),
                         capture_output=True, text=True, check=False)
    imported = Path(out.stdout.strip()).resolve() if out.returncode == 0 else None
    if imported is None or Path(src).resolve() not in imported.parents:
        raise ConfigError(f"--compare-src {src}: its contender imports {imported or out.stderr.strip()[-300:]}, "
                         f"not {Path(src) / 'wsiscan'}; give a folder that holds a wsiscan/ package")
    return imported.parent


def _run_child(cmd: list[str], *, env_src: Path | None = None, gpu: GpuSampler | None = None) -> dict[str, Any]:
    env = _child_env(env_src)
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
    return [sys.executable, "-m", "wsiscan_bench.naive", kind, str(path)]


def _wsiscan_tile(slide: Path, out: Path, *, stride_px: int, workers: int | None, src: Path | None) -> dict[str, Any]:
    from wsiscan.slide_ids import slide_id_for
    from wsiscan.store import open_tile_store

    cmd = [sys.executable, "-m", "wsiscan", "tile", str(slide), "-o", str(out), "-q", "--overwrite",
           "--stride-px", str(stride_px)]
    if workers:
        cmd += ["--workers", str(workers)]
    run = _run_child(cmd, env_src=src)
    meta = open_tile_store(out / slide_id_for(slide) / "store.zarr", mode="r").meta
    tm, last = meta["timings_s"], meta["last_run"]
    return {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "seconds": tm["total_s"], "pixels_seconds": tm["pixels_s"],
            "decoded_bytes": last["decoded_bytes"], "chunks_written": last["chunks_written"],
            "workers": meta.get("workers"), "peak_rss_mb": run["peak_rss_mb"], "timings_s": tm,
            # stores written before the raw reader existed say nothing: OpenSlide read them
            "reader": meta.get("pixel_reader", "openslide"),
            "glass_skipped_bytes": (meta.get("decode") or {}).get("glass_skipped_bytes", 0)}


def _wsiscan_predict(slide: Path, out: Path, ckpt: Path, *, stride_px: int, device: str, precision: str,
                     batch_size: int | None, workers: int | None, src: Path | None, gpu: GpuSampler) -> dict[str, Any]:
    from wsiscan.slide_ids import slide_id_for

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
    import wsiscan

    cli = (Path(src) / "wsiscan" if src else Path(wsiscan.__file__).parent) / "cli" / "predict.py"
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
