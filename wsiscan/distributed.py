"""Many slides on Dask distributed: the only module that imports dask and distributed.

``wsiscan predict SLIDES... --workers N`` (a local cluster it starts) or
``--scheduler ADDRESS`` (an existing cluster) calls :func:`predict_many`: one task per
slide, each running :func:`wsiscan.predict.predict_slide` on a worker, into
``OUT/<slide-id>/`` exactly as a single-process run writes it.

* **Per-worker setup.**  :class:`ModelPlugin`, a ``distributed.WorkerPlugin``, loads
  the model(s) once when a worker starts (and again in a worker that replaces a dead
  one) and checks them against the checkpoint sha256s the client loaded; every slide
  on that worker reuses them.
* **A worker dies mid-slide.**  The scheduler gives the task to another worker, at most
  ``distributed.scheduler.allowed-failures`` times (a local cluster sets it to
  ``retries``; an existing scheduler keeps its own, default 3).  The retry resumes from
  the pixel and heatmap chunks already on disk (each chunk file is written atomically).
* **A slide fails deterministically** (a :class:`WsiscanError`: corrupt file, no
  resolution, no tissue, ...): the task returns the error as a value, so it is
  recorded once and never retried.  Any other exception is retried up to ``retries``
  times (``Client.submit(retries=...)``), then recorded.
* **Attempts.**  Each attempt writes a marker file when it starts
  (``OUT/.wsiscan-attempts/<run-id>/<slide-id>/``).  The manifest counts them
  (``attempts``, ``retries``, the workers tried), and a retry knows it is one:
  ``--overwrite`` applies to the first attempt only, so a retry resumes.  The run's
  markers are removed when the run ends.
* **Visibility and skip.**  ``summary.json`` is written last and atomically, and removed
  before a run changes a slide's folder (see :mod:`wsiscan.predict`), so it marks a
  finished result.  Before submitting, a slide whose result is finished and unchanged
  (same slide file, model hash and config hash: :func:`wsiscan.predict.completed_summary`)
  is recorded as skipped, without a task.

Slides, checkpoints and ``OUT`` must be at the same paths on the client and on every
worker (one machine, or a shared file system).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import dask
import distributed
from distributed import Client, KilledWorker, WorkerPlugin

from .config import Config, runtime_versions
from .errors import CheckpointError, WsiscanError
from .heatmap import write_json_atomic
from .manifest import write_manifest_merged
from .predict import (
    LoadedModels,
    SlideJob,
    completed_summary,
    config_hash,
    predict_slide,
    result_record,
    slide_config,
)
from .tiling import check_writable

__all__ = ["LocalClusterPlan", "ModelPlugin", "plan_local_cluster", "start_local_cluster", "connect",
           "predict_many", "dashboard_link", "ATTEMPTS_DIR", "MANIFEST_NAME"]

ATTEMPTS_DIR = ".wsiscan-attempts"
MANIFEST_NAME = "manifest.json"
_MANIFEST_EVERY_S = 2.0  # rewrite manifest.json at most this often (and at the end): O(slides) per write


# -- the cluster ---------------------------------------------------------------------
@dataclass(frozen=True)
class LocalClusterPlan:
    """What ``--workers N`` starts: N CPU workers, or one worker per GPU (at most N)."""

    n_workers: int
    kind: str  # "cpu", "cuda (dask-cuda)" or "cuda"
    gpus: tuple[str, ...]  # CUDA_VISIBLE_DEVICES value of each worker (empty on CPU)
    worker_device: str  # the --device each worker resolves
    torch_threads: int | None  # intra-op threads per CPU worker (None: leave torch's default)


def plan_local_cluster(n_workers: int, *, device: str) -> LocalClusterPlan:
    """One worker per GPU when CUDA is present and the device is not ``cpu``, else N CPU workers.

    CPU workers share the cores: each gets ``cores // N`` torch threads (Dask starts
    workers with ``OMP_NUM_THREADS=1``).
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else \
                [str(i) for i in range(torch.cuda.device_count())]
            gpus = gpus[: n_workers]
            try:
                import dask_cuda  # noqa: F401 - optional

                kind = "cuda (dask-cuda)"
            except ImportError:
                kind = "cuda"
            return LocalClusterPlan(len(gpus), kind, tuple(gpus), "cuda", None)
    cores = os.cpu_count() or 1
    return LocalClusterPlan(n_workers, "cpu", (), "cpu" if device == "cpu" else device,
                            max(1, cores // n_workers))


@contextlib.contextmanager
def start_local_cluster(plan: LocalClusterPlan, *, retries: int,
                        dashboard_address: str = ":8787") -> Iterator[Any]:
    """Start the cluster of ``plan`` (worker processes, 1 thread each); stop it on exit.

    The scheduler runs in this process with ``allowed-failures = retries``: a slide
    whose worker dies is given to another worker at most ``retries`` times.
    """
    with dask.config.set({"distributed.scheduler.allowed-failures": retries}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Pp]ort .* is already in use.*")
        if plan.kind == "cuda (dask-cuda)":
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(n_workers=plan.n_workers, threads_per_worker=1,
                                       CUDA_VISIBLE_DEVICES=list(plan.gpus), dashboard_address=dashboard_address)
        elif plan.kind == "cuda":
            from distributed import Nanny, Scheduler, SpecCluster

            workers = {f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": g}}}
                       for g in plan.gpus}
            cluster = SpecCluster(workers=workers, scheduler={
                "cls": Scheduler, "options": {"dashboard_address": dashboard_address}})
        else:
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=plan.n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=dashboard_address)
    try:
        yield cluster
    finally:
        cluster.close()


def connect(address_or_cluster: Any, *, timeout_s: float | None = None) -> Client:
    """A client of a scheduler address (``tcp://host:8786``) or of a cluster object.

    ``timeout_s`` None: Dask's ``distributed.comm.timeouts.connect`` (30 s by default).
    """
    timeout = timeout_s if timeout_s is not None else dask.config.get("distributed.comm.timeouts.connect")
    return Client(address_or_cluster, timeout=timeout)


def dashboard_link(client: Client) -> str | None:
    """The Dask dashboard's URL, or None when the scheduler serves none (it needs bokeh)."""
    try:
        import bokeh  # noqa: F401 - the dashboard's plots need it
    except ImportError:
        if client.cluster is not None:  # a local scheduler: we know it lacks bokeh
            return None
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - only decorative; distributed raises several types here
        return None


# -- per-worker setup ------------------------------------------------------------------
class ModelPlugin(WorkerPlugin):
    """Loads the model(s) once per worker process; tasks get them with :meth:`load`.

    Registered under a name that depends on the checkpoints' sha256s and the device,
    so a run with other models registers (and loads) its own.
    """

    def __init__(self, names: Sequence[str], sha256: Sequence[str], *, device: str,
                 torch_threads: int | None = None) -> None:
        self.names = tuple(names)
        # a relative checkpoint path is the client's: workers may run in another folder
        self.sources = tuple(os.path.abspath(n) if os.path.isfile(n) else n for n in self.names)
        self.sha256 = tuple(sha256)
        self.device = device
        self.torch_threads = torch_threads
        ident = LoadedModels(self.names, (), (), self.sha256).identity
        self.name = f"wsiscan-models-{ident}-{device}-t{torch_threads or 0}"
        self._loaded: tuple[LoadedModels, Any] | None = None
        self._lock: threading.Lock | None = None
        self._where = ""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_loaded=None, _lock=None)
        return state

    def setup(self, worker) -> None:  # noqa: D401 - distributed API
        self._lock = threading.Lock()
        self._where = f"worker {worker.address} on {socket.gethostname()}"
        self.load()

    def load(self) -> tuple[LoadedModels, Any]:
        """``(LoadedModels, torch.device)``, loaded on first use."""
        if self._lock is None:
            self._lock = threading.Lock()
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> tuple[LoadedModels, Any]:
        import torch

        from .inference import select_device
        from .predict import load_models

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            device = select_device(self.device)
            # results name the models as the user did, exactly as a single-process run records them
            models = dataclasses.replace(load_models(self.sources), names=self.names)
        except WsiscanError as exc:
            raise type(exc)(f"{self._where}: {exc}") from exc
        if models.sha256 != self.sha256:
            differ = [n for n, a, b in zip(self.names, models.sha256, self.sha256) if a != b]
            raise CheckpointError(
                f"{self._where}: {', '.join(differ)} is not the checkpoint the client loaded (sha256 differs); "
                f"give the workers the same file, e.g. on a shared file system"
            )
        return models, device


