"""Samplers run beside a contender: peak RSS of a process tree, GPU utilisation and memory."""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Any, Callable

import numpy as np

from .options import MiB


class PeakRss:
    """Peak resident memory of process ``pid`` (default: this one) plus its children, summed."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_bytes = 0
        self.start_bytes = 0

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
        self.start_bytes = self.peak_bytes = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())  # a last sample: the end may be the peak

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
        except Exception:
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
            except Exception:
                continue

    def __enter__(self) -> "GpuSampler":
        if self._read is not None:
            try:
                self._before_mb = self._read()[1]
            except Exception:
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
