"""Pen ink on real tissue: drawn strokes of blue, green, red and black marker over tissue and
over glass (CMU-1-Small-Region read through wsiscan.slide), and a thumbnail ringed with ink.

Targets (issue 12): >= 95 % of ink pixels excluded from the mask and >= 95 % of the tissue
pixels kept; the clean slide keeps its mask exactly (the ink filter finds nothing on it).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from wsiscan.config import load_config
from wsiscan.render import resize_box
from wsiscan.tissue import detect_tissue

pytestmark = pytest.mark.realdata

MASK_MPP = 4.0
DRAW_MPP = 1.0  # strokes are drawn at 1 um/px, then box-averaged to the mask's 4 um/px (anti-aliased rims)
GLASS = (243, 243, 243)
# marker colours as they scan (multiplied onto what lies under them: ink is translucent)
INKS = {"blue": (35, 70, 175), "green": (40, 150, 80), "red": (205, 30, 45), "black": (28, 28, 32)}


def _config(ink_filter: bool = True):
    cfg = load_config().tissue
    return type(cfg)(**{**cfg.__dict__, "ink_filter": ink_filter})


@pytest.fixture(scope="module")
def cmu_1um(shared_slides) -> np.ndarray:
    from wsiscan.slide import open_slide

    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as slide:
        return slide.read_thumbnail(mpp=DRAW_MPP)


def _draw(rgb: np.ndarray, strokes: list[tuple[str, list[tuple[float, float]], int]]) -> tuple[np.ndarray, np.ndarray]:
    """Multiply each stroke's ink onto ``rgb``; (inked image, ink coverage in [0, 1]) at the same size."""
    h, w = rgb.shape[:2]
    out = rgb.astype(np.float32)
    cover = np.zeros((h, w), np.float32)
    for colour, points, width_px in strokes:
        layer = Image.new("L", (w, h), 0)
        ImageDraw.Draw(layer).line(points, fill=255, width=width_px, joint="curve")
        a = np.asarray(layer, np.float32)[..., None] / 255.0
        out = out * (1 - a) + out * (np.array(INKS[colour], np.float32) / 255.0) * a
        cover = np.maximum(cover, a[..., 0])
    return out.clip(0, 255).astype(np.uint8), cover


