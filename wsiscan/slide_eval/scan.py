"""One pass over a slide's heatmap, chunk by chunk: slide scores, local-maximum detections,
and the cell counts behind Dice and IoU.

The heatmap is read through :mod:`wsiscan.store` one chunk (plus a halo of the detection
radius) at a time, so memory is bounded by the chunk size, never by the slide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import StoreError
from ..heatmap import HeatmapFrame
from ..layout import STORE_NAME
from ..store import TileStore, open_tile_store

__all__ = ["SlideScan", "Detection", "scan_heatmap", "open_heatmap", "heatmap_blocks"]


@dataclass(frozen=True)
class Detection:
    probability: float
    x_l0: float  # level-0 px of the cell centre
    y_l0: float


@dataclass
class SlideScan:
    max_probability: float | None
    top_k_mean_probability: float | None
    top_k: int
    detections: list[Detection] = field(default_factory=list)
    n_cells: int = 0  # scored (tissue) cells
    tp_cells: int = 0  # >= threshold and inside the annotated tumour
    fp_cells: int = 0
    fn_cells: int = 0


def open_heatmap(slide_dir: Path) -> tuple[TileStore, HeatmapFrame]:
    """The store of a finished ``wsiscan predict`` result and where its heatmap cells sit."""
    store = open_tile_store(slide_dir / STORE_NAME, mode="r")
    hm = store.heatmap_meta()
    if not store.has_heatmap() or hm.get("status") != "complete":
        raise StoreError(f"{slide_dir}: no complete heatmap in store.zarr; run `wsiscan predict` on the slide first")
    frame = HeatmapFrame.from_meta(hm)
    return store, frame


def heatmap_blocks(store: TileStore, *, halo: int = 0) -> Iterator[tuple[int, int, np.ndarray, tuple[slice, slice]]]:
    """Level-0 cells chunk by chunk: (row0, col0, block with ``halo`` cells around it
    (NaN beyond the edge), slices of the chunk itself inside the block)."""
    level0 = store.heatmap_level(0)
    n_rows, n_cols = level0.shape
    step_r, step_c = level0.chunks
    for r0 in range(0, n_rows, step_r):
        for c0 in range(0, n_cols, step_c):
            r1, c1 = min(r0 + step_r, n_rows), min(c0 + step_c, n_cols)
            br0, bc0 = max(r0 - halo, 0), max(c0 - halo, 0)
            br1, bc1 = min(r1 + halo, n_rows), min(c1 + halo, n_cols)
            block = np.full((r1 - r0 + 2 * halo, c1 - c0 + 2 * halo), np.nan, np.float32)
            oy, ox = halo - (r0 - br0), halo - (c0 - bc0)
            block[oy : oy + br1 - br0, ox : ox + bc1 - bc0] = level0[br0:br1, bc0:bc1]
            yield r0, c0, block, (slice(halo, halo + r1 - r0), slice(halo, halo + c1 - c0))


def _local_maxima(block: np.ndarray, core: tuple[slice, slice], *, radius: int, min_probability: float) -> list[tuple[int, int]]:
    """(row, col) in ``block`` of cells >= ``min_probability`` that are the maximum of the
    (2 radius + 1)^2 window around them; of equal maxima in a window the first in raster
    order wins, so a plateau gives one detection."""
    from scipy import ndimage

    values = np.where(np.isfinite(block), block, -np.inf)
    peak = ndimage.maximum_filter(values, size=2 * radius + 1, mode="constant", cval=-np.inf)
    is_max = (values == peak) & (values >= min_probability)
    inside = np.zeros_like(is_max)
    inside[core] = True
    out = []
    for y, x in zip(*np.nonzero(is_max & inside), strict=True):
        window = values[y - radius : y + radius + 1, x - radius : x + radius + 1]
        equal = np.flatnonzero(window.ravel() == values[y, x])
        if equal[0] == radius * (2 * radius + 1) + radius:  # the centre is the first equal value
            out.append((int(y), int(x)))
    return out


def scan_heatmap(store: TileStore, frame: HeatmapFrame, *, tumour=None, threshold: float, top_k: int,
                 detection_radius_um: float, min_detection_probability: float) -> SlideScan:
    """Scores, detections and Dice counts of one slide in one chunked pass.

    ``tumour`` is the annotated tumour area (shapely, level-0 px) or None for a slide
    without tumour; a cell is annotated tumour when its centre lies inside it.
    """
    import shapely

    radius = max(0, int(round(detection_radius_um / frame.cell_um)))
    if tumour is not None and not tumour.is_empty:
        shapely.prepare(tumour)
    top = np.zeros(0, np.float32)
    scan = SlideScan(None, None, 0)
    peak = -np.inf
    for r0, c0, block, core in heatmap_blocks(store, halo=radius):
        cells = block[core]
        finite = np.isfinite(cells)
        values = cells[finite]
        if values.size:
            peak = max(peak, float(values.max()))
            pool = np.concatenate([top, values])
            top = pool if pool.size <= top_k else np.partition(pool, pool.size - top_k)[pool.size - top_k :]
        scan.n_cells += int(values.size)
        rows, cols = np.nonzero(finite)
        predicted = cells[rows, cols] >= threshold
        if tumour is not None and not tumour.is_empty and rows.size:
            cells_x_l0, cells_y_l0 = frame.cell_to_l0(rows + r0, cols + c0)
            truth = shapely.contains_xy(tumour, cells_x_l0, cells_y_l0)
        else:
            truth = np.zeros(rows.size, bool)
        scan.tp_cells += int((predicted & truth).sum())
        scan.fp_cells += int((predicted & ~truth).sum())
        scan.fn_cells += int((~predicted & truth).sum())
        for y, x in _local_maxima(block, core, radius=radius, min_probability=min_detection_probability):
            row, col = y - core[0].start + r0, x - core[1].start + c0
            x_l0, y_l0 = frame.cell_to_l0(np.array([row]), np.array([col]))
            scan.detections.append(Detection(float(block[y, x]), float(x_l0[0]), float(y_l0[0])))
    if scan.n_cells:
        scan.max_probability = peak
        scan.top_k = int(top.size)
        scan.top_k_mean_probability = float(top.astype(np.float64).mean())
    return scan
