"""The tile store: the only module that imports zarr.

One zarr v3 group per slide, ``<out>/<slide-id>/store.zarr``.  The layout (also in the
README, so any zarr reader can use it without wsiscan):

``store.zarr/`` attributes ``wsiscan``: schema version, slide identity, resolution and
its provenance, geometry, resolved config, versions, timings, status.

- ``pixels``   (height_px, width_px, 3) uint8, the slide at ``effective_mpp``; chunks
  (supertile_px, supertile_px, 3), Blosc-LZ4; fill value 255 (glass).  Only chunks near
  tissue are written; a written chunk is complete (zarr writes chunks atomically).
- ``thumbnail`` (rows, cols, 3) uint8 at ``mask_mpp``.
- ``tissue_mask`` (rows, cols) uint8 at ``mask_mpp``, 1 = tissue.
- ``overview`` (rows, cols, 3) uint8 at the ``overview_mpp`` attribute: only for a small
  slide, a sharper whole-slide picture than ``thumbnail`` for overlays (``qc.png``,
  ``overlay.png``, ``wsiscan heatmap``).
- ``grids/s{stride}/`` one group per stride: ``rc`` (N, 2) int32 grid row/col,
  ``l0_xy`` (N, 2) int64 level-0 top-left, ``tissue_fraction`` (N,) float32; attributes
  give tile size, stride, grid shape and the tissue cut.
- ``heatmap/`` (written by ``predict``): an OME-Zarr multiscale image, see heatmap.py.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .errors import StoreError, StoreExistsError

__all__ = [
    "SCHEMA_VERSION",
    "TileStore",
    "StoredGrid",
    "create_tile_store",
    "open_tile_store",
    "store_exists",
]

SCHEMA_VERSION = 1
HEATMAP = "heatmap"
_ATTR = "wsiscan"
_KIND = "wsiscan-tile-store"


def _codec(level: int) -> BloscCodec:
    return BloscCodec(cname="lz4", clevel=level, shuffle="noshuffle")


@dataclass(frozen=True)
class StoredGrid:
    stride_px: int
    tile_size_px: int
    n_rows: int
    n_cols: int
    rc: np.ndarray  # (N, 2) int32 row, col
    l0_xy: np.ndarray  # (N, 2) int64
    tissue_fraction: np.ndarray  # (N,) float32
    attrs: dict[str, Any]


def store_exists(path: str | Path) -> bool:
    return (Path(path) / "zarr.json").exists()


class TileStore:
    """An open tile store.  Cheap to open: nothing but metadata is read."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group

    # -- metadata ----------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.group.attrs.get(_ATTR, {}))

    def update_meta(self, **values: Any) -> None:
        meta = self.meta
        meta.update(values)
        self.group.attrs[_ATTR] = json.loads(json.dumps(meta, default=_json_default))

    # -- pixels -----------------------------------------------------------
    @functools.cached_property
    def pixels(self) -> zarr.Array:
        # opened once per TileStore: each group lookup re-reads the array's metadata
        # (0.2 ms; read_px used it three times per chunk)
        return self.group["pixels"]

    def chunk_done(self, ci: int, cj: int) -> bool:
        """Whether pixel chunk (row ci, col cj) has been written completely."""
        return (self.path / "pixels" / "c" / str(ci) / str(cj) / "0").exists()

    def write_chunk(self, ci: int, cj: int, data: np.ndarray) -> None:
        s = self.pixels.chunks[0]
        h, w = data.shape[:2]
        self.pixels[ci * s : ci * s + h, cj * s : cj * s + w] = data

    def read_px(self, *, px_box: tuple[int, int, int, int]) -> np.ndarray:
        """(rows, cols, 3) uint8 of store px box (x0, y0, x1, y1); outside the slide is white."""
        x0, y0, x1, y1 = px_box
        h, w = self.pixels.shape[:2]
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self.pixels[cy0:cy1, cx0:cx1]
        return out

    def bytes_on_disk(self, part: str | None = None) -> int:
        """Bytes the store (or one of its arrays/groups, e.g. ``pixels``) takes on disk (allocated blocks)."""
        root = self.path / part if part else self.path
        total = 0
        for dirpath, _, files in os.walk(root):
            for name in files:
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:  # removed meanwhile
                    continue
                total += getattr(st, "st_blocks", 0) * 512 or st.st_size
        return total

    # -- thumbnail and mask ---------------------------------------------------
    def thumbnail(self) -> np.ndarray:
        return self.group["thumbnail"][...]

    def overview(self) -> tuple[np.ndarray, float]:
        """The whole-slide picture for overlays and its um/px: the sharper ``overview`` of a
        small slide when the store has one, else the thumbnail at ``mask_mpp``."""
        if "overview" in self.group:
            arr = self.group["overview"]
            return arr[...], float(arr.attrs["overview_mpp"])
        return self.thumbnail(), float(self.meta["mask_mpp"])

    def tissue_mask(self) -> np.ndarray:
        return self.group["tissue_mask"][...].astype(bool)

    # -- grids ------------------------------------------------------------------
    def write_grid(
        self,
        *,
        stride_px: int,
        tile_size_px: int,
        n_rows: int,
        n_cols: int,
        rc: np.ndarray,
        l0_xy: np.ndarray,
        tissue_fraction: np.ndarray,
        attrs: dict[str, Any],
    ) -> None:
        name = f"grids/s{stride_px}"
        if name in self.group:
            del self.group[name]
        g = self.group.require_group("grids").create_group(f"s{stride_px}")
        n = len(rc)
        for key, arr, dtype in (
            ("rc", rc, np.int32),
            ("l0_xy", l0_xy, np.int64),
            ("tissue_fraction", tissue_fraction, np.float32),
        ):
            arr = np.asarray(arr, dtype)
            a = g.create_array(key, shape=arr.shape, dtype=dtype, chunks=(max(n, 1),) + arr.shape[1:],
                               compressors=_codec(5))
            if n:
                a[...] = arr
        g.attrs[_ATTR] = json.loads(json.dumps(
            {"stride_px": stride_px, "tile_size_px": tile_size_px, "n_rows": n_rows, "n_cols": n_cols,
             "n_tiles": n, **attrs}, default=_json_default))

    def has_grid(self, stride_px: int) -> bool:
        return f"grids/s{stride_px}" in self.group and "rc" in self.group[f"grids/s{stride_px}"]

    def grid(self, stride_px: int) -> StoredGrid:
        try:
            g = self.group[f"grids/s{stride_px}"]
        except KeyError as exc:
            raise StoreError(f"{self.path}: no tile grid at stride {stride_px} px; run `wsiscan tile` with --stride-px {stride_px}") from exc
        a = dict(g.attrs[_ATTR])
        return StoredGrid(a["stride_px"], a["tile_size_px"], a["n_rows"], a["n_cols"],
                          g["rc"][...], g["l0_xy"][...], g["tissue_fraction"][...], a)

    # -- heatmap (OME-Zarr multiscale image inside the store) -----------------------
    def has_heatmap(self) -> bool:
        return HEATMAP in self.group

    def heatmap_meta(self) -> dict[str, Any]:
        return dict(self.group[HEATMAP].attrs.get(_ATTR, {})) if self.has_heatmap() else {}

    def update_heatmap_meta(self, **values: Any) -> None:
        g = self.group[HEATMAP]
        meta = dict(g.attrs.get(_ATTR, {}))
        meta.update(values)
        g.attrs[_ATTR] = json.loads(json.dumps(meta, default=_json_default))

    def set_heatmap_ome(self, ome: dict[str, Any]) -> None:
        self.group[HEATMAP].attrs["ome"] = json.loads(json.dumps(ome, default=_json_default))

    def delete_heatmap(self) -> None:
        if self.has_heatmap():
            del self.group[HEATMAP]

    def create_heatmap(self, *, shape: tuple[int, ...], chunk: int, meta: dict[str, Any]) -> None:
        """An empty level 0 of cells (NaN = not scored), chunked (chunk, chunk); shape (c, y, x)
        for a model of more than 2 classes (one channel per class, all in each chunk)."""
        g = self.group.create_group(HEATMAP)
        g.attrs[_ATTR] = json.loads(json.dumps(meta, default=_json_default))
        self.create_heatmap_level(0, shape=shape, chunk=chunk)

    def create_heatmap_level(self, level: int, *, shape: tuple[int, ...], chunk: int) -> zarr.Array:
        g = self.group[HEATMAP]
        if str(level) in g:
            del g[str(level)]
        lead = tuple(shape[:-2])  # (n_classes,) for a multi-class heatmap, else ()
        return g.create_array(
            str(level), shape=shape, dtype=np.float32,
            chunks=(*lead, min(chunk, max(shape[-2], 1)), min(chunk, max(shape[-1], 1))),
            compressors=_codec(5), fill_value=float("nan"),
            chunk_key_encoding={"name": "default", "separator": "/"},
            config={"write_empty_chunks": True}, dimension_names=(*("c" * len(lead)), "y", "x"),
        )

    def heatmap_level(self, level: int) -> zarr.Array:
        return self.group[f"{HEATMAP}/{level}"]

    def heatmap_levels(self) -> list[zarr.Array]:
        g = self.group[HEATMAP]
        out, k = [], 0
        while str(k) in g:
            out.append(g[str(k)])
            k += 1
        return out

    def heatmap_chunk_done(self, ci: int, cj: int) -> bool:
        # chunk files: c/ci/cj for (y, x), c/0/ci/cj for (c, y, x) (one chunk along c); in either
        # layout the other's path is missing or a folder, so no metadata needs reading
        base = self.path / HEATMAP / "0" / "c"
        return (base / str(ci) / str(cj)).is_file() or (base / "0" / str(ci) / str(cj)).is_file()

    def write_heatmap_chunk(self, ci: int, cj: int, data: np.ndarray) -> None:
        a = self.heatmap_level(0)
        c = a.chunks[-1]
        a[..., ci * c : ci * c + data.shape[-2], cj * c : cj * c + data.shape[-1]] = data


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def open_tile_store(path: str | Path, *, mode: str = "r+") -> TileStore:
    p = Path(path)
    if not store_exists(p):
        raise StoreError(f"{p}: not a wsiscan tile store (no zarr.json); run `wsiscan tile` or `wsiscan predict` first")
    try:
        group = zarr.open_group(str(p), mode=mode)
    except Exception as exc:  # zarr raises several types for damaged metadata
        raise StoreError(f"{p}: cannot open the zarr store ({exc.__class__.__name__}: {exc}); remove it or pass --overwrite") from exc
    meta = dict(group.attrs.get(_ATTR, {}))
    if meta.get("kind") != _KIND:
        raise StoreError(f"{p}: a zarr group but not a wsiscan tile store; choose another output folder")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{p}: tile store schema version {meta.get('schema_version')} is not the supported {SCHEMA_VERSION}; "
            f"rerun with --overwrite to rebuild it"
        )
    return TileStore(p, group)


