"""The tile store: the only package that imports zarr.

One zarr v3 group per slide, ``<out>/<slide-id>/store.zarr``.  The layout (also in the
README, so any zarr reader can use it without wsiscan):

``store.zarr/`` attributes ``wsiscan``: schema version, slide identity, resolution and
its provenance, geometry, resolved config, versions, timings, status, ``checksums``.

Every array's chunks are Blosc-LZ4 followed by a CRC-32C checksum (zarr v3's ``crc32c``
codec), so a damaged chunk is refused by name (:class:`DamagedChunkError`) instead of
being decoded into wrong pixels or probabilities.  Schema version 1 stores (no
checksums) still read, with an :class:`UncheckedStoreWarning`.  Each chunk is written to
a temporary file beside it and renamed into place, so a kill never leaves a torn chunk
and a rewritten chunk is a new file (a hard-linked copy of the store keeps the old one).

- ``pixels``   (height_px, width_px, 3) uint8, the slide at ``effective_mpp``; chunks
  (supertile_px, supertile_px, 3); fill value 255 (glass).  Only chunks near tissue are
  written; a written chunk is complete.
- ``thumbnail`` (rows, cols, 3) uint8 at ``mask_mpp``.  The pictures (``thumbnail``,
  ``tissue_mask``, ``overview``) may be written after the store is created (``predict``
  writes them while the slide is scanned): a picture being written carries the array
  attribute ``wsiscan_writing``, removed once its last chunk is in place, so a picture a
  killed run left half-written is told from a finished one (and written again on resume).
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
import multiprocessing
import os
import shutil
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec

from ..errors import StoreError, StoreExistsError, UncheckedStoreWarning
from ..rowimage import RowImage, as_row_image
from .chunks import HEATMAP, AtomicLocalStore, StoredArray, sweep_partial_writes

__all__ = [
    "SCHEMA_VERSION",
    "StoredArray",
    "TileStore",
    "StoredGrid",
    "create_tile_store",
    "open_tile_store",
    "store_exists",
]

SCHEMA_VERSION = 2  # 2: every chunk carries a CRC-32C checksum; 1 (still read): none
_READABLE_SCHEMAS = (1, SCHEMA_VERSION)
CHECKSUM = "crc32c"  # the store attribute ``checksums`` of a schema 2 store
_ATTR = "wsiscan"
_KIND = "wsiscan-tile-store"
_WRITING = "wsiscan_writing"  # array attribute of a picture whose chunks are not all written yet
_Mode = Literal["r", "r+", "a", "w", "w-"]


def _codecs(level: int) -> tuple[BytesBytesCodec, ...]:
    """The bytes-to-bytes codecs of every stored array: Blosc-LZ4, then a CRC-32C of the result."""
    return BloscCodec(cname="lz4", clevel=level, shuffle="noshuffle"), Crc32cCodec()


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
        self._pictures_pending: Future[None] | None = None  # see pictures_written_by

    def pictures_written_by(self, future: Future[None]) -> None:
        """The pictures are being written by ``future`` (:meth:`write_pictures` in another
        thread): marking the store complete waits for it, and raises what it raised."""
        self._pictures_pending = future

    def wait_for_pictures(self) -> None:
        """Wait until the pictures being written in another thread are in place (re-raising its error)."""
        if self._pictures_pending is not None:
            self._pictures_pending.result()
            self._pictures_pending = None

    # -- metadata ----------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return _attr_dict(self.group.attrs.get(_ATTR))

    def update_meta(self, **values: Any) -> None:
        """Merge ``values`` into the store attributes.  A run marking the store complete
        also removes the temporary chunk files that killed writers left
        (:func:`~wsiscan.store.chunks.sweep_partial_writes`): once per run, as it walks the store."""
        if values.get("status") == "complete":  # complete means with every picture
            self.wait_for_pictures()
        meta = self.meta
        meta.update(values)
        self.group.attrs[_ATTR] = json.loads(json.dumps(meta, default=_json_default))
        if values.get("status") == "complete":
            sweep_partial_writes(self.path)

    @property
    def checksums(self) -> bool:
        """Whether the store's chunks carry checksums (schema 2); a schema 1 store's do not."""
        return self.meta.get("checksums") == CHECKSUM

    def array(self, name: str, *, probabilities: bool = False) -> StoredArray:
        """The array at ``name`` (e.g. ``thumbnail``, ``grids/s96/rc``), with checked reads."""
        node = self.group.get(name)
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.path}/{name}: {'missing' if node is None else 'a group, not an array'}; "
                             f"rerun with --overwrite to rebuild the store")
        return StoredArray(node, store_path=self.path, probabilities=probabilities)

    # -- pixels -----------------------------------------------------------
    @functools.cached_property
    def pixels(self) -> StoredArray:
        # opened once per TileStore: each group lookup re-reads the array's metadata
        return self.array("pixels")

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
    def _picture(self, name: str) -> StoredArray:
        arr = self.array(name)
        if _WRITING in arr.attrs:
            raise StoreError(f"{self.path}/{name}: the picture is being written, or a killed run left it "
                             f"half-written; let the run finish, or rerun it to complete the store")
        return arr

    def thumbnail(self) -> np.ndarray:
        return self._picture("thumbnail")[...]

    def overview(self) -> tuple[np.ndarray, float]:
        """The whole-slide picture for overlays and its um/px: the sharper ``overview`` of a
        small slide when the store has one, else the thumbnail at ``mask_mpp``."""
        if "overview" in self.group:
            arr = self._picture("overview")
            return arr[...], float(arr.attrs["overview_mpp"])
        return self.thumbnail(), float(self.meta["mask_mpp"])

    def tissue_mask(self) -> np.ndarray:
        return self._picture("tissue_mask")[...].astype(bool)

    def missing_pictures(self, *, overview: bool) -> list[str]:
        """The pictures not (completely) written: absent, or left half-written by a killed run.
        ``overview``: whether this store should have an ``overview``."""
        names = ("thumbnail", "tissue_mask", *(("overview",) if overview else ()))
        missing = []
        for name in names:
            node = self.group.get(name)
            if not isinstance(node, zarr.Array) or _WRITING in node.attrs:
                missing.append(name)
        return missing

    def write_pictures(self, *, thumbnail: RowImage | np.ndarray | None = None,
                       tissue_mask: RowImage | np.ndarray | None = None,
                       overview: RowImage | np.ndarray | None = None, overview_mpp: float | None = None) -> None:
        """Write the pictures given (over whatever a killed run left of them), each read a band
        of chunk rows at a time and written a chunk at a time (RowImages or arrays: the same
        bytes in the store).

        Safe to run in another thread while the store is scanned: it uses a group handle of
        its own and writes neither the store attributes nor any array but the pictures'.
        """
        group = _open_group(self.path, "r+")
        if thumbnail is not None:
            _write_picture(group, "thumbnail", thumbnail)
        if tissue_mask is not None:
            _write_picture(group, "tissue_mask", tissue_mask)  # bool as 0/1 bytes
        if overview is not None:
            _write_picture(group, "overview", overview, attributes={"overview_mpp": overview_mpp})

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
                               compressors=_codecs(5))
            if n:
                a[...] = arr
        g.attrs[_ATTR] = json.loads(json.dumps(
            {"stride_px": stride_px, "tile_size_px": tile_size_px, "n_rows": n_rows, "n_cols": n_cols,
             "n_tiles": n, **attrs}, default=_json_default))

    def has_grid(self, stride_px: int) -> bool:
        return f"grids/s{stride_px}/rc" in self.group

    def grid(self, stride_px: int) -> StoredGrid:
        name = f"grids/s{stride_px}"
        if name not in self.group:
            raise StoreError(f"{self.path}: no tile grid at stride {stride_px} px; run `wsiscan tile` with --stride-px {stride_px}")
        a = _attr_dict(self.group[name].attrs.get(_ATTR))
        return StoredGrid(int(a["stride_px"]), int(a["tile_size_px"]), int(a["n_rows"]), int(a["n_cols"]),
                          self.array(f"{name}/rc")[...], self.array(f"{name}/l0_xy")[...],
                          self.array(f"{name}/tissue_fraction")[...], a)

    # -- heatmap (OME-Zarr multiscale image inside the store) -----------------------
    def has_heatmap(self) -> bool:
        """Whether the store holds a heatmap: its group with level 0 in it.  A group without
        level 0 is what a run killed inside :meth:`create_heatmap` leaves; the next run
        creates the heatmap again."""
        node = self.group.get(HEATMAP)
        return isinstance(node, zarr.Group) and "0" in node

    def heatmap_meta(self) -> dict[str, Any]:
        return _attr_dict(self.group[HEATMAP].attrs.get(_ATTR)) if self.has_heatmap() else {}

    def update_heatmap_meta(self, **values: Any) -> None:
        meta = self.heatmap_meta()
        meta.update(values)
        self._heatmap_group().attrs[_ATTR] = json.loads(json.dumps(meta, default=_json_default))

    def _heatmap_group(self) -> zarr.Group:
        g = self.group[HEATMAP]
        if not isinstance(g, zarr.Group):
            raise StoreError(f"{self.path}/{HEATMAP}: an array, not the heatmap group; rerun `wsiscan predict` "
                             f"with --overwrite to rebuild it")
        return g

    def set_heatmap_ome(self, ome: dict[str, Any]) -> None:
        self._heatmap_group().attrs["ome"] = json.loads(json.dumps(ome, default=_json_default))

    def delete_heatmap(self) -> None:
        if HEATMAP in self.group:
            del self.group[HEATMAP]

    def create_heatmap(self, *, shape: tuple[int, ...], chunk: int, meta: dict[str, Any]) -> None:
        """An empty level 0 of cells (NaN = not scored), chunked (chunk, chunk); shape (c, y, x)
        for a model of more than 2 classes (one channel per class, all in each chunk)."""
        g = self.group.create_group(HEATMAP, overwrite=True)  # over what a killed create left
        g.attrs[_ATTR] = json.loads(json.dumps(meta, default=_json_default))
        self.create_heatmap_level(0, shape=shape, chunk=chunk)

    def create_heatmap_level(self, level: int, *, shape: tuple[int, ...], chunk: int) -> StoredArray:
        g = self._heatmap_group()
        if str(level) in g:
            del g[str(level)]
        lead = tuple(shape[:-2])  # (n_classes,) for a multi-class heatmap, else ()
        arr = g.create_array(
            str(level), shape=shape, dtype=np.float32,
            chunks=(*lead, min(chunk, max(shape[-2], 1)), min(chunk, max(shape[-1], 1))),
            compressors=_codecs(5), fill_value=float("nan"),
            chunk_key_encoding={"name": "default", "separator": "/"},
            config={"write_empty_chunks": True}, dimension_names=(*("c" * len(lead)), "y", "x"),
        )
        return StoredArray(arr, store_path=self.path, probabilities=True)

    def heatmap_level(self, level: int) -> StoredArray:
        """Level ``level`` of the heatmap: reads refuse damaged chunks and values outside [0, 1]."""
        return self.array(f"{HEATMAP}/{level}", probabilities=True)

    def heatmap_levels(self) -> list[StoredArray]:
        g = self._heatmap_group()
        out, k = [], 0
        while str(k) in g:
            out.append(self.heatmap_level(k))
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


def _attr_dict(value: Any) -> dict[str, Any]:
    """A wsiscan attribute block as a dict ({} when absent or not a mapping)."""
    return dict(value) if isinstance(value, dict) else {}


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


def _open_group(path: Path, mode: _Mode) -> zarr.Group:
    return zarr.open_group(store=AtomicLocalStore(path, read_only=mode == "r"), mode=mode, zarr_format=3)


def open_tile_store(path: str | Path, *, mode: _Mode = "r+") -> TileStore:
    """Open the tile store at ``path``.  Schema 1 stores (no checksums) open with an
    :class:`UncheckedStoreWarning` from the main process (decode workers stay quiet)."""
    p = Path(path)
    if not store_exists(p):
        raise StoreError(f"{p}: not a wsiscan tile store (no zarr.json); run `wsiscan tile` or `wsiscan predict` first")
    try:
        group = _open_group(p, mode)
    except Exception as exc:  # zarr raises several types for damaged metadata
        raise StoreError(f"{p}: cannot open the zarr store ({exc.__class__.__name__}: {exc}); remove it or pass --overwrite") from exc
    meta = _attr_dict(group.attrs.get(_ATTR))
    if meta.get("kind") != _KIND:
        raise StoreError(f"{p}: a zarr group but not a wsiscan tile store; choose another output folder")
    if meta.get("schema_version") not in _READABLE_SCHEMAS:
        raise StoreError(
            f"{p}: tile store schema version {meta.get('schema_version')} is not one this wsiscan reads "
            f"({', '.join(map(str, _READABLE_SCHEMAS))}); rerun with --overwrite to rebuild it"
        )
    if meta.get("checksums") != CHECKSUM and multiprocessing.parent_process() is None:
        warnings.warn(UncheckedStoreWarning(
            f"{p} was written without chunk checksums (tile store schema version {meta.get('schema_version')}), "
            f"so damage to it cannot be detected; rerun with --overwrite to rebuild it with checksums"), stacklevel=2)
    return TileStore(p, group)


def create_tile_store(
    path: str | Path,
    *,
    meta: dict[str, Any],
    height_px: int,
    width_px: int,
    supertile_px: int,
    compression_level: int,
    thumbnail: RowImage | np.ndarray | None,
    tissue_mask: RowImage | np.ndarray | None,
    overview: RowImage | np.ndarray | None = None,
    overview_mpp: float | None = None,
) -> TileStore:
    """Create a new, empty store at ``path`` (which must not exist).

    The store is built in a hidden sibling folder and renamed into place, so a kill
    during creation never leaves a half-made store where a rerun would look for one.
    The pictures given are written into it first; those passed as None are left to
    :meth:`TileStore.write_pictures`.
    """
    p = Path(path)
    if p.exists():
        raise StoreExistsError(f"{p}: already exists; pass --overwrite to replace it")
    final = p
    for stale in final.parent.glob(f".{final.name}.creating-*"):  # left by a killed creation
        shutil.rmtree(stale, ignore_errors=True)
    p = final.with_name(f".{final.name}.creating-{os.getpid()}")
    group = _open_group(p, "w-")
    group.create_array(
        "pixels",
        shape=(height_px, width_px, 3),
        dtype=np.uint8,
        chunks=(supertile_px, supertile_px, 3),
        compressors=_codecs(compression_level),
        fill_value=255,
        chunk_key_encoding={"name": "default", "separator": "/"},
        config={"write_empty_chunks": True},
        dimension_names=("y", "x", "c"),
    )
    TileStore(p, group).write_pictures(thumbnail=thumbnail, tissue_mask=tissue_mask, overview=overview,
                                       overview_mpp=overview_mpp)
    TileStore(p, group).update_meta(kind=_KIND, schema_version=SCHEMA_VERSION, checksums=CHECKSUM, **meta)
    os.replace(p, final)
    return TileStore(final, _open_group(final, "r+"))


_PICTURE_CHUNK_PX = 1024  # the chunk side of the whole-slide pictures


def _write_picture(group: zarr.Group, name: str, data: RowImage | np.ndarray, *,
                   attributes: dict[str, Any] | None = None) -> None:
    """A whole-slide picture (rows, cols[, 3]) uint8 (or bool, stored as 0/1) in 1,024 px
    chunks: thumbnail, mask, overview.  Read one band of chunk rows at a time and written a
    chunk at a time, so one band of the picture is in memory, whatever the slide's size.

    Every chunk is written, empty ones too: zarr's test for a chunk equal to the fill value
    takes numpy's NaN-aware comparison path and makes several chunk-sized temporaries per chunk,
    which cost 1.4 s and 400,000 page faults for a Camelyon-sized slide's pictures, while the
    chunks it would leave out are a few all-glass chunks of the mask (tiny once compressed).
    """
    image = as_row_image(data)
    shape = image.shape
    dims = ("y", "x", "c")[: len(shape)]
    chunks = (min(_PICTURE_CHUNK_PX, shape[0]), min(_PICTURE_CHUNK_PX, shape[1])) + shape[2:]
    # marked as being written until its last chunk is in place (a kill in between leaves the
    # mark, and the next run writes the picture again); overwrite: what a killed run left
    arr = group.create_array(name, shape=shape, dtype=np.uint8, chunks=chunks, compressors=_codecs(5),
                             dimension_names=dims, attributes={**(attributes or {}), _WRITING: True},
                             config={"write_empty_chunks": True}, overwrite=True)
    for y0, y1 in image.stripe_bounds(chunks[0]):
        band = image.rows(y0, y1).astype(np.uint8, copy=False)
        # a chunk at a time: zarr encodes the chunks of one call side by side, each with a
        # copy or two of its pixels, which would hold several times the band
        for x0 in range(0, shape[1], chunks[1]):
            arr[y0:y1, x0 : x0 + chunks[1]] = band[:, x0 : x0 + chunks[1]]
    del arr.attrs[_WRITING]


def remove_store(path: str | Path) -> None:
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)


def iter_chunk_indices(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    for ci in range(n_rows):
        for cj in range(n_cols):
            yield ci, cj
