"""Segmentation metrics of the paper's protocols: counts first, then named reductions.

- ISIC: ``pooled_binary_metrics`` counts tp/fp/fn/tn over all pixels of all images (the paper's numbers);
  ``per_image_binary_metrics`` averages the same ratios per image (what most newer papers report).
- Synapse: ``synapse_case_metrics`` gives per-organ DSC and HD95 of one volume with the protocol's rules for
  empty masks; ``summarize_cases``, ``write_per_case_csv`` and ``format_table`` make the tables.

``hd95`` equals ``medpy.metric.binary.hd95`` (surface = mask XOR its erosion by the connectivity-1 structure,
array edges counting as background; distances from each surface to the other, both directions pooled,
95th percentile with linear interpolation) but finds nearest surface voxels with a k-d tree over the surface
points, which is exact and much faster than a distance transform of the whole volume.
``hd95_ref`` is the direct distance-transform transcription, kept as the obviously-correct twin for tests.
``nsd`` (normalised surface Dice at a tolerance) counts the same surface voxels and distances, as MONAI's
``SurfaceDiceMetric`` does by default.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

BINARY_KEYS = ("miou", "dsc", "acc", "spe", "sen")
# Default NSD tolerance: one voxel at the ~1 mm in-plane spacing of CT/MRI, one pixel for images without a spacing
# (a border one pixel off still counts, two pixels off does not). Config key ``nsd_tolerance_mm``.
NSD_TOLERANCE_MM = 1.0


# ---------------------------------------------------------------- overlap


def _mask(x) -> np.ndarray:
    return np.atleast_1d(np.asarray(x)).astype(bool, copy=False)


def confusion_counts(pred, gt) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of two binary masks of the same shape (non-zero = foreground)."""
    pred, gt = _mask(pred), _mask(gt)
    _check_shapes(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(gt)) - tp
    return tp, fp, fn, pred.size - tp - fp - fn


def dice(pred, gt, zero_division: float = 1.0) -> float:
    """``2 |A & B| / (|A| + |B|)``; two empty masks score ``zero_division`` (1: nothing to find, nothing
    wrongly found; pass ``math.nan`` to leave such cases out of a mean)."""
    tp, fp, fn, _ = confusion_counts(pred, gt)
    return _ratio(2 * tp, 2 * tp + fp + fn, zero_division)


def dice_from_counts(tp, fp, fn) -> np.ndarray:
    """Per-class DSC ``2 tp / (2 tp + fp + fn)`` from counts (numbers or arrays); NaN for a class absent from both
    the truth and the prediction (nothing to score: left out of every mean, as nnU-Net does), 0 for a class in
    only one of them. The one rule of the multi-class scores: training's validation Dice (counts pooled over the
    selection set) and ``multiclass_image_metrics`` (counts of one image, what evaluate and cv report)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.full_like(denominator, np.nan), where=denominator > 0)


def nanmean(values) -> float:
    """The mean of the values that are not NaN; NaN when none is (summaries and the validation Dice)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else math.nan


def _ratio(num: int, den: int, zero_division: float) -> float:
    return num / den if den else float(zero_division)


def _check_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")


# ---------------------------------------------------------------- ISIC: pooled and per-image


def _binary_ratios(tp: int, fp: int, fn: int, tn: int, zero_division: float) -> dict[str, float]:
    return {
        "miou": _ratio(tp, tp + fp + fn, zero_division),  # foreground IoU, as the paper's "mIoU"
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "acc": _ratio(tp + tn, tp + fp + fn + tn, zero_division),
        "spe": _ratio(tn, tn + fp, zero_division),
        "sen": _ratio(tp, tp + fn, zero_division),
    }


def _images(x) -> list:
    """A list of per-image arrays from a list/tuple or from an array/tensor stacked along axis 0."""
    if isinstance(x, (list, tuple)):
        return list(x)
    x = np.asarray(x)
    return [x] if x.ndim < 3 else list(x)


