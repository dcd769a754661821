"""Multi-class 2D folders: ``DATA/{train,val[,test]}/{images,masks}/`` and an optional ``DATA/labels.json``.

Images are PNG/JPG/BMP/TIFF (RGB or grey, 8 or 16 bit), masks lossless images paired by stem (as in ``isic``):

- index masks: mode L, I, I;16 or P (the palette's *indices* are the classes), values 0..K-1;
- colour masks: RGB(A) (or P, L read as colours) with a colour map in ``labels.json``.

``labels.json`` names the classes (``{"background": 0, "tumour": 1}``, ids 0..K-1) or maps colours
(``{"background": [0, 0, 0], "tumour": [255, 0, 0]}``, class ids in the order given). Without it K = 1 + the
largest index in the training masks, which must hold exactly the values 0..K-1 (grey-coded 0/85/170/255 masks
need the colour map), and the classes are named ``background, class_1, ..``. A value outside 0..K-1, or a colour
not in the map, is an error naming the mask and the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vmunet.config import read_json
from vmunet.io.checks import refuse_ignore_label
from vmunet.data.isic import PairedImages, split_pairs
from vmunet.io.images import read_image

INDEX_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "P", "1")


@dataclass
class ClassMap:
    """Class names by id, and their (K, 3) uint8 colours when the masks are colour masks (else None)."""

    names: list[str]
    colours: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


def read_class_map(root: str | Path) -> ClassMap | None:
    """``DATA/labels.json`` as a ClassMap; None when the file is absent."""
    path = Path(root) / "labels.json"
    if not path.is_file():
        return None
    labels = read_json(path)
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: expected a mapping of class names to ids or colours, e.g. "
                         '{"background": 0, "tumour": 1} or {"background": [0, 0, 0], "tumour": [255, 0, 0]}')
    if len(labels) < 2:
        raise ValueError(f"{path}: names {len(labels)} class; give at least 2 (the background and a class)")
    values = list(labels.values())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        by_id = {v: k for k, v in labels.items()}
        if len(by_id) != len(labels):
            raise ValueError(f"{path}: two classes share an id")
        refuse_ignore_label(by_id, path)
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"{path}: class ids {sorted(by_id)} are not 0..{len(by_id) - 1}")
        return ClassMap([by_id[i] for i in range(len(by_id))])
    if all(isinstance(v, list) and len(v) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in v)
           for v in values):
        refuse_ignore_label(dict(enumerate(labels)), path)
        colours = np.array(values, dtype=np.uint8)
        if len({tuple(c) for c in colours.tolist()}) != len(colours):
            raise ValueError(f"{path}: two classes share a colour")
        return ClassMap(list(labels), colours)
    raise ValueError(f"{path}: values must be all class ids (0..K-1) or all [R, G, B] colours (0..255)")


def _codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _show_colours(codes: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in codes[:limit].tolist())
    return f"[{shown}" + (f", ... ({len(codes)} in all)]" if len(codes) > limit else "]")


def read_class_mask(path: Path, class_map: ClassMap | None, num_classes: int | None) -> np.ndarray:
    """(H, W) int64 class ids of one mask; values are checked against ``num_classes`` when given."""
    if class_map is not None and class_map.colours is not None:
        rgb = read_image(path, "RGB")  # P, L, RGBA all read as colours
        codes = _codes(rgb)
        table = _codes(class_map.colours)
        order = np.argsort(table)
        position = np.clip(np.searchsorted(table[order], codes), 0, len(table) - 1)
        known = table[order][position] == codes
        if not known.all():
            unknown = np.unique(codes[~known])
            raise ValueError(f"{path}: colours {_show_colours(unknown)} are not in labels.json's colour map "
                             f"({_show_colours(table)})")
        return order[position].astype(np.int64)
    with Image.open(path) as img:
        mode = img.mode
    if mode in INDEX_MODES:
        mask = read_image(path)  # P: palette indices, not colours
    else:  # RGB(A) without a colour map: fine when it is grey stored as RGB
        rgb = read_image(path, "RGB")
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError(f"{path}: colour mask ({mode}) but DATA/labels.json maps no colours; add "
                             '{"background": [0, 0, 0], "class": [R, G, B], ...} or save index masks (values 0..K-1)')
        mask = rgb[..., 0]
    mask = np.asarray(mask).astype(np.int64)
    if num_classes is not None and mask.size and (mask.min() < 0 or mask.max() >= num_classes):
        values = np.unique(mask)
        bad = values[(values < 0) | (values >= num_classes)]
        raise ValueError(f"{path}: mask values {bad[:10].tolist()} are outside the {num_classes} classes 0.."
                         f"{num_classes - 1} (values found: {values[:10].tolist()})")
    return mask


def count_classes(items: list[tuple[str, Path, Path]]) -> int:
    """K = 1 + the largest index of the training masks (no labels.json), when the values found are exactly
    0..K-1: grey-coded (0/85/170/255) or sparse palette (0/5/9/12) masks are refused, naming their values (they
    would give a model of empty classes)."""
    values: set[int] = set()
    for _, _, mask_path in items:
        mask = read_class_mask(mask_path, None, None)
        found = np.flatnonzero(np.bincount(mask.ravel())) if mask.min(initial=0) >= 0 else np.unique(mask)
        values.update(found.tolist())
    largest = max(values, default=0)
    folder = items[0][2].parent
    if values == {0, 255}:
        raise ValueError(f"{folder}: masks are 0/255 (binary): use --preset isic18, or map the colours "
                         'in DATA/labels.json ({"background": [0, 0, 0], "lesion": [255, 255, 255]})')
    if largest == 0:
        raise ValueError(f"{folder}: every training mask is all background (0); nothing to learn")
    if values != set(range(largest + 1)):
        raise ValueError(f"{folder}: mask values {_show_values(sorted(values))} are not the class ids 0..K-1, and "
                         f"DATA/labels.json is absent; save index masks 0..K-1, or map each value's colour in "
                         f"DATA/labels.json, e.g. {_colour_map_example(items, sorted(values))}")
    return largest + 1


def _show_values(values: list[int], limit: int = 10) -> str:
    return "[" + ", ".join(map(str, values[:limit])) + (f", ... ({len(values)} in all)]" if len(values) > limit
                                                        else "]")


def _colour_map_example(items: list[tuple[str, Path, Path]], values: list[int], limit: int = 4) -> str:
    """labels.json's colour form for the first ``limit`` mask values: each value's colour as the colour reader
    sees it (grey v -> [v, v, v], a palette index -> its palette colour)."""
    wanted, colours = values[:limit], {}
    for _, _, mask_path in items:
        indices = read_class_mask(mask_path, None, None)
        rgb = read_image(mask_path, "RGB")  # (H, W, 3): what a colour map is matched against
        for value in wanted:
            if value not in colours and (indices == value).any():
                colours[value] = rgb[indices == value][0].tolist()
        if len(colours) == len(wanted):
            break
    entries = [f'"{"background" if i == 0 else f"class_{i}"}": {colours[v]}' for i, v in enumerate(wanted)
               if v in colours]
    return "{" + ", ".join(entries) + (", ...}" if len(values) > limit else "}")


def default_class_names(num_classes: int) -> list[str]:
    return ["background"] + [f"class_{i}" for i in range(1, num_classes)]


class ClassFolder(PairedImages):
    """One split of a multi-class 2D folder: ``sample["image"]`` float32 (H, W, 3), ``sample["label"]`` int64
    (H, W) in 0..K-1. ``num_classes`` None counts the classes from this split's masks (the training split)."""

    def __init__(self, root: str | Path, split: str = "train", num_classes: int | None = None):
        self.root = Path(root)
        self.split = split
        self.items = split_pairs(self.root, split)
        self.class_map = read_class_map(self.root)
        if self.class_map is not None:
            if num_classes is not None and num_classes != self.class_map.num_classes:
                raise ValueError(f"{self.root / 'labels.json'}: names {self.class_map.num_classes} classes, the "
                                 f"config says num_classes {num_classes}")
            self.num_classes = self.class_map.num_classes
            self.label_names = list(self.class_map.names)
        else:
            self.num_classes = num_classes or count_classes(self.items)
            self.label_names = default_class_names(self.num_classes)

    @property
    def colours(self) -> list[list[int]] | None:
        return None if self.class_map is None or self.class_map.colours is None else self.class_map.colours.tolist()

    def read_mask(self, path: Path) -> np.ndarray:
        return read_class_mask(path, self.class_map, self.num_classes)

    def __repr__(self) -> str:
        return f"ClassFolder({str(self.root)!r}, {self.split!r}: {len(self)} images, {self.num_classes} classes)"
