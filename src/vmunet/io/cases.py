"""One case as nnU-Net's raw layout stores it, one file per channel in any of its formats (NIfTI, SimpleITK
formats, 2D images): the file of each channel read by its ending, the channels checked to share one grid, and the
label map read beside them. Also the header alone (shape, spacing, affine) without reading voxels.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from vmunet.io.checks import check_finite, check_labels, check_same_affine, check_same_shape
from vmunet.io.images import displayed_size, read_image_file, read_index_mask
from vmunet.io.nifti import load_nifti, nibabel, nifti_to_dhw
from vmunet.io.paths import SITK_SUFFIXES, output_stem
from vmunet.io.sitk import read_sitk_image, simpleitk, sitk_geometry, sitk_to_dhw


def read_case_file(path: Path, mask: bool = False) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """One file of a case by its ending: (array (D, H, W), or (1, H, W, 3) for an RGB 2D file; spacing (D, H, W);
    a 4x4 index -> physical matrix for comparing grids). ``mask``: a 2D label file keeps its palette indices."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        img, data = load_nifti(path)
        zooms = img.header.get_zooms()[:3]
        return nifti_to_dhw(data, path), (float(zooms[2]), float(zooms[0]), float(zooms[1])), np.asarray(img.affine,
                                                                                                     np.float64)
    if name.endswith(SITK_SUFFIXES):
        image = read_sitk_image(path)
        volume = sitk_to_dhw(image, path)  # first: a 2D file is refused by name, before its 2D geometry is read
        spacing, affine = sitk_geometry(image)
        return volume, spacing, affine
    data = read_index_mask(path) if mask else read_image_file(path)  # (H, W) or (H, W, 3), alpha dropped
    return data[None], (1.0, 1.0, 1.0), np.eye(4)


def read_header(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray]:
    """Shape (D, H, W), spacing (D, H, W) and affine from the header alone (no voxel data read)."""
    name = path.name.lower()
    if name.endswith(SITK_SUFFIXES):
        reader = simpleitk().ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise ValueError(f"{path}: cannot read image header: {str(exc).strip().splitlines()[-1]}") from None
        x, y, z = (tuple(reader.GetSize()) + (1,))[:3]
        sx, sy, sz = (tuple(float(s) for s in reader.GetSpacing()) + (1.0,))[:3]
        return (z, x, y), (sz, sx, sy), np.eye(4)
    if not name.endswith((".nii", ".nii.gz")):
        return (1, *displayed_size(path)), (1.0, 1.0, 1.0), np.eye(4)
    nib = nibabel()
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(path)
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as exc:
        raise ValueError(f"{path}: cannot read NIfTI file (its header): {type(exc).__name__}: {exc}") from exc
    shape = img.shape[:3]
    if len(img.shape) not in (3, 4) or (len(img.shape) == 4 and img.shape[3] != 1):
        raise ValueError(f"{path}: expected a 3D volume, found shape {img.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return (shape[2], shape[0], shape[1]), (zooms[2], zooms[0], zooms[1]), img.affine


def read_volume(image_files: list[Path], label_file: Path | None, num_classes: int | None, case_id: str) -> dict:
    """One case: image float32 (D, H, W) for one channel, (D, H, W, C) for several; label int64 (D, H, W)."""
    channels, affine = [], None
    for path in image_files:
        data, file_spacing, file_affine = read_case_file(path)
        data = data.astype(np.float32)
        check_finite(data, path)
        if channels:
            check_same_shape(channels[0].shape[:3], data.shape[:3], f"{path} (channel shape vs {image_files[0].name})")
            check_same_affine(file_affine, affine, path, image_files[0].name)
        channels.extend([data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data])
        if affine is None:
            spacing, affine = file_spacing, file_affine
    image = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
    label = None
    if label_file is not None:
        data, _, label_affine = read_case_file(label_file, mask=True)
        if data.ndim == 4:
            raise ValueError(f"{label_file}: label map has {data.shape[3]} channels, expected one")
        label = check_labels(data, num_classes, label_file) if num_classes else data.astype(np.int64)
        check_same_shape(channels[0].shape, label.shape, f"{label_file} (label vs {image_files[0].name})")
        check_same_affine(label_affine, affine, label_file, image_files[0].name)
    return {"image": image, "label": label, "case_id": case_id, "spacing": spacing, "affine": affine}


def read_nifti_case(paths: list[Path], case: str):
    """(volume float32 = stored (Z, X, Y): (D, H, W) for one file, (D, H, W, C) for one file per channel; the
    first file's nibabel image for affine and header)."""
    import nibabel as nib

    return read_volume(paths, None, None, case)["image"], nib.load(paths[0])  # the second load reads the header


def read_nifti_volume(path: Path):
    """(volume (D, H, W) float32 = stored (Z, X, Y), the nibabel image for its affine and header)."""
    volume, reference = read_nifti_case([path], output_stem(path))
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a one-channel 3D volume, found shape {volume.shape}")
    return volume, reference