def create_tile_store(
    path: str | Path,
    *,
    meta: dict[str, Any],
    height_px: int,
    width_px: int,
    supertile_px: int,
    compression_level: int,
    thumbnail: np.ndarray,
    tissue_mask: np.ndarray,
    overview: np.ndarray | None = None,
    overview_mpp: float | None = None,
) -> TileStore:
    """Create a new, empty store at ``path`` (which must not exist).

    The store is built in a hidden sibling folder and renamed into place, so a kill
    during creation never leaves a half-made store where a rerun would look for one.
    """
    p = Path(path)
    if p.exists():
        raise StoreExistsError(f"{p}: already exists; pass --overwrite to replace it")
    final = p
    for stale in final.parent.glob(f".{final.name}.creating-*"):  # left by a killed creation
        shutil.rmtree(stale, ignore_errors=True)
    p = final.with_name(f".{final.name}.creating-{os.getpid()}")
    group = zarr.open_group(str(p), mode="w-", zarr_format=3)
    group.create_array(
        "pixels",
        shape=(height_px, width_px, 3),
        dtype=np.uint8,
        chunks=(supertile_px, supertile_px, 3),
        compressors=_codec(compression_level),
        fill_value=255,
        chunk_key_encoding={"name": "default", "separator": "/"},
        config={"write_empty_chunks": True},
        dimension_names=("y", "x", "c"),
    )
    _write_picture(group, "thumbnail", thumbnail)
    _write_picture(group, "tissue_mask", tissue_mask.astype(np.uint8))
    if overview is not None:
        _write_picture(group, "overview", overview, attributes={"overview_mpp": overview_mpp})
    TileStore(p, group).update_meta(kind=_KIND, schema_version=SCHEMA_VERSION, **meta)
    os.replace(p, final)
    return TileStore(final, zarr.open_group(str(final), mode="r+"))


def _write_picture(group: zarr.Group, name: str, data: np.ndarray, *, attributes: dict[str, Any] | None = None) -> None:
    """A whole-slide picture (rows, cols[, 3]) uint8 in 1,024 px chunks: thumbnail, mask, overview."""
    dims = ("y", "x", "c")[: data.ndim]
    chunks = (min(1024, data.shape[0]), min(1024, data.shape[1])) + data.shape[2:]
    arr = group.create_array(name, shape=data.shape, dtype=np.uint8, chunks=chunks, compressors=_codec(5),
                             dimension_names=dims, attributes=attributes)
    arr[...] = data


def remove_store(path: str | Path) -> None:
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)


def iter_chunk_indices(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    for ci in range(n_rows):
        for cj in range(n_cols):
            yield ci, cj
