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


def check_finite(image: np.ndarray, source: str | Path) -> None:
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{source}: image has NaN or infinite values")


def _show(values: np.ndarray, limit: int = 10) -> str:
    items = [f"{v:g}" if isinstance(v, float) else str(v) for v in values.tolist()[:limit]]
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return "[" + ", ".join(items) + more + "]"
