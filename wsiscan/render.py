"""Pictures for people: the tissue QC image and (later) heatmap overlays.  PIL only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .layout import write_png_atomic

__all__ = ["render_tissue_qc", "save_png_atomic", "fit_size", "resize_box", "scale_bar_um", "caption_font",
           "add_caption", "draw_scale_bar", "SMOKE_MODEL_MARK", "QC_COLOURS"]

# what each colour of qc.png means (RGB)
QC_COLOURS = {"mask outline": (0, 200, 0), "scored tiles": (40, 90, 220), "pen ink": (255, 200, 0),
              "unscored tissue": (230, 0, 0), "not tissue": (255, 200, 200)}
SMOKE_MODEL_MARK = "NOT A TUMOUR CLASSIFIER: wsiscan/tiny is a smoke-test model"


def scale_bar_um(width_um: float) -> float:
    """A round length (1, 2 or 5 x 10^k um) of about a fifth of ``width_um``."""
    target = max(width_um / 5.0, 1e-3)
    k = 10.0 ** np.floor(np.log10(target))
    return float(max(m * k for m in (1.0, 2.0, 5.0) if m * k <= target))


def caption_font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A scalable font of ``size_px`` (Pillow's own; its bitmap fallback where FreeType is absent)."""
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width_px: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and draw.textlength(trial, font=font) > width_px:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def add_caption(img: Image.Image, text: str, *, mark: str | None = None) -> Image.Image:
    """``img`` under a caption wrapped to its width, in a font that scales with it (>= 14 px);
    ``mark`` (e.g. :data:`SMOKE_MODEL_MARK`) first, in red."""
    size_px = max(14, round(img.width / 70))
    font = caption_font(size_px)
    probe = ImageDraw.Draw(img)
    width_px = max(200, img.width - 8)
    lines = [(ln, (0, 0, 0)) for ln in _wrap(probe, text, font, width_px)]
    if mark:
        lines = [(ln, (200, 0, 0)) for ln in _wrap(probe, mark, font, width_px)] + lines
    step = round(size_px * 1.3)
    top = step * len(lines) + 8
    canvas = Image.new("RGB", (max(img.width, 200), img.height + top), (255, 255, 255))
    canvas.paste(img, (0, top))
    draw = ImageDraw.Draw(canvas)
    for k, (line, colour) in enumerate(lines):
        draw.text((4, 4 + step * k), line, fill=colour, font=font)
    return canvas


