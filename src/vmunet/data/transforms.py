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


def _grid(matrix: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Source coordinates (1, h, w, 2) of an output of ``size`` under a 2x2 output->source ``matrix``.

    Coordinates are normalised to [-1, 1] at pixel edges (grid_sample's align_corners=False), so one map serves
    any source resolution. Built by broadcasting: F.affine_grid is much slower on the CPU.
    """
    h, w = size
    # float64, so that label indices computed from it land exactly where "nearest-exact" puts them
    xs = (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1  # (W,)
    ys = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1  # (H,)
    m = [[float(v) for v in row] for row in matrix]
    gx = m[0][0] * xs[None, :] + m[0][1] * ys[:, None]  # (H, W) source x
    gy = m[1][0] * xs[None, :] + m[1][1] * ys[:, None]  # (H, W) source y
    return torch.stack([gx, gy], dim=-1)[None]


def _sample_labels(label: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest neighbour: gather the source pixel of each output pixel (exact ids, 0 outside the source)."""
    h, w = label.shape
    col = torch.floor((grid[0, ..., 0] + 1) * (w / 2)).long()  # pixel j covers [j, j + 1) in these units
    row = torch.floor((grid[0, ..., 1] + 1) * (h / 2)).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    picked = label[row.clamp(0, h - 1), col.clamp(0, w - 1)]
    return torch.where(inside, picked, torch.zeros((), dtype=label.dtype))


def warp(image: torch.Tensor, label: torch.Tensor | None, matrix: np.ndarray, size: tuple[int, int]):
    """Apply a 2x2 output->source map in normalised coordinates, producing outputs of ``size``.

    image: (C, size) already resized to the output size (bilinear sampling); label: (H, W) at any size,
    sampled once with nearest neighbour from where it is (no label ever passes through two resamplings).
    """
    grid = _grid(matrix, size)
    if not np.allclose(matrix, np.eye(2)):
        image = F.grid_sample(image[None], grid.to(image.dtype), mode="bilinear", padding_mode="zeros",
                              align_corners=False)[0]
    if label is not None:
        label = _sample_labels(label, grid)
    return image, label


def rotation_matrix(degrees: float, height: int, width: int) -> np.ndarray:
    """Output->source map of a rotation about the centre on the same (height, width) canvas.

    The height/width factors keep the rotation rigid in pixels of the original canvas.
    """
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s * height / width], [s * width / height, c]])


HFLIP = np.array([[-1.0, 0.0], [0.0, 1.0]])
VFLIP = np.array([[1.0, 0.0], [0.0, -1.0]])
ROT90 = np.array([[0.0, -1.0], [1.0, 0.0]])  # a quarter turn of the (resized, square) canvas


def rotate(image: torch.Tensor, label: torch.Tensor | None, degrees: float):
    """Rotate about the centre on the same canvas, zeros outside: image (C, H, W) bilinear, label nearest."""
    _, h, w = image.shape
    return warp(image, label, rotation_matrix(degrees, h, w), (h, w))


