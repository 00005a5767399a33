"""Slide-level evaluation of ``wsiscan predict`` results against pathologists' annotations.

Modules: ``annotations`` (ASAP XML and QuPath GeoJSON), ``labels`` (the slide-label CSV),
``scan`` (one chunked pass over a heatmap: scores, local-maximum detections, Dice counts),
``froc`` (Camelyon16's lesion-level FROC) and ``report`` (:func:`evaluate_slides`).
"""

from .annotations import SlideAnnotation, find_annotation, read_annotation
from .froc import evaluation_mask, froc_curve, froc_score, lesion_hits
from .labels import read_slide_labels
from .report import evaluate_slides, find_results
from .scan import Detection, SlideScan, scan_heatmap

__all__ = [
    "SlideAnnotation",
    "read_annotation",
    "find_annotation",
    "read_slide_labels",
    "evaluation_mask",
    "lesion_hits",
    "froc_curve",
    "froc_score",
    "Detection",
    "SlideScan",
    "scan_heatmap",
    "evaluate_slides",
    "find_results",
]
