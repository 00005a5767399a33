"""wsiscan: tumour-probability heatmaps for whole-slide images.

The public API re-exports the error tree and the main entry points.  Heavy modules
(torch, zarr, openslide) are imported only when their functions are used.
"""

from __future__ import annotations

from .errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DeviceError,
    MissingMppError,
    NoTissueError,
    OfflineError,
    OutputError,
    ResolutionError,
    SlideOpenError,
    StoreError,
    StoreExistsError,
    UnknownModelError,
    WsiscanError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "WsiscanError",
    "SlideOpenError",
    "MissingMppError",
    "ResolutionError",
    "NoTissueError",
    "StoreExistsError",
    "StoreError",
    "OutputError",
    "UnknownModelError",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "OfflineError",
    "DatasetError",
]