def _image_counts(probs_or_masks, gts, threshold: float) -> list[tuple[int, int, int, int]]:
    preds, gts = _images(probs_or_masks), _images(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground truths")
    # A boolean mask passes ">= threshold" unchanged; probabilities are thresholded as the official code does.
    return [confusion_counts(np.asarray(p) >= threshold, np.asarray(g) >= 0.5) for p, g in zip(preds, gts)]


def pooled_binary_metrics(probs_or_masks, gts, threshold: float = 0.5, zero_division: float = 0.0) -> dict:
    """mIoU, DSC, accuracy, specificity, sensitivity from counts summed over all pixels of all images.

    The ISIC protocol of the paper. Inputs: sequences of per-image arrays (sizes may differ) or stacked arrays;
    predictions are probabilities (>= threshold is foreground) or boolean masks. A ratio with a zero
    denominator is ``zero_division`` (0, as the official code).
    """
    counts = np.sum(_image_counts(probs_or_masks, gts, threshold), axis=0, dtype=np.int64)
    return _binary_ratios(*(int(c) for c in counts), zero_division)


def per_image_binary_metrics(probs_or_masks, gts, threshold: float = 0.5, zero_division: float = 1.0) -> dict:
    """The same five ratios computed per image from that image's counts, then averaged over images.

    Empty-mask policy: a ratio with a zero denominator (DSC and mIoU when neither prediction nor ground truth
    has foreground, sensitivity when the ground truth is empty, specificity when it is all foreground) scores
    ``zero_division``: 1 by default, since there was nothing to find and nothing was wrongly found. Pass
    ``math.nan`` to leave such images out of that ratio's mean instead.
    """
    per_image = [_binary_ratios(*c, zero_division) for c in _image_counts(probs_or_masks, gts, threshold)]
    if not per_image:
        raise ValueError("no images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN, said by the result itself
        return {k: float(np.nanmean([m[k] for m in per_image])) for k in BINARY_KEYS}


# ---------------------------------------------------------------- surface distances


def _spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)) if np.ndim(spacing) == 0 \
        else np.asarray(spacing, dtype=np.float64)
    if values.shape != (ndim,):
        raise ValueError(f"spacing {spacing} has {values.size} values for {ndim}-D masks")
    if np.any(values <= 0):
        raise ValueError(f"spacing {spacing} must be positive")
    return values


def _crop_to_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (where the array allows).

    The margin keeps the erosion identical (array edges stay edges), and every surface voxel is inside the
    box, so nearest-surface distances are unchanged.
    """
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(np.any(union, axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(hits[0] - 1, 0), min(hits[-1] + 2, union.shape[axis])))
    return pred[tuple(box)], gt[tuple(box)]


def surface(mask: np.ndarray) -> np.ndarray:
    """``mask XOR erosion(mask)`` with the connectivity-1 structure and background beyond the array edges.

    The same as scipy's ``binary_erosion(mask, generate_binary_structure(ndim, 1))`` (medpy's definition),
    computed with shifted views, which is an order of magnitude faster.
    """
    inner = mask.copy()
    for axis in range(mask.ndim):
        n = mask.shape[axis]
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        inner[tuple(lo)] &= mask[tuple(hi)]  # neighbour at +1
        inner[tuple(hi)] &= mask[tuple(lo)]  # neighbour at -1
        edge = [slice(None)] * mask.ndim
        edge[axis] = 0
        inner[tuple(edge)] = False
        edge[axis] = n - 1
        inner[tuple(edge)] = False
    return mask & ~inner


def surface_distances(pred, gt, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of ``pred`` to the nearest of ``gt``, and from ``gt`` to ``pred``.

    Raises ValueError when either mask is empty (the distance is undefined; medpy raises too).
    """
    pred, gt = _mask(pred), _mask(gt)
    _check_shapes(pred, gt)
    if not pred.any():
        raise ValueError("surface distance: the prediction is empty")
    if not gt.any():
        raise ValueError("surface distance: the ground truth is empty")
    sampling = _spacing(spacing, pred.ndim)
    pred, gt = _crop_to_union(pred, gt)
    pred_border, gt_border = surface(pred), surface(gt)
    return _directed(pred_border, gt_border, sampling), _directed(gt_border, pred_border, sampling)


