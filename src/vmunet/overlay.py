"""Pictures for humans, one fixed colour per class (numpy and PIL only).

- ``contour_overlay``: the image with the contour of each predicted class (``vmunet predict --overlay``);
- ``legend_overlay``: the image tinted by class, contours drawn, and a legend of the class names (multi-class
  2D folders);
- ``triptych`` / ``write_triptychs``: image | truth | prediction side by side (the demo).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmunet.runtime.writers import atomic_write_bytes

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

    folder = Path(folder)
    paths = []
    for z in slice_indices:
        picture = Image.fromarray(triptych(volume[z], truth[z], prediction[z]))
        path = folder / f"slice_{z:03d}.png"
        atomic_write_bytes(path, lambda handle, p=picture: p.save(handle, format="PNG"))
        paths.append(path)
    return paths


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image of any range -> (H, W, 3) uint8 for display."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        grey = image if image.dtype == np.uint8 else to_grey_uint8(image.astype(np.float32))
        return np.repeat(grey[..., None], 3, axis=-1)
    rgb = image[..., :3]
    if rgb.dtype != np.uint8:  # 16-bit or float colour: stretch all channels together
        low, high = np.percentile(rgb, [1, 99])
        rgb = (np.clip((rgb - low) / max(float(high - low), 1e-6), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _shift_and(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion of a (H, W) bool mask; pixels beyond the border count as inside."""
    padded = np.pad(mask, 1, mode="edge")
    return (mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation of a (H, W) bool mask."""
    padded = np.pad(mask, 1)
    out = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def contour_overlay(image: np.ndarray, labels: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """(H, W[, C]) image and (H, W) class ids -> (H, W, 3) uint8 with each class's boundary drawn.

    ``thickness`` defaults to one pixel per 256 pixels of the longer side, so contours stay visible
    on large photographs.
    """
    rgb = display_rgb(image).copy()
    labels = np.asarray(labels)
    if thickness is None:
        thickness = max(1, round(max(labels.shape) / 256))
    for class_id in np.unique(labels):
        if class_id == 0:
            continue
        mask = labels == class_id
        edge = mask & ~_shift_and(mask)  # (H, W): pixels of the class touching another class
        for _ in range(thickness - 1):
            edge = _dilate(edge)
        rgb[edge] = PALETTE[int(class_id) % len(PALETTE)]
    return rgb


def class_colours(num_classes: int, colours=None) -> np.ndarray:
    """(K, 3) uint8: the dataset's own colour map when it has one, else ``PALETTE`` cycled (class 0 black)."""
    if colours is not None:
        return np.asarray(colours, np.uint8).reshape(-1, 3)
    return PALETTE[np.arange(num_classes) % len(PALETTE)]


def legend_overlay(image: np.ndarray, labels: np.ndarray, names, colours=None, alpha: float = 0.4) -> np.ndarray:
    """(H, W[, C]) image and (H, W) class ids -> (H + legend, max(W, legend width), 3) uint8: the image with each
    class > 0 tinted and outlined in its colour, and below it one swatch and name per class (background left out)."""
    from PIL import Image, ImageDraw, ImageFont

    labels = np.asarray(labels)
    table = class_colours(len(names), colours)
    rgb = display_rgb(image).astype(np.float32)
    tinted = labels > 0
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * table[labels[tinted]].astype(np.float32)
    rgb = rgb.astype(np.uint8)
    for class_id in np.unique(labels[tinted]):
        mask = labels == class_id
        rgb[mask & ~_shift_and(mask)] = table[int(class_id)]
    font = ImageFont.load_default()
    row, swatch = 14, 10
    entries = list(enumerate(names))[1:]
    text_width = max((int(font.getlength(str(n))) for _, n in entries), default=0)
    width = max(rgb.shape[1], swatch + 8 + text_width + 4)
    canvas = Image.new("RGB", (width, rgb.shape[0] + row * len(entries) + 4), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for line, (class_id, name) in enumerate(entries):
        top = rgb.shape[0] + 2 + line * row
        draw.rectangle([2, top + 2, 2 + swatch, top + 2 + swatch], fill=tuple(int(c) for c in table[class_id]),
                       outline=(0, 0, 0))
        draw.text((swatch + 8, top), str(name), fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def representative_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Slice indices of a (D, H, W) label volume worth looking at.

    The slice with the most foreground, and slices at 25 % and 75 % of the foreground's extent; the middle
    slice when nothing was found.
    """
    area = (np.asarray(labels) > 0).reshape(labels.shape[0], -1).sum(1)  # (D,)
    found = np.flatnonzero(area)
    if found.size == 0:
        return [labels.shape[0] // 2]
    first, last = int(found[0]), int(found[-1])
    picks = [int(area.argmax()), first + (last - first) // 4, first + 3 * (last - first) // 4]
    return sorted(dict.fromkeys(picks))[:count]
