"""The positional-bias check of ``wsiscan evaluate --positional``.

A PCam label describes only the centre 32 x 32 px of a 96 px patch.  Does the model read
that centre, the context around it, or both?

* **Moved centre.** For each tumour patch, its centre (the middle third) is replaced by
  the centre of a normal patch, and the tumour centre is pasted back at each position of
  a grid inside the patch (top-left at 0, step, 2 step, ... px; offset (0, 0) is the
  original patch).  The mean probability over tumour patches at each offset is the
  curve: a model that reads only the centre peaks at (0, 0); one that finds tumour
  anywhere in the patch is flat.
* **AUC with the centre replaced / the context replaced.** Every patch (tumour and
  normal) gets the centre of another normal patch (the labels unchanged), or keeps its
  centre inside the context of another normal patch.  A centre reader loses its AUC in
  the first case and keeps it in the second; a context reader the reverse.

Normal donors are drawn in turn from the normal patches (a normal patch never donates
to itself).  Probabilities are predict's: the mean softmax probability over the
members (and the 8 views with ``tta``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import metrics as M
from ..errors import DatasetError
from ..models import ModelSpec, predict_proba

__all__ = ["score_patches", "positional_check", "plot_positional"]


@torch.inference_mode()
def score_patches(models: Sequence[torch.nn.Module], specs: Sequence[ModelSpec], patches_uint8: np.ndarray, *,
                  tta: bool = False, device: torch.device | str = "cpu", batch_size: int = 256) -> np.ndarray:
    """(N,) float64 positive-class probability of (N, H, W, 3) uint8 patches."""
    from .attribution import dihedral

    device = torch.device(device)
    out = np.zeros(len(patches_uint8), np.float64)
    views = range(8) if tta else range(1)
    for start in range(0, len(patches_uint8), batch_size):
        x01 = torch.from_numpy(np.ascontiguousarray(patches_uint8[start : start + batch_size])).to(device)
        x01 = x01.permute(0, 3, 1, 2).float() / 255.0
        total = torch.zeros(len(x01), dtype=torch.float64, device=device)
        for model, spec in zip(models, specs, strict=True):
            model = model.to(device).eval()
            for i in views:
                total += predict_proba(model, spec, dihedral(x01, i)).double()
        out[start : start + len(x01)] = (total / (len(models) * len(views))).cpu().numpy()
    return out


def _positions(size_px: int, centre_px: int, step_px: int) -> list[int]:
    return list(range(0, size_px - centre_px + 1, step_px))


def positional_check(models, specs, images: np.ndarray, labels: np.ndarray, *, step_px: int = 16,
                     tta: bool = False, device: torch.device | str = "cpu", batch_size: int = 256) -> dict:
    """The moved-centre curve and the replaced-centre / replaced-context AUCs (see the module doc)."""
    images, labels = np.asarray(images), np.asarray(labels).astype(np.int64)
    size = images.shape[1]
    c0, c1 = size // 3, size - size // 3
    side = c1 - c0
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(pos) < 1 or len(neg) < 2:
        raise DatasetError(f"the positional check needs at least 1 tumour and 2 normal patches; "
                           f"this split has {len(pos)} and {len(neg)}")
    if not 1 <= step_px <= size - side:
        raise DatasetError(f"--positional-step-px {step_px}: must be between 1 and {size - side} px")
    grid = _positions(size, side, step_px)
    score = lambda x: score_patches(models, specs, x, tta=tta, device=device, batch_size=batch_size)

    def donor(k: int, avoid: int | None = None) -> int:
        choices = neg if avoid is None else neg[neg != avoid]
        return int(choices[k % len(choices)])

    curve = np.zeros((len(grid), len(grid)), np.float64)
    for k, i in enumerate(pos.tolist()):
        base = images[i].copy()
        base[c0:c1, c0:c1] = images[donor(k)][c0:c1, c0:c1]
        batch = []
        for oy in grid:
            for ox in grid:
                img = base.copy()
                img[oy : oy + side, ox : ox + side] = images[i][c0:c1, c0:c1]
                batch.append(img)
        curve += score(np.stack(batch)).reshape(len(grid), len(grid))
    curve /= len(pos)

    centre_replaced, context_replaced = images.copy(), np.empty_like(images)
    for k, i in enumerate(range(len(images))):
        d = donor(k, avoid=i if labels[i] == 0 else None)
        centre_replaced[i, c0:c1, c0:c1] = images[d, c0:c1, c0:c1]
        context_replaced[i] = images[d]
        context_replaced[i, c0:c1, c0:c1] = images[i, c0:c1, c0:c1]
    p_orig, p_centre, p_context = score(images), score(centre_replaced), score(context_replaced)
    auc, auc_c, auc_x = (M.binary_auc(p, labels) for p in (p_orig, p_centre, p_context))
    offsets = [g - c0 for g in grid]
    at_centre = offsets.index(0) if 0 in offsets else None
    off_centre = [curve[a, b] for a in range(len(grid)) for b in range(len(grid)) if (a, b) != (at_centre, at_centre)]
    return {
        "step_px": step_px, "centre_px": [c0, c1], "offsets_px": offsets,
        "mean_probability": curve.tolist(),  # [row: y offset][col: x offset], tumour patches
        "mean_probability_at_centre": float(curve[at_centre, at_centre]) if at_centre is not None else None,
        "mean_probability_off_centre": float(np.mean(off_centre)) if off_centre else None,
        "n_tumour": int(len(pos)), "n_normal": int(len(neg)),
        "auc": auc, "auc_centre_replaced": auc_c, "auc_context_replaced": auc_x,
        "auc_drop_centre_replaced": None if auc is None or auc_c is None else auc - auc_c,
        "auc_drop_context_replaced": None if auc is None or auc_x is None else auc - auc_x,
        "mean_probability_tumour": {"original": float(p_orig[pos].mean()), "centre_replaced": float(p_centre[pos].mean()),
                                    "context_replaced": float(p_context[pos].mean())},
    }


def plot_positional(result: dict, path: str | Path, *, title: str = "") -> Path:
    """The mean tumour probability against the offset of the centre, as an annotated heatmap PNG."""
    fig = M.agg_figure((5.2, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    curve = np.asarray(result["mean_probability"])
    offsets = result["offsets_px"]
    half = result["step_px"] / 2
    im = ax.imshow(curve, cmap="inferno", vmin=0, vmax=1, origin="upper",
                   extent=(offsets[0] - half, offsets[-1] + half, offsets[-1] + half, offsets[0] - half))
    for a, dy in enumerate(offsets):
        for b, dx in enumerate(offsets):
            ax.text(dx, dy, f"{curve[a, b]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if curve[a, b] > 0.6 else "white")
    ax.set(xlabel="x offset of the tumour centre (px)", ylabel="y offset (px)",
           title=title or f"mean p(tumour) of {result['n_tumour']} tumour patches, centre moved")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    drops = (f"AUC {_f(result['auc'])}; centre replaced {_f(result['auc_centre_replaced'])}, "
             f"context replaced {_f(result['auc_context_replaced'])}")
    fig.text(0.5, 0.01, drops, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    return Path(path)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def run_positional_check(model_ref: str, data_dir: str | Path, split: str, *, split_file: str | Path | None = None,
                         step_px: int = 16, max_patches: int = 256, tta: bool = False, device: str = "auto",
                         batch_size: int = 256, seed: int = 0, log=lambda m: None) -> dict:
    """Load the model and split (as ``wsiscan evaluate`` does) and run :func:`positional_check`
    on at most ``max_patches`` tumour and ``max_patches`` normal patches (drawn with ``seed``)."""
    from ..models import load_model
    from ..train.engine import resolve_device
    from ..train.evaluation import open_eval_split

    torch_device = resolve_device(device)
    model, spec, _ = load_model(model_ref, map_location=torch_device)
    dataset, _ = open_eval_split(model_ref, spec, Path(data_dir), split, split_file=split_file, log=log)
    labels = dataset.labels
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in (1, 0):
        where = np.flatnonzero(labels == cls)
        chosen.append(np.sort(rng.choice(where, size=min(max_patches, len(where)), replace=False)) if len(where) else where)
    positions = np.concatenate(chosen)
    images = dataset.read_batch(positions)
    if images.shape[1] != spec.patch_size_px:
        raise DatasetError(f"{data_dir}: patches are {images.shape[1]} px, the model takes {spec.patch_size_px} px")
    result = positional_check([model], [spec], images, labels[positions], step_px=step_px, tta=tta,
                              device=torch_device, batch_size=batch_size)
    result["max_patches_per_class"] = max_patches
    result["seed"] = seed
    return result


def write_positional(out_dir: str | Path, result: dict) -> None:
    """Add ``positional`` to the evaluation's metrics.json (atomically) and draw positional.png."""
    import json

    from ..layout import atomic_path, write_json_atomic

    out_dir = Path(out_dir)
    with atomic_path(out_dir / "positional.png", suffix=".png") as picture:
        plot_positional(result, picture)
        metrics_path = out_dir / "metrics.json"
        report = json.loads(metrics_path.read_text())
        report["positional"] = result
        write_json_atomic(report, metrics_path)
