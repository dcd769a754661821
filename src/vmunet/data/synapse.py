"""The Synapse multi-organ CT data as TransUNet, Swin-UNet and VM-UNet distribute it.

    DATA/train_npz/caseXXXX_sliceYYY.npz     keys image (H, W) in [0, 1], label (H, W)
    DATA/test_vol_h5/caseXXXX.npy.h5         keys image, label, (D, H, W)
    DATA/lists/lists_Synapse/{train,test_vol}.txt

The files carry no voxel spacing: volumes have ``spacing=None`` and HD95 is in voxels (the protocol).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vmunet.io.checks import check_finite, check_labels, check_same_shape
from vmunet.io.limits import check_h5_dataset

CLASS_NAMES = ("background", "aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas",
               "spleen", "stomach")
NUM_CLASSES = len(CLASS_NAMES)


def read_list(root: Path, list_name: str) -> list[str]:
    """Names listed in ``lists/lists_Synapse/{list_name}.txt``, one per line, blank lines skipped."""
    path = root / "lists" / "lists_Synapse" / f"{list_name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: list file not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: list is empty")
    return names


def _check_exist(paths: list[Path], list_name: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: file listed in {list_name}.txt not found"
                                + (f" ({len(missing)} missing in all)" if len(missing) > 1 else ""))


def _image_and_label(image, label, path: Path, num_classes: int, ndim: int):
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != ndim:
        raise ValueError(f"{path}: image has shape {image.shape}, expected {ndim} dimensions")
    check_finite(image, path)
    if label is not None:
        label = check_labels(label, num_classes, path)
        check_same_shape(image.shape, label.shape, path)
    return image, label


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading Synapse test volumes (.h5) needs h5py: pip install 'vmunet[synapse]'") from exc
    return h5py


class SynapseSlices:
    """The 2D training slices: samples with image float32 (H, W, 1) and label int64 (H, W)."""

    def __init__(self, root: str | Path, list_name: str = "train", num_classes: int = NUM_CLASSES):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: data folder not found")
        self.case_ids = read_list(self.root, list_name)
        self.paths = [self.root / "train_npz" / f"{name}.npz" for name in self.case_ids]
        _check_exist(self.paths, list_name)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files if key in ("image", "label")}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: cannot read npz file: {type(exc).__name__}: {exc}") from exc
        missing = [key for key in ("image", "label") if key not in arrays]
        if missing:
            raise ValueError(f"{path}: npz file has no key {missing[0]!r} (expected 'image' and 'label')")
        image, label = arrays["image"], arrays["label"]
        image, label = _image_and_label(image, label, path, self.num_classes, ndim=2)
        return {"image": image[:, :, None], "label": label, "case_id": self.case_ids[index]}

    def __repr__(self) -> str:
        return f"SynapseSlices({str(self.root)!r}: {len(self)} slices)"


class SynapseVolumes:
    """The test volumes: image float32 (D, H, W), label int64 (D, H, W), spacing None (unknown)."""

    def __init__(self, root: str | Path, list_name: str = "test_vol", num_classes: int = NUM_CLASSES):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: data folder not found")
        self.case_ids = read_list(self.root, list_name)
        self.paths = [self.root / "test_vol_h5" / f"{name}.npy.h5" for name in self.case_ids]
        _check_exist(self.paths, list_name)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        h5py = _h5py()
        for key in ("image", "label"):  # the voxel limit, before the arrays are read
            check_h5_dataset(path, key)
        try:
            with h5py.File(path, "r") as f:  # closed as soon as the arrays are in memory
                arrays = {key: f[key][()] for key in ("image", "label") if key in f}
        except OSError as exc:
            raise ValueError(f"{path}: cannot read HDF5 file: {exc}") from exc
        missing = [key for key in ("image", "label") if key not in arrays]
        if missing:
            raise ValueError(f"{path}: HDF5 file has no dataset {missing[0]!r} (expected 'image' and 'label')")
        image, label = arrays["image"], arrays["label"]
        image, label = _image_and_label(image, label, path, self.num_classes, ndim=3)
        return {"image": image, "label": label, "case_id": self.case_ids[index], "spacing": None, "affine": None}

    def __repr__(self) -> str:
        return f"SynapseVolumes({str(self.root)!r}: {len(self)} volumes)"
