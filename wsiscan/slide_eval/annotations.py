"""Pathologists' annotations of a slide: Camelyon16 ASAP XML and QuPath GeoJSON, in level-0 px.

* **ASAP XML** (the Camelyon16 format): ``<Annotation PartOfGroup=...>`` elements with
  ``<Coordinate X= Y=>`` vertices.  Groups ``_0`` and ``_1`` (and any other name) are
  tumour; ``_2`` (Camelyon16's non-tumour areas inside a lesion) and groups named
  ``Exclusion``, ``Non-tumor`` or ``Normal`` are cut out of the tumour.
* **QuPath GeoJSON** (File > Export objects): Polygon / MultiPolygon features; a feature
  whose ``classification.name`` is one of the exclusion names above (or starts with
  ``Ignore``) is cut out, every other feature is tumour.

Coordinates are level-0 pixels of the slide, as both tools write them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DatasetError

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

__all__ = ["SlideAnnotation", "read_annotation", "find_annotation", "ANNOTATION_SUFFIXES"]

ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
_EXCLUSION_NAMES = {"_2", "exclusion", "non-tumor", "non-tumour", "nontumor", "normal"}


@dataclass(frozen=True)
class SlideAnnotation:
    """Tumour area (exclusions removed) of one slide as a shapely geometry in level-0 px."""

    path: Path
    tumour: BaseGeometry  # shapely (Multi)Polygon, possibly empty
    n_tumour_polygons: int
    n_exclusion_polygons: int

    @property
    def has_tumour(self) -> bool:
        return not self.tumour.is_empty


def _is_exclusion(name: str | None) -> bool:
    text = (name or "").strip().lower()
    return text in _EXCLUSION_NAMES or text.startswith("ignore")


def _polygon(points: list[tuple[float, float]], path: Path, what: str) -> BaseGeometry:
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    if len(points) < 3:
        raise DatasetError(f"{path}: {what} has {len(points)} vertices; a polygon needs at least 3")
    return make_valid(Polygon(points))


def _read_asap(path: Path) -> tuple[list[BaseGeometry], list[BaseGeometry]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: not well-formed XML ({exc}); expected a Camelyon16 ASAP annotation file") from exc
    tumour: list[BaseGeometry] = []
    exclusion: list[BaseGeometry] = []
    annotations = root.iter("Annotation")
    for i, ann in enumerate(annotations):
        coords: list[tuple[int, float, float]] = []
        for c in ann.iter("Coordinate"):
            try:
                coords.append((int(c.get("Order", len(coords))), float(c.get("X", "")), float(c.get("Y", ""))))
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{path}: annotation {ann.get('Name', i)} has a coordinate without numeric "
                                   f"X/Y ({c.attrib}); expected <Coordinate Order= X= Y=>") from exc
        coords.sort(key=lambda t: t[0])
        poly = _polygon([(x, y) for _, x, y in coords], path, f"annotation {ann.get('Name', i)!r}")
        (exclusion if _is_exclusion(ann.get("PartOfGroup")) else tumour).append(poly)
    if root.tag != "ASAP_Annotations" and not tumour and not exclusion:
        raise DatasetError(f"{path}: no <Annotation> elements (root <{root.tag}>); expected a Camelyon16 ASAP XML")
    return tumour, exclusion


def _read_geojson(path: Path) -> tuple[list[BaseGeometry], list[BaseGeometry]]:
    from shapely.geometry import shape
    from shapely.validation import make_valid

    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc}); expected a QuPath GeoJSON export") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise DatasetError(f"{path}: neither a GeoJSON FeatureCollection, a Feature nor a list of features")
    tumour: list[BaseGeometry] = []
    exclusion: list[BaseGeometry] = []
    for i, feature in enumerate(features):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            continue  # points, lines and cells carry no area
        try:
            geom = make_valid(shape(geometry))
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise DatasetError(f"{path}: feature {i} has an unreadable {geometry.get('type')} ({exc})") from exc
        props = feature.get("properties") or {}
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else str(cls)
        (exclusion if _is_exclusion(name) else tumour).append(geom)
    return tumour, exclusion


def read_annotation(path: str | Path) -> SlideAnnotation:
    """Read an ASAP XML or QuPath GeoJSON file; tumour minus exclusions, in level-0 px."""
    from shapely import union_all

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: annotation file not found")
    reader = _read_asap if p.suffix.lower() == ".xml" else _read_geojson
    tumour, exclusion = reader(p)
    area = union_all([g for g in tumour if not g.is_empty]) if tumour else None
    if area is None:
        from shapely.geometry import Polygon

        area = Polygon()
    if exclusion:
        area = area.difference(union_all(exclusion))
    return SlideAnnotation(p, area, len(tumour), len(exclusion))


def find_annotation(folder: Path, slide_id: str) -> Path | None:
    """``folder/<slide_id>.xml|.geojson|.json`` (first found), or None."""
    for suffix in ANNOTATION_SUFFIXES:
        candidate = folder / f"{slide_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None
