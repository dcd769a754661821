"""Pictures for humans: image | truth | prediction side by side, with a fixed colour per class (PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Class 0 stays grey; then red, green, blue, yellow, magenta, cyan, orange, purple, ...
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [240, 50, 230],
                    [70, 240, 240], [245, 130, 48], [145, 30, 180], [210, 245, 60], [250, 190, 212]], np.uint8)


def to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) any range -> (H, W) uint8 stretched between the 1st and 99th percentiles."""
    low, high = np.percentile(image, [1, 99])
    return (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def blend(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) uint8 + (H, W) labels -> (H, W, 3) uint8 with classes > 0 tinted."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    colours = PALETTE[labels % len(PALETTE)].astype(np.float32)
    tinted = labels > 0
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * colours[tinted]
    return rgb.astype(np.uint8)


def triptych(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(H, W) image and label maps -> (H, 3W + 8, 3) uint8: image | truth | prediction."""
    grey = to_grey_uint8(image)
    gap = np.full((grey.shape[0], 4, 3), 255, np.uint8)
    panels = [np.repeat(grey[..., None], 3, -1), gap, blend(grey, truth), gap, blend(grey, prediction)]
    return np.concatenate(panels, axis=1)


def write_triptychs(folder: str | Path, volume: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                    slice_indices: list[int]) -> list[Path]:
    """One PNG per chosen slice of (D, H, W) volumes; returns the paths written."""
    from PIL import Image

    from vmunet.runs import atomic_write_bytes

    folder = Path(folder)
    paths = []
    for z in slice_indices:
        picture = Image.fromarray(triptych(volume[z], truth[z], prediction[z]))
        path = folder / f"slice_{z:03d}.png"
        atomic_write_bytes(path, lambda handle, p=picture: p.save(handle, format="PNG"))
        paths.append(path)
    return paths
