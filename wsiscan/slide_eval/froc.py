"""Lesion-level FROC by the Camelyon16 protocol (Bejnordi et al. 2017, the challenge's
``Evaluation_FROC.py``; MONAI's ``compute_fp_tp_probs`` / ``compute_froc_score`` follow it).

* **Evaluation mask.** The annotated tumour is rasterised at the protocol's resolution
  (level 5 of a 0.243 um/px Camelyon16 slide: 32x the level-0 pixel; here the power of
  two of the slide's level-0 pixel closest to 7.776 um), every pixel closer than 37.5 um
  to tumour is added (``distance < 75 / (resolution * 2**level * 2)``: "75 um, about 5
  tumour cells"), holes are filled and 8-connected components are the lesions.
* **Isolated tumour cells (ITC)** are lesions whose major axis (``regionprops`` of
  scikit-image, which the reference code calls: 4 x the square root of the larger
  eigenvalue of the pixels' coordinate covariance) is under ``275 / (resolution * 2**level * 2.25)`` mask px, i.e.
  122.2 um: a detection inside one is neither a hit nor a false positive, and they are
  not counted as lesions.
* **Hits.** A detection (probability, level-0 x, y) hits the lesion its pixel of the mask
  belongs to; a lesion's score is its highest-probability hit (0 if missed).  Every
  detection outside all lesions, and every detection on a normal slide, is a false positive.
* **Curve and score.** For each threshold t among the distinct probabilities but the
  lowest (as the reference code): sensitivity = lesions with score >= t / all lesions,
  FPs per slide = false positives >= t / slides.  The score is the mean sensitivity at
  1/4, 1/2, 1, 2, 4 and 8 FPs per slide, interpolated linearly (``np.interp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CAMELYON16_MASK_UM",
    "DILATION_UM",
    "ITC_MAJOR_AXIS_UM",
    "FROC_FP_RATES",
    "EvaluationMask",
    "evaluation_mask",
    "lesion_hits",
    "froc_curve",
    "froc_score",
]

CAMELYON16_MASK_UM = 0.243 * 2**5  # level 5 of a Camelyon16 slide
DILATION_UM = 75.0 / 2.0
ITC_MAJOR_AXIS_UM = 275.0 / 2.25
FROC_FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class EvaluationMask:
    """Labelled lesions (0 = none) on a grid of ``downsample`` level-0 px whose pixel (0, 0)
    starts at level-0 (``x0_l0``, ``y0_l0``); ``itc`` holds the labels of isolated tumour cells."""

    labels: np.ndarray  # (rows, cols) int32
    downsample: int
    x0_l0: int
    y0_l0: int
    itc: frozenset[int]

    @property
    def n_labels(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0

    @property
    def n_lesions(self) -> int:
        """Lesions that count (ITCs excluded)."""
        return self.n_labels - len(self.itc)

    def label_at(self, x_l0: float, y_l0: float) -> int:
        col = int((x_l0 - self.x0_l0) // self.downsample)
        row = int((y_l0 - self.y0_l0) // self.downsample)
        if 0 <= row < self.labels.shape[0] and 0 <= col < self.labels.shape[1]:
            return int(self.labels[row, col])
        return 0


def mask_downsample(l0_mpp: float) -> int:
    """Power of two of level-0 px nearest (in log scale) to the protocol's 7.776 um mask pixel."""
    return 2 ** max(0, int(round(math.log2(CAMELYON16_MASK_UM / l0_mpp))))


