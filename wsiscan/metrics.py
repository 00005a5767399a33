"""Binary classification metrics, temperature scaling and their plots.

Pure numpy, except the two plot functions, which draw with matplotlib's object API on
the Agg canvas (no pyplot, no global backend switch).  Conventions:

* ``probs`` is the positive-class (tumour) probability per patch, ``labels`` 0/1.
* AUC is the Mann-Whitney statistic from average ranks, so tied scores count one half.
* The confusion matrix is ``[[tn, fp], [fn, tp]]`` (rows: true class, columns: predicted),
  at ``probs >= threshold``.
* ECE follows Guo et al. 2017: the prediction is the more likely class and its
  confidence is ``max(p, 1 - p)``; confidences fall in ``n_bins`` equal-width bins
  ``(k/n, (k+1)/n]`` over [0, 1] (for two classes only the upper half is used), and ECE
  is the sample-weighted mean of ``|accuracy - mean confidence|`` over the bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "binary_auc",
    "roc_curve",
    "confusion_matrix",
    "expected_calibration_error",
    "reliability_bins",
    "compute_metrics",
    "softmax",
    "fit_temperature",
    "nll",
    "plot_roc",
    "plot_reliability",
    "agg_figure",
]


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if probs.shape != labels.shape:
        raise ValueError(f"{len(probs)} scores for {len(labels)} labels")
    return probs, labels


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve, or None when only one class is present."""
    scores, labels = _check(scores, labels)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at each distinct threshold, from (0, 0) to (1, 1)."""
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    n_pos, n_neg = max(int(labels.sum()), 1), max(len(labels) - int(labels.sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, scores[last_of_tie]]
    return fpr, tpr, thresholds


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """``[[tn, fp], [fn, tp]]`` at ``probs >= threshold``."""
    probs, labels = _check(probs, labels)
    pred = (probs >= threshold).astype(np.int64)
    out = np.zeros((2, 2), dtype=np.int64)
    np.add.at(out, (labels, pred), 1)
    return out


def reliability_bins(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per confidence bin: count, mean confidence and accuracy of the predicted class."""
    probs, labels = _check(probs, labels)
    pred = (probs >= 0.5).astype(np.int64)
    confidence = np.where(pred == 1, probs, 1.0 - probs)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    used = bins["count"] > 0
    if not used.any():
        return 0.0
    gaps = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float((bins["count"][used] * gaps).sum() / bins["count"].sum())


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def compute_metrics(
    probs: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5, n_bins: int = 15
) -> dict:
    """AUC, accuracy, balanced accuracy, precision, recall, specificity, F1, confusion
    matrix and ECE, as a JSON-ready dict (None where a metric is undefined)."""
    probs, labels = _check(probs, labels)
    (tn, fp), (fn, tp) = confusion_matrix(probs, labels, threshold=threshold).tolist()
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    parts = [r for r in (recall, specificity) if r is not None]
    return {
        "n": int(len(labels)),
        "n_tumor": int(labels.sum()),
        "auc": binary_auc(probs, labels),
        "accuracy": _ratio(tp + tn, len(labels)),
        "balanced_accuracy": float(np.mean(parts)) if parts else None,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": float(threshold),
        "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
        "ece_bins": n_bins,
    }


# ---------------------------------------------------------------------------------------
# Temperature scaling (Guo et al. 2017)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0), iterations: int = 100
) -> float:
    """The temperature minimising validation NLL, by golden-section search on log T.

    The NLL is convex in 1/T, hence unimodal in log T, so the search is exact to its
    tolerance and deterministic.  Returns 1.0 for an empty set.
    """
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iterations):
        if hi - lo < 1e-6:
            break
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2.0))


# Temperature scaling is kept only when it is trustworthy: a validation set of at least
# this many patches, with at least MIN_CALIBRATION_PER_CLASS of each class (ECE over 15 bins
# of a few patches is noise: on 2 patches `train` once fitted T = 0.095, taking ECE from
# 0.016 to 0.446), and only when it lowers the validation ECE.
MIN_CALIBRATION_PATCHES = 200
MIN_CALIBRATION_PER_CLASS = 20


