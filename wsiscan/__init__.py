"""wsiscan: tumour-probability heatmaps for whole-slide images.

The public, stable API (see the README's "Python API" section)::

    import wsiscan

    slide = wsiscan.open_slide("slide.svs")                       # metadata, mpp and its source
    plan = wsiscan.plan_slide("slide.svs", model=spec)           # level, tissue, kept patches
    for patch in wsiscan.iter_patches(plan): ...                 # RGB uint8 + level-0 position
    for patch, p in wsiscan.score_patches(patches, net, spec=spec): ...
    result = wsiscan.score_slide("slide.svs", "out", model="tiatoolbox/resnet18-pcam")
    result = wsiscan.open_result("out/slide")                    # heatmap in um, regions, summary

Models: :func:`load_model` (registry names, checkpoints, WSInfer folders), :class:`ModelSpec`,
:func:`register_model` for your own networks.  Everything else is internal and may change.
Heavy modules (torch, zarr, openslide) are imported only when a name that needs them is
first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from .errors import *  # noqa: F403  (the error tree is public API: errors.__all__)

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers
    from .api import Patch, Scorer, iter_patches, plan_slide, score_patches, score_slide
    from .config import Config, load_config
    from .heatmap import HeatmapFrame
    from .models import (
        ModelSpec,
        RegistryEntry,
        build_model,
        fetch_model,
        list_architectures,
        list_models,
        load_model,
        register_model,
        register_weights,
        save_checkpoint,
    )
    from .records import ManifestEntry, SlideSummary, read_summary
    from .result import Heatmap, Region, Result, find_result, open_result
    from .slide import Slide, SlideInfo, open_slide
    from .tiling import TilingPlan

__version__ = "0.1.0"

# name -> module it lives in (imported on first use)
_LAZY = {
    "open_slide": "slide", "Slide": "slide", "SlideInfo": "slide",
    "plan_slide": "api", "iter_patches": "api", "score_patches": "api", "score_slide": "api", "Patch": "api",
    "Scorer": "api",
    "TilingPlan": "tiling",
    "Config": "config", "load_config": "config",
    "HeatmapFrame": "heatmap",
    "SlideSummary": "records", "ManifestEntry": "records", "read_summary": "records",
    "open_result": "result", "find_result": "result", "Result": "result", "Heatmap": "result", "Region": "result",
    "ModelSpec": "models", "load_model": "models", "build_model": "models", "save_checkpoint": "models",
    "register_model": "models", "list_architectures": "models", "list_models": "models", "fetch_model": "models",
    "register_weights": "models", "RegistryEntry": "models",
}

__all__ = [
    "__version__",
    # slides, tiling, patches, scoring, results
    "open_slide",
    "Slide",
    "SlideInfo",
    "plan_slide",
    "TilingPlan",
    "iter_patches",
    "Patch",
    "score_patches",
    "Scorer",
    "score_slide",
    "open_result",
    "find_result",
    "Result",
    "Heatmap",
    "HeatmapFrame",
    "Region",
    "SlideSummary",
    "ManifestEntry",
    "read_summary",
    "Config",
    "load_config",
    # models
    "ModelSpec",
    "load_model",
    "build_model",
    "save_checkpoint",
    "register_model",
    "list_architectures",
    "list_models",
    "fetch_model",
    "register_weights",
    "RegistryEntry",
    # errors: the whole tree
    *_errors.__all__,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsiscan' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