def _directed(queries: np.ndarray, sites: np.ndarray, sampling: np.ndarray, radius_voxels: float = 4.0):
    """Exact distance from every True voxel of ``queries`` to the nearest True voxel of ``sites``.

    Most surface voxels have a partner a few voxels away: look them up on the grid, trying neighbour offsets
    in increasing physical distance up to ``radius_voxels`` finest-axis voxels (the first hit is the nearest,
    exactly). The rest (far false positives, misses) go to a k-d tree over the site coordinates.
    """
    reach = np.floor(radius_voxels * sampling.min() / sampling).astype(int)  # per-axis offset limit
    radius = radius_voxels * sampling.min()
    padded = np.pad(sites, [(r, r) for r in reach])  # out-of-array neighbours read as "no site"
    strides = np.array(padded.strides) // padded.itemsize
    coords = np.stack(np.unravel_index(np.flatnonzero(queries), queries.shape), axis=1)  # (N, ndim) voxel indices
    remaining = np.arange(len(coords))
    flat = (coords + reach) @ strides  # (N,) flat indices into ``padded``
    distances = np.full(len(coords), np.inf)
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, len(reach))
    lengths = np.sqrt(((grid * sampling) ** 2).sum(1))
    order = np.argsort(lengths, kind="stable")
    grid, lengths = grid[order], lengths[order]
    inside = lengths <= radius
    sites_flat = padded.ravel()
    steps, lengths = grid[inside] @ strides, lengths[inside]
    # Offsets in blocks (one gather per block, nearest = first hit); small first blocks take the many voxels
    # whose partner is at distance 0 or 1 cheaply.
    bounds = sorted({min(b, len(steps)) for b in (0, 1, 7, 19, 27, *range(64, len(steps), 64), len(steps))})
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block, block_lengths = steps[start:stop], lengths[start:stop]
        hits = sites_flat[flat[:, None] + block[None, :]]  # (remaining, block)
        found = hits.any(1)
        distances[remaining[found]] = block_lengths[hits[found].argmax(1)]
        remaining, flat = remaining[~found], flat[~found]
        if len(remaining) == 0:
            return distances
    site_points = np.stack(np.unravel_index(np.flatnonzero(sites), sites.shape), axis=1) * sampling
    distances[remaining] = cKDTree(site_points).query(coords[remaining] * sampling, k=1, workers=-1)[0]
    return distances


def hd95(pred, gt, spacing=None) -> float:
    """95th percentile of the pooled surface distances of both directions (medpy's ``hd95``).

    ``spacing``: a number or one value per axis, in physical units; ``None`` gives voxels. Either mask empty:
    ValueError (the protocol's rules for empty masks are in ``synapse_case_metrics``).
    """
    d_pred, d_gt = surface_distances(pred, gt, spacing)
    return float(np.percentile(np.concatenate([d_pred, d_gt]), 95))


def nsd(pred, gt, tolerance_mm: float, spacing=None) -> float:
    """Normalised surface Dice: the fraction of both surfaces that lies within ``tolerance_mm`` of the other,
    ``(|{d_pred <= tau}| + |{d_gt <= tau}|) / (|d_pred| + |d_gt|)``.

    MONAI's ``compute_surface_dice`` (``SurfaceDiceMetric``, ``use_subvoxels=False``, Euclidean distances):
    every border voxel counts once (``surface``: mask XOR its connectivity-1 erosion, the voxels HD95 uses), its
    distance to the nearest border voxel of the other mask is spacing-aware, and "within" is ``<=``. DeepMind's
    surface-distance ``compute_surface_dice_at_tolerance`` has the same formula but weights each surface element
    by its area (marching-cubes surfels); on anisotropic grids the two differ somewhat. ``spacing``: a number or
    one value per axis, ``None`` gives voxels (then the tolerance is in voxels too).

    Empty masks (MONAI's rule): both empty -> NaN (no surface at all); exactly one empty -> 0.
    """
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"NSD tolerance must be a finite number >= 0 (got {tolerance_mm})")
    pred, gt = _mask(pred), _mask(gt)
    _check_shapes(pred, gt)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return math.nan
    if not has_pred or not has_gt:
        return 0.0
    d_pred, d_gt = surface_distances(pred, gt, spacing)
    within = np.count_nonzero(d_pred <= tolerance_mm) + np.count_nonzero(d_gt <= tolerance_mm)
    return float(within / (d_pred.size + d_gt.size))