@dataclass(frozen=True)
class Calibration:
    temperature: float  # the temperature kept (1.0 unless the fit was trustworthy and helped)
    fitted_temperature: float | None  # what the fit found (None: not fitted)
    ece_before: float | None  # validation ECE at T = 1
    ece_after: float | None  # validation ECE at the kept temperature
    warning: str | None  # why the fitted temperature was not kept (one line), None when it was


def guarded_temperature(logits: np.ndarray, labels: np.ndarray, *, positive_class: int = 1, n_bins: int = 15,
                        min_patches: int = MIN_CALIBRATION_PATCHES,
                        min_per_class: int = MIN_CALIBRATION_PER_CLASS) -> Calibration:
    """Fit a temperature on validation logits, keeping it only when the set is large enough
    (``min_patches``, ``min_per_class`` of each class) and it lowers the validation ECE;
    otherwise T = 1 and a one-line ``warning`` saying why."""
    labels = np.asarray(labels)
    n = len(labels)
    ece_1 = expected_calibration_error(softmax(logits, 1.0)[:, positive_class], labels, n_bins=n_bins) if n else None
    per_class = np.bincount(labels.astype(np.int64), minlength=2) if n else np.zeros(2, np.int64)
    if ece_1 is None or n < min_patches or per_class.min() < min_per_class:  # ece_1 is None: no patches
        return Calibration(1.0, None, ece_1, ece_1, (
            f"calibration skipped: {n} validation patches ({', '.join(str(int(c)) for c in per_class)} per class); "
            f"a temperature is fitted on at least {min_patches}, with {min_per_class} of each class; keeping T = 1"))
    t = fit_temperature(logits, labels)
    ece_t = expected_calibration_error(softmax(logits, t)[:, positive_class], labels, n_bins=n_bins)
    if not ece_t < ece_1:
        return Calibration(1.0, t, ece_1, ece_1, (
            f"calibration not kept: the fitted temperature {t:.3f} gives validation ECE {ece_t:.4f}, "
            f"not lower than {ece_1:.4f} at T = 1; keeping T = 1"))
    return Calibration(t, t, ece_1, ece_t, None)


# ---------------------------------------------------------------------------------------
# Plots


def agg_figure(size_in: tuple[float, float] = (4.5, 4.5)) -> Figure:
    """A matplotlib Figure drawn by the Agg canvas (no pyplot, no display), for every plot wsiscan saves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(probs: np.ndarray, labels: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """ROC curve with its AUC and the chance diagonal, as a PNG."""
    fpr, tpr, _ = roc_curve(probs, labels)
    auc = binary_auc(probs, labels)
    fig = agg_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    label = f"AUC {auc:.3f}" if auc is not None else "AUC undefined (one class)"
    ax.plot(fpr, tpr, color="tab:red", linewidth=2, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (1 - specificity)",
           ylabel="true-positive rate (sensitivity)", title=title or "ROC")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_reliability(
    probs: np.ndarray, labels: np.ndarray, path: str | Path, *, n_bins: int = 15, title: str = ""
) -> Path:
    """Reliability diagram: accuracy against confidence per bin, with the ECE, as a PNG."""
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    ece = expected_calibration_error(probs, labels, n_bins=n_bins)
    edges = bins["edges"]
    width = edges[1] - edges[0]
    used = bins["count"] > 0
    fig = agg_figure((4.5, 5.5))
    ax, ax_count = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    ax.bar(edges[:-1][used], bins["accuracy"][used], width=width, align="edge", color="tab:blue",
           edgecolor="black", linewidth=0.5, label="accuracy")
    low = np.minimum(bins["accuracy"], bins["confidence"])
    gap = np.abs(bins["confidence"] - bins["accuracy"])
    ax.bar(edges[:-1][used], gap[used], bottom=low[used], width=width, align="edge", facecolor="none",
           edgecolor="tab:red", hatch="///", linewidth=0.8, label="gap to mean confidence")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title or f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize="small")
    ax_count.bar(edges[:-1], bins["count"], width=width, align="edge", color="0.5")
    ax_count.set(xlim=(0, 1), xlabel="confidence of the predicted class", ylabel="patches")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