def resize_labels_to(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map (h, w) or (B, h, w) to ``size``, pixel-centre aligned.

    Output pixel i takes input pixel floor((i + 0.5) * in / out) (torch's "nearest-exact"), by indexing.
    """
    h, w = labels.shape[-2:]
    rows = ((torch.arange(size[0], dtype=torch.float64) + 0.5) * (h / size[0])).long().clamp(max=h - 1)
    cols = ((torch.arange(size[1], dtype=torch.float64) + 0.5) * (w / size[1])).long().clamp(max=w - 1)
    return labels[..., rows[:, None], cols[None, :]]


def resize_to(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of probabilities (K, h, w) or (B, K, h, w) back to the original ``size`` (H, W).

    Resize probabilities (not labels) and threshold/argmax afterwards, at the size the metrics are counted at.
    """
    x = probs[None] if probs.dim() == 3 else probs
    if tuple(x.shape[-2:]) != tuple(size):
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
    return x[0] if probs.dim() == 3 else x


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(C, H, W) -> (C, size) with ``mode``, antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image[None], size=size, mode=mode, align_corners=False, antialias=shrink)[0]


def isic_params(rng: np.random.Generator) -> dict:
    """Horizontal flip 0.5, vertical flip 0.5, and with p 0.5 a rotation by a fresh angle in [0, 360)."""
    hflip, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    angle = float(rng.uniform(0.0, 360.0)) if rng.random() < 0.5 else None
    return {"hflip": hflip, "vflip": vflip, "angle": angle}


def isic_matrix(params: dict, height: int, width: int) -> np.ndarray:
    """Flips then rotation (the official order): output->source = flips @ rotation^-1."""
    m = np.eye(2)
    if params["hflip"]:
        m = m @ HFLIP
    if params["vflip"]:
        m = m @ VFLIP
    if params["angle"] is not None:
        m = m @ rotation_matrix(params["angle"], height, width)
    return m


def synapse_params(rng: np.random.Generator) -> dict:
    """p 0.5: rot90 by k in 0..3 then a flip along a random axis; else p 0.5 (0.25 overall): rotation within
    [-20, 20] degrees; else nothing."""
    if rng.random() < 0.5:
        return {"k": int(rng.integers(0, 4)), "flip_axis": int(rng.integers(0, 2)), "angle": None}
    if rng.random() < 0.5:
        return {"k": None, "flip_axis": None, "angle": float(rng.uniform(-20.0, 20.0))}
    return {"k": None, "flip_axis": None, "angle": None}


def synapse_matrix(params: dict, height: int, width: int) -> np.ndarray:
    m = np.eye(2)
    if params["k"] is not None:
        m = m @ np.linalg.matrix_power(ROT90, params["k"]) @ (VFLIP if params["flip_axis"] == 0 else HFLIP)
    if params["angle"] is not None:
        m = m @ rotation_matrix(params["angle"], height, width)
    return m


@dataclass(frozen=True)
class PairedTransform:
    """One recipe at one size; ``repr`` records every choice (for run configs).

    Geometry is composed into one map and applied once at the output size: the image is first resized
    (antialiased), then flipped/rotated with bilinear sampling; the label is sampled once, nearest neighbour,
    from the original. Equivalent to the official flip -> rotate -> resize order, at a fraction of the cost.
    """

    recipe: str = "none"
    image_size: tuple[int, int] | None = None
    normalization: str = "none"
    resize_label: bool = True
    interpolation: str | None = None  # image resize mode; None: the recipe's own (see recipe_interpolation)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; "
                             f"choose one of {', '.join(NORMALIZATIONS)}")

    def __call__(self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
        x, y = to_tensors(normalize(image, self.normalization), label)  # x: (C, H, W), y: (H, W)
        h, w = x.shape[-2:]
        size = self.image_size or (h, w)
        if self.recipe == "isic":
            matrix = isic_matrix(isic_params(rng), h, w)
        elif self.recipe == "synapse":
            matrix = synapse_matrix(synapse_params(rng), h, w)
        else:
            matrix = np.eye(2)
        x = resize_image(x, size, self.interpolation or recipe_interpolation(self.recipe))
        if y is not None and not self.resize_label:
            x, _ = warp(x, None, matrix, size)
            return x.contiguous(), y
        x, y = warp(x, y, matrix, size)
        return x.contiguous(), y


def recipe_interpolation(recipe: str) -> str:
    """How a recipe resizes images: the official Synapse code zooms them with cubic splines (training and
    test alike), the ISIC code bilinearly. Evaluation and prediction must resize the same way."""
    return "bicubic" if recipe == "synapse" else "bilinear"


def train_transform(recipe: str, image_size, normalization: str) -> PairedTransform:
    """The training transform of ``recipe`` ("isic", "synapse" or "none": resize only)."""
    return PairedTransform(recipe, _size(image_size), normalization, True)


def eval_transform(image_size, normalization: str, resize_label: bool = True,
                   interpolation: str = "bilinear") -> PairedTransform:
    """Normalise and resize only, with the training recipe's ``interpolation``. ``resize_label=False`` keeps
    the label at its original size (batch 1), for metrics at the image's size; otherwise labels are resized
    with nearest neighbour (validation loss)."""
    return PairedTransform("none", _size(image_size), normalization, resize_label, interpolation)