def hd95_ref(pred, gt, spacing=None) -> float:
    """medpy's algorithm transcribed: scipy erosion and a Euclidean distance transform of the whole array."""
    pred, gt = _mask(pred), _mask(gt)
    if not pred.any() or not gt.any():
        raise ValueError("surface distance: a mask is empty")
    sampling = _spacing(spacing, pred.ndim)
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    borders = [m ^ ndimage.binary_erosion(m, structure=structure, iterations=1) for m in (pred, gt)]
    d_pred = ndimage.distance_transform_edt(~borders[1], sampling=sampling)[borders[0]]
    d_gt = ndimage.distance_transform_edt(~borders[0], sampling=sampling)[borders[1]]
    return float(np.percentile(np.concatenate([d_pred, d_gt]), 95))


# ---------------------------------------------------------------- Synapse: per organ, per case


def synapse_case_metrics(pred_labels, gt_labels, num_classes: int, spacing=None, strict: bool = False,
                         case_id: str | None = None, nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict:
    """Per-class DSC, HD95 and NSD of one case for classes 1..num_classes-1:
    ``{"dice": [...], "hd95": [...], "nsd": [...]}``.

    The protocol's rules (TransUNet's ``calculate_metric_percase``, used by the paper): prediction and ground
    truth both non-empty -> dice, hd95; prediction non-empty and ground truth empty -> 1, 0; prediction empty
    -> 0, 0. ``strict=True`` reports an organ absent from the ground truth as NaN, NaN instead, and the HD95 of
    a missed organ (empty prediction) as NaN, since it is undefined rather than 0. NSD (at ``nsd_tolerance_mm``)
    follows the DSC: ``nsd`` when both are non-empty, otherwise the value the DSC gets (1, 0 or NaN).
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_shapes(pred_labels, gt_labels)
    dices, hds, nsds = [], [], []
    for k in range(1, num_classes):
        pred, gt = pred_labels == k, gt_labels == k
        has_pred, has_gt = bool(pred.any()), bool(gt.any())
        if has_pred and has_gt:
            d, h, s = dice(pred, gt), hd95(pred, gt, spacing), nsd(pred, gt, nsd_tolerance_mm, spacing)
        elif strict and not has_gt:
            d, h, s = math.nan, math.nan, math.nan
        elif has_pred:  # the protocol rewards a prediction of an absent organ
            d, h, s = 1.0, 0.0, 1.0
        else:
            d, h, s = 0.0, (math.nan if strict else 0.0), 0.0
        dices.append(float(d))
        hds.append(float(h))
        nsds.append(float(s))
    row = {"dice": dices, "hd95": hds, "nsd": nsds}
    if case_id is not None:
        row["case_id"] = case_id
    return row


def binary_image_metrics(pred, gt, spacing=None, case_id: str | None = None,
                         nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict:
    """DSC, HD95 and NSD of one 2D binary image (ISIC), as a row for ``summarize_cases``:
    ``{"dice": [d], "hd95": [h], "nsd": [s]}``.

    Empty-mask policy, the same as ``per_image_binary_metrics``'s default: truth and prediction both empty ->
    DSC 1, HD95 0, NSD 1 (nothing to find, nothing wrongly found); exactly one of them empty -> DSC 0, NSD 0 (all
    of it missed or all of it wrong) and HD95 NaN (no surface to measure to; left out of the HD95 means).
    The Synapse rules of ``synapse_case_metrics`` (a prediction of an absent organ scores 1) are for organs
    of a volume, not for lesions of an image.
    """
    pred, gt = _mask(pred), _mask(gt)
    _check_shapes(pred, gt)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if has_pred and has_gt:
        d, h, s = dice(pred, gt), hd95(pred, gt, spacing), nsd(pred, gt, nsd_tolerance_mm, spacing)
    elif not has_pred and not has_gt:
        d, h, s = 1.0, 0.0, 1.0
    else:
        d, h, s = 0.0, math.nan, 0.0
    row = {"dice": [float(d)], "hd95": [float(h)], "nsd": [float(s)]}
    if case_id is not None:
        row["case_id"] = case_id
    return row


def multiclass_image_metrics(pred_labels, gt_labels, num_classes: int, spacing=None,
                             case_id: str | None = None, nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict:
    """Per-class DSC, IoU, HD95 and NSD of one 2D image of class ids, classes 1..num_classes-1:
    ``{"dice": [...], "iou": [...], "hd95": [...], "nsd": [...]}``.

    Empty masks per class: absent from both truth and prediction -> NaN for all four (the class is not in
    this image; left out of every mean, as nnU-Net does); absent from exactly one -> DSC 0, IoU 0, HD95 NaN,
    NSD 0.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_shapes(pred_labels, gt_labels)
    dices, ious, hds, nsds = [], [], [], []
    for k in range(1, num_classes):
        pred, gt = pred_labels == k, gt_labels == k
        tp, fp, fn, _ = confusion_counts(pred, gt)
        d = float(dice_from_counts(tp, fp, fn))  # NaN when absent from both, 0 when in only one
        has_pred, has_gt = fp + tp > 0, fn + tp > 0
        if has_pred and has_gt:
            i, h = tp / (tp + fp + fn), hd95(pred, gt, spacing)
            s = nsd(pred, gt, nsd_tolerance_mm, spacing)
        elif has_pred or has_gt:
            i, h, s = 0.0, math.nan, 0.0
        else:
            i, h, s = math.nan, math.nan, math.nan
        dices.append(float(d))
        ious.append(float(i))
        hds.append(float(h))
        nsds.append(float(s))
    row = {"dice": dices, "iou": ious, "hd95": hds, "nsd": nsds}
    if case_id is not None:
        row["case_id"] = case_id
    return row


# What each field of an evaluation summary does with empty masks (written into eval/summary.json).
IMAGE_POLICY = {
    "per_case, per_class, mean_dice, mean_hd95, mean_nsd": "per image (binary_image_metrics): truth and prediction "
    "both empty -> DSC 1, HD95 0, NSD 1; one of them empty -> DSC 0, HD95 NaN (left out of the HD95 means), NSD 0",
    "per_image_mean": "per image, then the mean: a ratio with a zero denominator is 1 (DSC and mIoU of "
    "empty/empty, sensitivity of an empty truth, specificity of an all-foreground truth)",
    "pooled": "pixels counted over all images, then the ratios (the paper's numbers); a zero denominator is 0",
}
MULTICLASS_IMAGE_POLICY = {
    "per_case, per_class, mean_dice, mean_iou, mean_hd95, mean_nsd": "per image and class "
    "(multiclass_image_metrics): a class absent from both truth and prediction -> NaN (left out of every mean); "
    "absent from exactly one -> DSC 0, IoU 0, HD95 NaN (left out of the HD95 means), NSD 0",
}
VOLUME_POLICY = {
    "per_case, per_class, mean_dice, mean_hd95, mean_nsd": "the Synapse protocol per organ (synapse_case_metrics): "
    "both non-empty -> DSC, HD95, NSD; organ absent from the truth but predicted -> 1, 0, 1; organ not predicted "
    "-> 0, 0, 0",
}


def case_metrics(kind: str, pred, case: dict, num_classes: int, nsd_tolerance_mm: float) -> dict:
    """One case's metric row by the data kind's protocol ("images" or "volumes"; shared by evaluate and
    ``vmunet cv``)."""
    spacing = case.get("spacing")
    if kind == "images" and num_classes == 1:
        return binary_image_metrics(pred, case["label"], spacing=spacing, case_id=case["case_id"],
                                    nsd_tolerance_mm=nsd_tolerance_mm)
    classes = max(num_classes, 2)
    if kind == "images":  # multi-class 2D folders: per-class DSC, IoU, HD95 (pixels)
        return multiclass_image_metrics(pred, case["label"], classes, spacing=spacing,
                                        case_id=case["case_id"], nsd_tolerance_mm=nsd_tolerance_mm)
    return synapse_case_metrics(pred, case["label"], classes, spacing=spacing, case_id=case["case_id"],
                                nsd_tolerance_mm=nsd_tolerance_mm)


def default_names(classes: int) -> list[str]:
    """Class names where a run has none: background, class 1, ..."""
    return ["background"] + [f"class {k}" for k in range(1, classes)]


def _class_names(rows: Sequence[dict], class_names: Sequence[str]) -> list[str]:
    """Foreground names; a list that also names the background (index 0) is accepted."""
    n = len(rows[0]["dice"])
    names = list(class_names)
    if len(names) == n + 1:
        names = names[1:]
    if len(names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} foreground classes")
    return names


def summarize_cases(rows: Sequence[dict], class_names: Sequence[str]) -> dict:
    """Per-case means (over organs), per-organ means (over cases), and the overall means.

    The overall mean is the mean over organs of the per-organ means (the protocol's order); NaN entries
    (strict mode) are left out of every mean.
    """
    if not rows:
        raise ValueError("no cases to summarize")
    names = _class_names(rows, class_names)
    keys = _metric_keys(rows)
    tables = {key: np.array([r[key] for r in rows], dtype=np.float64) for key in keys}  # (cases, organs)
    per_class = {name: {key: nanmean(tables[key][:, j]) for key in keys} for j, name in enumerate(names)}
    per_case = [{"case_id": r.get("case_id", str(i)), **{key: nanmean(tables[key][i]) for key in keys}}
                for i, r in enumerate(rows)]
    return {
        "class_names": names,
        "per_case": per_case,
        "per_class": per_class,
        **{f"mean_{key}": nanmean([v[key] for v in per_class.values()]) for key in keys},
    }


def _metric_keys(rows: Sequence[dict]) -> list[str]:
    """"dice", then "iou" when the rows have it (multi-class images), then "hd95", then "nsd" when they have it."""
    return [key for key in ("dice", "iou", "hd95", "nsd") if key in rows[0]]


def write_per_case_csv(path: str | Path, rows: Sequence[dict], class_names: Sequence[str]) -> None:
    """One line per case (DSC and HD95 per organ, then the case means) and a final line of means."""
    summary = summarize_cases(rows, class_names)
    names, keys = summary["class_names"], _metric_keys(rows)
    header = ["case_id"] + [f"{k}_{n}" for k in keys for n in names] + [f"mean_{k}" for k in keys]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, case in zip(rows, summary["per_case"]):
            writer.writerow([case["case_id"], *(v for k in keys for v in row[k]), *(case[k] for k in keys)])
        writer.writerow(["mean", *(summary["per_class"][n][k] for k in keys for n in names),
                         *(summary[f"mean_{k}"] for k in keys)])


def format_table(rows: Sequence[dict], class_names: Sequence[str], per_case: bool = False) -> str:
    """A printable table: DSC (%), HD95 (and IoU, NSD (%) when the rows have them) per organ and their mean;
    optionally the per-case means too."""
    summary = summarize_cases(rows, class_names)
    width = max(len("mean"), *(len(n) for n in summary["class_names"]),
                *(len(c["case_id"]) for c in summary["per_case"])) + 2
    iou, surface_dice = "iou" in rows[0], "nsd" in rows[0]
    lines = [f"{'organ':<{width}}{'DSC (%)':>9}" + (f"{'IoU (%)':>9}" if iou else "") + f"{'HD95':>9}"
             + (f"{'NSD (%)':>9}" if surface_dice else "")]
    for name, v in [*summary["per_class"].items(), ("mean", {k[5:]: v for k, v in summary.items()
                                                             if k.startswith("mean_")})]:
        lines.append(f"{name:<{width}}{100 * v['dice']:>9.2f}" + (f"{100 * v['iou']:>9.2f}" if iou else "")
                     + f"{v['hd95']:>9.2f}" + (f"{100 * v['nsd']:>9.2f}" if surface_dice else ""))
    if per_case:
        lines += ["", f"{'case':<{width}}{'DSC (%)':>9}{'HD95':>9}"]
        lines += [f"{c['case_id']:<{width}}{100 * c['dice']:>9.2f}{c['hd95']:>9.2f}" for c in summary["per_case"]]
    return "\n".join(lines)
