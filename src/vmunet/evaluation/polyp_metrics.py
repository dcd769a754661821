"""The polyp benchmark's per-image metrics (PraNet's protocol), from their published definitions.

Inputs per image: ``prob`` float (H, W) in [0, 1], the model's foreground probability at the image's own size
(what the toolboxes call the predicted map), and ``gt`` bool (H, W), the mask binarised at 128.

- ``dice``, ``iou``: of the prediction binarised at 0.5 (``prob >= 0.5``, the labels ``vmunet predict`` writes);
  truth and prediction both empty -> 1 (nothing to find, nothing wrongly found).
- ``mae``: mean |prob - gt| over the pixels.
- ``weighted_f_measure``: Margolin, Zelnik-Manor, Tal, "How to evaluate foreground maps?", CVPR 2014, with beta^2 = 1
  (the authors' code): errors are smoothed by a 7x7 Gaussian (sigma 5) inside the object (pixel dependency) and
  weighted by 2 - 0.5^(d / 5) outside it, d the distance to the object (pixel importance).
- ``s_measure``: Fan et al., "Structure-measure", ICCV 2017, alpha 0.5: 0.5 object-aware + 0.5 region-aware score.
- ``e_measure``: Fan et al., "Enhanced-alignment measure", IJCAI 2018, for one binary map; ``e_measure_curve`` gives
  it at the 256 thresholds t = 0, 1/255, .., 1 of PraNet's evaluation toolbox (foreground = map > t) on the map
  quantised to 8 bits, q = round(255 prob), as the PNG maps the toolbox reads (so a background probability of
  1e-9 is 0, not foreground at t = 0); ``meanEm`` is the curve's mean, ``maxEm`` the maximum over thresholds of
  the curve averaged over a set's images.

Where the papers leave a detail open, the authors' reference code decides (standard deviations with N - 1,
MATLAB's rounding of the centroid, the empty-truth cases); one deviation: the E-measure divides by the W x H
pixels of its definition, not by W x H - 1 as the MATLAB code does (a relative 1 / (W H) difference).
The maps are taken as they are: the toolbox chain (PraNet's test script) first min-max stretches every map to
0..1, which turns a confident "nothing here" into a full-range map; vmunet does not.

Checked once against PySODMetrics 1.6.2 (not a dependency) on random maps: wFm and MAE agree to 1e-15, the
E-measure of a thresholded map to 1e-12 after the W x H - 1 factor, the S-measure except where the centroid falls
on a half pixel (PySODMetrics rounds half to even; MATLAB and vmunet round it away from zero).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

EPS = np.finfo(np.float64).eps  # MATLAB's eps, as in the reference code's guards
E_LEVELS = 256  # 8-bit maps: q = round(255 prob) in 0..255, thresholds q > k for k = 0..255 (t = k / 255)
PER_IMAGE_KEYS = ("dice", "iou", "mae", "wfm", "sm", "mean_em")


def _inputs(prob, gt) -> tuple[np.ndarray, np.ndarray]:
    prob, gt = np.asarray(prob, dtype=np.float64), np.asarray(gt).astype(bool)
    if prob.shape != gt.shape or prob.ndim != 2:
        raise ValueError(f"probability map {prob.shape} and mask {gt.shape} must be the same 2D shape")
    if prob.size and (not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1):
        raise ValueError("the probability map must hold values in [0, 1]")
    return prob, gt


def mae(prob, gt) -> float:
    prob, gt = _inputs(prob, gt)
    return float(np.abs(prob - gt).mean())


def dice_iou(prob, gt, threshold: float = 0.5) -> tuple[float, float]:
    prob, gt = _inputs(prob, gt)
    pred = prob >= threshold
    tp = np.count_nonzero(pred & gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0, 1.0
    return float(2 * tp / (union + tp)), float(tp / union)


# ---------------------------------------------------------------- weighted F-measure


def _gaussian_kernel(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """MATLAB's fspecial('gaussian', size, sigma): exp(-(x^2 + y^2) / (2 sigma^2)), normalised to sum 1."""
    r = (size - 1) / 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def weighted_f_measure(prob, gt, beta2: float = 1.0) -> float:
    """F^w_beta of Margolin et al. An empty truth scores 0 (recall is undefined; as the evaluation toolboxes)."""
    prob, gt = _inputs(prob, gt)
    if not gt.any():
        return 0.0
    error = np.abs(prob - gt)  # E
    # distance of every pixel to the nearest object pixel, and that pixel's index
    distance, (rows, cols) = ndimage.distance_transform_edt(~gt, return_indices=True)
    # Pixel dependency: outside the object each pixel carries the error of its nearest object pixel, so the
    # smoothing does not blur the object's errors with the background's; inside it, the smoothed error replaces
    # the error where it is smaller.
    nearest_error = error[rows, cols]  # (H, W); equal to E inside the object
    smoothed = ndimage.correlate(nearest_error, _gaussian_kernel(), mode="constant", cval=0.0)  # imfilter, zero pad
    dependent = np.where(gt & (smoothed < error), smoothed, error)
    # Pixel importance: a false positive weighs more the farther it lies from the object (1 at it, -> 2)
    importance = np.where(gt, 1.0, 2.0 - np.exp(np.log(0.5) / 5.0 * distance))
    weighted = dependent * importance  # E^w
    tp = gt.sum() - weighted[gt].sum()
    fp = weighted[~gt].sum()
    recall = 1.0 - weighted[gt].mean()
    precision = tp / (EPS + tp + fp)
    return float((1 + beta2) * recall * precision / (EPS + recall + beta2 * precision))


