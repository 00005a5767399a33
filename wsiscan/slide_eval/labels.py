"""Slide labels from a CSV: Camelyon16's ``reference.csv`` (no header: ``Test_001,Tumor,...``)
or any CSV with a header naming a slide column and a label column."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DatasetError

__all__ = ["read_slide_labels", "slide_key"]

_TUMOUR = {"tumor", "tumour", "1", "true", "positive", "metastasis", "metastases", "yes"}
_NORMAL = {"normal", "0", "false", "negative", "no", "negative_tumor"}
_SLIDE_COLUMNS = ("slide", "slide_id", "image", "id", "name", "path", "filename")
_LABEL_COLUMNS = ("label", "class", "tumor", "tumour", "type", "diagnosis")


def slide_key(name: str) -> str:
    """Case-insensitive slide id: the file name without folders and slide suffixes."""
    stem = Path(name.strip()).name
    for suffix in (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".dcm", ".xml", ".geojson", ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem.lower()


def _label(value: str) -> int | None:
    text = value.strip().lower()
    return 1 if text in _TUMOUR else 0 if text in _NORMAL else None


def read_slide_labels(path: str | Path) -> dict[str, int]:
    """{slide key: 1 tumour / 0 normal}."""
    p = Path(path)
    try:
        rows = [r for r in csv.reader(p.read_text().splitlines()) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{p}: cannot read the slide labels CSV ({exc})") from exc
    if not rows:
        raise DatasetError(f"{p}: empty; expected rows 'slide,label' (label Tumor/Normal or 1/0)")
    header = [c.strip().lower() for c in rows[0]]
    slide_col: int | None
    label_col: int | None
    if len(rows[0]) >= 2 and _label(rows[0][1]) is not None:  # no header: Camelyon16 reference.csv
        slide_col, label_col, body, first_line = 0, 1, rows, 1
    else:
        slide_col = next((header.index(c) for c in _SLIDE_COLUMNS if c in header), None)
        label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
        if slide_col is None or label_col is None:
            raise DatasetError(
                f"{p}: header {rows[0]} has no slide column ({', '.join(_SLIDE_COLUMNS)}) or no label column "
                f"({', '.join(_LABEL_COLUMNS)}); or give Camelyon16's reference.csv (no header)")
        body, first_line = rows[1:], 2
    labels: dict[str, int] = {}
    for i, row in enumerate(body, start=first_line):
        if len(row) <= max(slide_col, label_col):
            raise DatasetError(f"{p}: line {i} has {len(row)} column(s); expected a slide and a label")
        value = _label(row[label_col])
        if value is None:
            raise DatasetError(f"{p}: line {i}: label {row[label_col]!r} is neither Tumor/1 nor Normal/0")
        labels[slide_key(row[slide_col])] = value
    return labels
