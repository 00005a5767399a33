"""napari plugin for reviewing ``wsiscan predict`` results.

- reader: ``napari OUTDIR`` opens the slide as a lazy multiscale image and the tumour
  heatmap over it, both in micrometres;
- dock widget "Heatmap review": threshold with live region outlines, hotspot table,
  summary numbers, GeoJSON export (predict's schema) and screenshots.

Only :mod:`wsiscan_napari._widget` imports Qt; :mod:`wsiscan_napari._layers` holds the
pure functions.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "get_reader", "HeatmapReviewWidget", "open_review", "save_window_screenshot"]


def __getattr__(name: str):  # lazy: importing the package pulls in neither napari nor Qt
    if name in ("open_review", "save_window_screenshot"):  # what `wsiscan view` calls
        from . import _widget

        return getattr(_widget, name)
    if name == "get_reader":
        from ._reader import get_reader

        return get_reader
    if name == "HeatmapReviewWidget":
        from ._widget import HeatmapReviewWidget

        return HeatmapReviewWidget
    raise AttributeError(name)