# ---------------------------------------------------------------- S-measure


def _object_score(values: np.ndarray) -> float:
    """2 x / (x^2 + 1 + sigma_x) of the values of one region (sigma with N - 1, 0 for one pixel)."""
    if values.size == 0:
        return 0.0
    mean = values.mean()
    std = values.std(ddof=1) if values.size > 1 else 0.0
    return float(2 * mean / (mean * mean + 1 + std + EPS))


def s_object(prob: np.ndarray, gt: np.ndarray) -> float:
    """Object-aware term: foreground of prob on the object, background (1 - prob) off it, weighted by area."""
    share = gt.mean()
    return share * _object_score(prob[gt]) + (1 - share) * _object_score(1 - prob[~gt])


def _ssim(prob: np.ndarray, gt: np.ndarray) -> float:
    """The S-measure's SSIM of one block (no constants; both constant blocks -> 1)."""
    n = prob.size
    x, y = prob.mean(), gt.mean()
    var_x = ((prob - x) ** 2).sum() / (n - 1 + EPS)
    var_y = ((gt - y) ** 2).sum() / (n - 1 + EPS)
    cov = ((prob - x) * (gt - y)).sum() / (n - 1 + EPS)
    alpha = 4 * x * y * cov
    beta = (x * x + y * y) * (var_x + var_y)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    return 1.0 if beta == 0 else 0.0


def centroid(gt: np.ndarray) -> tuple[int, int]:
    """(Y, X): the object's centroid as 1-based indices rounded half away from zero (MATLAB); the image's
    centre for an empty mask. The blocks are rows [0, Y) / [Y, H) and columns [0, X) / [X, W)."""
    h, w = gt.shape
    if not gt.any():
        return int(math.floor(h / 2 + 0.5)), int(math.floor(w / 2 + 0.5))
    rows, cols = np.nonzero(gt)
    return int(math.floor(rows.mean() + 1.5)), int(math.floor(cols.mean() + 1.5))


def s_region(prob: np.ndarray, gt: np.ndarray) -> float:
    """Region-aware term: the SSIM of the four blocks around the centroid, weighted by their areas."""
    h, w = gt.shape
    y, x = centroid(gt)
    score = 0.0
    for rows in (slice(0, y), slice(y, h)):
        for cols in (slice(0, x), slice(x, w)):
            block = prob[rows, cols]
            if block.size:  # an empty block has weight 0
                score += block.size / gt.size * _ssim(block, gt[rows, cols].astype(np.float64))
    return score


def s_measure(prob, gt, alpha: float = 0.5) -> float:
    """S_alpha = alpha S_object + (1 - alpha) S_region, at least 0; an empty truth scores 1 - mean(prob), a
    full one mean(prob)."""
    prob, gt = _inputs(prob, gt)
    share = gt.mean()
    if share == 0:
        return float(1 - prob.mean())
    if share == 1:
        return float(prob.mean())
    return float(max(0.0, alpha * s_object(prob, gt) + (1 - alpha) * s_region(prob, gt)))


# ---------------------------------------------------------------- E-measure


def enhanced_alignment_matrix(foreground, gt) -> np.ndarray:
    """phi = (1 + xi)^2 / 4 per pixel, xi = 2 (G - mean G)(F - mean F) / ((G - mean G)^2 + (F - mean F)^2), for
    a binary map F; an empty truth gives 1 - F, a full truth F (the definition's special cases)."""
    fm, gt = np.asarray(foreground).astype(np.float64), np.asarray(gt).astype(np.float64)
    if gt.sum() == 0:
        return 1.0 - fm
    if gt.sum() == gt.size:
        return fm
    a, b = gt - gt.mean(), fm - fm.mean()  # a != 0 everywhere: the truth is not constant
    xi = 2 * a * b / (a * a + b * b)
    return (1 + xi) ** 2 / 4


