"""Paired image/label transforms of the paper's two recipes, with the official code's defects fixed.

Every transform is a callable ``transform(image, label, rng) -> (image, label)``:
image float32 numpy (H, W, C) raw intensities -> float32 tensor (C, h, w); label int64 numpy (H, W) -> int64
tensor (h, w) (``None`` passes through). All randomness comes from ``rng`` (a ``np.random.Generator``), so a
sample's augmentation is fixed by the seed the dataset derives for it.

Fixed against the official code: a fresh rotation angle per sample (not one per run); labels are only ever
moved with nearest neighbour (never bilinear + threshold); metrics are computed at the original size through
``resize_to``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NORMALIZATIONS = ("minmax255", "none", "zscore")
RECIPES = ("isic", "synapse", "none")


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """Per-image intensity normalisation of a (H, W, C) array, by name (recorded in run configs).

    ``minmax255``: the official ISIC pipeline ((x - mean) / std, then min-max to [0, 255]) is an affine map
    followed by min-max, i.e. exactly a per-image min-max to [0, 255] over all channels; computed as such.
    ``none``: as stored (Synapse slices are already in [0, 1]). ``zscore``: per channel (x - mean) / std (MRI).
    A constant image (or channel) maps to zeros instead of dividing by zero.
    """
    image = np.asarray(image, dtype=np.float32)
    if mode == "none":
        return image
    if mode == "minmax255":
        low, high = float(image.min()), float(image.max())
        if high <= low:
            return np.zeros_like(image)
        return (image - low) * np.float32(255.0 / (high - low))
    if mode == "zscore":
        mean = image.mean(axis=(0, 1), keepdims=True)
        std = image.std(axis=(0, 1), keepdims=True)
        return np.where(std > 0, (image - mean) / np.where(std > 0, std, 1), 0).astype(np.float32)
    raise ValueError(f"unknown normalization {mode!r}; choose one of {', '.join(NORMALIZATIONS)}")


def _size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def to_tensors(image: np.ndarray, label: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H, W, C) float32 numpy -> (C, H, W) tensor; (H, W) label -> int64 tensor."""
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (H, W, C), got {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    y = None if label is None else torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    return x, y


def rotate(image: torch.Tensor, label: torch.Tensor | None, degrees: float):
    """Rotate about the centre on the same canvas, zeros outside: image bilinear, label nearest.

    image: (C, H, W) float; label: (H, W) int64.
    """
    _, h, w = image.shape
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    # Output -> input map in normalised [-1, 1] coordinates; the H/W factors keep the rotation rigid in pixels.
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)  # (1, H, W, 2)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if label is not None:
        moved = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)
        label = moved[0, 0].round().long()
    return image, label


def resize(image: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int] | None, mode: str = "bilinear"):
    """image (C, H, W) with ``mode`` (antialiased when shrinking), label (H, W) with nearest neighbour."""
    if size is None or tuple(image.shape[-2:]) == tuple(size):
        return image, label
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    image = F.interpolate(image[None], size=size, mode=mode, align_corners=False, antialias=shrink)[0]
    if label is not None:
        label = resize_labels_to(label, size)
    return image, label


def resize_labels_to(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map (h, w) or (B, h, w) to ``size`` (pixel-centre aligned)."""
    x = labels[None] if labels.dim() == 2 else labels
    out = F.interpolate(x[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].round().long()
    return out[0] if labels.dim() == 2 else out


def resize_to(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of probabilities (K, h, w) or (B, K, h, w) back to the original ``size`` (H, W).

    Resize probabilities (not labels) and threshold/argmax afterwards, at the size the metrics are counted at.
    """
    x = probs[None] if probs.dim() == 3 else probs
    if tuple(x.shape[-2:]) != tuple(size):
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
    return x[0] if probs.dim() == 3 else x


@dataclass(frozen=True)
class PairedTransform:
    """One recipe at one size; ``repr`` records every choice (for run configs)."""

    recipe: str = "none"
    image_size: tuple[int, int] | None = None
    normalization: str = "none"
    resize_label: bool = True

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; "
                             f"choose one of {', '.join(NORMALIZATIONS)}")

    def __call__(self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
        x, y = to_tensors(normalize(image, self.normalization), label)  # x: (C, H, W), y: (H, W)
        mode = "bilinear"
        if self.recipe == "isic":
            x, y = _isic_augment(x, y, rng)
        elif self.recipe == "synapse":
            x, y = _synapse_augment(x, y, rng)
            mode = "bicubic"  # the official Synapse code zooms images with cubic splines
        x, y_resized = resize(x, y, self.image_size, mode)
        return x.contiguous(), (y_resized if self.resize_label else y)


def _isic_augment(x, y, rng):
    """Horizontal flip 0.5, vertical flip 0.5, rotation by a fresh angle in [0, 360) with p 0.5."""
    if rng.random() < 0.5:
        x, y = x.flip(-1), (None if y is None else y.flip(-1))
    if rng.random() < 0.5:
        x, y = x.flip(-2), (None if y is None else y.flip(-2))
    if rng.random() < 0.5:
        x, y = rotate(x, y, rng.uniform(0.0, 360.0))
    return x, y


def _synapse_augment(x, y, rng):
    """p 0.5: rot90 (k in 0..3) + flip along a random axis; else p 0.5 (0.25 overall): rotation in [-20, 20]."""
    if rng.random() < 0.5:
        k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2)) - 2  # axis -2 (rows) or -1 (columns)
        x = torch.rot90(x, k, dims=(-2, -1)).flip(axis)
        y = None if y is None else torch.rot90(y, k, dims=(-2, -1)).flip(axis)
    elif rng.random() < 0.5:
        x, y = rotate(x, y, rng.uniform(-20.0, 20.0))
    return x, y


def train_transform(recipe: str, image_size, normalization: str) -> PairedTransform:
    """The training transform of ``recipe`` ("isic", "synapse" or "none": resize only)."""
    return PairedTransform(recipe, _size(image_size), normalization, True)


def eval_transform(image_size, normalization: str, resize_label: bool = True) -> PairedTransform:
    """Normalise and resize only. ``resize_label=False`` keeps the label at its original size (batch 1),
    for metrics at the image's size; otherwise labels are resized with nearest neighbour (validation loss)."""
    return PairedTransform("none", _size(image_size), normalization, resize_label)
