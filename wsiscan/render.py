"""Pictures for people: the tissue QC image and (later) heatmap overlays.  PIL only."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .layout import write_png_atomic
from .rowimage import RowImage, as_row_image

__all__ = ["render_tissue_qc", "save_png_atomic", "fit_size", "resize_box", "resize_box_any", "resize_nearest",
           "scale_bar_um", "caption_font", "add_caption", "draw_scale_bar", "SMOKE_MODEL_MARK", "QC_COLOURS"]

# what each colour of qc.png means (RGB)
QC_COLOURS = {"mask outline": (0, 200, 0), "scored tiles": (40, 90, 220), "pen ink": (255, 200, 0),
              "unscored tissue": (230, 0, 0), "not tissue": (255, 200, 200)}
SMOKE_MODEL_MARK = "NOT A TUMOUR CLASSIFIER: wsiscan/tiny is a smoke-test model"
# source bytes read per stripe by the resizes; PIL holds about twice that (RGB at 4 bytes a pixel)
_STRIPE_BYTES = 1 << 20


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


def _box_rows(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source rows PIL's BOX filter averages into each of ``out_size`` rows, and their weight.

    PIL (libImaging/Resample.c, ``precompute_coeffs``) centres output row j on source row
    ``(j + 0.5) * in_size / out_size`` and keeps the source rows whose (x - centre + 0.5) /
    filterscale lies in (-0.5, 0.5]: a run of rows, each weighing 1 / count, rounded to a
    22-bit fixed-point integer for 8-bit images.  Computed here with the same float64
    operations, so the weights are PIL's own.  Returns (first row, count, weight) per output row.
    """
    scale = float(np.float32(in_size)) / out_size  # PIL's box bounds are float32
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ss = 1.0 / filterscale
    centre = 0.0 + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centre - support + 0.5).astype(np.int64), 0)  # C's (int): truncation (values >= 0)
    xmax = np.minimum((centre + support + 0.5).astype(np.int64), in_size) - xmin
    first = np.full(out_size, -1, np.int64)
    count = np.zeros(out_size, np.int64)
    for x in range(int(np.ceil(support)) * 2 + 1):
        arg = ((x + xmin).astype(np.float64) - centre + 0.5) * ss
        inside = (x < xmax) & (arg > -0.5) & (arg <= 0.5)
        first = np.where(inside & (first < 0), x + xmin, first)
        count += inside
    # a row averaging no source row (not seen with BOX) is 0 in PIL; read one row there all the same
    first = np.where(first < 0, np.minimum(xmin, max(in_size - 1, 0)), first)
    weight = np.zeros(out_size, np.int64)
    has = count > 0
    weight[has] = (0.5 + (1.0 / count[has]) * (1 << 22)).astype(np.int64)
    return first, count, weight


