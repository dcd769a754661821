"""Metrics: hand-computed cases (empty masks included) and agreement with medpy (a test-only dependency)."""

import csv
import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from vmunet.evaluation.metrics import (
    confusion_counts,
    dice,
    format_table,
    hd95,
    hd95_ref,
    per_image_binary_metrics,
    pooled_binary_metrics,
    summarize_cases,
    surface,
    synapse_case_metrics,
    write_per_case_csv,
)


def test_confusion_counts_and_dice_by_hand():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    gt = np.array([[0, 1, 1], [1, 0, 0]])
    assert confusion_counts(pred, gt) == (1, 1, 2, 2)
    assert dice(pred, gt) == pytest.approx(2 / 5)
    assert dice(np.zeros(4), np.zeros(4)) == 1.0 and math.isnan(dice(np.zeros(4), np.zeros(4), math.nan))
    assert dice(np.ones(4), np.zeros(4)) == 0.0
    with pytest.raises(ValueError, match="does not match"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_hd95_by_hand():
    a = np.zeros((1, 10), bool)
    a[0, 2] = True
    b = np.zeros((1, 10), bool)
    b[0, 7] = True
    assert hd95(a, b) == 5.0
    assert hd95(a, b, spacing=(1.0, 0.5)) == 2.5
    # 3 surface voxels each way: distances {0, 1, 2} from a 3-voxel line to a 1-voxel point, pooled with {0}
    line = np.zeros((5, 5), bool)
    line[2, 1:4] = True
    dot = np.zeros((5, 5), bool)
    dot[2, 1] = True
    assert hd95(line, dot) == pytest.approx(np.percentile([0, 1, 2, 0], 95))
    assert hd95(line, line) == 0.0
    with pytest.raises(ValueError, match="prediction is empty"):
        hd95(np.zeros((4, 4)), line[:4, :4])
    with pytest.raises(ValueError, match="ground truth is empty"):
        hd95(line, np.zeros((5, 5)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(line, dot, spacing=(1, 2, 3))


def test_surface_equals_scipy_erosion_including_array_edges():
    rng = np.random.default_rng(0)
    for shape in [(7,), (9, 8), (6, 7, 5)]:
        mask = rng.random(shape) > 0.3
        expected = mask ^ ndimage.binary_erosion(mask, ndimage.generate_binary_structure(len(shape), 1))
        np.testing.assert_array_equal(surface(mask), expected)


def _blobs(shape, seed, level=0.52, sigma=2.0):
    rng = np.random.default_rng(seed)
    while True:
        m = ndimage.gaussian_filter(rng.random(shape), sigma) > level
        if m.any():
            return m


@pytest.mark.parametrize("shape,spacing", [
    ((48, 56), None), ((48, 56), (0.8, 2.3)), ((20, 30, 26), None), ((20, 30, 26), (3.0, 0.7, 0.9)),
    ((20, 30, 26), 1.7)])
def test_hd95_equals_medpy_on_random_blobs(shape, spacing):
    for seed in range(6):
        a, b = _blobs(shape, 2 * seed), _blobs(shape, 2 * seed + 1)
        expected = medpy_binary.hd95(a, b, voxelspacing=spacing)
        assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert hd95_ref(a, b, spacing) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert dice(a, b) == pytest.approx(medpy_binary.dc(a, b))


def test_hd95_equals_medpy_for_far_objects_and_masks_at_the_array_edge():
    # far apart: beyond the grid search radius, so the k-d tree path is checked too
    a = np.zeros((40, 60, 50), bool)
    b = np.zeros((40, 60, 50), bool)
    a[:5, :8, :6] = True  # touches three array faces
    b[30:39, 40:60, 20:35] = True  # touches the far face
    b[2, 3, 40] = True  # a single-voxel outlier
    for spacing in (None, (2.5, 0.6, 0.6)):
        assert hd95(a, b, spacing) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=spacing), rel=1e-12)
    near = ndimage.binary_dilation(a, iterations=2)  # partners 0-2 voxels away: grid path only
    assert hd95(near, a, (2.5, 0.6, 0.6)) == pytest.approx(
        medpy_binary.hd95(near, a, voxelspacing=(2.5, 0.6, 0.6)), rel=1e-12)


def test_pooled_and_per_image_binary_metrics_by_hand():
    gt1 = np.array([[1, 1], [0, 0]])
    p1 = np.array([[0.9, 0.2], [0.6, 0.1]])  # tp 1, fn 1, fp 1, tn 1
    gt2 = np.zeros((2, 3))
    p2 = np.zeros((2, 3))  # tn 6
    pooled = pooled_binary_metrics([p1, p2], [gt1, gt2])  # tp 1, fp 1, fn 1, tn 7
    assert pooled == pytest.approx({"miou": 1 / 3, "dsc": 0.5, "acc": 0.8, "spe": 7 / 8, "sen": 0.5})
    per_image = per_image_binary_metrics([p1, p2], [gt1, gt2])  # image 2: empty vs empty scores 1
    assert per_image == pytest.approx({"miou": (1 / 3 + 1) / 2, "dsc": 0.75, "acc": 0.75, "spe": 0.75,
                                       "sen": 0.75})
    skip_empty = per_image_binary_metrics([p1, p2], [gt1, gt2], zero_division=math.nan)
    assert skip_empty == pytest.approx({"miou": 1 / 3, "dsc": 0.5, "acc": 0.75, "spe": 0.75, "sen": 0.5})
    # the threshold is ">=", masks pass as they are, and stacked arrays work like lists
    assert pooled_binary_metrics(np.array([[0.5, 0.49]]), np.array([[1, 0]]))["acc"] == 1.0
    stacked = pooled_binary_metrics(np.stack([p1, p1]), np.stack([gt1, gt1]))
    assert stacked == pytest.approx(pooled_binary_metrics([p1 >= 0.5, p1 >= 0.5], [gt1 == 1, gt1 == 1]))
    assert pooled_binary_metrics([np.zeros(3)], [np.zeros(3)])["dsc"] == 0.0  # the official 0/0 -> 0
    with pytest.raises(ValueError, match="2 predictions but 1 ground truths"):
        pooled_binary_metrics([p1, p2], [gt1])


def test_synapse_case_metrics_protocol_rules():
    gt = np.zeros((4, 10, 10), int)
    pred = np.zeros((4, 10, 10), int)
    gt[1:3, 2:6, 2:6] = 1
    pred[1:3, 2:6, 3:7] = 1  # class 1: both present
    pred[0, 0, 0] = 2  # class 2: predicted, absent from the ground truth
    gt[3, 8:, 8:] = 3  # class 3: missed
    # class 4: absent from both
    row = synapse_case_metrics(pred, gt, 5, case_id="case0001")
    assert row["case_id"] == "case0001"
    assert row["dice"] == pytest.approx([dice(pred == 1, gt == 1), 1.0, 0.0, 0.0])
    assert row["hd95"] == pytest.approx([medpy_binary.hd95(pred == 1, gt == 1), 0.0, 0.0, 0.0])
    strict = synapse_case_metrics(pred, gt, 5, strict=True)
    assert strict["dice"][0] == row["dice"][0] and strict["dice"][2] == 0.0
    assert math.isnan(strict["dice"][1]) and math.isnan(strict["dice"][3]) and math.isnan(strict["hd95"][2])
    spaced = synapse_case_metrics(pred, gt, 5, spacing=(3.0, 1.0, 1.0))
    assert spaced["hd95"][0] == pytest.approx(medpy_binary.hd95(pred == 1, gt == 1, voxelspacing=(3.0, 1.0, 1.0)))


def test_summaries_tables_and_csv(tmp_path):
    rows = [{"case_id": "a", "dice": [1.0, 0.5], "hd95": [0.0, 4.0]},
            {"case_id": "b", "dice": [0.5, math.nan], "hd95": [2.0, math.nan]}]
    names = ["background", "liver", "spleen"]
    summary = summarize_cases(rows, names)
    assert summary["class_names"] == ["liver", "spleen"]
    assert summary["per_class"] == {"liver": {"dice": 0.75, "hd95": 1.0}, "spleen": {"dice": 0.5, "hd95": 4.0}}
    assert summary["per_case"] == [{"case_id": "a", "dice": 0.75, "hd95": 2.0},
                                   {"case_id": "b", "dice": 0.5, "hd95": 2.0}]
    assert summary["mean_dice"] == 0.625 and summary["mean_hd95"] == 2.5
    table = format_table(rows, names, per_case=True)
    assert "liver" in table and "62.50" in table and "75.00" in table and table.splitlines()[-1].startswith("b")
    path = tmp_path / "cases.csv"
    write_per_case_csv(path, rows, names)
    lines = list(csv.reader(path.open()))
    assert lines[0] == ["case_id", "dice_liver", "dice_spleen", "hd95_liver", "hd95_spleen", "mean_dice", "mean_hd95"]
    assert lines[1][0] == "a" and float(lines[1][5]) == 0.75 and lines[-1][0] == "mean"
    assert float(lines[-1][5]) == 0.625
    with pytest.raises(ValueError, match="4 class names for 2 foreground classes"):
        summarize_cases(rows, names + ["x"])
