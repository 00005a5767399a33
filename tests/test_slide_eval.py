"""wsiscan evaluate-slides on generated results whose heatmaps and annotations are known.

Every expected figure below is worked out by hand in the comments (independent of the
code under test): slide-level AUC, the Camelyon16 FROC points and score, Dice and IoU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run

from wsiscan.store import create_tile_store

CELL_UM = 96.0  # stride 96 px at 1.0 um/px: cell c spans [96 c, 96 (c + 1)) um
L0_PER_PX = 4  # level 0 at 0.25 um/px
N = 40  # 40 x 40 cells


def _l0(um: float) -> float:
    return um * L0_PER_PX


def _centre_um(cell: int) -> float:
    return (cell + 0.5) * CELL_UM


def _square_l0(cx_um: float, cy_um: float, side_um: float) -> list[tuple[float, float]]:
    h = side_um / 2
    return [(_l0(cx_um - h), _l0(cy_um - h)), (_l0(cx_um + h), _l0(cy_um - h)), (_l0(cx_um + h), _l0(cy_um + h)),
            (_l0(cx_um - h), _l0(cy_um + h))]


def _box_l0(x0_um, y0_um, x1_um, y1_um):
    return [(_l0(x0_um), _l0(y0_um)), (_l0(x1_um), _l0(y0_um)), (_l0(x1_um), _l0(y1_um)), (_l0(x0_um), _l0(y1_um))]


def write_result(out: Path, slide_id: str, cells: np.ndarray, *, chunk: int = 8) -> Path:
    """OUT/<slide_id>/ with a tile store whose heatmap level 0 is ``cells`` and a summary.json."""
    d = out / slide_id
    d.mkdir(parents=True)
    rows, cols = cells.shape
    store = create_tile_store(
        d / "store.zarr", meta={"mask_mpp": 4.0, "status": "complete"}, height_px=rows * 96, width_px=cols * 96,
        supertile_px=768, compression_level=1, thumbnail=np.full((8, 8, 3), 200, np.uint8),
        tissue_mask=np.ones((8, 8), np.uint8))
    store.create_heatmap(shape=cells.shape, chunk=chunk, meta={
        "stride_px": 96, "tile_size_px": 96, "px_mpp": 1.0, "l0_per_px": float(L0_PER_PX), "status": "complete",
        "models": []})
    store.heatmap_level(0)[...] = cells.astype(np.float32)
    (d / "summary.json").write_text(json.dumps({"slide_id": slide_id, "regions": {"threshold": 0.5}}))
    return d


def asap_xml(groups: list[tuple[str, list[tuple[float, float]]]]) -> str:
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "<Annotations>"]
    for i, (group, pts) in enumerate(groups):
        parts.append(f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">')
        parts.append("<Coordinates>")
        parts += [f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(pts)]
        parts.append("</Coordinates></Annotation>")
    parts += ["</Annotations>", "<AnnotationGroups />", "</ASAP_Annotations>"]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four slides: T1, T2 tumour; N1, N2 normal.  Heatmaps are 0 on tissue (row 0 is NaN,
    no tissue) with single-cell peaks three or more cells apart (the detection radius,
    200 um, is 2 cells), so each peak >= 0.1 is exactly one detection."""
    root = tmp_path_factory.mktemp("slide-eval")
    out, ann = root / "out", root / "annotations"
    ann.mkdir()

    def base():
        c = np.zeros((N, N), np.float32)
        c[0, :] = np.nan
        return c

    # T1: lesion A = cells rows/cols 5..9 ([480, 960) um), minus an exclusion (_2) over cell
    # (5, 5)'s centre; lesion B = a 300 um square centred on cell (7, 25) (cells 24..26 x 6..8
    # have their centres inside: 9 cells); an ITC: an 8 um square centred on cell (25, 7).
    t1 = base()
    t1[7, 7] = 0.875  # hits A (binary fractions: exact in float32)
    t1[7, 25] = 0.25  # hits B
    t1[25, 7] = 0.8125  # inside the ITC: neither a hit nor a false positive
    t1[30, 30] = 0.75  # false positive
    write_result(out, "T1", t1)
    (ann / "T1.xml").write_text(asap_xml([
        ("_0", _box_l0(480, 480, 960, 960)),
        ("_2", _square_l0(_centre_um(5), _centre_um(5), 40)),
        ("_1", _square_l0(_centre_um(25), _centre_um(7), 300)),
        ("_0", _square_l0(_centre_um(7), _centre_um(25), 8)),
    ]))
    # T2: lesion C = a 300 um square centred on cell (10, 10): 9 cells, missed; a false
    # positive 0.625 at (30, 5) with a 0.5 neighbour (not a local maximum, but >= 0.5 for Dice).
    t2 = base()
    t2[30, 5] = 0.625
    t2[30, 6] = 0.5
    write_result(out, "T2", t2)
    (ann / "T2.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in
                                                           _square_l0(_centre_um(10), _centre_um(10), 300)]
                                                          + [list(_square_l0(_centre_um(10), _centre_um(10), 300)[0])]]}},
    ]}))
    n1 = base()
    n1[20, 20] = 0.75
    n1[3, 35] = 0.375
    write_result(out, "N1", n1)
    n2 = base()
    n2[12, 12] = 0.0625  # below the 0.1 detection floor
    write_result(out, "N2", n2)
    labels = root / "reference.csv"
    labels.write_text("T1,Tumor,Macro\nT2,Tumor,Micro\nN1,Normal\nN2,Normal\n")
    return {"out": out, "ann": ann, "labels": labels, "root": root}


