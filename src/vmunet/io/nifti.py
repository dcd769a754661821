"""NIfTI files through nibabel (the ``nifti`` extra): loading with the header checked first, the axis rule,
and writing on a reference image's grid.

Axis order: arrays are kept as stored (no reorientation); the last stored axis (usually axial) is moved to the
front, so a volume is (D, H, W) = stored (X, Y, Z) -> (Z, X, Y); ``write_label_volume`` moves it back before
writing, so predictions line up with the image in any viewer.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from vmunet.io.files import atomic_write_bytes
from vmunet.io.limits import check_nifti_header


def nibabel():
    try:
        import nibabel
    except ImportError as exc:
        raise ImportError("reading NIfTI volumes needs nibabel: pip install 'vmunet[nifti]'") from exc
    return nibabel


def load_nifti(path: Path):
    nib = nibabel()
    from nibabel.filebasedimages import ImageFileError

    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read NIfTI file: empty file (0 bytes)")
    check_nifti_header(path)  # the voxel limit, before any voxel is decoded
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as exc:
        raise ValueError(f"{path}: cannot read NIfTI file: {type(exc).__name__}: {exc}") from exc
    return img, data


def nifti_to_dhw(data: np.ndarray, path: Path) -> np.ndarray:
    """Stored (X, Y, Z[, 1]) -> (Z, X, Y)."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, found shape {data.shape}")
    return np.moveaxis(data, -1, 0)


def write_nifti(path: Path, data: np.ndarray, reference, intent: str | None = None, compresslevel: int = 6) -> None:
    """Write ``data`` (stored axis order) with ``reference``'s affine and header (None: identity affine)."""
    import nibabel as nib

    if reference is None:
        image = nib.Nifti1Image(data, np.eye(4))
    else:
        image = type(reference)(data, reference.affine, header=reference.header.copy())
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)  # the input's intensity scaling must not rescale labels
    image.header["cal_min"], image.header["cal_max"] = float(data.min(initial=0)), float(data.max(initial=0))
    if intent is not None:
        image.header.set_intent(intent)
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=compresslevel, mtime=0)
    atomic_write_bytes(path, lambda handle: handle.write(payload))


def write_label_volume(path: Path, labels: np.ndarray, reference) -> None:
    """A (D, H, W) label map (the readers' order: the stored last axis first) as a NIfTI label file in the stored
    axis order, on ``reference``'s grid (the input's nibabel image; None: identity affine)."""
    labels = np.asarray(labels)
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.int16
    write_nifti(Path(path), np.ascontiguousarray(np.moveaxis(labels, 0, -1), dtype), reference, intent="label")