# -- the task ----------------------------------------------------------------------------
def _score_slide(job: SlideJob, out_dir: str, config: Config, plugin_name: str, attempts_dir: str,
                 overwrite: bool) -> dict[str, Any]:
    """One slide on a worker.  A WsiscanError comes back as a value: recorded, not retried."""
    worker = distributed.get_worker()
    started = time.time()
    marks = Path(attempts_dir) / job.slide_id
    marks.mkdir(parents=True, exist_ok=True)
    earlier = sum(1 for _ in marks.glob("*.json"))
    where = {"worker": worker.address, "host": socket.gethostname(), "pid": os.getpid()}
    write_json_atomic({**where, "started": started}, marks / f"{started:.6f}-{uuid.uuid4().hex[:8]}.json")
    plugin = worker.plugins.get(plugin_name)
    if plugin is None:
        raise RuntimeError(f"worker {worker.address} has no {plugin_name} plugin; the client registers it first")
    models, device = plugin.load()  # raises: a worker that cannot load the model is retried elsewhere
    t0 = time.perf_counter()
    record: dict[str, Any] = {**where, "attempt": earlier + 1, "started": started}
    try:
        # --overwrite is for the first attempt; a retry resumes what that attempt wrote
        summary = predict_slide(job.path, out_dir, config, models, device=device,
                                overwrite=overwrite and earlier == 0, progress=False, slide_id=job.slide_id)
    except WsiscanError as exc:
        record.update(status="failed", error=str(exc), error_type=type(exc).__name__)
    else:
        record.update(status="complete", **result_record(summary))
    record["seconds"] = time.perf_counter() - t0
    record["finished"] = time.time()
    return record