def test_figures_match_hand_computation(cohort):
    eval_dir = cohort["root"] / "eval"
    r = run("evaluate-slides", cohort["out"], "--annotations", cohort["ann"], "--labels", cohort["labels"],
            "-o", eval_dir, "--threshold", "0.5", "--top-k", "2")
    assert r.exit_code == 0, r.output
    m = json.loads((eval_dir / "metrics.json").read_text())
    assert (m["n_slides"], m["n_tumour_slides"], m["n_normal_slides"]) == (4, 2, 2)

    # slide level, max: tumour 0.875, 0.625 vs normal 0.75, 0.0625 -> pairs won 0.875>0.75,
    # 0.875>0.0625, 0.625>0.0625; lost 0.625<0.75 -> 3/4
    assert m["slide_level"]["auc_max_probability"] == pytest.approx(0.75)
    # top-2 means: T1 (0.875+0.8125)/2 = 0.84375, T2 (0.625+0.5)/2 = 0.5625; N1 (0.75+0.375)/2 =
    # 0.5625, N2 0.03125 -> 0.84375 beats both, 0.5625 ties N1 (1/2) and beats N2 -> 3.5/4
    assert m["slide_level"]["auc_top_k_mean_probability"] == pytest.approx(0.875)

    # FROC: lesions A, B, C (the ITC excluded) -> 3; FPs 0.75 (T1), 0.625 (T2), 0.75, 0.375 (N1);
    # lesion scores A 0.875, B 0.25, C 0 (missed).  Thresholds (distinct values but the lowest, 0):
    #   0.25: FP 4 -> 1.0/slide, sens 2/3;  0.375: 4 -> 1.0, 1/3;  0.625: 3 -> 0.75, 1/3;
    #   0.75: 2 -> 0.5, 1/3;  0.875: 0 -> 0, 1/3;  then (0, 0).
    f = m["froc"]
    assert (f["n_lesions"], f["n_itc"], f["n_false_positives"], f["n_detections"]) == (3, 1, 4, 7)  # detections: T1 4, T2 1, N1 2, N2 0
    assert f["curve"]["fps_per_slide"] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.0, 0.0])
    assert f["curve"]["sensitivity"] == pytest.approx([2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 0.0])
    # at 1/4 and 1/2 FP per slide: 1/3; at 1 (the last point at 1.0 FP, 2/3) and beyond: 2/3
    assert [f["sensitivity_at_fps_per_slide"][k] for k in ("0.25", "0.5", "1", "2", "4", "8")] == pytest.approx(
        [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert f["score"] == pytest.approx((2 * (1 / 3) + 4 * (2 / 3)) / 6)

    # Dice/IoU at 0.5 over tissue cells: T1 truth = A's 25 cells - 1 excluded + B's 9 + the ITC's
    # cell = 34; predicted (7,7) in A, (25,7) in the ITC, (30,30) outside -> TP 2, FP 1, FN 32.
    # T2 truth 9, predicted (30,5), (30,6) outside -> TP 0, FP 2, FN 9.  N1: FP 1 (0.75).
    c = m["cell_level"]
    assert (c["tp_cells"], c["fp_cells"], c["fn_cells"]) == (2, 4, 41)
    assert c["dice"] == pytest.approx(4 / (4 + 4 + 41))
    assert c["iou"] == pytest.approx(2 / (2 + 4 + 41))
    assert c["mean_dice_tumour_slides"] == pytest.approx((4 / (4 + 1 + 32) + 0.0) / 2)

    with open(eval_dir / "slides.csv") as handle:
        rows = {r["slide_id"]: r for r in csv.DictReader(handle)}
    assert rows["T1"]["n_lesions"] == "2" and rows["T1"]["n_itc"] == "1" and rows["T1"]["lesions_detected"] == "2"
    assert rows["T2"]["lesions_detected"] == "0" and rows["T2"]["false_positives"] == "1"
    assert rows["N2"]["n_detections"] == "0"
    assert float(rows["T1"]["dice"]) == pytest.approx(4 / (4 + 1 + 32), abs=1e-6)  # 6 decimals in the CSV
    assert (eval_dir / "froc.png").stat().st_size > 1000 and (eval_dir / "roc.png").is_file()


def test_labels_default_to_having_a_tumour_annotation(cohort, tmp_path):
    eval_dir = tmp_path / "eval"
    r = run("evaluate-slides", cohort["out"], "--annotations", cohort["ann"], "-o", eval_dir, "--threshold", "0.5")
    assert r.exit_code == 0, r.output
    m = json.loads((eval_dir / "metrics.json").read_text())
    assert (m["n_tumour_slides"], m["n_normal_slides"]) == (2, 2)
    assert m["froc"]["n_lesions"] == 3


def test_chunk_size_does_not_change_detections(tmp_path):
    """A plateau and peaks on chunk edges: one detection per plateau, the same with any chunking."""
    from wsiscan.slide_eval.scan import open_heatmap, scan_heatmap

    cells = np.zeros((20, 20), np.float32)
    cells[7:9, 7:9] = 0.8  # a 2 x 2 plateau straddling the 8-cell chunk edge
    cells[15, 3] = 0.6
    cells[15, 5] = 0.5  # within 2 cells of 0.6: suppressed
    found = []
    for chunk in (8, 5, 20):
        d = write_result(tmp_path / f"c{chunk}", "S", cells, chunk=chunk)
        store, frame = open_heatmap(d)
        scan = scan_heatmap(store, frame, threshold=0.5, top_k=3, detection_radius_um=200, min_detection_probability=0.1)
        found.append(sorted((round(x.probability, 3), x.x_l0, x.y_l0) for x in scan.detections))
        assert scan.top_k_mean_probability == pytest.approx(0.8)
    assert found[0] == found[1] == found[2]
    # the plateau's first cell in raster order, (7, 7): centre (7.5 x 96 um) x 4 l0 px/um
    assert found[0] == [(0.6, 3.5 * 96 * 4, 15.5 * 96 * 4), (0.8, 7.5 * 96 * 4, 7.5 * 96 * 4)]


def test_itc_and_lesion_sizes_follow_the_protocol():
    from shapely.geometry import box

    from wsiscan.slide_eval.froc import evaluation_mask

    # 0.25 um/px -> mask pixels of 32 level-0 px (8 um); dilation 37.5 um; ITC: major axis < 122.2 um
    # (major axis of a square of side s: 4 sqrt(s^2 / 12) = 1.15 s)
    small = evaluation_mask(box(0, 0, 20 * 4, 20 * 4), l0_mpp=0.25)  # 20 um -> ~95 um dilated, axis ~110: ITC
    large = evaluation_mask(box(0, 0, 80 * 4, 80 * 4), l0_mpp=0.25)  # 80 um -> ~155 um, axis ~170: a lesion
    assert small.downsample == 32 and small.n_labels == 1 and small.itc == {1} and small.n_lesions == 0
    assert large.n_labels == 1 and not large.itc and large.n_lesions == 1
    # two lesions 60 um apart merge (each grows by 37.5 um); 100 um apart stay two
    merged = evaluation_mask(box(0, 0, 800, 800).union(box(800 + 240, 0, 1840, 800)), l0_mpp=0.25)
    apart = evaluation_mask(box(0, 0, 800, 800).union(box(800 + 400, 0, 2000, 800)), l0_mpp=0.25)
    assert merged.n_labels == 1 and apart.n_labels == 2


def test_major_axis_lengths_by_hand_and_as_scikit_image_measures_them():
    """The ITC test's major axis: 4 sqrt(larger eigenvalue of the pixel coordinates' covariance)."""
    from wsiscan.slide_eval.froc import major_axis_lengths

    labels = np.zeros((30, 40), np.int32)
    labels[2, 3:16] = 1  # a row of 13 px: variance (13^2 - 1) / 12 = 14 along it, 0 across
    labels[10:20, 20:30] = 2  # a 10 x 10 square: (10^2 - 1) / 12 both ways, no covariance
    for i in range(7):  # a diagonal of 7 px: variance (7^2 - 1) / 12 = 4 both ways, covariance 4
        labels[22 + i, 2 + i] = 3
    labels[5, 35] = 4  # one pixel: no extent
    expected = [4 * np.sqrt(14), 4 * np.sqrt(99 / 12), 4 * np.sqrt(8), 0.0]
    np.testing.assert_allclose(major_axis_lengths(labels, 4), expected, rtol=1e-12, atol=1e-12)
    try:  # the reference implementation, where it is installed (not a wsiscan dependency)
        from skimage.measure import regionprops
    except ImportError:
        return
    np.testing.assert_allclose(major_axis_lengths(labels, 4), [p.axis_major_length for p in regionprops(labels)],
                               rtol=1e-9, atol=1e-9)


def _assert_nothing_written(eval_dir: Path):
    assert not eval_dir.exists()
    assert not list(eval_dir.parent.glob(f".{eval_dir.name}.*"))


def test_cli_errors(cohort, tmp_path):
    eval_dir = tmp_path / "eval"
    r = run("evaluate-slides", cohort["out"], "--annotations", tmp_path / "nope", "-o", eval_dir)
    assert_one_line_error(r, "nope", "annotations folder not found")
    _assert_nothing_written(eval_dir)

    r = run("evaluate-slides", tmp_path / "no-results", "--annotations", cohort["ann"], "-o", eval_dir)
    assert_one_line_error(r, "no-results", "not a folder")
    _assert_nothing_written(eval_dir)

    # a tumour slide in the CSV without an annotation file
    ann = tmp_path / "ann-partial"
    ann.mkdir()
    (ann / "T1.xml").write_text((cohort["ann"] / "T1.xml").read_text())
    r = run("evaluate-slides", cohort["out"], "--annotations", ann, "--labels", cohort["labels"], "-o", eval_dir)
    assert_one_line_error(r, "T2", "no tumour annotation")
    _assert_nothing_written(eval_dir)

    # a broken XML
    bad = tmp_path / "ann-bad"
    bad.mkdir()
    (bad / "T1.xml").write_text("<ASAP_Annotations><Annotations>")
    r = run("evaluate-slides", cohort["out"], "--annotations", bad, "-o", eval_dir)
    assert_one_line_error(r, "T1.xml", "not well-formed XML")
    _assert_nothing_written(eval_dir)

    # a labels CSV whose label is neither
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label\nT1,maybe\n")
    r = run("evaluate-slides", cohort["out"], "--annotations", cohort["ann"], "--labels", labels, "-o", eval_dir)
    assert_one_line_error(r, "labels.csv", "line 2", "maybe")
    _assert_nothing_written(eval_dir)

    # an existing output folder is refused and left as it was
    eval_dir.mkdir()
    (eval_dir / "keep.txt").write_text("old")
    r = run("evaluate-slides", cohort["out"], "--annotations", cohort["ann"], "-o", eval_dir)
    assert_one_line_error(r, "already exists", "--overwrite")
    assert (eval_dir / "keep.txt").read_text() == "old"
    r = run("evaluate-slides", cohort["out"], "--annotations", cohort["ann"], "-o", eval_dir, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (eval_dir / "keep.txt").exists() and (eval_dir / "metrics.json").is_file()

    r = run("evaluate-slides", cohort["out"], "--annotations", cohort["ann"], "--threshold", "2")
    assert r.exit_code == 2


def test_a_predict_result_against_its_own_regions(synthetic_slide, tiny_ckpt, tmp_path):
    """End to end on a store `wsiscan predict` wrote: annotated with its own tumor.geojson, the
    cells at the threshold are the regions' cells (TP) plus those of regions too small for the
    GeoJSON (FP), and nothing is missed, so Dice = 2 R / (2 R + (A - R)) with A the cells at or
    above the threshold (summary.json) and R the regions' cells (their area / the cell area)."""
    out = tmp_path / "out"
    r = run("predict", synthetic_slide.path, "-o", out, "--model", tiny_ckpt, "-q", "--threshold", "0.5")
    assert r.exit_code == 0, r.output
    slide_dir = next(d for d in out.iterdir() if d.is_dir())
    ann = tmp_path / "ann"
    ann.mkdir()
    geojson = json.loads((slide_dir / "tumor.geojson").read_text())
    assert geojson["features"], "the tiny model found no region on the synthetic slide"
    (ann / f"{slide_dir.name}.geojson").write_text(json.dumps(geojson))
    r = run("evaluate-slides", out, "--annotations", ann, "-o", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    summary = json.loads((slide_dir / "summary.json").read_text())
    cell_mm2 = summary["heatmap"]["cell_um"] ** 2 / 1e6
    above = summary["scores"]["n_cells_above_threshold"]
    in_regions = round(sum(f["properties"]["area_mm2"] for f in geojson["features"]) / cell_mm2)
    c = m["cell_level"]
    assert (c["tp_cells"], c["fp_cells"], c["fn_cells"]) == (in_regions, above - in_regions, 0)
    assert c["dice"] == pytest.approx(2 * in_regions / (2 * in_regions + above - in_regions))
    assert m["slide_level"]["auc_max_probability"] is None  # one slide, one class
    assert m["froc"]["n_lesions"] + m["froc"]["n_itc"] >= 1
    with open(tmp_path / "eval" / "slides.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["max_probability"]) == pytest.approx(summary["scores"]["max_probability"])
