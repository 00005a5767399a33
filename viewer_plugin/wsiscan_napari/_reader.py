"""npe2 reader: ``napari OUTDIR`` on a folder written by ``wsiscan predict``.

Returns None for any path that is not a wsiscan result (so napari tries other readers);
``get_reader`` never raises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from wsiscan import find_result

from ._layers import layer_data

__all__ = ["get_reader", "read_result"]


def get_reader(path: str | Path | list) -> Callable[[Any], list] | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, Path)):
        return None
    return read_result if find_result(path) is not None else None


def read_result(path: str | Path | list) -> list[tuple[Any, dict, str]]:
    """The slide (lazy multiscale, um) and the heatmap (um; one layer per class for more than 2) at ``path``."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    if not isinstance(path, (str, Path)):  # napari calls this only for what get_reader accepted
        raise TypeError(f"read_result takes a result folder's path, not {type(path).__name__}")
    return layer_data(path)
