"""Normalised surface Dice (issue 15): by hand on an anisotropic grid, against a distance-transform twin, and in
the per-case rows and tables of evaluate."""

import math

import numpy as np
import pytest
from scipy import ndimage

from vmunet.evaluation.metrics import (binary_image_metrics, format_table, multiclass_image_metrics, nsd,
                                       summarize_cases, synapse_case_metrics, write_per_case_csv)


def shifted_boxes():
    """Truth: rows 2..5 x cols 2..4; prediction: the same box one column to the right (cols 3..5)."""
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:5] = True
    pred = np.zeros_like(gt)
    pred[2:6, 3:6] = True
    return pred, gt


@pytest.mark.parametrize("tolerance, spacing, expected", [
    (2.0, (1.0, 2.5), 12 / 20),
    (0.5, (1.0, 2.5), 8 / 20),
    (2.5, (1.0, 2.5), 1.0),
    (2.0, (2.5, 1.0), 1.0),
    (0.99, None, 8 / 20),
])
def test_nsd_by_hand_on_an_anisotropic_grid(tolerance, spacing, expected):
    """Each 4x3 box has 10 border pixels (12 minus its 2 interior pixels (3,3), (4,3) resp. (3,4), (4,4)).
    Spacing (1, 2.5): a column step is 2.5 mm, a row step 1 mm. Truth border to the prediction's border:
      col 2 (4 px): nearest is col 3 of the prediction, same row -> 2.5 mm
      col 3, rows 2 and 5 (2 px): also prediction border -> 0
      col 4, rows 2 and 5 (2 px): also prediction border -> 0
      col 4, rows 3 and 4 (2 px): inside the prediction; nearest prediction border is (2,4) or (5,4), one row
        away -> 1 mm (its left/right neighbours (r,3), (r,5) are 2.5 mm away)
    so the truth's distances are {2.5 x4, 0 x4, 1 x2}; the prediction's are the same by symmetry (col 5 -> 2.5,
    rows 2/5 of cols 3-4 -> 0, (3,3), (4,3) -> 1). Tolerance 2: 6 of 10 on each side -> 12/20; 0.5: 8/20;
    2.5 (<=): all. Spacing (2.5, 1): the shift is 1 mm and (3,4)'s nearest is (3,3) at 1 mm: all within 2.
    No spacing: voxels, so the 2.5 become 1 and tolerance 0.99 keeps only the zeros: 8/20."""
    pred, gt = shifted_boxes()
    assert nsd(pred, gt, tolerance, spacing) == pytest.approx(expected, abs=1e-12)
    assert nsd(gt, pred, tolerance, spacing) == pytest.approx(expected, abs=1e-12)  # symmetric


