"""Volumes in the formats SimpleITK reads and writes (.mha, .mhd, .nrrd; the ``itk`` extra).

Axis order: SimpleITK's arrays are (z, y, x) and are transposed to (D, H, W) = (z, x, y), the order of every
volume reader (``vmunet.io.nifti`` moves nibabel's (x, y, z) the same way), so a label map written back through
``sitk_labels`` lands on the file's own grid.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from vmunet.io.checks import check_finite
from vmunet.io.files import current_umask
from vmunet.io.limits import check_sitk_header, sitk_image_io


def simpleitk():
    """The SimpleITK module; a one-line error naming the extra when it is not installed."""
    try:
        import SimpleITK
    except ImportError:
        raise ImportError("reading .mha, .mhd, .nrrd and DICOM needs SimpleITK: pip install 'vmunet[itk]'") from None
    return SimpleITK


def read_sitk_image(path: Path, self_contained: bool = False):
    """The SimpleITK image of a file (any format ITK reads; .mha/.mhd and .nrrd/.nhdr only through the reader their
    ending names); errors name the file. The header is checked first (``vmunet.io.limits.check_sitk_header``: the
    voxel limit, and with ``self_contained`` no second file)."""
    sitk = simpleitk()
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read image: empty file (0 bytes)")
    check_sitk_header(path, self_contained=self_contained)
    try:
        return sitk.ReadImage(str(path), imageIO=sitk_image_io(path) or "")
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot read image: {reason}") from None


def sitk_to_dhw(image, path: Path) -> np.ndarray:
    """A 3D one-component SimpleITK image -> (D, H, W) = (z, x, y) float32 (its array is (z, y, x))."""
    sitk = simpleitk()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        size = " x ".join(map(str, image.GetSize()))
        raise ValueError(f"{path}: expected a one-channel 3D volume, found a {image.GetDimension()}D image of size "
                         f"{size} with {image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(0, 2, 1))


def sitk_geometry(image) -> tuple[tuple[float, float, float], np.ndarray]:
    """Spacing in (D, H, W) = (z, x, y) order and the 4x4 index (x, y, z) -> physical (LPS) matrix."""
    sx, sy, sz = image.GetSpacing()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection(), np.float64).reshape(3, 3) * np.array([sx, sy, sz])
    affine[:3, 3] = image.GetOrigin()
    return (float(sz), float(sx), float(sy)), affine


def read_sitk_volume(path: Path, self_contained: bool = False):
    """(volume (D, H, W) float32 = (z, x, y), the SimpleITK image for its geometry) of a .mha/.mhd/.nrrd file."""
    image = read_sitk_image(path, self_contained)
    volume = sitk_to_dhw(image, path).astype(np.float32)
    check_finite(volume, path)
    return volume, image


def sitk_labels(labels: np.ndarray, reference):
    """(D, H, W) = (z, x, y) class ids -> a SimpleITK image on ``reference``'s grid (size, spacing, origin and
    direction copied)."""
    sitk = simpleitk()
    labels = np.asarray(labels)
    array = np.ascontiguousarray(labels.transpose(0, 2, 1).astype(np.uint8 if labels.max(initial=0) < 256
                                                                  else np.int16))
    image = sitk.GetImageFromArray(array)  # (z, y, x) -> size (x, y, z)
    if image.GetSize() != reference.GetSize():
        raise ValueError(f"labels of size {image.GetSize()} do not fit the reference grid {reference.GetSize()}")
    image.CopyInformation(reference)
    return image


def write_sitk(path: Path, image) -> None:
    """Write a SimpleITK image in the format of ``path``'s ending (.mha, .mhd + its .zraw, .nrrd, .nii.gz):
    written into a temporary folder beside it and moved into place, the data file before the header."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
        sitk.WriteImage(image, str(Path(tmp) / path.name), True)  # compressed
        for written in sorted(Path(tmp).iterdir(), key=lambda p: p.name == path.name):
            os.chmod(written, 0o666 & ~current_umask())
            os.replace(written, path.parent / written.name)
