"""What a tile store records of the slide it was made from: the pixel identity, the plan, the grid, the decode.

The identity hashes the slide and everything that shapes the pixels; a store is resumed
only by a plan of the same identity (:func:`wsiscan.tiling.prepare_store`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Config, runtime_versions
from .grid import LevelSelection
from .keep import GLASS_MARGIN_PX

if TYPE_CHECKING:
    from .store import TileStore
    from .tiling import TilingPlan

__all__ = ["pixel_identity", "store_meta", "decode_record", "write_grid"]


def pixel_identity(fingerprint: dict[str, Any], config: Config, selection: LevelSelection, base_mpp: float,
                   *, reader: str = "openslide", glass_skip: bool = False) -> str:
    """16 hex digits of the slide file (size, quick hash) and every setting that shapes the stored pixels."""
    shaping: dict[str, Any] = {
        "slide": {k: fingerprint[k] for k in ("size_bytes", "quick_sha256")},
        "base_mpp": round(base_mpp, 6),
        "effective_mpp": round(selection.effective_mpp, 6),
        "level": selection.level,
        "tile_size_px": config.tile.tile_size_px,
        "supertile_px": config.tile.supertile_px,
        "tissue": asdict(config.tissue),
        "compression_level": config.tile.compression_level,
    }
    if reader != "openslide":  # OpenSlide-read stores keep the identity they had before raw reads existed
        shaping["reader"] = reader
        shaping["glass_skip"] = {"margin_px": GLASS_MARGIN_PX} if glass_skip else False
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def store_meta(plan: TilingPlan) -> dict[str, Any]:
    """The attributes a new tile store is created with (status ``in_progress``)."""
    config = plan.config
    return {
        "identity": plan.identity,
        "status": "in_progress",
        "slide": plan.fingerprint,
        "slide_info": plan.slide_info,
        "mpp": {"base_mpp": plan.base_mpp, "source": plan.mpp_source,
                "detail": plan.slide_info["mpp"]["detail"] if plan.slide_info.get("mpp") else ""},
        "level_selection": asdict(plan.selection),
        "geometry": {**asdict(plan.geometry), "n_chunk_rows": plan.geometry.n_chunk_rows,
                     "n_chunk_cols": plan.geometry.n_chunk_cols},
        "mask_mpp": plan.tissue.mask_mpp,
        "tissue_threshold": plan.tissue.threshold,
        "tissue_area_mm2": plan.tissue.tissue_area_um2 / 1e6,
        "ink_area_mm2": plan.tissue.ink_area_um2 / 1e6,
        "chunks_needed": int(plan.chunks_needed.sum()),
        "pixel_reader": plan.pixel_reader,
        "glass_skip": plan.glass_skip,
        "config": {"slide": asdict(config.slide), "tile": asdict(config.tile), "tissue": asdict(config.tissue)},
        "versions": runtime_versions(),
    }


def decode_record(plan: TilingPlan, tile_keep: np.ndarray | None, *, decoded_bytes: int,
                  glass_skipped_bytes: int) -> dict[str, Any]:
    """The store's ``decode`` attribute: the reader, what it decoded and what glass it left white."""
    return {
        "reader": plan.pixel_reader, "glass_skip": plan.glass_skip, "decoded_bytes": decoded_bytes,
        "glass_skipped_bytes": glass_skipped_bytes,
        # TIFF tiles of the whole level read: within reach of tissue, and in all
        "lv_tiles_near_tissue": None if tile_keep is None else int(tile_keep.sum()),
        "lv_tiles_total": None if tile_keep is None else int(tile_keep.size)}


def write_grid(plan: TilingPlan, store: TileStore) -> None:
    """The plan's kept tiles (grid row/col, level-0 origin, tissue fraction) as the store's grid of its stride."""
    store.write_grid(
        stride_px=plan.grid.stride_px, tile_size_px=plan.grid.tile_size_px, n_rows=plan.grid.n_rows,
        n_cols=plan.grid.n_cols, rc=plan.kept_rc, l0_xy=plan.l0_xy(),
        tissue_fraction=plan.kept_scores.tissue_fraction,
        attrs={"min_tissue": plan.config.tile.min_tissue, "px_mpp": plan.geometry.effective_mpp,
               "l0_per_px": plan.geometry.l0_per_px,
               "hm_offset_px": plan.grid.hm_offset_px,
               "scored_tissue_fraction": plan.scored_tissue_fraction},
    )
