"""ISIC-style folders of 2D images and masks: ``DATA/{train,val[,test]}/{images,masks}/``.

Images and masks are paired by file stem (never by sorting two listings); the official ISIC mask name
``ISIC_0000000_segmentation.png`` pairs with ``ISIC_0000000.jpg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmunet.io.checks import check_same_shape
from vmunet.io.images import read_image, read_rgb_image
from vmunet.io.paths import IMAGE_SUFFIXES, list_folder

SPLITS = ("train", "val", "test")
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".gif"}
MASK_STEM_SUFFIXES = ("_segmentation", "_Segmentation")  # ISIC 2016-2018 mask names


def available_splits(root: str | Path) -> list[str]:
    """The splits of ``root`` that have an ``images/`` folder, in the order train, val, test."""
    root = Path(root)
    return [split for split in SPLITS if (root / split / "images").is_dir()]


def read_binary_mask(path: Path) -> np.ndarray:
    """A binary mask (0/255 or 0/1, greyscale or colour) as an int64 label map with values {0, 1}."""
    mask = read_image(path, "L", keep_modes=("1", "I", "I;16"))  # colour masks read as grey
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask has shape {mask.shape}, expected a single-channel image")
    if mask.dtype == np.uint8:  # bincount: several times faster than np.unique on a 512 x 680 mask
        values = set(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
    else:
        values = set(np.unique(mask).tolist())
    if values <= {0, 1}:
        return mask.astype(np.int64)
    if values <= {0, 255}:
        return (mask == 255).astype(np.int64)
    raise ValueError(f"{path}: mask values {sorted(values)[:10]} are not binary (expected 0/255 or 0/1)")


def _mask_key(stem: str) -> str:
    for suffix in MASK_STEM_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


LOSSY_MASK_SUFFIXES = {".jpg", ".jpeg"}


def _list_files(folder: Path, suffixes: set[str]) -> list[Path]:
    return sorted(p for p in list_folder(folder) if p.suffix.lower() in suffixes)


def _check_mask_formats(mask_dir: Path) -> None:
    """A JPEG mask is not a mask: its compression blurs the 0/255 edges into other values."""
    lossy = _list_files(mask_dir, LOSSY_MASK_SUFFIXES)
    if lossy:
        raise ValueError(f"{lossy[0]}: masks must be lossless (PNG, BMP, TIFF or GIF); JPEG compression changes "
                         "mask values: re-export it as PNG" + (f" ({len(lossy)} JPEG masks in all)"
                                                                if len(lossy) > 1 else ""))


def pair_by_stem(image_dir: Path, mask_dir: Path, lossy_masks: bool = False) -> list[tuple[str, Path, Path]]:
    """``(case_id, image, mask)`` triples sorted by case id; any unpaired or ambiguous file is an error.

    ``lossy_masks`` accepts JPEG masks, for protocols that binarise masks at a threshold (the polyp benchmark's
    Kvasir-SEG masks are JPEGs); elsewhere a JPEG mask is an error."""
    images: dict[str, Path] = {}
    for path in _list_files(image_dir, IMAGE_SUFFIXES):
        if path.stem in images:
            raise ValueError(f"{path}: two images share the stem {path.stem!r} (also {images[path.stem]})")
        images[path.stem] = path
    if not lossy_masks:
        _check_mask_formats(mask_dir)
    masks: dict[str, Path] = {}
    for path in _list_files(mask_dir, MASK_SUFFIXES | LOSSY_MASK_SUFFIXES if lossy_masks else MASK_SUFFIXES):
        key = _mask_key(path.stem)
        if key in masks:
            raise ValueError(f"{path}: two masks pair with case {key!r} (also {masks[key]})")
        masks[key] = path
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise ValueError(f"{images[no_mask[0]]}: image has no mask in {mask_dir}"
                         + (f" ({len(no_mask)} unpaired images in all)" if len(no_mask) > 1 else ""))
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise ValueError(f"{masks[no_image[0]]}: mask has no image in {image_dir}"
                         + (f" ({len(no_image)} unpaired masks in all)" if len(no_image) > 1 else ""))
    return [(key, images[key], masks[key]) for key in sorted(images)]


def split_pairs(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(case id, image, mask) of ``root/split/{images,masks}``; a missing folder or an empty split is an error
    naming the folder (and the splits that are there)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    image_dir, mask_dir = root / split / "images", root / split / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            found = available_splits(root)
            raise FileNotFoundError(f"{folder}: folder not found (splits found in {root}: "
                                    f"{', '.join(found) if found else 'none'})")
    items = pair_by_stem(image_dir, mask_dir)
    if not items:
        raise ValueError(f"{image_dir}: split {split!r} has no images")
    return items


class PairedImages:
    """The sequence of 2D samples shared by the layouts of image files paired with mask files by stem
    (ISIC, multi-class folders, polyp sets): ``self.items`` holds (case id, image path, mask path), a subclass
    says how its masks decode (``read_mask``). Files are read on access."""

    items: list[tuple[str, Path, Path]]

    def read_mask(self, path: Path) -> np.ndarray:
        """(H, W) int64 class indices of one mask file."""
        raise NotImplementedError

    @property
    def case_ids(self) -> list[str]:
        return [case_id for case_id, _, _ in self.items]

    def check_some_foreground(self) -> None:
        """A training split whose every mask is all background teaches nothing (it trains to val dice 0): an
        error naming its mask folder. Masks are read until the first with foreground (usually the first)."""
        for _, _, mask_path in self.items:
            if self.has_foreground(mask_path):
                return
        raise ValueError(f"{self.items[0][2].parent}: every training mask is all background (0); nothing to learn"
                         + self.background_hint())

    def has_foreground(self, mask_path: Path) -> bool:
        """Whether a mask marks anything (``check_some_foreground``'s test; a layout may be stricter)."""
        return bool(self.read_mask(mask_path).any())

    def background_hint(self) -> str:
        """What ``check_some_foreground``'s error adds about the layout's mask values ("" by default)."""
        return ""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        case_id, image_path, mask_path = self.items[index]
        image = read_rgb_image(image_path)  # (H, W, 3), the file's own value range (16-bit, float TIFF)
        label = self.read_mask(mask_path)  # (H, W)
        check_same_shape(image.shape[:2], label.shape, f"{image_path} and {mask_path}")
        return {"image": image, "label": label, "case_id": case_id}


class IsicFolder(PairedImages):
    """One split of an ISIC-style folder as a sequence of 2D samples.

    ``sample["image"]`` is float32 (H, W, 3) with the raw 0-255 intensities, ``sample["label"]`` int64 (H, W)
    in {0, 1}. Files are read on access.
    """

    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        self.split = split
        self.items = split_pairs(self.root, split)

    def read_mask(self, path: Path) -> np.ndarray:
        return read_binary_mask(path)

    def __repr__(self) -> str:
        return f"IsicFolder({str(self.root)!r}, {self.split!r}: {len(self)} images)"
