"""The patch demo: one uploaded image -> the model's class probabilities (and Grad-CAM, once it exists).

Uploads are decoded in memory and never written anywhere.  The models offered are a fixed
list made when the server starts (the built-in test model, registry models already in the
cache, the results' own checkpoints, and ``--model``); a request names one of them and can
never make the server load another file.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import WsiscanError

__all__ = ["MAX_UPLOAD_BYTES", "MAX_SIDE_PX", "UploadError", "PatchModels", "decode_patch", "explain_available"]

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_SIDE_PX = 2048


class UploadError(WsiscanError, ValueError):
    """An uploaded file is not an image, or too large for the patch demo."""


def decode_patch(data: bytes, *, filename: str = "upload") -> np.ndarray:
    """(rows, cols, 3) uint8 RGB of an uploaded image; UploadError says what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(f"{filename}: the file is empty; choose a PNG, JPEG or TIFF patch")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{filename}: {len(data) / 2**20:.1f} MiB is more than the {MAX_UPLOAD_BYTES // 2**20} MiB "
                          f"the patch demo takes; upload a patch or a small image (for a whole slide use "
                          f"`wsiscan predict`)")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))  # not only an ImageFile: flattened onto white below
        w, h = img.size
        if max(w, h) > MAX_SIDE_PX:
            raise UploadError(f"{filename}: {w} x {h} px is larger than the {MAX_SIDE_PX} x {MAX_SIDE_PX} px the "
                              f"patch demo takes; upload a patch or crop the image (for a whole slide use "
                              f"`wsiscan predict`)")
        img.load()
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadError(f"{filename}: not an image PIL can read ({exc.__class__.__name__}); upload a PNG, JPEG or "
                          f"TIFF patch") from exc
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)  # transparent = glass, as for slides
    return np.asarray(img.convert("RGB"), np.uint8)


def resize_patch(rgb: np.ndarray, size_px: int) -> np.ndarray:
    """The image at ``size_px`` x ``size_px``: unchanged at that size, area-averaged down, bicubic up."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if (h, w) == (size_px, size_px):
        return rgb
    method = Image.Resampling.BOX if min(h, w) >= size_px else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize((size_px, size_px), method), np.uint8)


def explain_available() -> bool:
    """Whether a ``wsiscan.explain`` module (Grad-CAM) is installed."""
    return importlib.util.find_spec("wsiscan.explain") is not None


def _gradcam_png(model: Any, spec: Any, patch_uint8: np.ndarray) -> bytes | None:
    """Grad-CAM of the positive class (``wsiscan.explain``) of one (H, W, 3) uint8 patch, as an inferno PNG."""
    if not explain_available():
        return None
    from PIL import Image

    from ..explain.attribution import explain_patches
    from .deepzoom import colormap_lut

    att = explain_patches([model], [spec], patch_uint8[None], methods=("gradcam",))
    heat = np.clip(np.asarray(att.maps["gradcam"][0], np.float32), 0.0, 1.0)
    buf = io.BytesIO()
    Image.fromarray(colormap_lut("inferno")[np.round(heat * 255).astype(np.uint8)][..., :3]).save(buf, "PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class ModelChoice:
    name: str  # what the page shows and sends back
    target: str  # registry name or checkpoint path handed to wsiscan.models.load_model
    note: str


def default_model_choices(extra: Iterable[str], result_models: Iterable[str]) -> list[ModelChoice]:
    """wsiscan/tiny, cached registry models, the results' checkpoints that exist here, and ``extra``."""
    from ..models import list_models
    from ..models.registry import cached_checkpoint_path

    choices: dict[str, ModelChoice] = {}
    for entry in list_models():
        if entry.source.startswith("builtin:") or cached_checkpoint_path(entry.name).is_file():
            choices[entry.name] = ModelChoice(entry.name, entry.name, entry.description)
    for name in [*result_models, *extra]:
        if name in choices:
            continue
        path = Path(name).expanduser()
        if path.is_file():
            choices[name] = ModelChoice(name, str(path), f"checkpoint {path}")
        elif name in {e.name for e in list_models()}:
            choices[name] = ModelChoice(name, name, "registry model (downloaded on first use)")
    return list(choices.values())


class PatchModels:
    """The models the patch page offers (listed on first use: that imports torch), each loaded once and kept."""

    def __init__(self, extra: Iterable[str], result_models: Iterable[str]) -> None:
        self._extra, self._result_models = tuple(extra), tuple(result_models)
        self._choices: dict[str, ModelChoice] | None = None
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    @property
    def choices(self) -> dict[str, ModelChoice]:
        with self._lock:
            if self._choices is None:
                self._choices = {c.name: c for c in default_model_choices(self._extra, self._result_models)}
            return self._choices

    def describe(self) -> list[dict[str, str]]:
        return [{"name": c.name, "note": c.note} for c in self.choices.values()]

    def _load(self, name: str) -> tuple[Any, Any]:
        from ..models import load_model

        target = self.choices[name].target
        with self._lock:
            if name not in self._loaded:
                model, spec, _ = load_model(target)
                self._loaded[name] = (model.eval(), spec)
            return self._loaded[name]

    def classify(self, rgb: np.ndarray, model_name: str) -> dict[str, Any]:
        """Class probabilities of the image, resized to the model's patch size."""
        import torch

        from ..models import predict_class_proba

        if model_name not in self.choices:
            raise UploadError(f"model {model_name!r} is not offered here; choose one of {', '.join(self.choices)}")
        model, spec = self._load(model_name)
        patch = resize_patch(rgb, spec.patch_size_px)
        x01 = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1))).float().div(255.0)[None]
        with self._lock, torch.inference_mode():
            proba = predict_class_proba(model, spec, x01)[0].numpy()
        best = int(np.argmax(proba))
        h, w = rgb.shape[:2]
        with self._lock:
            gradcam = _gradcam_png(model, spec, patch) if explain_available() else None
        return {
            "model": model_name,
            "class": spec.class_names[best],
            "positive_class": spec.class_names[spec.positive_class],
            "probability": float(proba[spec.positive_class]),
            "probabilities": {n: float(p) for n, p in zip(spec.class_names, proba, strict=True)},
            "input_size_px": [w, h],
            "patch_size_px": spec.patch_size_px,
            "input_mpp": spec.input_mpp,
            "resized": (w, h) != (spec.patch_size_px, spec.patch_size_px),
            "gradcam_png_base64": None if gradcam is None else base64.b64encode(gradcam).decode(),
            "gradcam_note": "" if explain_available() else "Grad-CAM appears here once `wsiscan explain` exists",
        }