def _rasterise(tumour, downsample: int, x0_l0: int, y0_l0: int, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("1", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(image)
    polygons = getattr(tumour, "geoms", [tumour])
    for poly in polygons:
        if poly.geom_type != "Polygon" or poly.is_empty:
            if hasattr(poly, "geoms"):  # a GeometryCollection from make_valid
                for part in poly.geoms:
                    if part.geom_type == "Polygon":
                        _draw(draw, part, downsample, x0_l0, y0_l0)
            continue
        _draw(draw, poly, downsample, x0_l0, y0_l0)
    return np.array(image, dtype=bool)


def _draw(draw, poly, downsample: int, x0_l0: int, y0_l0: int) -> None:
    def ring(coords):
        xy = np.asarray(coords, np.float64)
        return [(float(x), float(y)) for x, y in zip((xy[:, 0] - x0_l0) / downsample, (xy[:, 1] - y0_l0) / downsample, strict=True)]

    draw.polygon(ring(poly.exterior.coords), fill=1)
    for hole in poly.interiors:
        draw.polygon(ring(hole.coords), fill=0)


def evaluation_mask(tumour, *, l0_mpp: float) -> EvaluationMask:
    """The labelled lesions of an annotated tumour area (shapely, level-0 px); see the module doc."""
    from scipy import ndimage

    downsample = mask_downsample(l0_mpp)
    mask_mpp = l0_mpp * downsample
    if tumour is None or tumour.is_empty:
        return EvaluationMask(np.zeros((0, 0), np.int32), downsample, 0, 0, frozenset())
    margin = int(math.ceil(DILATION_UM / mask_mpp)) + 2
    minx, miny, maxx, maxy = tumour.bounds
    x0 = int(math.floor(minx / downsample) - margin) * downsample
    y0 = int(math.floor(miny / downsample) - margin) * downsample
    cols = int(math.ceil((maxx - x0) / downsample)) + margin + 1
    rows = int(math.ceil((maxy - y0) / downsample)) + margin + 1
    mask = _rasterise(tumour, downsample, x0, y0, (rows, cols))
    distance = ndimage.distance_transform_edt(~mask)
    binary = distance < DILATION_UM / mask_mpp
    filled = ndimage.binary_fill_holes(binary)
    labels, n_labels = ndimage.label(filled, structure=np.ones((3, 3), bool))  # 8-connected
    labels = labels.astype(np.int32)
    major_px = major_axis_lengths(labels, n_labels)
    itc = frozenset(int(k) + 1 for k in np.flatnonzero(major_px < ITC_MAJOR_AXIS_UM / mask_mpp))
    return EvaluationMask(labels, downsample, x0, y0, itc)


def major_axis_lengths(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels,) major axis length in px of labels 1..n_labels of a 2-D label image, as
    scikit-image's ``regionprops(...).axis_major_length``: 4 sqrt(larger eigenvalue of the
    covariance of the region's pixel (row, col) coordinates)."""
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size, dtype=np.float64), labels.shape[1])
    keep = flat > 0
    k, r, c = flat[keep] - 1, rows[keep], cols[keep]

    def per_label(values: np.ndarray | None) -> np.ndarray:
        return np.bincount(k, weights=values, minlength=n_labels)[:n_labels]

    n = np.maximum(per_label(None), 1.0)
    mean_r, mean_c = per_label(r) / n, per_label(c) / n
    var_r = per_label(r * r) / n - mean_r**2
    var_c = per_label(c * c) / n - mean_c**2
    cov = per_label(r * c) / n - mean_r * mean_c
    larger = (var_r + var_c) / 2 + np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
    return 4.0 * np.sqrt(np.maximum(larger, 0.0))


def lesion_hits(detections, mask: EvaluationMask | None) -> tuple[list[float], np.ndarray, int]:
    """(false-positive probabilities, per-label lesion scores (0 = missed; ITC labels 0),
    number of lesions that count) for one slide's detections (objects with
    ``probability``, ``x_l0``, ``y_l0``); ``mask`` None means a normal slide."""
    if mask is None or mask.n_labels == 0:
        return [d.probability for d in detections], np.zeros(0, np.float64), 0
    tp = np.zeros(mask.n_labels, np.float64)
    fps = []
    for d in detections:
        label = mask.label_at(d.x_l0, d.y_l0)
        if label == 0:
            fps.append(d.probability)
        elif label not in mask.itc:
            tp[label - 1] = max(tp[label - 1], d.probability)
    return fps, tp, mask.n_lesions


def froc_curve(fp_probs: np.ndarray, tp_probs: np.ndarray, *, n_slides: int, n_lesions: int) -> tuple[np.ndarray, np.ndarray]:
    """(FPs per slide, sensitivity) over the thresholds of the reference code, the last point (0, 0)."""
    fp_probs, tp_probs = np.asarray(fp_probs, np.float64), np.asarray(tp_probs, np.float64)
    thresholds = sorted(set(fp_probs.tolist()) | set(tp_probs.tolist()))[1:]
    fps = [int((fp_probs >= t).sum()) for t in thresholds] + [0]
    tps = [int((tp_probs >= t).sum()) for t in thresholds] + [0]
    return np.asarray(fps, np.float64) / max(n_slides, 1), np.asarray(tps, np.float64) / max(n_lesions, 1)


def froc_score(fps_per_slide: np.ndarray, sensitivity: np.ndarray) -> tuple[float, list[float]]:
    """Mean sensitivity at 1/4..8 FPs per slide (``np.interp`` on the reversed curve), and the six values."""
    values = np.interp(FROC_FP_RATES, fps_per_slide[::-1], sensitivity[::-1])
    return float(values.mean()), [float(v) for v in values]
