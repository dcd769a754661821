"""The polyp benchmark in PraNet's layout: ``DATA/TrainDataset/{images,masks}/`` and
``DATA/TestDataset/<set>/{images,masks}/`` for any set names (CVC-300, CVC-ClinicDB, Kvasir, CVC-ColonDB,
ETIS-LaribPolypDB). ``image/`` and ``mask/`` (singular) are read too.

Images and masks are paired by stem whatever their endings (.png, .jpg, .tif: a Kvasir-SEG mask may be a JPEG,
and an image .tif with a .png mask). Masks are read as grey (colour and palette masks through their luminance)
and binarised at 128 (foreground > 128, as the evaluation toolboxes), so JPEG noise around 0 and 255 does not
matter; a mask holding only the values 0 and 1 is read as 0/1 (it would otherwise be all background).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmunet.io.checks import check_same_shape
from vmunet.data.isic import PairedImages, pair_by_stem
from vmunet.io.images import displayed_size, read_image

TRAIN_FOLDER, TEST_FOLDER = "TrainDataset", "TestDataset"
MASK_THRESHOLD = 128
BRIGHT = 191  # a training set with no mask brighter than this (nor a 0/1 set) holds no polyp masks


def read_polyp_mask(path: Path) -> np.ndarray:
    """(H, W) int64 in {0, 1}: grey value > 128 is the polyp (0/1 masks: 1 is)."""
    return binarise(read_image(path, "L"), path)  # RGB, RGBA, P, 1 and 16-bit masks through their grey value


def binarise(grey: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) grey values -> (H, W) int64 in {0, 1}: > 128 is the polyp (0/1 masks: 1 is)."""
    if grey.ndim != 2:
        raise ValueError(f"{path}: mask has shape {grey.shape}, expected a single-channel image")
    if grey.max(initial=0) == 1:
        return grey.astype(np.int64)
    return (grey > MASK_THRESHOLD).astype(np.int64)


def _subfolder(folder: Path, names: tuple[str, str]) -> Path:
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    raise FileNotFoundError(f"{folder / names[0]}: folder not found (the polyp layout: {folder.name}/images/ and "
                            f"{folder.name}/masks/)")


class PolypFolder(PairedImages):
    """One folder of the layout (TrainDataset, or one test set) as 2D samples: ``sample["image"]`` float32
    (H, W, 3), ``sample["label"]`` int64 (H, W) in {0, 1}, ``case_id`` the stem.

    The pairs are checked when the folder is opened (unpaired files; image and mask sizes as displayed, from the
    headers), so a bad file stops training or evaluation before anything is written."""

    def __init__(self, folder: str | Path, name: str | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: folder not found")
        self.name = name or self.folder.name
        image_dir = _subfolder(self.folder, ("images", "image"))
        mask_dir = _subfolder(self.folder, ("masks", "mask"))
        self.items = pair_by_stem(image_dir, mask_dir, lossy_masks=True)
        if not self.items:
            raise ValueError(f"{image_dir}: no images")
        for _, image_path, mask_path in self.items:
            check_same_shape(displayed_size(image_path), displayed_size(mask_path), f"{image_path} and {mask_path}")

    @classmethod
    def train(cls, root: str | Path) -> PolypFolder:
        root = Path(root)
        if not (root / TRAIN_FOLDER).is_dir():
            raise FileNotFoundError(f"{root / TRAIN_FOLDER}: folder not found (the polyp layout: {TRAIN_FOLDER}/"
                                    f"{{images,masks}}/ and {TEST_FOLDER}/<set>/{{images,masks}}/)")
        folder = cls(root / TRAIN_FOLDER)
        folder.check_some_foreground()
        return folder

    def has_foreground(self, mask_path: Path) -> bool:
        """A 0/1 mask's 1, or a bright grey value (> 191): the JPEG noise around a mask saved as 0/128 passes the
        threshold of 128 in a few pixels, and such a set would train on that noise."""
        brightest = int(read_image(mask_path, "L").max(initial=0))
        return brightest == 1 or brightest > BRIGHT

    def background_hint(self) -> str:
        """The grey values of the masks: 0/128 masks are all background (128 is not > 128)."""
        values = sorted(set().union(*(np.unique(read_image(path, "L")).tolist() for _, _, path in self.items)))
        shown = f"{values}" if len(values) <= 10 else f"{values[:5]} ... brightest {values[-1]}"
        return f" (grey values found: {shown}; a polyp is > {MASK_THRESHOLD}: save masks as 0/255 or 0/1)"

    def read_mask(self, path: Path) -> np.ndarray:
        return read_polyp_mask(path)

    def __repr__(self) -> str:
        return f"PolypFolder({str(self.folder)!r}: {len(self)} images)"


def polyp_test_sets(root: str | Path) -> dict[str, PolypFolder]:
    """Every set of ``DATA/TestDataset/``, by name in sorted order; a missing or empty TestDataset is an error."""
    test_dir = Path(root) / TEST_FOLDER
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir}: folder not found (the polyp test sets: {TEST_FOLDER}/<set>/"
                                "{images,masks}/, e.g. Kvasir, CVC-ClinicDB)")
    sets = {path.name: PolypFolder(path) for path in sorted(test_dir.iterdir())
            if path.is_dir() and not path.name.startswith(".")}
    if not sets:
        raise ValueError(f"{test_dir}: no test sets (expected {TEST_FOLDER}/<set>/{{images,masks}}/)")
    return sets
