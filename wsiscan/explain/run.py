"""``explain``: attribution panels for PCam patches, image files or a predict result.

The output folder holds one ``<nn>-<id>.png`` panel per patch and ``index.json`` (per
patch: id, source, label, probability, panel file, and per method the peak of the map
in patch px and the share of the map inside PCam's centre 32 x 32 px); it appears only
when complete.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import pcam
from ..errors import CheckpointError, ConfigError, DatasetError
from ..layout import write_json_atomic
from ..output_folder import building_folder, check_output_folder
from .attribution import METHODS, Attribution, explain_patches
from .panels import render_panel
from .sources import PatchSet, is_result_folder, patches_from_images, patches_from_pcam, patches_from_result

__all__ = ["explain", "load_explain_models", "map_statistics", "region_panels"]

Log = Callable[[str], None]


def _silent(message: str) -> None:
    del message


def load_explain_models(model_refs: Sequence[str], *, result_dir: Path | None = None):
    """The models to explain with: ``model_refs``, or the ones a result was scored with."""
    from ..predict import load_models

    if model_refs:
        return load_models(list(model_refs))
    if result_dir is None:
        raise ConfigError("no model given; pass --model NAME|PATH (repeat it for an ensemble)")
    from ..slide_eval.scan import open_heatmap

    store, _ = open_heatmap(result_dir)
    recorded = store.heatmap_meta().get("models", [])
    if not recorded:
        raise CheckpointError(f"{result_dir}: the heatmap does not name its models; pass --model")
    loaded = load_models([m["model"] for m in recorded])
    for m, sha in zip(recorded, loaded.sha256, strict=True):
        if m.get("sha256") and m["sha256"] != sha:
            raise CheckpointError(f"{m['model']}: its sha256 differs from the one {result_dir} was scored with; "
                                  f"pass that checkpoint with --model")
    return loaded


def map_statistics(m: np.ndarray) -> dict:
    """Peak (x, y) in patch px and the share of the map in the centre third (PCam's 32 x 32 px for 96 px)."""
    h, w = m.shape
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    total = float(m.sum())
    centre = float(m[h // 3 : h - h // 3, w // 3 : w - w // 3].sum())
    return {"peak_xy_px": [int(x), int(y)], "centre_share": centre / total if total > 0 else None}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def collect_patches(inputs: Sequence[Path], *, size_px: int, input_mpp: float, split: str | None, max_patches: int,
                    top_k: int, region: int | None, log: Log = _silent) -> PatchSet:
    """A PCam folder, a result folder, or image files (and lists of them)."""
    if not inputs:
        raise DatasetError("nothing to explain; give a PCam folder, a result folder OUT/<slide-id> or patch images")
    folders = [p for p in inputs if p.is_dir()]
    if folders and len(inputs) > 1:
        raise DatasetError(f"{folders[0]}: a folder must be the only input; give image files separately")
    if region is not None and not (folders and is_result_folder(folders[0])):
        raise ConfigError("--region needs a result folder OUT/<slide-id> as input")
    if folders:
        folder = folders[0]
        if is_result_folder(folder):
            return patches_from_result(folder, top_k=top_k, region_rank=region, input_mpp=input_mpp)
        slides = sorted(d.name for d in folder.iterdir() if is_result_folder(d))
        if slides:
            raise DatasetError(f"{folder}: a predict output folder of {len(slides)} slide(s); give one slide's "
                               f"folder, e.g. {folder / slides[0]}")
        return patches_from_pcam(folder, split=split, max_patches=max_patches, log=log)
    return patches_from_images(inputs, size_px=size_px)


def explain(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    model_refs: Sequence[str] = (),
    methods: Sequence[str] = METHODS,
    tta: bool = False,
    device: str = "auto",
    split: str | None = None,
    max_patches: int = 16,
    top_k: int = 8,
    region: int | None = None,
    layer: str | None = None,
    ig_steps: int = 32,
    overwrite: bool = False,
    log: Log = _silent,
) -> dict:
    """Write the panels and ``index.json`` for ``inputs`` into ``out_dir``; returns the index."""
    from ..train.engine import resolve_device, versions

    paths = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite=overwrite)
    torch_device = resolve_device(device)
    result_dir = paths[0] if len(paths) == 1 and is_result_folder(paths[0]) else None
    models = load_explain_models(model_refs, result_dir=result_dir)
    spec = models.spec
    patchset = collect_patches(paths, size_px=spec.patch_size_px, input_mpp=spec.input_mpp, split=split,
                               max_patches=max_patches, top_k=top_k, region=region, log=log)
    if patchset.source.get("kind") == "pcam" and abs(spec.input_mpp - pcam.PCAM_MPP) / pcam.PCAM_MPP > 0.05:
        log(f"note: the model expects {spec.input_mpp} um/px, PCam patches are {pcam.PCAM_MPP} um/px")
    attribution: Attribution = explain_patches(list(models.models), list(models.specs), patchset.patches,
                                               methods=methods, tta=tta, device=torch_device, layer=layer,
                                               ig_steps=ig_steps, names=list(models.names))
    entries = []
    with building_folder(out_dir, overwrite=overwrite) as tmp:
        for i, pid in enumerate(patchset.ids):
            name = f"{i:03d}-{_safe(pid)}.png"
            maps = {m: attribution.maps[m][i] for m in methods}
            render_panel(patchset.patches[i], maps, probability=float(attribution.probabilities[i]), title=pid,
                         label=patchset.labels[i], titles=attribution.titles, path=tmp / name)
            entries.append({"id": pid, "panel": name, "label": patchset.labels[i],
                            "probability": float(attribution.probabilities[i]),
                            "origin": patchset.origins[i] if patchset.origins else {},
                            "maps": {m: map_statistics(maps[m]) for m in methods}})
        index = {"source": patchset.source, "models": models.describe(), "methods": list(methods),
                 "method_notes": attribution.notes, "tta": tta, "device": str(torch_device),
                 "maps": "per patch scaled to [0, 1] (each ensemble member before the mean)",
                 "patches": entries, "versions": versions(),
                 "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(index, tmp / "index.json")
    log(f"wrote {len(entries)} panel(s) and index.json to {out_dir}")
    return index


def region_panels(slide_dir: str | Path, region_geometry, *, top_k: int = 4, methods: Sequence[str] = ("gradcam",),
                  models=None, device: str = "cpu", ig_steps: int = 16) -> tuple[list[dict], object]:
    """Panels of the ``top_k`` highest patches inside ``region_geometry`` (a GeoJSON dict or
    shapely geometry in level-0 px) of a result: what the napari panel shows.

    Returns (one dict per patch: id, probability, heatmap probability, origin, picture as
    (rows, cols, 3) uint8), and the models used, so a caller can pass them back in.
    """
    from shapely.geometry import shape

    slide_dir = Path(slide_dir)
    region = shape(region_geometry) if isinstance(region_geometry, dict) else region_geometry
    models = models or load_explain_models((), result_dir=slide_dir)
    patchset = patches_from_result(slide_dir, top_k=top_k, region_rank=None, input_mpp=models.spec.input_mpp,
                                   region=region)
    attribution = explain_patches(list(models.models), list(models.specs), patchset.patches, methods=methods,
                                  device=device, ig_steps=ig_steps, names=list(models.names))
    out = []
    for i, pid in enumerate(patchset.ids):
        p = float(attribution.probabilities[i])
        picture = render_panel(patchset.patches[i], {m: attribution.maps[m][i] for m in methods}, probability=p,
                               title=f"#{i + 1}", titles=attribution.titles, dpi=72)
        out.append({"id": pid, "probability": p, "origin": patchset.origins[i], "picture": picture})
    return out, models
