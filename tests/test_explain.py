"""wsiscan explain and evaluate --positional on tiny models trained here (a few seconds of CPU).

* a CNN trained to say "tumour" when a dark square mark is anywhere in the patch: its
  Grad-CAM and integrated-gradients peaks fall on the mark, with and without TTA; the
  positional curve of this whole-patch reader is flat;
* a pixel logistic regression trained to say "tumour" only when the mark is in the
  centre: its positional curve peaks at the centre, and replacing the centre (not the
  context) costs it its AUC.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run

from wsiscan.explain.attribution import dihedral, explain_patches, undo_dihedral
from wsiscan.explain.positional import positional_check
from wsiscan.models import ModelSpec, PixelLogReg, SmallCNN, build_model, save_checkpoint, tiny_expected_proba

SIZE = 96
MARK = 20  # px side of the dark mark
CENTRE = (SIZE // 3, SIZE - SIZE // 3)  # PCam's centre 32 x 32 px: [32, 64)


def background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Light pink noise, (n, 96, 96, 3) uint8."""
    base = np.array([225, 190, 215], np.float32)
    x = base + rng.normal(0, 18, (n, SIZE, SIZE, 3)).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def draw_mark(img: np.ndarray, x0: int, y0: int) -> None:
    img[y0 : y0 + MARK, x0 : x0 + MARK] = (60, 30, 90)


