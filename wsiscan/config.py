"""Configuration: frozen dataclasses loaded from the packaged ``default.yaml``.

Precedence is CLI option > ``--config FILE`` > packaged defaults.  Unknown keys and
values of the wrong type raise :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

__all__ = [
    "SlideConfig",
    "TileConfig",
    "TissueConfig",
    "PredictConfig",
    "Config",
    "DEFAULTS_PATH",
    "load_config",
]

DEFAULTS_PATH = Path(__file__).with_name("default.yaml")


@dataclass(frozen=True)
class SlideConfig:
    slide_mpp: float | None = None
    mpp_min: float = 0.05
    mpp_max: float = 40.0
    mpp_xy_max_rel_diff: float = 0.05

    def __post_init__(self) -> None:
        if self.slide_mpp is not None and not self.slide_mpp > 0:
            raise ConfigError(f"slide.slide_mpp must be > 0 um/px (or null), got {self.slide_mpp}")
        if not 0 < self.mpp_min < self.mpp_max:
            raise ConfigError(f"slide.mpp_min and slide.mpp_max must satisfy 0 < mpp_min < mpp_max, "
                              f"got {self.mpp_min} and {self.mpp_max}")
        if self.mpp_xy_max_rel_diff < 0:
            raise ConfigError(f"slide.mpp_xy_max_rel_diff must be >= 0, got {self.mpp_xy_max_rel_diff}")


@dataclass(frozen=True)
class TileConfig:
    target_mpp: float = 0.972
    tile_size_px: int = 96
    stride_px: int = 96
    mpp_tolerance: float = 0.05
    supertile_px: int = 768
    min_tissue: float = 0.0
    workers: int = 0
    compression_level: int = 5
    reader: str = "auto"

    def __post_init__(self) -> None:
        if self.reader not in ("auto", "openslide"):
            raise ConfigError(f"tile.reader must be auto or openslide, got {self.reader!r}")
        if self.target_mpp <= 0:
            raise ConfigError(f"tile.target_mpp must be > 0 um/px, got {self.target_mpp}")
        if self.tile_size_px < 8:
            raise ConfigError(f"tile.tile_size_px must be >= 8 px, got {self.tile_size_px}")
        if not 1 <= self.stride_px <= 4 * self.tile_size_px:
            raise ConfigError(
                f"tile.stride_px must be between 1 and {4 * self.tile_size_px} px, got {self.stride_px}"
            )
        if self.supertile_px < self.tile_size_px:
            raise ConfigError(
                f"tile.supertile_px ({self.supertile_px}) must be at least tile.tile_size_px ({self.tile_size_px})"
            )
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"tile.min_tissue must be in [0, 1], got {self.min_tissue}")
        if not 0.0 <= self.mpp_tolerance < 0.5:
            raise ConfigError(f"tile.mpp_tolerance must be in [0, 0.5), got {self.mpp_tolerance}")
        if not 0 <= self.compression_level <= 9:
            raise ConfigError(f"tile.compression_level must be 0-9, got {self.compression_level}")
        if self.workers < 0:
            raise ConfigError(f"tile.workers must be >= 0 (0: one per usable core), got {self.workers}")


@dataclass(frozen=True)
class TissueConfig:
    mask_mpp: float = 4.0
    blur_sigma_um: float = 8.0
    min_saturation: float = 0.07
    dark_threshold: int = 10
    bright_threshold: int = 245
    max_dark_bright_fraction: float = 0.5
    pcam_min_max_saturation: float = 0.07
    closing_radius_um: float = 16.0
    min_object_area_um2: float = 20000.0
    min_hole_area_um2: float = 20000.0
    ink_filter: bool = True

    def __post_init__(self) -> None:
        if self.mask_mpp <= 0:
            raise ConfigError(f"tissue.mask_mpp must be > 0 um/px, got {self.mask_mpp}")
        for key in ("blur_sigma_um", "closing_radius_um", "min_object_area_um2", "min_hole_area_um2"):
            if getattr(self, key) < 0:
                raise ConfigError(f"tissue.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("min_saturation", "max_dark_bright_fraction", "pcam_min_max_saturation"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"tissue.{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("dark_threshold", "bright_threshold"):
            if not 0 <= getattr(self, key) <= 255:
                raise ConfigError(f"tissue.{key} must be 0-255, got {getattr(self, key)}")


@dataclass(frozen=True)
class PredictConfig:
    model: tuple[str, ...] = ("tiatoolbox/resnet18-pcam",)
    device: str = "auto"
    batch_size: int = 0
    loader_workers: int = 2
    precision: str = "auto"
    compile: bool = False
    tta: bool = False
    threshold: float = 0.5
    top_k: int = 10
    min_region_area_um2: float = 0.0
    simplify_tolerance_um: float = 0.0
    heatmap_chunk_cells: int = 256
    keep_pixels: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"predict.precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"predict.threshold must be in [0, 1], got {self.threshold}")
        if not self.model:
            raise ConfigError("predict.model must name at least one model")
        for key, low in (("batch_size", 0), ("loader_workers", 0), ("top_k", 1), ("heatmap_chunk_cells", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"predict.{key} must be >= {low}, got {getattr(self, key)}")
        for key in ("min_region_area_um2", "simplify_tolerance_um"):
            if getattr(self, key) < 0:
                raise ConfigError(f"predict.{key} must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class Config:
    slide: SlideConfig = field(default_factory=SlideConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, section: str, **values: Any) -> "Config":
        """A copy with some keys of one section changed (values of None are ignored)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        merged = {**dataclasses.asdict(getattr(self, section)), **values}
        new_section = build_section(type(getattr(self, section)), merged, f"{section}", "<options>")
        return dataclasses.replace(self, **{section: new_section})


# section name -> its dataclass
_SECTIONS: dict[str, type] = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}


def _coerce(value: Any, annotation: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where, source)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, args[0], where, source) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"{source}: {where} must be of type {getattr(annotation, '__name__', annotation)}, got {value!r}"
    )


def build_section(cls: type, values: Mapping[str, Any], section: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {section}.{unknown[0]}; valid keys of '{section}': {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}", source) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found; check the path given to --config") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}: not valid YAML ({where}{problem}); fix the syntax there") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None) -> Config:
    """Packaged defaults, overlaid with the sections of ``path`` if given.

    A config file may hold only some sections and keys.  Sections that wsiscan does
    not know (for example ``train:`` in a training recipe) are ignored here so that one
    file can configure several commands.
    """
    merged: dict[str, dict[str, Any]] = {
        name: dict(sec) for name, sec in read_yaml(DEFAULTS_PATH).items()
    }
    source = str(DEFAULTS_PATH)
    if path is not None:
        source = str(path)
        for name, section in read_yaml(Path(path)).items():
            if name not in _SECTIONS:
                continue
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: section '{name}' must be a mapping")
            merged.setdefault(name, {}).update(section)
    sections = {}
    for name in _SECTIONS:
        sections[name] = build_section(_SECTIONS[name], merged.get(name, {}), name, source)
    return Config(**sections)


def runtime_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape results, for output metadata."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("wsiscan", "numpy", "zarr", "openslide-python", "openslide-bin", "tifffile",
                 "pillow", "scipy", "torch", "torchvision"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    from .slide import openslide_library_version  # slide.py alone loads OpenSlide

    library = openslide_library_version()
    if library is not None:
        out["openslide-library"] = library
    return out
