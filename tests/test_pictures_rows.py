"""qc.png and overlay.png drawn from RowImages a stripe at a time: the same pixels as PIL's
resizes of whole arrays, whatever the stripes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsiscan import render
from wsiscan.heatmap import HeatmapFrame, render_overlay
from wsiscan.render import QC_COLOURS, render_tissue_qc, resize_box, resize_box_any, resize_nearest
from wsiscan.rowimage import RowImage

# (rows, cols), (width, height): integer and non-integer ratios, odd sizes, one row or column,
# enlarged, unchanged, and heights shrinking more than twice as much as widths (the case
# where Pillow 13 makes its pass down first)
SIZES = [((100, 100), (50, 50)), ((6250 // 25, 6250 // 25), (80, 80)), ((97, 131), (31, 42)),
         ((131, 97), (42, 31)), ((101, 103), (37, 29)), ((1, 57), (13, 1)), ((57, 1), (1, 13)),
         ((1, 1), (1, 1)), ((1, 40), (7, 1)), ((40, 1), (1, 7)), ((33, 47), (47, 33)), ((20, 30), (61, 45)),
         ((167, 53), (28, 23)), ((250, 6), (1, 121)), ((64, 121), (104, 18)), ((73, 73), (73, 10)),
         ((73, 73), (10, 73)), ((88, 64), (88, 64)), ((500, 37), (37, 499)), ((29, 300), (299, 3))]


def _stripe_options(image: np.ndarray) -> list[tuple[RowImage, int | None]]:
    """The image in memory (one stripe) and in a file, read 1, 2 or 7 output rows at a time."""
    options: list[tuple[RowImage, int | None]] = [(RowImage.wrap(image), None)]
    for stripe_rows in (1, 2, 7):
        options.append((RowImage.from_array(image, ram_limit_bytes=0), stripe_rows))
    return options


@pytest.mark.parametrize("shape, size", SIZES)
@pytest.mark.parametrize("channels", [(), (3,)], ids=["grey", "rgb"])
def test_resize_box_is_pils_whole_image_box_resize(shape, size, channels):
    image = np.random.default_rng(sum(shape) + sum(size)).integers(0, 256, shape + channels, dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    np.testing.assert_array_equal(resize_box(image, size), expected)
    for rows, stripe_rows in _stripe_options(image):
        got = resize_box(rows, size, stripe_rows=stripe_rows)
        assert got.shape == expected.shape and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_resize_box_pass_order_matters_and_is_pils():
    """The two pass orders really give different pixels on these pictures (so the order is
    tested), and the stripes follow the one this Pillow takes."""
    image = np.random.default_rng(0).integers(0, 256, (167, 53), np.uint8)
    first, count, weight = render._box_rows(167, 23)
    across_first = render._box_down(render._box_across(image, 28), first, count, weight)
    down_first = render._box_across(render._box_down(image, first, count, weight), 28)
    assert not np.array_equal(across_first, down_first)
    expected = np.asarray(Image.fromarray(image).resize((28, 23), Image.Resampling.BOX))
    np.testing.assert_array_equal(resize_box(RowImage.from_array(image, ram_limit_bytes=0), (28, 23),
                                             stripe_rows=3), expected)


@pytest.mark.parametrize("shape, size", SIZES)
def test_resize_nearest_is_pils_whole_image_nearest_resize(shape, size):
    rng = np.random.default_rng(sum(shape) * 7 + sum(size))
    mask = rng.random(shape) < 0.4
    expected = np.asarray(Image.fromarray(mask.view(np.uint8)).resize(size, Image.Resampling.NEAREST)) > 0
    np.testing.assert_array_equal(resize_nearest(mask, size), expected)
    for rows, stripe_rows in _stripe_options(mask):
        np.testing.assert_array_equal(resize_nearest(rows, size, stripe_rows=stripe_rows), expected)
    labels = rng.integers(0, 60000, shape).astype(np.uint16)  # any dtype, not only masks
    expected_labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    np.testing.assert_array_equal(resize_nearest(RowImage.from_array(labels, ram_limit_bytes=0), size,
                                                 stripe_rows=2), expected_labels)


@pytest.mark.parametrize("shape, size", SIZES)
@pytest.mark.parametrize("kind", ["sparse", "dense", "empty", "full", "one pixel", "band"])
def test_resize_box_any_is_where_pils_box_resize_of_the_layer_is_nonzero(shape, size, kind):
    rng = np.random.default_rng(sum(shape) * 3 + sum(size))
    layer = {"sparse": rng.random(shape) < 0.02, "dense": rng.random(shape) < 0.5,
             "empty": np.zeros(shape, bool), "full": np.ones(shape, bool), "one pixel": np.zeros(shape, bool),
             "band": np.zeros(shape, bool)}[kind]
    if kind == "one pixel":
        layer[shape[0] // 2, shape[1] - 1] = True
    if kind == "band":  # rows of a stripe boundary only, so most stripes are empty and skipped
        layer[shape[0] // 3: shape[0] // 3 + 2] = True
    expected = np.asarray(Image.fromarray(np.multiply(layer, 255, dtype=np.uint8)).resize(
        size, Image.Resampling.BOX)) > 0
    for rows, stripe_rows in _stripe_options(layer):
        np.testing.assert_array_equal(resize_box_any(rows, size, stripe_rows=stripe_rows), expected)


def _qc_whole_arrays(thumbnail, mask, *, tile_boxes_thumb, title, max_side_px, mask_mpp, ink, unscored):
    """qc.png drawn the straightforward way: PIL resizes of the whole arrays, float blends."""
    h, w = mask.shape
    ow, oh, scale = render.fit_size(w, h, max_side_px)
    if thumbnail.shape[:2] != mask.shape:
        ow, oh, _ = render.fit_size(thumbnail.shape[1], thumbnail.shape[0], max_side_px)
        scale = ow / w
    arr = np.asarray(Image.fromarray(thumbnail).resize((ow, oh), Image.Resampling.BOX)).copy()
    small_mask = np.asarray(Image.fromarray(mask.view(np.uint8)).resize((ow, oh), Image.Resampling.NEAREST)) > 0
    for ch, tint in enumerate((255, 200, 200)):
        tinted = (arr[..., ch].astype(np.float32) * 0.6 + np.float64(tint) * 0.4).astype(np.float32).astype(np.uint8)
        arr[..., ch] = np.where(small_mask, arr[..., ch], tinted)
    img = Image.fromarray(arr)
    draw = render.ImageDraw.Draw(img)
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
        if layer is not None and layer.any():
            small = np.asarray(Image.fromarray(np.multiply(layer, 255, dtype=np.uint8)).resize(
                (ow, oh), Image.Resampling.BOX)) > 0
            out[small] = (out[small] * 0.35 + np.array(QC_COLOURS[name]) * 0.65).astype(np.uint8)
    out[edge] = QC_COLOURS["mask outline"]
    img = Image.fromarray(out)
    img = render.draw_scale_bar(img, um_per_px=mask_mpp * w / ow)
    return render.add_caption(img, title)


def _qc_inputs(rows: int, cols: int, *, overview_scale: int = 1, seed: int = 0):
    """A thumbnail (or a sharper overview), a mask with blobs, ink and unscored tissue in parts of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols]
    mask = ((yy - rows / 2) ** 2 / (rows / 3) ** 2 + (xx - cols / 2) ** 2 / (cols / 3) ** 2) < 1
    mask |= rng.random((rows, cols)) < 0.01
    ink = (np.abs(yy - xx) < 2) & ~mask
    unscored = mask & (xx > cols * 0.6)
    thumbnail = rng.integers(0, 256, (rows * overview_scale, cols * overview_scale, 3), dtype=np.uint8)
    boxes = np.array([[x, y, x + 7.5, y + 7.5] for y in range(0, rows - 8, 9) for x in range(0, cols - 8, 11)],
                     np.float64)
    return thumbnail, mask, ink, unscored, boxes


