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

from .config import Config
from .errors import CheckpointError, WsiscanError
from .layout import ATTEMPTS_DIR, write_json_atomic
from .manifest import run_header
from .output_folder import check_writable
from .predict import LoadedModels, SlideJob, completed_summary, config_hash, predict_slide, slide_config
from .records import ManifestEntry, SlideFigures
from .runner import RunProgress, SlideOutcome, pending_entry, run_slides

__all__ = ["LocalClusterPlan", "ModelPlugin", "plan_local_cluster", "start_local_cluster", "connect",
           "predict_many", "dashboard_link", "DaskBackend"]

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
    except Exception:
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

    def setup(self, worker) -> None:
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
            differ = [n for n, a, b in zip(self.names, models.sha256, self.sha256, strict=True) if a != b]
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
    if not isinstance(plugin, ModelPlugin):
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
        record.update(status="complete", figures=summary.figures().to_json())
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


class DaskBackend:
    """The slides as Dask tasks, one per slide, in the order they end (see the module's notes)."""

    def __init__(self, out_root: Path, models: LoadedModels, *, client: Client | Callable[[], Client],
                 header: dict[str, Any], overwrite: bool, retries: int, worker_device: str | None,
                 torch_threads: int | None, config: Config) -> None:
        self.out_root, self.models, self.client, self.header = out_root, models, client, header
        self.overwrite, self.retries, self.config = overwrite, retries, config
        self.worker_device, self.torch_threads = worker_device, torch_threads
        self.attempts_root = out_root / ATTEMPTS_DIR / str(header["run_id"])

    def run(self, todo: Sequence[tuple[int, Any, ManifestEntry]]) -> Iterator[SlideOutcome]:
        try:
            yield from self._run(todo)
        finally:
            shutil.rmtree(self.attempts_root, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.out_root / ATTEMPTS_DIR).rmdir()  # only when no other run's markers are left

    def _run(self, todo: Sequence[tuple[int, Any, ManifestEntry]]) -> Iterator[SlideOutcome]:
        client = self.client if isinstance(self.client, Client) else self.client()
        info = client.scheduler_info()
        self.header.update(scheduler=info.get("address"), dashboard=dashboard_link(client),
                           n_workers=len(info.get("workers", {})))
        plugin = ModelPlugin(self.models.names, self.models.sha256,
                             device=self.worker_device or self.config.predict.device, torch_threads=self.torch_threads)
        client.register_plugin(plugin)
        futures = {}
        for index, job, entry in todo:
            cfg = slide_config(self.config, job).replace("tile", workers=1)  # no decode pool in a daemon worker
            key = f"wsiscan-predict-{entry.slide_id}-{self.header['run_id']}"
            fut = client.submit(_score_slide, job, str(self.out_root), cfg, plugin.name, str(self.attempts_root),
                                self.overwrite, key=key, retries=self.retries, pure=False)
            futures[fut] = (index, entry)
        for fut in distributed.as_completed(list(futures)):
            index, entry = futures.pop(fut)
            error: BaseException | None = None
            try:
                record = fut.result()
            except KilledWorker as exc:
                error, entry = exc, entry.failed(exc, error=(
                    f"{entry.slide}: its worker died on every attempt ({exc}); check the workers' memory "
                    f"and logs, then rerun the same command to resume"))
            except WsiscanError as exc:  # raised outside predict_slide, e.g. loading the model
                error, entry = exc, entry.failed(exc)
            except Exception as exc:
                error, entry = exc, entry.failed(exc, error=f"{entry.slide}: {type(exc).__name__}: {exc}")
            else:
                where = {k: record[k] for k in ("worker", "host", "pid", "started", "finished", "seconds")}
                if record["status"] == "complete":
                    figures = SlideFigures.from_json(record["figures"])
                    if figures is None:  # _score_slide stores a finished slide's figures, which always have both
                        raise RuntimeError(f"{entry.slide}: the worker's record lacks n_tiles or effective_mpp: "
                                           f"{record['figures']!r}")
                    entry = entry.complete(figures, **where)
                else:
                    entry = entry.replace(status="failed", error=record["error"], error_type=record["error_type"],
                                          **where)
            marks = _attempts(self.attempts_root / entry.slide_id)
            attempts = max(len(marks), 1)
            entry = entry.replace(attempts=attempts, retries=attempts - 1,
                                  workers=tuple(str(m.get("worker")) for m in marks))
            fut.release()
            yield SlideOutcome(index, entry, error=error)


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
    on_result: Callable[[SlideOutcome, RunProgress], None] | None = None,
) -> dict[str, Any]:
    """Score every slide of ``jobs`` on the cluster of ``client``; returns the run's manifest.

    ``config`` is the run's resolved configuration (a job's ``slide_mpp`` overrides its
    slide's); ``models`` the models as the client loaded them (workers load the same
    files and check their sha256s).  ``client`` may be a function that returns one: it is
    called only when some slide needs a task (a rerun with nothing to do starts nothing).

    ``OUT/manifest.json`` is rewritten as slides finish (:func:`wsiscan.runner.run_slides`,
    entries as :class:`~wsiscan.records.ManifestEntry`).  ``on_result(outcome, progress)``
    is called as each slide ends.
    """
    out_root = Path(os.path.abspath(out_dir))
    check_writable(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    header = run_header("predict", models=models.describe(), model_hash=models.identity,
                        config_hash=config_hash(config), cluster=cluster, n_workers=0, retries=retries)
    backend = DaskBackend(out_root, models, client=client, header=header, overwrite=overwrite, retries=retries,
                          worker_device=worker_device, torch_threads=torch_threads, config=config)

    def entry_for(job: SlideJob) -> ManifestEntry:
        return pending_entry(job, worker=None, model_hash=models.identity,
                             config_hash=config_hash(slide_config(config, job)))

    def finished(job: SlideJob) -> Any:
        return None if overwrite else completed_summary(job.path, out_root, slide_config(config, job), models,
                                                        slide_id=job.slide_id)

    jobs = [dataclasses.replace(job, path=Path(os.path.abspath(job.path))) for job in jobs]
    return run_slides(jobs, out_root, backend, header=header, entry_for=entry_for, finished=finished,
                      refuse_shared_folders=True, raise_single=False, write_every_s=_MANIFEST_EVERY_S,
                      on_entry=on_result)
