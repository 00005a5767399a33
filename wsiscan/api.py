"""The Python API behind ``wsiscan``'s re-exports: plan and tile a slide, iterate its patches,
score them with a model or any callable, and run the whole pipeline into a result folder.

Everything here is in physical units: a plan says the um/px it reads at; a patch says
where it lies in level-0 pixels; a result's heatmap says where its cells lie in um
(:mod:`wsiscan.result`).  Memory stays bounded: patches are read one at a time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from .config import Config, load_config
from .errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

    from .predict import LoadedModels
    from .result import Result
    from .tiling import TilingPlan

__all__ = ["Patch", "plan_slide", "iter_patches", "score_patches", "as_models", "score_slide", "Scorer"]

# A network (nn.Module) run with its ModelSpec, or a function of a float32 tensor (N, 3, H, W)
# of RGB in [0, 1] returning probabilities: (N,) of the positive class or (N, C) of every class.
Scorer = Union[Callable[[Any], Any], "torch.nn.Module"]  # a string: torch is imported lazily


@dataclass(frozen=True)
class Patch:
    """One patch of a plan: grid position, where it lies in the slide, and its RGB pixels."""

    rc: tuple[int, int]  # grid (row, col); heatmap cell (row, col)
    l0_xy: tuple[int, int]  # top-left corner in level-0 px
    image: np.ndarray  # (tile_size_px, tile_size_px, 3) uint8 at the plan's effective um/px


def plan_slide(slide_path: str | os.PathLike, *, config: Config | None = None, target_mpp: float | None = None,
               tile_size_px: int | None = None, stride_px: int | None = None, slide_mpp: float | None = None,
               model: Any = None) -> TilingPlan:
    """Resolution, level, tissue and the grid of kept patches of a slide; nothing is written.

    Returns a :class:`wsiscan.tiling.TilingPlan`: ``grid`` (tile size and stride in px
    at ``geometry.effective_mpp``), ``kept_rc`` (the tissue patches), ``l0_xy()``,
    ``tissue``, ``base_mpp`` and ``mpp_source``.  ``model`` (a :class:`ModelSpec` or
    anything with ``spec``) sets ``target_mpp`` and ``tile_size_px`` unless given.
    """
    from .tiling import plan_tiling

    cfg = config or load_config()
    spec = getattr(model, "spec", model)
    cfg = cfg.replace("slide", slide_mpp=slide_mpp).replace(
        "tile", target_mpp=target_mpp or getattr(spec, "input_mpp", None),
        tile_size_px=tile_size_px or getattr(spec, "patch_size_px", None), stride_px=stride_px)
    return plan_tiling(Path(slide_path), cfg)


def iter_patches(plan: TilingPlan, *, rc: np.ndarray | None = None) -> Iterator[Patch]:
    """The plan's kept patches (or those at ``rc``, (N, 2) rows/cols), read from the slide one at a time.

    Pixels are read and resampled to the plan's um/px as tiling does (area averaging),
    through one slide handle opened here and closed at the end.
    """
    from .tiling import open_configured_slide

    grid, sel = plan.grid, plan.selection
    t = grid.tile_size_px
    todo = plan.kept_rc if rc is None else np.asarray(rc, np.int64).reshape(-1, 2)
    s = sel.lv_per_px
    with open_configured_slide(plan.slide_path, plan.config) as slide:
        for (r, c), (x, y) in zip(todo, grid.px_origin(todo), strict=True):
            box = (x * s, y * s, (x + t) * s, (y + t) * s)
            image = slide.read_resampled(level=sel.level, lv_box=box, out_size_px=(t, t))
            l0 = (int(np.floor(x * plan.geometry.l0_per_px + 1e-6)), int(np.floor(y * plan.geometry.l0_per_px + 1e-6)))
            yield Patch((int(r), int(c)), l0, image)


def _batches(patches: Iterable[Patch], n: int) -> Iterator[list[Patch]]:
    batch: list[Patch] = []
    for p in patches:
        batch.append(p)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def score_patches(patches: Iterable[Patch], scorer: Scorer, *, spec: Any = None, batch_size: int = 64,
                  device: str = "cpu") -> Iterator[tuple[Patch, np.ndarray]]:
    """``(patch, probabilities)`` for each patch, in order, scored in batches.

    ``scorer`` is a network with its ``spec`` (a :class:`ModelSpec`; the result of
    :func:`wsiscan.load_model` works too: ``scorer, spec, _ = load_model(name)``), whose
    probabilities are ``softmax(logits / temperature)`` of the normalised input; or any
    callable taking float32 RGB in [0, 1], (N, 3, H, W), and returning probabilities.
    Each yielded array holds every class's probability, (C,), for a network, and what the
    callable returned per patch otherwise.
    """
    import torch

    from .models import predict_class_proba

    net = scorer if isinstance(scorer, torch.nn.Module) else None
    if net is not None and spec is None:
        raise ConfigError("score_patches: a network needs its spec (ModelSpec) to be scored; pass spec=")
    dev = torch.device(device)
    if net is not None:
        net = net.to(dev).eval()
    for batch in _batches(patches, batch_size):
        x = torch.from_numpy(np.stack([p.image for p in batch])).to(dev).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            out = predict_class_proba(net, spec, x) if net is not None else scorer(x)
        probs = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        if len(probs) != len(batch):
            raise ValueError(f"the scorer returned {len(probs)} results for {len(batch)} patches")
        yield from zip(batch, probs, strict=True)


class _CallableNet:
    """A probability callable as a network whose softmax gives those probabilities back: log(p)."""

    @staticmethod
    def wrap(fn: Callable[[Any], Any], spec: Any) -> Any:
        import torch

        class CallableNet(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fn = fn

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                p = torch.as_tensor(self.fn(x), dtype=torch.float32, device=x.device)
                if p.ndim == 1:
                    p = torch.stack([1.0 - p, p], dim=1) if spec.num_classes == 2 else p
                if p.ndim != 2 or p.shape[1] != spec.num_classes:
                    raise ValueError(f"the scorer must return (N,) or (N, {spec.num_classes}) probabilities, "
                                     f"got shape {tuple(p.shape)}")
                return torch.log(p.clamp_min(1e-12))

        return CallableNet()


def _module_sha256(model: Any) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def as_models(model: Any, spec: Any = None) -> LoadedModels:
    """What :func:`score_slide` runs (a ``LoadedModels``) from a registry name, checkpoint path or
    WSInfer folder (or a list of them: an ensemble), a network with its ``spec``, or a
    probability callable with its ``spec``."""
    import torch

    from .predict import LoadedModels, load_models

    if isinstance(model, (str, os.PathLike)):
        return load_models([os.fspath(model)])
    if isinstance(model, Sequence) and model and all(isinstance(m, (str, os.PathLike)) for m in model):
        return load_models([os.fspath(m) for m in model])
    if spec is None:
        raise ConfigError("score_slide: a network or callable needs its spec (ModelSpec: classes, patch size, um/px); "
                          "pass spec=")
    name = spec.name or getattr(model, "__qualname__", type(model).__name__)
    if isinstance(model, torch.nn.Module):
        return LoadedModels((name,), (model.eval(),), (spec,), (_module_sha256(model),))
    if callable(model):
        ident = f"callable:{getattr(model, '__module__', '')}.{name}:{spec.to_dict()}"
        return LoadedModels((name,), (_CallableNet.wrap(model, spec),), (spec,),
                            (hashlib.sha256(ident.encode()).hexdigest(),))
    raise CheckpointError(f"score_slide: cannot run a {type(model).__name__}; give a model name or path, an "
                          "nn.Module, or a callable, with its spec")


def score_slide(slide_path: str | os.PathLike, out_dir: str | os.PathLike, *, model: Any = "tiatoolbox/resnet18-pcam",
            spec: Any = None, config: Config | None = None, device: str = "auto", overwrite: bool = False,
            progress: bool = False, target_mpp: float | None = None, tile_size_px: int | None = None,
            **predict_options: Any) -> Result:
    """Run ``wsiscan predict`` on one slide into ``out_dir/<slide-id>/`` and open the result.

    ``model``: see :func:`as_models`.  ``predict_options`` set keys of the ``predict``
    config section (``threshold``, ``tta``, ``batch_size``...), ``stride_px`` and
    ``min_tissue`` the ``tile`` section's.  Returns a :class:`wsiscan.result.Result`.
    A callable's result is recognised by the callable's name: pass ``overwrite=True``
    after changing what it computes.
    """
    from .inference import select_device
    from .predict import predict_slide, resolution_config
    from .result import open_result

    cfg = config or load_config()
    tile_keys = {k: predict_options.pop(k) for k in ("stride_px", "min_tissue") if k in predict_options}
    cfg = cfg.replace("tile", **tile_keys).replace("predict", device=device, **predict_options)
    models = as_models(model, spec)
    cfg = resolution_config(cfg, models.spec, target_mpp=target_mpp, tile_size_px=tile_size_px)
    summary = predict_slide(Path(slide_path), Path(out_dir), cfg, models, device=select_device(device),
                            overwrite=overwrite, progress=progress)
    return open_result(Path(out_dir) / summary.slide_id)
