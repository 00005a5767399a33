"""PNG panels of attribution maps: the patch, then per method the map and its overlay,
titled with the probability; and the picture the napari panel shows (same layout).

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["METHOD_TITLES", "render_panel", "overlay"]

METHOD_TITLES = {"gradcam": "Grad-CAM", "ig": "integrated gradients"}
_CMAP = "inferno"
_OVERLAY_ALPHA = 0.5


def overlay(patch: np.ndarray, attribution: np.ndarray, *, alpha: float = _OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: the patch blended with the map in the colour map, weighted by the map itself."""
    from matplotlib import colormaps

    rgb = colormaps[_CMAP](np.clip(attribution, 0, 1))[..., :3]
    weight = alpha * np.clip(attribution, 0, 1)[..., None]
    out = patch.astype(np.float64) / 255.0 * (1 - weight) + rgb * weight
    return (out * 255).round().astype(np.uint8)


def render_panel(patch: np.ndarray, maps: Mapping[str, np.ndarray], *, probability: float, title: str,
                 label: int | None = None, titles: Mapping[str, str] | None = None, path: str | Path | None = None,
                 dpi: int = 100) -> np.ndarray:
    """One row: patch | map, overlay per method.  Returns the (rows, cols, 3) uint8 picture
    and saves it as PNG when ``path`` is given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = 1 + 2 * len(maps)
    fig = Figure(figsize=(1.9 * n, 2.45), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, n)
    axes = np.atleast_1d(axes)
    label_text = "" if label is None else f", label {'tumour' if label == 1 else 'normal'}"
    fig.suptitle(f"{title}: p(tumour) = {probability:.3f}{label_text}", fontsize=9)
    axes[0].imshow(patch)
    axes[0].set_title("patch", fontsize=8)
    for k, (method, m) in enumerate(maps.items()):
        name = (titles or {}).get(method) or METHOD_TITLES.get(method, method)
        axes[1 + 2 * k].imshow(m, cmap=_CMAP, vmin=0, vmax=1)
        axes[1 + 2 * k].set_title(name, fontsize=8)
        axes[2 + 2 * k].imshow(overlay(patch, m))
        axes[2 + 2 * k].set_title(f"{name} overlay", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    canvas.draw()
    picture = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        fig.savefig(path)
    return picture