def _box_down(rows: np.ndarray, first: np.ndarray, count: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """PIL's BOX pass down ``rows`` (uint8): output row j is the sum of rows ``first[j]`` on
    (``count[j]`` of them) times ``weight[j]``, rounded and clipped as PIL does (22-bit fixed point)."""
    # the sum times the weight stays below 2**31 while a run has fewer than about 8 million rows
    total = np.zeros((len(first),) + rows.shape[1:], np.int32 if count.max(initial=0) < 1 << 22 else np.int64)
    for k in range(int(count.max(initial=0))):
        take = np.nonzero(count > k)[0]
        total[take] += rows[first[take] + k]
    total *= weight.reshape((-1,) + (1,) * (total.ndim - 1)).astype(total.dtype)
    total += 1 << 21
    total >>= 22
    return np.minimum(total, 255).astype(np.uint8)


def _box_across(rows: np.ndarray, width: int) -> np.ndarray:
    """PIL's BOX pass across ``rows`` (uint8) to ``width``: PIL itself, the height unchanged
    (so it makes no pass down); each row's result depends on that row alone."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rows)).resize((width, rows.shape[0]), Image.Resampling.BOX))


@functools.lru_cache(maxsize=1)
def _pil_may_go_down_first() -> bool:
    """Whether this Pillow runs the pass down first when the height shrinks more than twice
    as much as the width (Pillow 13 does, for speed; older ones always go across first).
    The order changes some pixels by one grey level, so it is asked of PIL: a picture where
    the two orders differ, resized whole."""
    image = np.random.default_rng(0).integers(0, 256, (167, 53), np.uint8)
    whole = np.asarray(Image.fromarray(image).resize((28, 23), Image.Resampling.BOX))
    first, count, weight = _box_rows(167, 23)
    return not np.array_equal(whole, _box_down(_box_across(image, 28), first, count, weight))


def _box_stripes(image: RowImage, size: tuple[int, int], stripe_rows: int | None,
                 to_uint8: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """PIL's BOX resize of the whole of ``image`` to ``size`` (width, height), made a stripe
    of output rows at a time from the source rows those rows average (and no others).

    PIL resizes in two passes with an 8-bit picture between them: across (each row on its
    own: done by PIL on the stripe) and down (done here with PIL's weights and rounding,
    :func:`_box_rows`), in PIL's order.  ``to_uint8`` turns a stripe of source rows into
    the uint8 PIL would be given (e.g. a bool layer times 255); a stripe that is all zeros
    gives zeros and is skipped.
    """
    h, w = image.shape[:2]
    ow, oh = size
    first, count, weight = _box_rows(h, oh)
    last = first + count
    down_first = _pil_may_go_down_first() and 0 < h - oh and h - oh > (w - ow) * 2
    out = np.zeros((oh, ow) + image.shape[2:], np.uint8)
    step = stripe_rows or max(1, image.stripe_rows(_STRIPE_BYTES) * oh // max(h, 1))
    for r0 in range(0, oh, step):
        r1 = min(oh, r0 + step)
        s0, s1 = int(first[r0:r1].min()), int(last[r0:r1].max())
        rows = image.rows(s0, s1)
        if to_uint8 is not None:
            if not rows.any():
                continue
            rows = to_uint8(rows)
        if oh == h:  # no pass down
            out[r0:r1] = _box_across(rows, ow)
        elif down_first:
            out[r0:r1] = _box_across(_box_down(rows, first[r0:r1] - s0, count[r0:r1], weight[r0:r1]), ow)
        else:
            out[r0:r1] = _box_down(_box_across(rows, ow), first[r0:r1] - s0, count[r0:r1], weight[r0:r1])
    return out


def resize_box(image: RowImage | np.ndarray, size: tuple[int, int], *, stripe_rows: int | None = None) -> np.ndarray:
    """``image`` (rows, cols[, channels]) uint8, a RowImage or an array, area-averaged to
    ``size`` (width, height): the pixels of PIL's BOX resize of the whole image, made
    ``stripe_rows`` output rows at a time (by default, about ``_STRIPE_BYTES`` of source
    rows), so only a stripe of the source is held; PIL would copy a whole RGB image into
    4 bytes a pixel first.
    """
    return _box_stripes(as_row_image(image), size, stripe_rows)


def resize_box_any(layer: RowImage | np.ndarray, size: tuple[int, int], *,
                   stripe_rows: int | None = None) -> np.ndarray:
    """Where PIL's BOX resize of ``layer`` (a bool mask) times 255 to ``size`` is nonzero:
    the output pixels a layer of the slide touches, made a stripe at a time."""
    def times_255(rows: np.ndarray) -> np.ndarray:
        return np.multiply(rows, 255, dtype=np.uint8)

    return _box_stripes(as_row_image(layer), size, stripe_rows, times_255) > 0


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """The source index PIL's NEAREST resize takes for each of ``out_size`` outputs along one
    axis, asked of PIL itself (a line of indices resized), so it is PIL's rounding whatever its version."""
    line = Image.fromarray(np.arange(in_size, dtype=np.int32).reshape(1, in_size))
    return np.asarray(line.resize((out_size, 1), Image.Resampling.NEAREST)).reshape(-1).astype(np.int64)


def resize_nearest(image: RowImage | np.ndarray, size: tuple[int, int], *,
                   stripe_rows: int | None = None) -> np.ndarray:
    """``image`` (a RowImage or an array, any dtype) resized to ``size`` (width, height) by
    nearest neighbour: the pixels of PIL's NEAREST resize of the whole image (it picks one
    source row and column per output row and column), read a stripe at a time."""
    image = as_row_image(image)
    h, w = image.shape[:2]
    ow, oh = size
    src_y, src_x = _nearest_index(h, oh), _nearest_index(w, ow)
    out = np.empty((oh, ow) + image.shape[2:], image.dtype)
    step = stripe_rows or max(1, image.stripe_rows(_STRIPE_BYTES) * oh // max(h, 1))
    for r0 in range(0, oh, step):
        r1 = min(oh, r0 + step)
        s0, s1 = int(src_y[r0:r1].min()), int(src_y[r0:r1].max()) + 1
        out[r0:r1] = image.rows(s0, s1)[src_y[r0:r1] - s0][:, src_x]
    return out


def save_png_atomic(image: Image.Image, path: str | Path) -> Path:
    """``image`` as PNG, written atomically (:func:`wsiscan.layout.write_png_atomic`)."""
    return write_png_atomic(image, path)


def render_tissue_qc(
    thumbnail: RowImage | np.ndarray,
    mask: RowImage | np.ndarray,
    *,
    tile_boxes_thumb: np.ndarray,
    title: str,
    max_side_px: int = 2000,
    mask_mpp: float | None = None,
    ink: RowImage | np.ndarray | None = None,
    unscored: RowImage | np.ndarray | None = None,
) -> Image.Image:
    """Thumbnail with the tissue mask outlined (green) and the kept tiles drawn (blue);
    pen ink (``ink``, mask-sized bool) filled yellow and tissue in no scored tile
    (``unscored``) filled red, a scale bar when ``mask_mpp`` is given, the caption on top.

    ``tile_boxes_thumb`` is (N, 4) x0, y0, x1, y1 in mask (thumbnail) pixels.  The pictures
    may be RowImages or arrays; each is read a stripe at a time, so only the output-sized
    pictures are held whole.
    """
    h, w = mask.shape[:2]
    ow, oh, scale = fit_size(w, h, max_side_px)
    if tuple(thumbnail.shape[:2]) != (h, w):  # a sharper picture than the mask was given
        ow, oh = thumbnail.shape[1], thumbnail.shape[0]
        ow, oh, extra = fit_size(ow, oh, max_side_px)
        scale = ow / w
    arr = resize_box(thumbnail, (ow, oh))
    small_mask = resize_nearest(mask, (ow, oh))
    if small_mask.dtype != bool:
        small_mask = small_mask != 0
    # light tint outside tissue so the mask reads at a glance: v * 0.6 + tint * 0.4 per channel
    # (float32 times 0.6, plus the float64 tint, truncated), as a 256-entry table a channel
    v = np.arange(256, dtype=np.float32)
    for ch, tint in enumerate((255, 200, 200)):
        table = (v * 0.6 + np.float64(tint) * 0.4).astype(np.float32).astype(np.uint8)
        arr[..., ch] = np.where(small_mask, arr[..., ch], table[arr[..., ch]])
    # the kept tiles, drawn by PIL into a one-byte picture (the same pixels as drawn in colour)
    # and painted in: no RGB copies of the picture to draw on and back
    tiles = Image.new("L", (ow, oh), 0)
    draw = ImageDraw.Draw(tiles)
    boxes = np.asarray(tile_boxes_thumb, np.float64) * scale
    fill = boxes.shape[0] and (boxes[0, 2] - boxes[0, 0]) < 4
    for x0, y0, x1, y1 in boxes:
        if fill:
            draw.rectangle((x0, y0, x1, y1), outline=None, fill=255)
        else:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=255)
    arr[np.asarray(tiles) != 0] = QC_COLOURS["scored tiles"]
    del tiles, draw
    edge = small_mask & ~ndimage.binary_erosion(small_mask, iterations=max(1, round(ow / 800)))
    del small_mask
    levels = np.arange(256, dtype=np.uint8)
    for layer, name in ((ink, "pen ink"), (unscored, "unscored tissue")):
        if layer is None:
            continue
        # filled half-opaque, so what lies under it still shows: v * 0.35 + colour * 0.65 in
        # float64, truncated, as a 256-entry table a channel (no float copy of the picture);
        # an empty layer touches no pixel
        small = resize_box_any(layer, (ow, oh))
        for ch, colour in enumerate(np.array(QC_COLOURS[name])):
            table = (levels * 0.35 + colour * 0.65).astype(np.uint8)
            channel = arr[..., ch]
            channel[small] = table[channel[small]]
    arr[edge] = QC_COLOURS["mask outline"]
    img = Image.fromarray(arr)
    del arr
    if mask_mpp is not None:
        img = draw_scale_bar(img, um_per_px=mask_mpp * w / ow)
    return add_caption(img, title)
