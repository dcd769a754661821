"""Validation shared by the readers: every error names the file it is about."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def check_labels(label: np.ndarray, num_classes: int, source: str | Path) -> np.ndarray:
    """Return ``label`` as int64 after checking that every value is a class id in [0, num_classes).

    Float label maps (Synapse npz, NIfTI) are accepted when every value is a whole number.
    """
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            bad = np.unique(label[~np.isfinite(label) | (label != np.round(label))])
            raise ValueError(f"{source}: label map has non-integer values {_show(bad)}")
    elif label.dtype.kind == "b":
        label = label.astype(np.uint8)
    elif label.dtype.kind not in "iu":
        raise ValueError(f"{source}: label map has dtype {label.dtype}, expected integers")
    label = label.astype(np.int64, copy=False)
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        values = np.unique(label)
        bad = values[(values < 0) | (values >= num_classes)]
        raise ValueError(f"{source}: label values {_show(bad)} are outside [0, {num_classes}) "
                         f"(values found: {_show(values)})")
    return label


def check_same_shape(image_shape: tuple, label_shape: tuple, source: str | Path) -> None:
    """Image (spatial part) and label must cover the same pixels."""
    if tuple(image_shape) != tuple(label_shape):
        raise ValueError(f"{source}: image shape {tuple(image_shape)} does not match label shape "
                         f"{tuple(label_shape)}")


def check_same_affine(affine, reference, source: str | Path, reference_name: str, atol: float = 1e-4) -> None:
    """Two NIfTI files of one case (an image and its label, two channels) must lie on the same voxel grid; the
    tolerance absorbs float noise of the header (nnU-Net refuses such cases too)."""
    a, b = np.asarray(affine, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=atol):
        raise ValueError(f"{source}: affine {_matrix(a)} differs from {reference_name}'s {_matrix(b)} "
                         "(not on the same voxel grid: resample one onto the other)")


def _matrix(a: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.6g}" for v in row) for row in a[:3]) + "]"


IGNORE_LABEL = "ignore"  # nnU-Net's name for pixels left out of the loss and the metrics


def refuse_ignore_label(by_id: dict[int, str], source: str | Path) -> None:
    """nnU-Net's "ignore" label is not supported: trained as an ordinary class it would teach the model to
    predict "unknown" and score it; refused by name (one rule for dataset.json and labels.json)."""
    for class_id, name in by_id.items():
        if name == IGNORE_LABEL:
            raise ValueError(f"{source}: label {name!r} (id {class_id}) is nnU-Net's ignore label (pixels left out "
                             "of the loss and the metrics), which vmunet does not support: give those pixels a class "
                             f"(or the background) in the label files and remove {name!r} from the labels")


def check_finite(image: np.ndarray, source: str | Path) -> None:
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{source}: image has NaN or infinite values")


def _show(values: np.ndarray, limit: int = 10) -> str:
    """Values as the file holds them: 1.0000001 stays 1.0000001 (shortest repr of the array's own dtype)."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        items = [np.format_float_positional(v, trim="-") for v in values[:limit]]
    else:
        items = [str(v) for v in values.tolist()[:limit]]
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return "[" + ", ".join(items) + more + "]"