def draw_scale_bar(img: Image.Image, *, um_per_px: float) -> Image.Image:
    """A scale bar (a round length in um, labelled) in the bottom-left corner, on a white box."""
    length_um = scale_bar_um(img.width * um_per_px)
    bar_px = max(1, round(length_um / um_per_px))
    size_px = max(12, round(img.width / 80))
    font = caption_font(size_px)
    label = f"{length_um:g} um" if length_um < 1000 else f"{length_um / 1000:g} mm"
    draw = ImageDraw.Draw(img)
    text_w = draw.textlength(label, font=font)
    thick = max(3, size_px // 4)
    x0, pad = 10, 6
    y1 = img.height - 10
    box = (x0 - pad, y1 - thick - size_px - 3 * pad, x0 + max(bar_px, text_w) + pad, y1 + pad // 2)
    draw.rectangle(box, fill=(255, 255, 255))
    draw.rectangle((x0, y1 - thick, x0 + bar_px, y1), fill=(0, 0, 0))
    draw.text((x0, y1 - thick - size_px - pad), label, fill=(0, 0, 0), font=font)
    return img


def fit_size(width: int, height: int, max_side_px: int) -> tuple[int, int, float]:
    """(w, h, scale) of an image fitted within ``max_side_px`` (never enlarged)."""
    scale = min(1.0, max_side_px / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def resize_box(image: np.ndarray, size: tuple[int, int], *, stripe_rows: int = 64) -> np.ndarray:
    """``image`` (rows, cols[, channels]) uint8 area-averaged to ``size`` (width, height).

    PIL's BOX resize of the whole image (within one grey level: a stripe's box starts at a
    fractional row, which rounds some weights differently), computed a stripe of output
    rows at a time: PIL copies its input (RGB into 4 bytes a pixel), so a whole thumbnail
    would make a temporary larger than the thumbnail itself.
    """
    h, w = image.shape[:2]
    ow, oh = size
    scale_y = h / oh
    out = np.empty((oh, ow) + image.shape[2:], np.uint8)
    for r0 in range(0, oh, stripe_rows):
        r1 = min(oh, r0 + stripe_rows)
        y0, y1 = r0 * scale_y, r1 * scale_y
        iy0, iy1 = int(np.floor(y0)), min(h, int(np.ceil(y1)))
        part = Image.fromarray(np.ascontiguousarray(image[iy0:iy1]))
        out[r0:r1] = np.asarray(part.resize((ow, r1 - r0), Image.Resampling.BOX, box=(0, y0 - iy0, w, y1 - iy0)))
    return out


def save_png_atomic(image: Image.Image, path: str | Path) -> Path:
    """``image`` as PNG, written atomically (:func:`wsiscan.layout.write_png_atomic`)."""
    return write_png_atomic(image, path)


def render_tissue_qc(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    *,
    tile_boxes_thumb: np.ndarray,
    title: str,
    max_side_px: int = 2000,
    mask_mpp: float | None = None,
    ink: np.ndarray | None = None,
    unscored: np.ndarray | None = None,
) -> Image.Image:
    """Thumbnail with the tissue mask outlined (green) and the kept tiles drawn (blue);
    pen ink (``ink``, mask-sized bool) filled yellow and tissue in no scored tile
    (``unscored``) filled red, a scale bar when ``mask_mpp`` is given, the caption on top.

    ``tile_boxes_thumb`` is (N, 4) x0, y0, x1, y1 in mask (thumbnail) pixels.
    """
    h, w = mask.shape
    ow, oh, scale = fit_size(w, h, max_side_px)
    if thumbnail.shape[:2] != mask.shape:  # a sharper picture than the mask was given
        ow, oh = thumbnail.shape[1], thumbnail.shape[0]
        ow, oh, extra = fit_size(ow, oh, max_side_px)
        scale = ow / w
    arr = resize_box(thumbnail, (ow, oh))
    # nearest: the mask's 0/1 bytes as they are (no uint8 x 255 copies of a whole-slide mask)
    small_mask = np.asarray(Image.fromarray(np.asarray(mask, bool).view(np.uint8)).resize((ow, oh), Image.Resampling.NEAREST)) > 0
    # light tint outside tissue so the mask reads at a glance: v * 0.6 + tint * 0.4 per channel
    # (float32 times 0.6, plus the float64 tint, truncated), as a 256-entry table a channel
    v = np.arange(256, dtype=np.float32)
    for ch, tint in enumerate((255, 200, 200)):
        table = (v * 0.6 + np.float64(tint) * 0.4).astype(np.float32).astype(np.uint8)
        arr[..., ch] = np.where(small_mask, arr[..., ch], table[arr[..., ch]])
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    boxes = np.asarray(tile_boxes_thumb, np.float64) * scale
    fill = boxes.shape[0] and (boxes[0, 2] - boxes[0, 0]) < 4
    for x0, y0, x1, y1 in boxes:
        if fill:
            draw.rectangle((x0, y0, x1, y1), outline=None, fill=(40, 90, 220))
        else:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(40, 90, 220))
    edge = small_mask & ~ndimage.binary_erosion(small_mask, iterations=max(1, round(ow / 800)))
    out = np.asarray(img).copy()
    for layer, name in ((ink, "pen ink"), (unscored, "unscored tissue")):
        if layer is not None and layer.any():  # filled half-opaque, so what lies under it still shows
            layer_255 = np.multiply(layer, 255, dtype=np.uint8)  # one mask-sized copy, not two
            small = np.asarray(Image.fromarray(layer_255).resize((ow, oh), Image.Resampling.BOX)) > 0
            del layer_255
            out[small] = (out[small] * 0.35 + np.array(QC_COLOURS[name]) * 0.65).astype(np.uint8)
    out[edge] = QC_COLOURS["mask outline"]
    img = Image.fromarray(out)
    if mask_mpp is not None:
        img = draw_scale_bar(img, um_per_px=mask_mpp * w / ow)
    return add_caption(img, title)