def _to_mask_res(rgb: np.ndarray, cover: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thumbnail, ink pixels (mostly covered), any ink) at MASK_MPP."""
    f = int(MASK_MPP / DRAW_MPP)
    h, w = (rgb.shape[0] // f) * f, (rgb.shape[1] // f) * f
    thumb = resize_box(np.ascontiguousarray(rgb[:h, :w]), (w // f, h // f))
    c = cover[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return thumb, c > 0.5, c > 0


def _scores(thumb, ink_truth, any_ink, clean_mask):
    tissue = detect_tissue(thumb, mask_mpp=MASK_MPP, config=_config())
    mask = tissue.mask.to_array()
    ink_excluded = 1 - (mask & ink_truth).sum() / ink_truth.sum()
    truth = clean_mask & ~any_ink
    tissue_kept = (mask & truth).sum() / truth.sum()
    return tissue, ink_excluded, tissue_kept


def _crop_clean(cmu_1um):
    f = int(MASK_MPP / DRAW_MPP)
    h, w = (cmu_1um.shape[0] // f) * f, (cmu_1um.shape[1] // f) * f
    thumb = resize_box(np.ascontiguousarray(cmu_1um[:h, :w]), (w // f, h // f))
    return detect_tissue(thumb, mask_mpp=MASK_MPP, config=_config(False)).mask.to_array()


@pytest.mark.parametrize("colour", list(INKS))
def test_strokes_over_tissue_and_glass(cmu_1um, colour):
    h, w = cmu_1um.shape[:2]
    # one stroke across the tissue (its middle), one on the glass at the right, one wavy line
    strokes = [
        (colour, [(0.15 * w, 0.30 * h), (0.55 * w, 0.55 * h), (0.35 * w, 0.85 * h)], 60),
        (colour, [(0.80 * w, 0.05 * h), (0.95 * w, 0.45 * h)], 80),
        (colour, [(0.05 * w + 40 * k, 0.12 * h + (30 if k % 2 else 0)) for k in range(20)], 40),
    ]
    inked, cover = _draw(cmu_1um, strokes)
    thumb, ink_truth, any_ink = _to_mask_res(inked, cover)
    clean = _crop_clean(cmu_1um)
    assert (clean & ink_truth).sum() > 500, "the fixture must put ink over tissue"
    tissue, ink_excluded, tissue_kept = _scores(thumb, ink_truth, any_ink, clean)
    assert ink_excluded >= 0.95, f"{colour}: only {ink_excluded:.1%} of ink pixels excluded"
    assert tissue_kept >= 0.95, f"{colour}: only {tissue_kept:.1%} of tissue pixels kept"
    assert tissue.ink_area_um2 >= ink_truth.sum() * MASK_MPP**2 * 0.95


def test_thumbnail_ringed_with_ink(cmu_1um):
    """CMU tissue in the middle of a glass slide ringed with blue and green pen: without the
    filter Otsu's threshold falls between ink and tissue; with it, ink cannot move it."""
    h, w = cmu_1um.shape[:2]
    big = np.empty((h + 800, w + 1600, 3), np.uint8)
    big[...] = GLASS
    big[400 : 400 + h, 800 : 800 + w] = cmu_1um
    H, W = big.shape[:2]
    ring = [(W / 2 + 0.47 * W * np.cos(t), H / 2 + 0.47 * H * np.sin(t)) for t in np.linspace(0, np.pi, 60)]
    ring2 = [(W / 2 + 0.47 * W * np.cos(t), H / 2 + 0.47 * H * np.sin(t)) for t in np.linspace(np.pi, 2 * np.pi, 60)]
    inked, cover = _draw(big, [("green", ring, 120), ("blue", ring2, 120)])
    thumb, ink_truth, any_ink = _to_mask_res(inked, cover)
    clean_big = np.zeros(thumb.shape[:2], bool)
    f = int(MASK_MPP / DRAW_MPP)
    clean = _crop_clean(cmu_1um)
    clean_big[400 // f : 400 // f + clean.shape[0], 800 // f : 800 // f + clean.shape[1]] = clean
    unfiltered = detect_tissue(thumb, mask_mpp=MASK_MPP, config=_config(False))
    tissue, ink_excluded, tissue_kept = _scores(thumb, ink_truth, any_ink, clean_big)
    assert ink_excluded >= 0.95 and tissue_kept >= 0.95, (ink_excluded, tissue_kept)
    # nothing along the ring is taken for tissue (ink's saturation must not bleed onto the glass)
    from scipy import ndimage

    mask = tissue.mask.to_array()
    far = mask & ~ndimage.binary_dilation(clean_big, iterations=5)
    assert far.sum() <= 0.005 * mask.sum(), far.sum()
    # the threshold is the clean tissue's, not one between ink and tissue
    clean_thr = detect_tissue(resize_box(np.ascontiguousarray(big[: (H // f) * f, : (W // f) * f]),
                                         (W // f, H // f)), mask_mpp=MASK_MPP, config=_config()).threshold
    assert abs(tissue.threshold - clean_thr) < 0.02, (tissue.threshold, clean_thr, unfiltered.threshold)


@pytest.mark.parametrize("name,slide_mpp", [("CMU-1-Small-Region.svs", None), ("TCGA-CR-7395-01A-01-TS1.svs", 0.25)])
def test_clean_slides_keep_their_mask(shared_slides, name, slide_mpp):
    """No ink on the clean real slides: the mask is the one without the filter (within 1 %;
    measured: identical), and its area is today's on main (CMU 0.614 mm2, TCGA 0.630 mm2)."""
    from wsiscan.slide import open_slide

    with open_slide(shared_slides / name, slide_mpp=slide_mpp) as slide:
        thumb = slide.read_thumbnail(mpp=MASK_MPP)
    on = detect_tissue(thumb, mask_mpp=MASK_MPP, config=_config())
    off = detect_tissue(thumb, mask_mpp=MASK_MPP, config=_config(False))
    assert abs(on.tissue_area_um2 / off.tissue_area_um2 - 1) <= 0.01
    main_area_um2 = {"CMU-1-Small-Region.svs": 614128.0, "TCGA-CR-7395-01A-01-TS1.svs": 629776.0}[name]
    assert abs(on.tissue_area_um2 / main_area_um2 - 1) <= 0.01


def test_cli_tile_records_ink_and_paints_it_in_qc(cmu_1um, tmp_path):
    """Through `wsiscan tile`: a slide (1 um/px) with a blue stroke across tissue and a green one
    on glass; the ink area is recorded in the store, no tile is kept on the glass stroke, and
    qc.png paints the ink yellow."""
    import tifffile
    from cli_helpers import run
    from PIL import Image

    from wsiscan.store import open_tile_store

    h, w = cmu_1um.shape[:2]
    inked, cover = _draw(cmu_1um, [("blue", [(0.15 * w, 0.30 * h), (0.55 * w, 0.55 * h)], 60),
                                   ("green", [(0.85 * w, 0.05 * h), (0.95 * w, 0.45 * h)], 80)])
    path = tmp_path / "inked.tif"
    res = 1e4 / DRAW_MPP
    tifffile.imwrite(path, inked, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)
    r = run("tile", path, "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    store = open_tile_store(tmp_path / "out" / "inked" / "store.zarr", mode="r")
    ink_mm2 = store.meta["ink_area_mm2"]
    drawn_mm2 = (cover > 0.5).sum() * DRAW_MPP**2 / 1e6
    assert 0.9 * drawn_mm2 <= ink_mm2 <= 1.5 * drawn_mm2, (ink_mm2, drawn_mm2)
    # ink never adds a tile: every kept tile is one the clean slide keeps too
    clean = tmp_path / "clean.tif"
    tifffile.imwrite(clean, cmu_1um, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)
    assert run("tile", clean, "-o", tmp_path / "out", "-q").exit_code == 0
    clean_rc = {tuple(rc) for rc in open_tile_store(tmp_path / "out" / "clean" / "store.zarr", mode="r").grid(96).rc}
    inked_rc = {tuple(int(v) for v in rc) for rc in store.grid(96).rc}
    clean_rc = {tuple(int(v) for v in rc) for rc in clean_rc}
    # ink adds no tile on its own: the few extra ones are next to tissue tiles (glass enclosed by
    # tissue and a stroke is filled like any small hole, at most tissue.min_hole_area_um2 each)
    extra = inked_rc - clean_rc
    assert len(extra) <= 0.05 * len(clean_rc) and len(inked_rc) >= 0.9 * len(clean_rc)
    assert all(any((r + dr, c + dc) in clean_rc for dr in (-1, 0, 1) for dc in (-1, 0, 1)) for r, c in extra)
    qc = np.asarray(Image.open(tmp_path / "out" / "inked" / "qc.png").convert("RGB")).astype(int)
    yellow = (qc[..., 0] > 150) & (qc[..., 1] > 120) & (qc[..., 2] < 90)
    assert yellow.sum() > 2000
