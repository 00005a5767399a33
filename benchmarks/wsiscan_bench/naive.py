"""The naive baselines (one read_region per patch; a DataLoader, fp32 model and canvas), run in subprocesses."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def child_main(argv: list[str]) -> None:
    """Entry point of the naive contenders' subprocesses (so their memory is measured alone):
    ``python -m wsiscan_bench.naive KIND ARGS.json``."""
    kind, path = argv
    args = json.loads(Path(path).read_text())
    result = {"naive-tiles": _naive_tiles, "naive-predict": _naive_predict}[kind](**args)
    Path(args["result_path"]).write_text(json.dumps(result))


def _naive_tiles(*, slide: str, l0_xy_path: str, level: int, read_px: int, patch_px: int,
                 result_path: str) -> dict[str, Any]:
    """One read per patch (:func:`read_patches`), timed."""
    l0_xy = np.load(l0_xy_path)
    t0 = time.perf_counter()
    checksum = read_patches(slide, l0_xy, level, read_px, patch_px)
    return {"seconds": time.perf_counter() - t0, "n_tiles": int(len(l0_xy)), "checksum": checksum}


def read_patches(slide: str, l0_xy: np.ndarray, level: int, read_px: int, patch_px: int) -> int:
    """The naive tiling loop: one OpenSlide ``read_region`` per patch (through wsiscan.slide), a BOX
    resize when the level is resampled; returns a checksum so that every patch is materialised."""
    from PIL import Image

    from wsiscan.slide import open_slide

    checksum = 0
    with open_slide(slide, reader="openslide") as s:
        ds = s.info.levels[level].downsample
        for x, y in l0_xy:
            rgb = s.read_level(level=level, lv_xy=(int(round(x / ds)), int(round(y / ds))), size_px=(read_px, read_px))
            if read_px != patch_px:
                rgb = np.asarray(Image.fromarray(rgb).resize((patch_px, patch_px), Image.Resampling.BOX))
            checksum += int(rgb[0, 0, 0])
    return checksum


def _naive_predict(*, slide: str, ckpt: str, stride_px: int, device: str, workers: int, batch_size: int,
                   result_path: str) -> dict[str, Any]:
    """The pipeline many research scripts use: read_region per patch, DataLoader, fp32 model, canvas."""
    import torch
    from PIL import Image

    from wsiscan.config import load_config
    from wsiscan.models import load_checkpoint, predict_proba
    from wsiscan.slide import open_slide
    from wsiscan.tiling import plan_tiling

    t0 = time.perf_counter()
    model, spec = load_checkpoint(ckpt, map_location=device)
    cfg = load_config().replace("tile", target_mpp=spec.input_mpp, tile_size_px=spec.patch_size_px, stride_px=stride_px)
    plan = plan_tiling(slide, cfg)
    level = plan.selection.level
    lv_size = int(math.ceil(spec.patch_size_px * plan.selection.lv_per_px - 1e-9))
    l0_xy = plan.l0_xy()

    class Patches(torch.utils.data.Dataset):
        handle = None  # one handle per DataLoader worker process, opened there

        def __len__(self) -> int:
            return len(l0_xy)

        def __getitem__(self, i: int):
            if Patches.handle is None:
                Patches.handle = open_slide(slide)
            ds = Patches.handle.info.levels[level].downsample
            x, y = (int(v) for v in l0_xy[i])
            rgb = Patches.handle.read_level(level=level, lv_xy=(int(round(x / ds)), int(round(y / ds))),
                                            size_px=(lv_size, lv_size))
            if lv_size != spec.patch_size_px:
                rgb = np.asarray(Image.fromarray(rgb).resize((spec.patch_size_px,) * 2, Image.Resampling.BOX))
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0, i

    from wsiscan.workers import torch_worker_init

    loader = torch.utils.data.DataLoader(Patches(), batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.startswith("cuda"), worker_init_fn=torch_worker_init)
    s = plan.grid.stride_px
    canvas = np.full((plan.grid.n_rows * s, plan.grid.n_cols * s), np.nan, np.float32)  # the whole-slide canvas
    with torch.inference_mode():
        for x, idx in loader:
            probs = predict_proba(model, spec, x.to(device)).cpu().numpy()
            for p, i in zip(probs, idx.numpy(), strict=True):
                r, c = plan.kept_rc[i]
                canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] = p
    return {"n_patches": int(len(l0_xy)), "inner_s": time.perf_counter() - t0}


if __name__ == "__main__":
    child_main(sys.argv[1:])