@pytest.mark.parametrize("rows, cols, max_side_px, overview_scale", [
    (203, 157, 64, 1),  # non-integer ratio, odd sizes
    (150, 300, 97, 1),
    (120, 90, 500, 1),  # not shrunk
    (40, 31, 77, 3),  # a sharper overview than the mask (a small slide)
    (641, 47, 200, 1),  # the height shrinks more than twice as much as the width
])
def test_qc_from_row_images_equals_qc_from_whole_arrays(rows, cols, max_side_px, overview_scale, monkeypatch):
    thumbnail, mask, ink, unscored, boxes = _qc_inputs(rows, cols, overview_scale=overview_scale)
    kwargs = dict(tile_boxes_thumb=boxes, title="slide: caption", max_side_px=max_side_px, mask_mpp=4.0)
    expected = np.asarray(_qc_whole_arrays(thumbnail, mask, ink=ink, unscored=unscored, **kwargs))
    from_arrays = np.asarray(render_tissue_qc(thumbnail, mask, ink=ink, unscored=unscored, **kwargs))
    np.testing.assert_array_equal(from_arrays, expected)
    # in files, and in stripes of 3 rows (so every stripe boundary crosses the blobs and layers)
    monkeypatch.setattr(RowImage, "stripe_rows", lambda self, stripe_bytes=0: 3)
    images = [RowImage.from_array(a, ram_limit_bytes=0) for a in (thumbnail, mask, ink, unscored)]
    from_rows = np.asarray(render_tissue_qc(images[0], images[1], ink=images[2], unscored=images[3], **kwargs))
    np.testing.assert_array_equal(from_rows, expected)
    assert (from_rows == QC_COLOURS["mask outline"]).all(axis=-1).any()  # the layers and outline are there
    for image in images:
        image.close()


