"""The polyp protocol (issue 14): PraNet's layout, the field's metrics against hand computations, end to end."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import blob_image
from vmunet.evaluation import polyp_metrics as pm
from vmunet.cli import main
from vmunet.config import TrainConfig
from vmunet.data.polyp import PolypFolder, polyp_test_sets, read_polyp_mask
from vmunet.data.splits import evaluation_cases, prepare_training_data

TINY = ["--model", "vmunet-tiny", "--image-size", "32", "--no-progress", "--batch-size", "4", "--device", "cpu"]


def make_polyp(root: Path, train: int = 8, sets=("CVC-300", "Kvasir"), per_set: int = 2, seed: int = 0) -> Path:
    """TrainDataset (images .png, masks .png 0/255) and test sets with other endings: CVC-300 images .tif with
    RGB .png masks, Kvasir .jpg images with .jpg masks (as Kvasir-SEG ships them)."""
    rng = np.random.default_rng(seed)
    folders = [(root / "TrainDataset", f"p{i}", ".png", ".png") for i in range(train)]
    for name in sets:
        image_ending, mask_ending = (".jpg", ".jpg") if name == "Kvasir" else (".tif", ".png")
        folders += [(root / "TestDataset" / name, f"{name[:3].lower()}{i}", image_ending, mask_ending)
                    for i in range(per_set)]
    for folder, stem, image_ending, mask_ending in folders:
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        image, mask = blob_image(rng, 32, 40)
        Image.fromarray(image).save(folder / "images" / f"{stem}{image_ending}")
        grey = (mask * 255).astype(np.uint8)
        picture = Image.fromarray(np.repeat(grey[..., None], 3, 2)) if mask_ending == ".png" and "Test" in str(
            folder) else Image.fromarray(grey)
        picture.save(folder / "masks" / f"{stem}{mask_ending}")
    return root


# ---------------------------------------------------------------- metrics by hand


def test_mae_dice_iou_by_hand():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True  # 4 pixels
    prob = np.zeros((4, 4))
    prob[0:2, 0:3] = 0.75  # 6 pixels >= 0.5: tp 4, fp 2
    prob[3, 3] = 0.25  # below the threshold
    # MAE: 4 pixels |0.75 - 1| + 2 pixels |0.75 - 0| + 1 pixel 0.25 = 1 + 1.5 + 0.25 = 2.75, over 16
    assert pm.mae(prob, gt) == pytest.approx(2.75 / 16)
    dice, iou = pm.dice_iou(prob, gt)
    assert dice == pytest.approx(2 * 4 / (6 + 4)) and iou == pytest.approx(4 / 6)
    assert pm.dice_iou(np.zeros((4, 4)), np.zeros((4, 4), bool)) == (1.0, 1.0)  # nothing to find, none found
    assert pm.mae(gt.astype(float), gt) == 0.0
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        pm.mae(prob * 2, gt)


def test_weighted_f_measure_by_hand_and_its_distance_weighting():
    gt = np.zeros((10, 10), bool)
    gt[3:5, 3:5] = True  # 4 object pixels
    near, far = gt.astype(float), gt.astype(float)
    near[3, 5] = 1.0  # a false positive next to the object: distance 1
    far[3, 9] = 1.0  # the same false positive 5 pixels from the object's nearest pixel (3, 4)
    # The object is found exactly: E = 0 on it, so the smoothed error never replaces it, Ew(object) = 0, R = 1,
    # TPw = 4. The false positive weighs B = 2 - 0.5^(d / 5): FPw = B, P = 4 / (4 + B), and
    # F = 2 R P / (R + P) = 8 / (8 + B). Near: B = 2 - 0.5^0.2 = 1.129449; far: B = 1.5.
    assert pm.weighted_f_measure(near, gt) == pytest.approx(8 / (8 + 2 - 0.5 ** 0.2), abs=1e-9)
    assert pm.weighted_f_measure(far, gt) == pytest.approx(8 / 9.5, abs=1e-9)
    # the plain F-measure of the two binary maps is the same 8/9: only the weighting tells them apart
    assert pm.weighted_f_measure(near, gt) - pm.weighted_f_measure(far, gt) > 0.03

    # Pixel dependency: prob 0.5 on the whole object. E = 0.5 there; every background pixel carries its nearest
    # object pixel's 0.5, so the 7x7 Gaussian of that (the object lies 3 pixels inside an 8x8 image: the window
    # never leaves it) is 0.5 too, not below E. Ew(object) = 0.5: R = 0.5, TPw = 4 - 2 = 2, FPw = 0, P = 1,
    # F = 2 * 0.5 * 1 / 1.5 = 2/3.
    gt8 = np.zeros((8, 8), bool)
    gt8[3:5, 3:5] = True
    assert pm.weighted_f_measure(gt8 * 0.5, gt8) == pytest.approx(2 / 3, abs=1e-9)
    # ... and where the object's errors are uneven the smoothing lowers the larger ones: one pixel at 0 (error
    # 1) among three exact ones is worth less than error 1 (the window averages it with the 0 errors)
    uneven = gt8.astype(float)
    uneven[3, 3] = 0.0
    recall_if_unsmoothed = 1 - 1 / 4  # P = 1 (no false positive), so F = 2R / (1 + R) = 6/7 without smoothing
    assert pm.weighted_f_measure(uneven, gt8) > 2 * recall_if_unsmoothed / (1 + recall_if_unsmoothed) + 0.01
    assert pm.weighted_f_measure(gt.astype(float), gt) == pytest.approx(1.0)
    assert pm.weighted_f_measure(np.zeros((4, 4)), np.zeros((4, 4), bool)) == 0.0  # empty truth: 0 (toolbox rule)


def test_s_measure_by_hand():
    # Object: an L of three pixels (0,0), (0,1), (1,0) in a 4x4 image; the prediction is exact but 0.5 at (0,1).
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = gt[0, 1] = gt[1, 0] = True
    prob = gt.astype(float)
    prob[0, 1] = 0.5
    # Object term: foreground values [1, 0.5, 1]: x = 5/6, sigma (N - 1) = sqrt(1/12); O_FG = 2x / (x^2 + 1 + sigma)
    x, sigma = 5 / 6, math.sqrt(1 / 12)
    o_fg = 2 * x / (x * x + 1 + sigma)  # 0.840429
    # background (1 - prob) is 1 on all 13 pixels: O_BG = 2 / (1 + 1 + 0) = 1; S_o = 3/16 O_FG + 13/16 O_BG
    s_o = 3 / 16 * o_fg + 13 / 16
    assert pm.s_object(prob, gt) == pytest.approx(s_o, abs=1e-12)
    # Region term: centroid 0-based (1/3, 1/3) -> 1-based 4/3 -> (Y, X) = (1, 1): blocks LT 1x1 (weight 1/16),
    # RT 1x3 (3/16), LB 3x1 (3/16), RB 3x3 (9/16).
    assert pm.centroid(gt) == (1, 1)
    # LT: one exact pixel, alpha = beta = 0 -> 1. LB: pred = gt = [1, 0, 0] -> 1. RB: all zero -> 1.
    # RT: pred [0.5, 0, 0], gt [1, 0, 0]: x = 1/6, y = 1/3, var_x = 1/12, var_y = 1/3, cov = 1/6;
    # alpha = 4 x y cov = 1/27, beta = (x^2 + y^2)(var_x + var_y) = 25/432 -> Q = 16/25.
    s_r = (1 + 3 * 16 / 25 + 3 + 9) / 16  # 0.9325
    assert pm.s_region(prob, gt) == pytest.approx(s_r, abs=1e-12)
    assert pm.s_measure(prob, gt) == pytest.approx(0.5 * s_o + 0.5 * s_r, abs=1e-12)  # 0.951290
    assert pm.s_measure(gt.astype(float), gt) == pytest.approx(1.0, abs=1e-12)
    # special cases: an empty truth scores 1 - mean(prob), a full one mean(prob)
    flat = np.full((3, 5), 0.2)
    flat[0, 0] = 0.8
    assert pm.s_measure(flat, np.zeros((3, 5), bool)) == pytest.approx(1 - flat.mean())
    assert pm.s_measure(flat, np.ones((3, 5), bool)) == pytest.approx(flat.mean())
    # The inverse map: both object scores are 0 (mean 0 on the object, 1 - prob = 0 off it). Blocks: LT (pred 0,
    # gt 1) and RB (pred 1, gt 0) are constant, alpha = beta = 0 -> 1 by the reference rule; RT and LB are pred
    # [0, 1, 1] vs gt [1, 0, 0]: x 2/3, y 1/3, var 1/3 each, cov -1/3 -> alpha -8/27, beta 10/27, Q = -0.8.
    # S_r = (1 - 3 * 0.8 - 3 * 0.8 + 9) / 16 = 0.325, S = 0.5 * 0 + 0.5 * 0.325.
    assert pm.s_measure(1 - gt.astype(float), gt) == pytest.approx(0.1625, abs=1e-12)


def test_e_measure_by_hand_and_its_curve():
    gt = np.array([[1, 0], [0, 0]], bool)
    foreground = np.array([[1, 1], [0, 0]])
    # mean G = 1/4, mean F = 1/2; xi = 2ab / (a^2 + b^2), a = G - 1/4, b = F - 1/2, phi = (1 + xi)^2 / 4:
    # (0,0) G1 F1: a 3/4, b 1/2 -> xi 12/13 -> 625/676; (0,1) G0 F1: a -1/4, b 1/2 -> xi -4/5 -> 1/100;
    # (1,0), (1,1) G0 F0: a -1/4, b -1/2 -> xi 4/5 -> 81/100 each
    expected = np.array([[625 / 676, 1 / 100], [81 / 100, 81 / 100]])
    assert np.allclose(pm.enhanced_alignment_matrix(foreground, gt), expected)
    assert pm.e_measure(foreground, gt) == pytest.approx(expected.mean())
    assert pm.e_measure(gt, gt) == pytest.approx(1.0)
    # special cases: an empty truth -> mean(1 - F), a full one -> mean(F)
    assert pm.e_measure(foreground, np.zeros((2, 2), bool)) == pytest.approx(0.5)
    assert pm.e_measure(np.array([[1, 0], [0, 0]]), np.ones((2, 2), bool)) == pytest.approx(0.25)
    # The curve from counts equals the direct form at every threshold: the 8-bit map round(255 prob) > k
    rng = np.random.default_rng(0)
    prob, truth = rng.random((9, 11)), rng.random((9, 11)) > 0.6
    prob[0, 0], prob[0, 1], prob[0, 2] = 0.0, 1.0, 1e-9  # the ends, and a sigmoid's "zero" (8-bit: 0)
    eight_bit = np.rint(prob * 255)
    direct = [pm.e_measure(eight_bit > k, truth) for k in range(256)]
    assert np.allclose(pm.e_measure_curve(prob, truth), direct, atol=1e-12)
    assert np.allclose(pm.e_measure_curve(prob, np.zeros_like(truth)), [np.mean(eight_bit <= k) for k in range(256)])
    assert np.allclose(pm.e_measure_curve(prob, np.ones_like(truth)), [np.mean(eight_bit > k) for k in range(256)])
    # A perfect map (a sigmoid's 1e-9 and 1 - 1e-9 are 0 and 255 in 8 bits): every threshold below 1 gives the
    # truth (E = 1); at t = 1 the map is empty, so phi = 1/4 on every pixel (b = 0 -> xi = 0).
    # meanEm = (255 + 1/4) / 256 (as the toolbox's), maxEm = 1.
    row = pm.polyp_image_metrics(np.where(truth, 1 - 1e-9, 1e-9), truth)
    assert row["mean_em"] == pytest.approx((255 + 0.25) / 256)
    assert [row[k] for k in ("dice", "iou", "sm")] == pytest.approx([1, 1, 1]) and row["mae"] < 1e-8
    assert row["em_curve"].max() == 1.0
    assert row["wfm"] == pytest.approx(1.0)
    # maxEm: the maximum over thresholds of the curve averaged over the images (not the mean of the maxima)
    other = pm.polyp_image_metrics(prob, truth)
    summary = pm.summarize_polyp_set([row, other])
    assert summary["maxEm"] == pytest.approx(((row["em_curve"] + other["em_curve"]) / 2).max())
    assert summary["meanEm"] == pytest.approx((row["mean_em"] + other["mean_em"]) / 2)
    assert summary["images"] == 2 and summary["mDice"] == pytest.approx((1 + other["dice"]) / 2)


# ---------------------------------------------------------------- the layout


def test_masks_are_binarised_at_128_and_paired_by_stem_across_endings(tmp_path):
    grey = np.array([[0, 128, 129, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert read_polyp_mask(tmp_path / "g.png").tolist() == [[0, 0, 1, 1]]
    # an RGB mask through its grey value: (200, 200, 200) -> 200 is polyp, (100, 100, 100) is not
    Image.fromarray(np.array([[[200] * 3, [100] * 3]], np.uint8)).save(tmp_path / "c.png")
    assert read_polyp_mask(tmp_path / "c.png").tolist() == [[1, 0]]
    Image.fromarray(np.array([[0, 1, 1]], np.uint8)).save(tmp_path / "01.png")  # a 0/1 mask: 1 is polyp
    assert read_polyp_mask(tmp_path / "01.png").tolist() == [[0, 1, 1]]
    root = make_polyp(tmp_path / "data")
    sets = polyp_test_sets(root)
    assert list(sets) == ["CVC-300", "Kvasir"] and sets["Kvasir"].case_ids == ["kva0", "kva1"]
    kvasir = sets["Kvasir"][0]  # .jpg image, .jpg mask: JPEG noise does not survive the threshold
    truth = np.asarray(Image.open(root / "TestDataset" / "Kvasir" / "masks" / "kva0.jpg").convert("L")) > 128
    assert np.array_equal(kvasir["label"], truth) and set(np.unique(kvasir["label"])) == {0, 1}
    cvc = sets["CVC-300"][1]  # .tif image, RGB .png mask
    assert cvc["image"].shape == (32, 40, 3) and cvc["label"].shape == (32, 40) and cvc["label"].sum() > 20


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, capsys):
    root = make_polyp(tmp_path / "data")
    (root / "TrainDataset" / "images" / "p0.png").rename(root / "TrainDataset" / "images" / "stray.png")
    with pytest.raises(ValueError, match=r"TrainDataset/images/stray\.png: image has no mask"):
        PolypFolder.train(root)
    (root / "TrainDataset" / "images" / "stray.png").rename(root / "TrainDataset" / "images" / "p0.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "TestDataset" / "Kvasir" / "masks" / "kva1.jpg")
    with pytest.raises(ValueError, match=r"kva1\.jpg and .*kva1\.jpg: image shape \(32, 40\) does not match label "
                                         r"shape \(30, 40\)"):
        polyp_test_sets(root)
    bare = make_polyp(tmp_path / "bare", train=2, sets=())
    with pytest.raises(FileNotFoundError, match=r"bare/TestDataset: folder not found"):
        evaluation_cases(TrainConfig(dataset="polyp", data=str(bare)), None, "test")
    with pytest.raises(FileNotFoundError, match=r"TrainDataset: folder not found"):
        PolypFolder.train(tmp_path / "bare" / "TestDataset")
    # through the CLI: one line, a non-zero exit, no run folder left behind
    (root / "TrainDataset" / "masks" / "p3.png").unlink()
    run = tmp_path / "run"
    assert main(["train", "--preset", "polyp", *TINY, "--data", str(root), "--epochs", "1",
                 "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TrainDataset/images/p3.png: image has no mask" in err
    assert not run.exists()


def test_selection_holds_out_training_images_only(tmp_path):
    root = make_polyp(tmp_path / "data", train=10)
    config = TrainConfig(dataset="polyp", data=str(root), val_fraction=0.2, seed=3)
    data = prepare_training_data(config)
    train_ids, val_ids = set(data.train.case_ids), set(data.val.case_ids)
    assert len(val_ids) == 2 and not train_ids & val_ids and train_ids | val_ids == {f"p{i}" for i in range(10)}
    assert "held out of TrainDataset" in data.val_source and data.num_classes == 1
    kind, held = evaluation_cases(config, None, "val")
    assert kind == "polyp" and set(held["TrainDataset (held out)"].case_ids) == val_ids  # the same images
    with pytest.raises(ValueError, match="paper_selection: the polyp preset selects on held-out TrainDataset"):
        prepare_training_data(TrainConfig(dataset="polyp", data=str(root), paper_selection=True))


def test_polyp_trains_and_evaluates_every_test_set_end_to_end(tmp_path, capsys):
    root = make_polyp(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--preset", "polyp", *TINY, "--data", str(root), "--epochs", "1",
                 "--run-dir", str(run)]) == 0, capsys.readouterr().err
    assert "1 images held out of TrainDataset/ (seed 42)" in capsys.readouterr().out
    split = json.loads((run / "split.json").read_text())
    train_stems = {p.stem for p in (root / "TrainDataset" / "images").iterdir()}
    assert split["val"] and set(split["val"]) <= train_stems and set(split["train"]) | set(split["val"]) == train_stems
    assert main(["evaluate", "--run-dir", str(run), "--split", "test", "--no-progress", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "CVC-300" in table and "Kvasir" in table and "meanEm" in table and "mean of 2 sets" in table
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert set(summary["sets"]) == {"CVC-300", "Kvasir"} and summary["cases"] == 4
    keys = {"mDice", "mIoU", "MAE", "wFm", "Sm", "meanEm", "maxEm"}
    for values in summary["sets"].values():
        assert values["images"] == 2 and keys <= set(values)
        assert all(0 <= values[k] <= 1 for k in keys) and values["maxEm"] >= values["meanEm"]
    for key in keys:
        assert summary["mean_over_sets"][key] == pytest.approx(np.mean([s[key] for s in summary["sets"].values()]))
    rows = list(csv.DictReader(open(run / "eval" / "per_case.csv")))
    assert [(r["set"], r["case_id"]) for r in rows] == [("CVC-300", "cvc0"), ("CVC-300", "cvc1"),
                                                         ("Kvasir", "kva0"), ("Kvasir", "kva1")]
    kvasir_dice = np.mean([float(r["dice"]) for r in rows if r["set"] == "Kvasir"])
    assert kvasir_dice == pytest.approx(summary["sets"]["Kvasir"]["mDice"], abs=1e-5)
    assert summary["all_images"]["mDice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-5)


def test_each_set_is_scored_on_its_own_maps_with_a_known_model(tmp_path):
    """A model whose probability is the image's first channel thresholded (ThresholdModel; 64 px images at the
    network's 64 px, so nothing is resized): the maps are known, so each set's numbers are known."""
    from builders import threshold_predictor
    from vmunet.evaluate_polyp import evaluate_polyp_sets

    truth = np.zeros((64, 64), np.uint8)
    truth[10:30, 10:40] = 255  # 600 pixels
    shifted = np.zeros_like(truth)
    shifted[10:30, 20:50] = 255  # 600 pixels, 400 of them on the truth
    for name, pictures in (("A-shifted", [shifted]), ("B-exact", [truth, truth])):
        for sub in ("images", "masks"):
            (tmp_path / "TestDataset" / name / sub).mkdir(parents=True)
        for i, picture in enumerate(pictures):
            Image.fromarray(np.repeat(picture[..., None], 3, 2)).save(tmp_path / "TestDataset" / name / "images"
                                                                      / f"{name}{i}.png")
            Image.fromarray(truth).save(tmp_path / "TestDataset" / name / "masks" / f"{name}{i}.png")
    predictor, _ = threshold_predictor(num_classes=1, input_channels=3, image_size=64, dataset="polyp")
    evaluation = evaluate_polyp_sets(predictor, polyp_test_sets(tmp_path), progress=False)
    shifted_set, exact_set = evaluation["summary"]["sets"]["A-shifted"], evaluation["summary"]["sets"]["B-exact"]
    # shifted: Dice 2 * 400 / 1200, IoU 400 / 800, MAE 400 wrong pixels of 4096 (probabilities 0 or 1 to 1e-8)
    assert shifted_set["mDice"] == pytest.approx(2 / 3) and shifted_set["mIoU"] == pytest.approx(0.5)
    assert shifted_set["MAE"] == pytest.approx(400 / 4096, abs=1e-6)
    gt, binary = truth > 128, (shifted > 128).astype(float)
    assert shifted_set["Sm"] == pytest.approx(pm.s_measure(binary, gt), abs=1e-6)
    assert shifted_set["wFm"] == pytest.approx(pm.weighted_f_measure(binary, gt), abs=1e-6)
    assert shifted_set["meanEm"] == pytest.approx(pm.e_measure_curve(binary, gt).mean(), abs=1e-6)
    assert exact_set["images"] == 2 and exact_set["mDice"] == 1 and exact_set["maxEm"] == pytest.approx(1)
    assert exact_set["MAE"] == pytest.approx(0, abs=1e-6) and exact_set["Sm"] == pytest.approx(1, abs=1e-6)
    # the mean over sets counts each set once; the mean over all images counts each image once
    assert evaluation["summary"]["mean_over_sets"]["mDice"] == pytest.approx((2 / 3 + 1) / 2)
    assert evaluation["summary"]["all_images"]["mDice"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert [row["set"] for row in evaluation["rows"]] == ["A-shifted", "B-exact", "B-exact"]