# -- the run ---------------------------------------------------------------------------------
def _attempts(marks: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(marks.glob("*.json")) if marks.is_dir() else []:
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            out.append({})
    return sorted(out, key=lambda m: m.get("started", 0))


def predict_many(
    jobs: Sequence[SlideJob],
    out_dir: str | Path,
    config: Config,
    models: LoadedModels,
    *,
    client: Client | Callable[[], Client],
    overwrite: bool = False,
    retries: int = 2,
    worker_device: str | None = None,
    torch_threads: int | None = None,
    cluster: str = "",
    on_result: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score every slide of ``jobs`` on the cluster of ``client``; returns the manifest.

    ``config`` is the run's resolved configuration (a job's ``slide_mpp`` overrides its
    slide's); ``models`` the models as the client loaded them (workers load the same
    files and check their sha256s).  ``client`` may be a function that returns one: it is
    called only when some slide needs a task (a rerun with nothing to do starts nothing).

    ``OUT/manifest.json`` is rewritten as slides finish: per slide ``status``
    (``pending``/``complete``/``failed``), ``skipped``, ``error``, ``worker``,
    ``attempts``/``retries``/``workers``, timings, patch counts, model and config hash.
    ``on_result(entry, progress)`` is called as each slide ends.
    """
    out_root = Path(os.path.abspath(out_dir))
    check_writable(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    attempts_root = out_root / ATTEMPTS_DIR / run_id
    t_start = time.perf_counter()
    manifest: dict[str, Any] = {
        "command": "predict", "run_id": run_id, "cluster": cluster, "scheduler": None, "dashboard": None,
        "n_workers": 0, "retries": retries, "models": models.describe(),
        "model_hash": models.identity, "config_hash": config_hash(config), "versions": runtime_versions(),
        "started": time.time(), "slides": [],
    }
    entries: list[dict[str, Any]] = manifest["slides"]
    todo: list[tuple[int, SlideJob, Config]] = []
    owner: dict[str, str] = {}
    for job in jobs:
        job = dataclasses.replace(job, path=Path(os.path.abspath(job.path)))
        cfg = slide_config(config, job)
        slide_id = job.slide_id
        entry = {"slide": str(job.path), "slide_id": slide_id, "slide_mpp": job.slide_mpp, "status": "pending",
                 "skipped": False, "error": None, "attempts": 0, "retries": 0, "workers": [],
                 "model_hash": models.identity, "config_hash": config_hash(cfg)}
        entries.append(entry)
        if slide_id in owner:
            entry.update(status="failed", error=(
                f"{job.path}: writes to the same folder {out_root / slide_id} as {owner[slide_id]}; "
                f"rename one of the files or score them into separate -o folders"), error_type="StoreExistsError")
            continue
        owner[slide_id] = str(job.path)
        done = None if overwrite else completed_summary(job.path, out_root, cfg, models, slide_id=slide_id)
        if done is not None:  # finished and unchanged: no task
            entry.update(result_record(done))
            entry.update(status="complete", skipped=True, scored_this_run=0, pixel_chunks_written=0, seconds=0.0)
            continue
        todo.append((len(entries) - 1, job, cfg.replace("tile", workers=1)))  # no decode pool in a daemon worker

    progress = {"done": 0, "total": len(entries), "patches": 0, "elapsed_s": 0.0, "patches_per_s": 0.0,
                "slides_per_s": 0.0}

    def finish(entry: dict[str, Any]) -> None:
        progress["done"] += 1
        if entry["status"] == "complete" and not entry["skipped"]:
            progress["patches"] += entry.get("scored_this_run") or 0
        progress["elapsed_s"] = elapsed = time.perf_counter() - t_start
        progress["patches_per_s"] = progress["patches"] / elapsed if elapsed > 0 else 0.0
        progress["slides_per_s"] = progress["done"] / elapsed if elapsed > 0 else 0.0
        if on_result is not None:
            on_result(entry, dict(progress))

    last_write = [0.0]

    def write_manifest(force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - last_write[0] >= _MANIFEST_EVERY_S:
            manifest["totals"] = _totals(entries, progress)
            write_manifest_merged(out_root, manifest)  # merged into OUT's manifest by slide
            last_write[0] = now

    for entry in entries:  # skipped and refused slides are done already
        if entry["status"] != "pending":
            finish(entry)
    write_manifest(force=True)
    try:
        if todo:
            if not isinstance(client, Client):
                client = client()
            info = client.scheduler_info()
            manifest.update(scheduler=info.get("address"), dashboard=dashboard_link(client),
                            n_workers=len(info.get("workers", {})))
            plugin = ModelPlugin(models.names, models.sha256, device=worker_device or config.predict.device,
                                 torch_threads=torch_threads)
            client.register_plugin(plugin)
            futures = {}
            for index, job, cfg in todo:
                key = f"wsiscan-predict-{entries[index]['slide_id']}-{run_id}"
                fut = client.submit(_score_slide, job, str(out_root), cfg, plugin.name, str(attempts_root),
                                    overwrite, key=key, retries=retries, pure=False)
                futures[fut] = index
            for fut in distributed.as_completed(list(futures)):
                index = futures.pop(fut)
                entry = entries[index]
                try:
                    entry.update(fut.result())
                except KilledWorker as exc:
                    entry.update(status="failed", error_type="KilledWorker", error=(
                        f"{entry['slide']}: its worker died on every attempt ({exc}); check the workers' memory "
                        f"and logs, then rerun the same command to resume"))
                except WsiscanError as exc:  # raised outside predict_slide, e.g. loading the model
                    entry.update(status="failed", error=str(exc), error_type=type(exc).__name__)
                except Exception as exc:  # noqa: BLE001 - a task's unexpected error is recorded, the run goes on
                    entry.update(status="failed", error=f"{entry['slide']}: {type(exc).__name__}: {exc}",
                                 error_type=type(exc).__name__)
                marks = _attempts(attempts_root / entry["slide_id"])
                entry["attempts"] = max(len(marks), 1)
                entry["retries"] = entry["attempts"] - 1
                entry["workers"] = [m.get("worker") for m in marks]
                fut.release()
                finish(entry)
                write_manifest()
    finally:
        manifest["finished"] = time.time()
        write_manifest(force=True)
        shutil.rmtree(attempts_root, ignore_errors=True)
        with contextlib.suppress(OSError):
            (out_root / ATTEMPTS_DIR).rmdir()  # only when no other run's markers are left
    return manifest


def _totals(entries: list[dict[str, Any]], progress: dict[str, Any]) -> dict[str, Any]:
    count = lambda **kv: sum(all(e.get(k) == v for k, v in kv.items()) for e in entries)  # noqa: E731
    return {
        "slides": len(entries), "complete": count(status="complete"), "skipped": count(status="complete", skipped=True),
        "failed": count(status="failed"), "pending": count(status="pending"),
        "retried": sum(1 for e in entries if e.get("retries")), "patches_scored": progress["patches"],
        "elapsed_s": progress["elapsed_s"], "slides_per_s": progress["slides_per_s"],
        "patches_per_s": progress["patches_per_s"],
    }