def nsd_twin(pred, gt, tolerance, spacing):
    """The definition written out with scipy: borders by erosion, distances by a distance transform."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    border_p = pred ^ ndimage.binary_erosion(pred, structure)
    border_g = gt ^ ndimage.binary_erosion(gt, structure)
    d_p = ndimage.distance_transform_edt(~border_g, sampling=spacing)[border_p]
    d_g = ndimage.distance_transform_edt(~border_p, sampling=spacing)[border_g]
    return (np.sum(d_p <= tolerance) + np.sum(d_g <= tolerance)) / (d_p.size + d_g.size)


@pytest.mark.parametrize("seed", [0, 1])
def test_nsd_equals_the_distance_transform_twin_on_random_3d_blobs(seed):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random((12, 20, 18)), 2) > 0.5
    b = ndimage.gaussian_filter(rng.random((12, 20, 18)), 2) > 0.5
    assert a.any() and b.any() and (a != b).any()
    for tolerance in (0.0, 1.0, 3.0):
        value = nsd(a, b, tolerance, spacing=(3.0, 0.8, 1.1))
        assert value == pytest.approx(nsd_twin(a, b, tolerance, (3.0, 0.8, 1.1)), abs=1e-12)
        assert 0.0 < value < 1.0 or tolerance == 3.0


def test_nsd_identical_masks_and_empty_masks():
    pred, gt = shifted_boxes()
    assert nsd(gt, gt, 0.0, (1.0, 2.5)) == 1.0
    assert math.isnan(nsd(np.zeros_like(gt), np.zeros_like(gt), 1.0))  # no surface at all (MONAI: NaN)
    assert nsd(np.zeros_like(gt), gt, 1.0) == 0.0 and nsd(pred, np.zeros_like(gt), 1.0) == 0.0
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
        nsd(pred, gt, -1.0)


def test_per_case_rows_carry_nsd_with_each_protocols_empty_rules():
    pred, gt = shifted_boxes()
    empty = np.zeros_like(gt)
    row = binary_image_metrics(pred, gt, spacing=(1.0, 2.5), nsd_tolerance_mm=2.0)
    assert row["nsd"] == [pytest.approx(0.6)]
    assert binary_image_metrics(empty, empty)["nsd"] == [1.0]  # as its DSC: nothing to find, nothing wrong
    assert binary_image_metrics(pred, empty)["nsd"] == [0.0]
    labels_pred, labels_gt = pred.astype(int) * 1, gt.astype(int) * 1
    labels_gt[8, 8] = 2  # class 2 only in the truth; class 3 nowhere
    multi = multiclass_image_metrics(labels_pred, labels_gt, 4, spacing=(1.0, 2.5), nsd_tolerance_mm=2.0)
    assert multi["nsd"][0] == pytest.approx(0.6) and multi["nsd"][1] == 0.0 and math.isnan(multi["nsd"][2])
    volume_pred, volume_gt = np.stack([labels_pred] * 3), np.stack([gt.astype(int)] * 3)
    volume_pred[0, 0, 0] = 3  # predicted, absent from the truth: the protocol's 1 (strict: NaN)
    organs = synapse_case_metrics(volume_pred, volume_gt, 4, spacing=(5.0, 1.0, 2.5), nsd_tolerance_mm=2.0)
    assert organs["nsd"][0] == pytest.approx(nsd(volume_pred == 1, volume_gt == 1, 2.0, (5.0, 1.0, 2.5)))
    assert organs["nsd"][1:] == [0.0, 1.0]
    strict = synapse_case_metrics(volume_pred, volume_gt, 4, strict=True)
    assert math.isnan(strict["nsd"][1]) and math.isnan(strict["nsd"][2])


def test_summary_csv_and_table_include_nsd(tmp_path):
    rows = [{"case_id": "a", "dice": [1.0, 0.5], "hd95": [0.0, 4.0], "nsd": [1.0, 0.25]},
            {"case_id": "b", "dice": [0.5, math.nan], "hd95": [2.0, math.nan], "nsd": [0.5, math.nan]}]
    summary = summarize_cases(rows, ["liver", "spleen"])
    assert summary["per_class"]["liver"]["nsd"] == 0.75 and summary["per_class"]["spleen"]["nsd"] == 0.25
    assert summary["mean_nsd"] == 0.5 and summary["per_case"][0]["nsd"] == 0.625
    path = tmp_path / "per_case.csv"
    write_per_case_csv(path, rows, ["liver", "spleen"])
    header = path.read_text().splitlines()[0].split(",")
    assert header[-4:] == ["nsd_spleen", "mean_dice", "mean_hd95", "mean_nsd"]
    table = format_table(rows, ["liver", "spleen"]).splitlines()
    assert table[0].split()[-2:] == ["NSD", "(%)"] and table[-1].split()[-1] == "50.00"


def test_evaluate_scores_nsd_at_the_tolerance_it_is_given():
    from builders import threshold_predictor
    from vmunet.evaluate import evaluate_cases

    predictor, info = threshold_predictor(num_classes=1, input_channels=1, image_size=64, dataset="isic")
    truth = np.zeros((64, 64), np.int64)
    truth[20:40, 20:40] = 1
    shown = np.roll(truth, 2, axis=1)  # the threshold model predicts exactly this mask: 2 px to the right
    cases = [{"image": shown[..., None].astype(np.float32), "label": truth, "case_id": "shifted"}]
    scores = {}
    for tolerance in (1.0, 2.0):
        summary = evaluate_cases(predictor.model, info, "images", cases, device="cpu", progress=False,
                                 nsd_tolerance_mm=tolerance)["summary"]
        assert summary["nsd_tolerance_mm"] == tolerance
        scores[tolerance] = summary["mean_nsd"]
        assert scores[tolerance] == pytest.approx(nsd(shown, truth, tolerance))
    assert scores[1.0] < scores[2.0] == 1.0  # every border pixel is within 2 px of the other border
