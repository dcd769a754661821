"""Pictures for humans, one fixed colour per class (numpy and PIL only).

- ``contour_overlay``: the image with the contour of each predicted class (``vmunet predict --overlay``);
- ``legend_overlay``: the image tinted by class, contours drawn, and a legend of the class names (multi-class
  2D folders);
- ``triptych`` / ``write_triptychs``: image | truth | prediction side by side, titled, with a legend of the
  classes (the demo's figures).

Every picture shows its image through ``window_to_uint8``, the one display window (also the serve page's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmunet.io.files import atomic_write_bytes

# Class 0 stays grey; then red, green, blue, yellow, magenta, cyan, orange, purple, ...
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [240, 50, 230],
                    [70, 240, 240], [245, 130, 48], [145, 30, 180], [210, 245, 60], [250, 190, 212]], np.uint8)


def window_to_uint8(array: np.ndarray) -> np.ndarray:
    """Any image, slice or whole volume (grey or colour) -> the same shape in uint8 for display: the 0.5th to
    99.5th percentile of all its values (all channels together) mapped to 0..255; uint8 is already display values
    and is returned as it is. The one display window of the package (the demo's pictures, ``--overlay``, the
    serve page): a volume is windowed whole, so that its slices are shown alike."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float32)
    low, high = np.percentile(array, [0.5, 99.5]) if array.size else (0.0, 1.0)
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def blend(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) uint8 + (H, W) labels -> (H, W, 3) uint8 with classes > 0 tinted."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    colours = PALETTE[labels % len(PALETTE)].astype(np.float32)
    tinted = labels > 0
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * colours[tinted]
    return rgb.astype(np.uint8)


PANEL_TITLES = ("image", "truth", "prediction")
PANEL_GAP = 4  # white pixels between two panels


def triptych(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, names=None) -> np.ndarray:
    """(H, W) image (any range, or uint8 display values) and label maps -> a (T + H + L, 3W + 8, 3) uint8 figure:
    image | truth | prediction, each panel titled above (T rows), and below them (L rows) a legend of one colour
    swatch and name per class > 0 (``names[k]`` for class k, background first; "class k" without names)."""
    grey = window_to_uint8(image)
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if names is None:
        classes = int(max(truth.max(initial=0), prediction.max(initial=0))) + 1
        names = ["background"] + [f"class {k}" for k in range(1, classes)]
    panels = [np.repeat(grey[..., None], 3, -1), blend(grey, truth), blend(grey, prediction)]
    return titled_figure(panels, PANEL_TITLES, names, class_colours(len(names)))


def titled_figure(panels: list[np.ndarray], titles, names, colours: np.ndarray) -> np.ndarray:
    """(H, W_i, 3) uint8 panels side by side (``PANEL_GAP`` white between them), each with its title centred
    above it, and a legend of classes 1.. of ``names`` in ``colours`` (K, 3) below: a figure as a paper has it.
    The panels' pixels are left as they are."""
    from PIL import Image, ImageDraw

    font = _font()
    height = panels[0].shape[0]
    gap = np.full((height, PANEL_GAP, 3), 255, np.uint8)
    row = np.concatenate([part for panel in panels for part in (gap, panel)][1:], axis=1)  # (H, sum W + gaps, 3)
    title_height = _line_height(font) + 6
    legend = legend_strip(row.shape[1], names, colours)
    canvas = Image.new("RGB", (max(row.shape[1], legend.width), title_height + height + legend.height),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    left = 0
    for panel, title in zip(panels, titles):
        width = int(font.getlength(str(title)))
        draw.text((left + max((panel.shape[1] - width) // 2, 0), 3), str(title), fill=(0, 0, 0), font=font)
        left += panel.shape[1] + PANEL_GAP
    canvas.paste(Image.fromarray(row), (0, title_height))
    canvas.paste(legend, (0, title_height + height))
    return np.asarray(canvas)


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()  # Pillow's own font: no font file to find or ship


def _line_height(font) -> int:
    return int(font.getbbox("Agy")[3])


def legend_strip(width: int, names, colours: np.ndarray):
    """A white PIL image ``width`` wide (wider only where one entry is): one swatch in its colour of (K, 3)
    ``colours`` and the name per class 1..K-1 of ``names`` (background left out), left to right, wrapping."""
    from PIL import Image, ImageDraw

    font = _font()
    swatch, pad, line = 10, 4, max(_line_height(font), 10) + 4
    entries = [(swatch + 4 + int(font.getlength(str(name))), class_id, str(name))
               for class_id, name in list(enumerate(names))[1:]]
    width = max([width, *(size + 2 * pad for size, _, _ in entries)])
    places, x, y = [], pad, pad
    for size, class_id, name in entries:
        if x > pad and x + size + pad > width:
            x, y = pad, y + line
        places.append((x, y, class_id, name))
        x += size + 3 * pad
    picture = Image.new("RGB", (width, y + line + pad if entries else 0), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for x, y, class_id, name in places:
        top = y + (line - 4 - swatch) // 2
        draw.rectangle([x, top, x + swatch, top + swatch], fill=tuple(int(c) for c in colours[class_id]),
                       outline=(0, 0, 0))
        draw.text((x + swatch + 4, y), name, fill=(0, 0, 0), font=font)
    return picture


def write_triptychs(folder: str | Path, volume: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                    slice_indices: list[int], names=None) -> list[Path]:
    """One figure (``triptych``) per chosen slice of (D, H, W) volumes, the volume windowed whole; returns the
    paths written."""
    from PIL import Image

    folder = Path(folder)
    display = window_to_uint8(volume)  # (D, H, W) uint8
    paths = []
    for z in slice_indices:
        picture = Image.fromarray(triptych(display[z], truth[z], prediction[z], names))
        path = folder / f"slice_{z:03d}.png"
        atomic_write_bytes(path, lambda handle, p=picture: p.save(handle, format="PNG"))
        paths.append(path)
    return paths


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image of any range -> (H, W, 3) uint8 for display (an alpha channel left out)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (2, 4):
        image = image[..., :-1]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(window_to_uint8(image)[..., None], 3, axis=-1)
    return np.ascontiguousarray(window_to_uint8(image[..., :3]))


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
    class > 0 tinted and outlined in its colour, and below it ``legend_strip`` (background left out)."""
    from PIL import Image

    labels = np.asarray(labels)
    table = class_colours(len(names), colours)
    rgb = display_rgb(image).astype(np.float32)
    tinted = labels > 0
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * table[labels[tinted]].astype(np.float32)
    rgb = rgb.astype(np.uint8)
    for class_id in np.unique(labels[tinted]):
        mask = labels == class_id
        rgb[mask & ~_shift_and(mask)] = table[int(class_id)]
    legend = legend_strip(rgb.shape[1], names, table)
    canvas = Image.new("RGB", (max(rgb.shape[1], legend.width), rgb.shape[0] + legend.height), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    canvas.paste(legend, (0, rgb.shape[0]))
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