def e_measure(foreground, gt) -> float:
    """E_phi of one binary map: the mean of its enhanced-alignment matrix."""
    return float(enhanced_alignment_matrix(foreground, gt).mean())


def quantise(prob) -> np.ndarray:
    """The probability map as the 8-bit map a toolbox reads: round(255 prob), int64 (H, W) in 0..255."""
    return np.rint(np.asarray(prob, dtype=np.float64) * (E_LEVELS - 1)).astype(np.int64)


def e_measure_curve(prob, gt) -> np.ndarray:
    """E_phi of ``quantise(prob) > k`` for k = 0..255 (the map above t = k / 255): (256,) float64.

    A binary map and a binary truth give phi only four values (one per truth/prediction combination), so the
    curve follows from four pixel counts per threshold, read off the histograms of the 8-bit map on and off the
    object; ``e_measure`` of the thresholded map is the direct form (the tests compare the two).
    """
    prob, gt = _inputs(prob, gt)
    n = gt.size
    q = quantise(prob)
    above = [np.cumsum(np.bincount(q[part], minlength=E_LEVELS)[::-1])[::-1] for part in (gt, ~gt)]
    # above[.][k] = pixels with q >= k; q > k is the count from k + 1 on
    tp, fp = (np.append(counts[1:], 0) for counts in above)  # (256,) on the object, off it
    g = int(np.count_nonzero(gt))
    if g == 0:
        return (n - fp) / n  # mean of 1 - F
    if g == n:
        return tp / n  # mean of F
    fn, tn = g - tp, n - g - fp
    mean_g, mean_f = g / n, (tp + fp) / n  # scalar, (256,)
    total = np.zeros(E_LEVELS)
    for count, value_g, value_f in ((tp, 1, 1), (fp, 0, 1), (fn, 1, 0), (tn, 0, 0)):
        a, b = value_g - mean_g, value_f - mean_f
        xi = 2 * a * b / (a * a + b * b)
        total += count * (1 + xi) ** 2 / 4
    return total / n


# ---------------------------------------------------------------- one image, one set


def polyp_image_metrics(prob, gt, case_id: str | None = None) -> dict:
    """Every per-image metric of one image, and its E-measure curve (for the set's maxEm) under "em_curve"."""
    prob, gt = _inputs(prob, gt)
    dice, iou = dice_iou(prob, gt)
    curve = e_measure_curve(prob, gt)
    row = {"dice": dice, "iou": iou, "mae": mae(prob, gt), "wfm": weighted_f_measure(prob, gt),
           "sm": s_measure(prob, gt), "mean_em": float(curve.mean()), "em_curve": curve}
    if case_id is not None:
        row["case_id"] = case_id
    return row


SUMMARY_NAMES = {"dice": "mDice", "iou": "mIoU", "mae": "MAE", "wfm": "wFm", "sm": "Sm", "mean_em": "meanEm"}


def summarize_polyp_set(rows: list[dict]) -> dict:
    """The per-image means of a set of images (mDice, mIoU, MAE, wFm, Sm, meanEm) and maxEm: the maximum over
    thresholds of the E-measure curve averaged over the images."""
    if not rows:
        raise ValueError("no images to summarize")
    summary = {"images": len(rows)}
    summary.update({name: float(np.mean([r[key] for r in rows])) for key, name in SUMMARY_NAMES.items()})
    summary["maxEm"] = float(np.mean([r["em_curve"] for r in rows], axis=0).max())
    return summary


# What each metric is, written into eval/summary.json beside the numbers.
DEFINITIONS = {
    "mDice, mIoU": "per image, of prob >= 0.5 against the mask binarised at 128 (> 128), then the mean over "
    "images; truth and prediction both empty -> 1",
    "MAE": "per image, mean |prob - mask| over the pixels, then the mean over images",
    "wFm": "weighted F-measure (Margolin et al., CVPR 2014), beta^2 = 1, of the probability map; an empty truth -> 0",
    "Sm": "S-measure (Fan et al., ICCV 2017), alpha 0.5, of the probability map; an empty truth -> 1 - mean(prob)",
    "meanEm": "E-measure (Fan et al., IJCAI 2018) of the 8-bit map round(255 prob) > k averaged over k = 0..255 "
    "(the toolbox's thresholds t = 0, 1/255, .., 1; the last one empties every map), then over images; an empty "
    "truth -> mean(1 - F)",
    "maxEm": "the maximum over those thresholds of the E-measure averaged over the set's images",
    "probabilities": "the sigmoid output resized (bilinear) to the image's size, not min-max stretched",
}
