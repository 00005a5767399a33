"""The patches ``wsiscan explain`` explains: a PCam folder, image files, or a predict result.

A result folder ``OUT/<slide-id>`` gives the top-k patches of the slide, or of one region
of its ``tumor.geojson``; the heatmap is scanned chunk by chunk (a running top-k), and
the patches are read at the resolution the slide was scored at: from the tile store's
pixels when predict kept them (``--keep-pixels``), else from the slide file the store
records, decoded as predict decoded it (:mod:`wsiscan.slide_pixels`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import pcam
from ..errors import DatasetError, ResolutionError, StoreError
from ..layout import GEOJSON_NAME, STORE_NAME

__all__ = ["PatchSet", "patches_from_pcam", "patches_from_images", "patches_from_result", "is_result_folder",
           "region_geometry"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class PatchSet:
    """(N, H, W, 3) uint8 patches with an id, a label (None if unknown) and where each came from."""

    patches: np.ndarray
    ids: list[str]
    labels: list[int | None]
    origins: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)


def is_result_folder(path: Path) -> bool:
    return path.is_dir() and (path / STORE_NAME).is_dir()


def patches_from_pcam(data_dir: Path, *, split: str | None, max_patches: int, log=lambda m: None) -> PatchSet:
    """The first ``max_patches`` patches of a split (default: test, or all of a Kaggle folder)."""
    layout = pcam.detect_layout(data_dir)
    split = split or ("all" if layout == "kaggle" else "test")
    dataset = pcam.open_split(data_dir, split, log=log)
    n = min(max_patches, len(dataset))
    positions = np.arange(n)
    images = dataset.read_batch(positions)
    ids = dataset.patch_ids[:n] if isinstance(dataset, pcam.KaggleDataset) else [f"{split}-{int(r)}" for r in dataset.rows[:n]]
    labels: list[int | None] = [int(v) for v in dataset.labels[:n]]
    return PatchSet(images, list(ids), labels, [{"pcam": str(data_dir), "split": split, "position": int(i)} for i in positions],
                    {"kind": "pcam", "path": str(data_dir), "layout": layout, "split": split, "n_in_split": len(dataset)})


def _expand_lists(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.suffix.lower() in (".txt", ".lst"):
            if not p.is_file():
                raise DatasetError(f"{p}: list file not found")
            out += [(p.parent / line.strip()) if not Path(line.strip()).is_absolute() else Path(line.strip())
                    for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
        else:
            out.append(p)
    return out


def patches_from_images(paths: Sequence[Path], *, size_px: int) -> PatchSet:
    """RGB patch images (PNG, TIFF, JPEG) and ``.txt`` lists of them, each ``size_px`` square."""
    from PIL import Image, UnidentifiedImageError

    files = _expand_lists(paths)
    images = []
    for f in files:
        if not f.is_file():
            raise DatasetError(f"{f}: patch image not found")
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{f}: not an image PIL can read ({exc.__class__.__name__}); give PNG, TIFF or JPEG patches") from exc
        if arr.shape[:2] != (size_px, size_px):
            raise DatasetError(f"{f}: {arr.shape[1]} x {arr.shape[0]} px; the model takes {size_px} x {size_px} px "
                               f"patches: crop or resize it")
        images.append(arr)
    if not images:
        raise DatasetError("no patch images given")
    return PatchSet(np.stack(images), [f.stem for f in files], [None] * len(files),
                    [{"file": str(f)} for f in files], {"kind": "images", "n": len(files)})


def region_geometry(slide_dir: Path, rank: int):
    """Region ``rank`` (1-based, by max probability, then area, as napari's hotspot table) of tumor.geojson."""
    from shapely.geometry import shape

    path = slide_dir / GEOJSON_NAME
    if not path.is_file():
        raise StoreError(f"{path}: not found; --region needs the regions `wsiscan predict` writes")
    features = json.loads(path.read_text()).get("features", [])
    props = [f.get("properties", {}) for f in features]
    order = sorted(range(len(features)), key=lambda i: (-float(props[i].get("max_probability", 0)),
                                                         -float(props[i].get("area_mm2", 0)), i))
    if not 1 <= rank <= len(order):
        raise DatasetError(f"{path}: --region {rank} asked for, but it holds {len(order)} region(s); use 1..{len(order)}")
    return shape(features[order[rank - 1]]["geometry"])


def _top_cells(store, frame, *, top_k: int, region) -> list[tuple[float, int, int]]:
    """(probability, row, col) of the ``top_k`` highest cells (inside ``region`` if given), chunk by chunk."""
    import shapely

    from ..slide_eval.scan import heatmap_blocks

    if region is not None:
        shapely.prepare(region)
    best: list[tuple[float, int, int]] = []
    for r0, c0, block, _core in heatmap_blocks(store):
        rows, cols = np.nonzero(np.isfinite(block))
        if region is not None and rows.size:
            x, y = frame.cell_to_l0(rows + r0, cols + c0)
            inside = shapely.contains_xy(region, x, y)
            rows, cols = rows[inside], cols[inside]
        values = block[rows, cols]
        if values.size > top_k:
            keep = np.argpartition(-values, top_k - 1)[:top_k]
            rows, cols, values = rows[keep], cols[keep], values[keep]
        best += [(float(v), int(r + r0), int(c + c0)) for v, r, c in zip(values, rows, cols, strict=True)]
        best = sorted(best, key=lambda t: (-t[0], t[1], t[2]))[:top_k]
    return best


def patches_from_result(slide_dir: Path, *, top_k: int, region_rank: int | None, input_mpp: float,
                        region=None) -> PatchSet:
    """The ``top_k`` highest-probability patches of a finished result (of one region if asked)."""
    from ..slide_eval.scan import open_heatmap

    store, frame = open_heatmap(slide_dir)
    if abs(frame.px_mpp - input_mpp) / input_mpp > 0.05:
        raise ResolutionError(
            f"{slide_dir}: its patches are at {frame.px_mpp:.3f} um/px but the model takes {input_mpp:g} um/px; "
            f"explain it with the model(s) it was scored with, or rerun `wsiscan predict` with this model")
    if region is None and region_rank is not None:
        region = region_geometry(slide_dir, region_rank)
    cells = _top_cells(store, frame, top_k=top_k, region=region)
    if not cells:
        raise DatasetError(f"{slide_dir}: no scored patch{' inside that region' if region is not None else ''}")
    from ..slide_pixels import open_store_pixels

    size, stride = frame.tile_size_px, frame.stride_px
    boxes = [(c * stride, r * stride, c * stride + size, r * stride + size) for _, r, c in cells]
    with open_store_pixels(store) as pixels:
        from_store = all(pixels.stored(b) for b in boxes)
        patches = np.stack([pixels.read_px(px_box=b) for b in boxes])
    l0 = frame.l0_per_px
    origins = [{"slide_dir": str(slide_dir), "row": r, "col": c, "heatmap_probability": p,
                "l0_xy": [int(round(c * stride * l0)), int(round(r * stride * l0))],
                "l0_size_px": int(round(size * l0))} for p, r, c in cells]
    ids = [f"{slide_dir.name}-r{r}-c{c}" for _, r, c in cells]
    return PatchSet(patches, ids, [None] * len(ids), origins,
                    {"kind": "result", "path": str(slide_dir), "top_k": top_k, "region": region_rank,
                     "px_mpp": frame.px_mpp, "stride_px": stride,
                     "pixels": "store" if from_store else "slide file"})
