"""The machine a benchmark runs on: CPU, cores, memory and CUDA device, and the 1-minute load average."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


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