def test_qc_with_empty_and_absent_layers(monkeypatch):
    thumbnail, mask, ink, unscored, boxes = _qc_inputs(91, 87, seed=3)
    kwargs = dict(tile_boxes_thumb=boxes[:0], title="t", max_side_px=40, mask_mpp=2.0)
    expected = np.asarray(_qc_whole_arrays(thumbnail, mask, ink=None, unscored=np.zeros_like(mask), **kwargs))
    monkeypatch.setattr(RowImage, "stripe_rows", lambda self, stripe_bytes=0: 5)
    got = render_tissue_qc(RowImage.from_array(thumbnail, ram_limit_bytes=0), RowImage.from_array(mask, ram_limit_bytes=0),
                           ink=None, unscored=RowImage((91, 87), bool, ram_limit_bytes=0), **kwargs)
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("shape", [(300, 300), (413, 229)])
def test_overlay_from_a_row_image_is_the_overlay_from_the_array(shape, tmp_path, monkeypatch):
    """Byte-equal PNGs, and the picture under the heatmap is PIL's whole-image BOX resize."""
    rng = np.random.default_rng(1)
    thumbnail = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    cells = rng.random((shape[0] // 10, shape[1] // 10)).astype(np.float32)
    cells[rng.random(cells.shape) < 0.3] = np.nan
    frame = HeatmapFrame(stride_px=32, tile_size_px=96, px_mpp=0.972, l0_per_px=2.0)
    kwargs = dict(thumb_mpp=0.972 * 3, threshold=0.5, title="t", max_side_px=97)
    bases = []
    real_resize_box = render.resize_box

    def spy(image, size, **kw):
        bases.append(real_resize_box(image, size, **kw))
        return bases[-1]

    monkeypatch.setattr(render, "resize_box", spy)
    render_overlay(thumbnail, cells, frame, path=tmp_path / "a.png", **kwargs)
    monkeypatch.setattr(RowImage, "stripe_rows", lambda self, stripe_bytes=0: 4)
    render_overlay(RowImage.from_array(thumbnail, ram_limit_bytes=0), cells, frame, path=tmp_path / "r.png", **kwargs)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "r.png").read_bytes()
    size = bases[0].shape[1], bases[0].shape[0]
    expected = np.asarray(Image.fromarray(thumbnail).resize(size, Image.Resampling.BOX))
    for base in bases:
        np.testing.assert_array_equal(base, expected)