def marked_batch(rng: np.random.Generator, n: int, *, centre_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Half with a mark at a random place.  Label: any mark (whole patch), or a mark whose
    middle lies in the centre 32 x 32 px (centre only; marks elsewhere are then normal)."""
    x = background(rng, n)
    labels = np.zeros(n, np.int64)
    for i in range(n):
        if rng.random() < 0.5:
            if centre_only and rng.random() < 0.5:  # half of the marks inside the centre
                x0, y0 = rng.integers(CENTRE[0] - MARK // 2, CENTRE[1] - MARK // 2, size=2)
            else:
                x0, y0 = rng.integers(0, SIZE - MARK + 1, size=2)
            draw_mark(x[i], int(x0), int(y0))
            mid_x, mid_y = x0 + MARK // 2, y0 + MARK // 2
            labels[i] = 1 if not centre_only else int(CENTRE[0] <= mid_x < CENTRE[1] and CENTRE[0] <= mid_y < CENTRE[1])
    return x, labels


def train(model: torch.nn.Module, *, centre_only: bool, steps: int, lr: float, seed: int) -> torch.nn.Module:
    """Adam on fresh batches of 32; one torch thread (several thrash on a busy 2-core machine)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            x, y = marked_batch(rng, 32, centre_only=centre_only)
            logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def mark_model():
    """A small CNN (the smallcnn architecture, narrower) that finds the mark anywhere."""
    spec = ModelSpec(arch="smallcnn", name="mark-cnn")
    torch.manual_seed(0)  # the initial weights too: otherwise they depend on what earlier tests drew
    model = SmallCNN(2, widths=(8, 16, 16, 16))
    x, y = marked_batch(np.random.default_rng(99), 64, centre_only=False)
    # rounds of 100 steps until it reads the mark on a held-out batch: how many steps a seed needs
    # depends on the CPU's float arithmetic (seed 0's 200 straight steps learnt on the Intel Xeon
    # this suite was first run on, and did not on an AMD EPYC, where one round of this loop does)
    for round_ in range(6):
        model = train(model, centre_only=False, steps=100, lr=3e-3, seed=round_)
        accuracy = ((explain_patches([model], [spec], x, methods=("gradcam",)).probabilities >= 0.5) == y).mean()
        if accuracy >= 0.95:
            break
    assert accuracy >= 0.95, f"the mark model did not learn (accuracy {accuracy:.2f} after {round_ + 1} rounds)"
    return model, spec


@pytest.fixture(scope="module")
def centre_model():
    """A pixel logistic regression (logreg) that calls tumour only for a mark in the centre."""
    spec = ModelSpec(arch="logreg", name="centre-logreg")
    # seeded before the weights are made (otherwise they depend on what earlier tests drew); at
    # 200 steps one initialisation in four (seeds 0-3) had not learnt, at 400 all four had
    torch.manual_seed(1)
    model = train(PixelLogReg(2, SIZE), centre_only=True, steps=400, lr=2e-3, seed=1)
    return model, spec


def patch_with_mark(x0: int, y0: int, seed: int = 5) -> np.ndarray:
    img = background(np.random.default_rng(seed), 1)
    draw_mark(img[0], x0, y0)
    return img


@pytest.mark.parametrize("tta", [False, True])
def test_attribution_peaks_on_the_mark(mark_model, tta):
    model, spec = mark_model
    x0, y0 = 8, 62  # bottom-left, far from the centre
    a = explain_patches([model], [spec], patch_with_mark(x0, y0), tta=tta, ig_steps=16)
    assert a.probabilities[0] > 0.9
    # Grad-CAM reads a 12 x 12 map (8 px cells) whose strongest cells are the mark's edges: 12 px
    for method, tolerance_px in (("gradcam", 12), ("ig", 2)):
        m = a.maps[method][0]
        assert m.max() == pytest.approx(1.0)
        y, x = np.unravel_index(np.argmax(m), m.shape)
        assert x0 - tolerance_px <= x < x0 + MARK + tolerance_px and y0 - tolerance_px <= y < y0 + MARK + tolerance_px, \
            (method, x, y)
        # at least twice its share of the map's mass is near the mark (its 20 px box grown by
        # 12 px: 44 x 44 px, 21 % of the patch)
        near = m[max(y0 - 12, 0) : y0 + MARK + 12, max(x0 - 12, 0) : x0 + MARK + 12].sum()
        assert near / m.sum() > 0.42, (method, near / m.sum())


def test_dihedral_views_map_back_exactly():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    views = {tuple(dihedral(x, i).flatten().tolist()) for i in range(8)}
    assert len(views) == 8  # all 8 flips and rotations are different
    for i in range(8):
        assert torch.equal(undo_dihedral(dihedral(x, i), i), x)


def test_ensemble_is_the_mean_of_its_members(mark_model, centre_model):
    x = np.concatenate([patch_with_mark(40, 40), patch_with_mark(5, 5, seed=6)])
    models, specs = [mark_model[0], centre_model[0]], [mark_model[1], centre_model[1]]
    both = explain_patches(models, specs, x, ig_steps=8)
    alone = [explain_patches([m], [s], x, ig_steps=8) for m, s in zip(models, specs, strict=True)]
    np.testing.assert_allclose(both.probabilities, (alone[0].probabilities + alone[1].probabilities) / 2, atol=1e-6)
    for method in ("gradcam", "ig"):
        np.testing.assert_allclose(both.maps[method], (alone[0].maps[method] + alone[1].maps[method]) / 2, atol=1e-5)


def test_every_architecture_gives_maps():
    x = background(np.random.default_rng(3), 2)
    for arch in ("tiny", "logreg", "smallcnn", "resnet18"):
        spec = ModelSpec(arch=arch, name=arch)
        a = explain_patches([build_model(spec).eval()], [spec], x, methods=("gradcam",))
        m = a.maps["gradcam"]
        assert m.shape == (2, SIZE, SIZE) and np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 + 1e-6, arch
        assert ("Grad-CAM on" in a.notes["gradcam"]) == (arch in ("smallcnn", "resnet18")), a.notes
    # tiny reads only the mean of its centre third: its saliency is flat there and 0 elsewhere
    spec = ModelSpec(arch="tiny", name="tiny")
    m = explain_patches([build_model(spec)], [spec], x, methods=("gradcam",)).maps["gradcam"][0]
    inside = m[CENTRE[0] : CENTRE[1], CENTRE[0] : CENTRE[1]]
    assert inside.min() == pytest.approx(1.0) and m.sum() == pytest.approx(inside.sum())


def _positional_data(seed: int = 7, n: int = 24):
    rng = np.random.default_rng(seed)
    x = background(rng, 2 * n)
    labels = np.r_[np.ones(n), np.zeros(n)].astype(np.int64)
    c = SIZE // 2 - MARK // 2
    for i in range(n):
        draw_mark(x[i], c, c)  # tumour: the mark in the centre
    return x, labels


def test_positional_curve_peaks_at_the_centre_for_a_centre_reader(centre_model):
    model, spec = centre_model
    x, labels = _positional_data()
    r = positional_check([model], [spec], x, labels, step_px=16)
    curve = np.asarray(r["mean_probability"])
    assert r["offsets_px"] == [-32, -16, 0, 16, 32] and curve.shape == (5, 5)
    assert curve[2, 2] >= curve.max() - 1e-3  # the peak (it saturates near 1, so ties are allowed)
    corners = [curve[0, 0], curve[0, 4], curve[4, 0], curve[4, 4]]
    assert curve[2, 2] > 0.8 and max(corners) < 0.2, curve.round(2)
    # it reads the centre: the AUC falls to chance without it and stays without the context
    assert r["auc"] > 0.95 and r["auc_drop_centre_replaced"] > 0.35 and abs(r["auc_drop_context_replaced"]) < 0.05


def test_positional_curve_is_flat_for_a_whole_patch_reader(mark_model):
    model, spec = mark_model
    x, labels = _positional_data()
    r = positional_check([model], [spec], x, labels, step_px=16)
    curve = np.asarray(r["mean_probability"])
    assert curve.min() > 0.8 and curve.max() - curve.min() < 0.2, curve.round(2)


# -- the command line ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kaggle_folder(tmp_path_factory):
    from wsiscan.testing_pcam import write_kaggle_folder

    return write_kaggle_folder(tmp_path_factory.mktemp("kaggle"), n=12, seed=3)


@pytest.fixture(scope="module")
def mark_ckpt(tmp_path_factory, mark_model):
    """The mark model as a checkpoint of the real smallcnn width, for the CLI (weights random but shaped)."""
    spec = ModelSpec(arch="smallcnn", name="smallcnn-random")
    p = tmp_path_factory.mktemp("ckpt") / "smallcnn.pt"
    torch.manual_seed(0)
    save_checkpoint(p, build_model(spec), spec)
    return p


def _no_partials(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_explain_pcam_folder(kaggle_folder, tiny_ckpt, tmp_path):
    from wsiscan import pcam

    out = tmp_path / "ex"
    r = run("explain", kaggle_folder, "--model", tiny_ckpt, "-o", out, "--max-patches", "5", "--ig-steps", "4")
    assert r.exit_code == 0, r.output
    index = json.loads((out / "index.json").read_text())
    ds = pcam.open_split(kaggle_folder, "all")
    assert [p["id"] for p in index["patches"]] == ds.patch_ids[:5]
    assert [p["label"] for p in index["patches"]] == ds.labels[:5].tolist()
    for i, p in enumerate(index["patches"]):
        assert p["probability"] == pytest.approx(tiny_expected_proba(ds.read_batch([i])[0]), abs=1e-5)
        assert (out / p["panel"]).stat().st_size > 1000
        assert set(p["maps"]) == {"gradcam", "ig"}
    assert "saliency" in index["method_notes"]["gradcam"]


def test_explain_images_and_a_list(tmp_path, mark_ckpt):
    from PIL import Image

    files = []
    for i in range(2):
        f = tmp_path / f"p{i}.png"
        Image.fromarray(patch_with_mark(10 + 30 * i, 20, seed=i)[0]).save(f)
        files.append(f)
    (tmp_path / "list.txt").write_text("p1.png\n")
    out = tmp_path / "ex"
    r = run("explain", files[0], tmp_path / "list.txt", "--model", mark_ckpt, "--model", mark_ckpt, "-o", out,
            "--method", "gradcam", "--tta")
    assert r.exit_code == 0, r.output
    index = json.loads((out / "index.json").read_text())
    assert [p["id"] for p in index["patches"]] == ["p0", "p1"] and index["tta"] is True
    assert index["methods"] == ["gradcam"] and len(index["models"]) == 2


def test_explain_result_folder_top_patches_and_region(synthetic_slide, tiny_ckpt, tmp_path):
    r = run("predict", synthetic_slide.path, "-o", tmp_path / "out", "--model", tiny_ckpt, "-q", "--threshold", "0.5",
            "--keep-pixels")
    assert r.exit_code == 0, r.output
    slide_dir = next(d for d in (tmp_path / "out").iterdir() if d.is_dir())
    out = tmp_path / "ex"
    r = run("explain", slide_dir, "-o", out, "--top-k", "3", "--method", "gradcam")  # the result's own model
    assert r.exit_code == 0, r.output
    index = json.loads((out / "index.json").read_text())
    assert index["source"]["pixels"] == "store"
    probs = [p["probability"] for p in index["patches"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    for p in index["patches"]:  # the patch re-read from the store scores what the heatmap holds
        assert p["probability"] == pytest.approx(p["origin"]["heatmap_probability"], abs=1e-5)
    regions = json.loads((slide_dir / "tumor.geojson").read_text())["features"]
    if regions:
        r = run("explain", slide_dir, "-o", tmp_path / "ex-region", "--top-k", "2", "--region", "1",
                "--method", "gradcam", "--model", tiny_ckpt)
        assert r.exit_code == 0, r.output
    r = run("explain", tmp_path / "out", "-o", tmp_path / "ex-bad", "--model", tiny_ckpt)
    assert_one_line_error(r, "give one slide's folder", slide_dir.name)
    r = run("explain", slide_dir, "-o", tmp_path / "ex-bad", "--region", str(len(regions) + 1))
    assert_one_line_error(r, "tumor.geojson", f"--region {len(regions) + 1}")
    _no_partials(tmp_path / "ex-bad")


def test_explain_result_folder_without_kept_pixels_reads_the_slide(synthetic_slide, tiny_ckpt, tmp_path):
    """predict's default keeps no pixels: explain decodes the patches from the slide file, the very
    pixels predict scored; with the slide file gone too, one line says so."""
    import shutil

    slide = tmp_path / "moved" / synthetic_slide.path.name
    slide.parent.mkdir()
    shutil.copy(synthetic_slide.path, slide)
    r = run("predict", slide, "-o", tmp_path / "out", "--model", tiny_ckpt, "-q")
    assert r.exit_code == 0, r.output
    slide_dir = next(d for d in (tmp_path / "out").iterdir() if d.is_dir())
    summary = json.loads((slide_dir / "summary.json").read_text())
    assert summary["store"]["pixels_kept"] is False and summary["store"]["pixel_bytes_on_disk"] < 10_000
    r = run("explain", slide_dir, "-o", tmp_path / "ex", "--top-k", "4", "--method", "gradcam")
    assert r.exit_code == 0, r.output
    index = json.loads((tmp_path / "ex" / "index.json").read_text())
    assert index["source"]["pixels"] == "slide file" and len(index["patches"]) == 4
    for p in index["patches"]:  # the patch decoded from the slide scores what the heatmap holds
        assert p["probability"] == pytest.approx(p["origin"]["heatmap_probability"], abs=1e-5)
    slide.unlink()
    r = run("explain", slide_dir, "-o", tmp_path / "ex-gone", "--top-k", "2", "--method", "gradcam")
    assert_one_line_error(r, "pixels not kept and slide file missing", str(slide), "--keep-pixels")
    _no_partials(tmp_path / "ex-gone")


def test_explain_cli_errors(kaggle_folder, tiny_ckpt, mark_ckpt, tmp_path):
    from PIL import Image

    out = tmp_path / "ex"
    assert_one_line_error(run("explain", tmp_path / "nope.png", "--model", tiny_ckpt, "-o", out),
                          "nope.png", "not found")
    _no_partials(out)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(small)
    assert_one_line_error(run("explain", small, "--model", tiny_ckpt, "-o", out), "small.png", "60 x 50 px", "96 x 96")
    _no_partials(out)
    assert_one_line_error(run("explain", kaggle_folder, "-o", out), "--model")
    _no_partials(out)
    assert_one_line_error(run("explain", kaggle_folder, "--model", tiny_ckpt, "--region", "1", "-o", out),
                          "--region needs a result folder")
    _no_partials(out)
    assert_one_line_error(run("explain", kaggle_folder, "--model", mark_ckpt, "--layer", "nolayer", "-o", out,
                              "--max-patches", "1"), "no layer 'nolayer'", "features")
    _no_partials(out)
    r = run("explain", kaggle_folder, "--model", tiny_ckpt, "--method", "lime", "-o", out)
    assert r.exit_code == 2
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert_one_line_error(run("explain", kaggle_folder, "--model", tiny_ckpt, "-o", out), "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "old"


def test_evaluate_positional_cli(kaggle_folder, tiny_ckpt, tmp_path):
    out = tmp_path / "eval"
    r = run("evaluate", "--model", tiny_ckpt, "--data", kaggle_folder, "--split", "all", "--positional",
            "--positional-step-px", "32", "-o", out, "--no-progress", "--workers", "0")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    pos = m["positional"]
    assert pos["offsets_px"] == [-32, 0, 32] and len(pos["mean_probability"]) == 3
    assert m["metrics"]["auc"] == pytest.approx(pos["auc"], abs=1e-6)  # the same patches, the same model
    assert (out / "positional.png").stat().st_size > 1000

    folder = tmp_path / "one-class"
    from wsiscan.testing_pcam import write_kaggle_folder

    write_kaggle_folder(folder, n=4, seed=1)
    labels = folder / "train_labels.csv"
    header, *rows = labels.read_text().splitlines()
    labels.write_text("\n".join([header] + [row.rsplit(",", 1)[0] + ",0" for row in rows]) + "\n")  # all normal
    out2 = tmp_path / "eval2"
    r = run("evaluate", "--model", tiny_ckpt, "--data", folder, "--split", "all", "--positional", "-o", out2,
            "--no-progress", "--workers", "0")
    assert_one_line_error(r, "at least 1 tumour")
    assert not out2.exists()


def test_explain_official_hdf5_folder(tiny_ckpt, tmp_path):
    from wsiscan import pcam
    from wsiscan.testing_pcam import write_pcam_h5

    data = write_pcam_h5(tmp_path / "pcam", n_per_split={"train": 4, "valid": 4, "test": 6}, seed=2)
    out = tmp_path / "ex"
    r = run("explain", data, "--model", tiny_ckpt, "-o", out, "--split", "valid", "--max-patches", "3",
            "--method", "ig", "--ig-steps", "4")
    assert r.exit_code == 0, r.output
    index = json.loads((out / "index.json").read_text())
    ds = pcam.open_split(data, "valid")
    assert index["source"]["layout"] == "official" and index["source"]["split"] == "valid"
    assert [p["label"] for p in index["patches"]] == ds.labels[:3].tolist()
    for i, p in enumerate(index["patches"]):
        assert p["probability"] == pytest.approx(tiny_expected_proba(ds.read_batch([i])[0]), abs=1e-5)
