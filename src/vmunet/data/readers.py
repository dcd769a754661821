"""Reading one file: images (PNG, JPG, TIFF, BMP), Synapse ``.npy.h5`` volumes, NIfTI volumes and cases, and
SimpleITK volumes (.mha, .mhd, .nrrd; the ``itk`` extra).

Axis order of volumes: (D, H, W) = (z, x, y) of the file's voxel index, whichever library reads it. nibabel's
arrays are (x, y, z) and are moved to (z, x, y); SimpleITK's arrays are (z, y, x) and are transposed to
(z, x, y). So one file gives the same slices through either reader, and a label map written back through the
reader's twin lands on the file's own grid.

The dataset readers (``isic``, ``folders``, ``synapse``, ``nifti``) and prediction read files through these
functions, so training and prediction decode a file the same way. Every error names the file.

One image policy (``read_image_file`` for images, ``read_image`` under it for masks too):

- EXIF orientation is applied to images and masks alike, so both are read as displayed (as annotation tools
  show them) and a pair stays aligned;
- grey images keep their bit depth (1, L, I;16, I, F are not converted to 8 bit): 16-bit values reach the
  run's normalisation unchanged, in training and prediction alike;
- a palette (P) image is read as its colours; a palette mask keeps its indices (the mask readers ask for that);
- an alpha channel (RGBA, LA, PA, a palette or grey image with transparency) is dropped, not composited: the
  colour (or grey) values are kept, and a warning names the file once per process;
- a file of several frames (multi-page TIFF, animated GIF) is refused, and so is a float image with a NaN or
  infinite pixel (as NIfTI volumes are);
- sizes are compared as displayed (``displayed_size``), in every layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vmunet.data.checks import check_finite
from vmunet.io.limits import check_h5_dataset, check_image_header, check_sitk_header, sitk_image_io

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".npy.h5", ".h5")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd")
GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")  # read as (H, W), without 8-bit conversion
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
INDEX_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "P")  # label images read as stored
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
EXIF_ORIENTATION = 0x0112  # the EXIF Orientation tag; 1 = as stored
EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height when displayed

logger = logging.getLogger(__name__)
_alpha_reported: set[str] = set()  # files whose dropped alpha channel was reported (once per file)


def input_kind(path: Path) -> str | None:
    """"image", "nifti", "h5", "sitk" or None for a file name we do not read."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(SITK_SUFFIXES):
        return "sitk"
    if name.endswith(H5_SUFFIXES):
        return "h5"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return None


def printable_path(path: Path) -> str:
    """``path`` as text that can be printed and written anywhere: bytes that are not UTF-8 (a Latin-1 name,
    which Python holds as surrogates) shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_file_name(path: Path) -> None:
    """A file name that is not valid UTF-8 is refused at the start, naming the file: its stem would be a case id
    in split.json, per_case.csv and the console, which are UTF-8 text (it crashed evaluate at its end)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{printable_path(path)}: file name is not valid UTF-8 (bytes {os.fsencode(path.name)!r}); "
                         "rename it, e.g. convmv -f latin1 -t utf-8 --notest FILE") from None


def list_folder(folder: Path) -> list[Path]:
    """The visible files of ``folder``, sorted; a symbolic link to nothing is an error naming it (it would
    otherwise be left out without a word, and its partner reported as unpaired), and so is a file name that is
    not valid UTF-8 (``check_file_name``)."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        check_file_name(path)
        if path.is_symlink() and not path.exists():
            raise ValueError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)")
        if path.is_file():
            files.append(path)
    return files


def output_stem(path: Path) -> str:
    """The file name without its (possibly double) extension: case.nii.gz -> case, case.npy.h5 -> case."""
    name = path.name
    for suffix in NIFTI_SUFFIXES + H5_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_image_file(path: Path) -> np.ndarray:
    """The image reader of training and prediction: (H, W) grey or (H, W, 3) RGB with the file's own value range
    (16-bit stays 16-bit), as displayed (EXIF orientation applied), palette as colours, alpha dropped.
    A float image with a NaN or infinite pixel is an error naming the file (it would turn every output to NaN)."""
    image = read_image(path, "RGB", keep_modes=GREY_MODES, drop_alpha=True)
    if image.dtype.kind == "f":
        check_finite(image, path)
    return image


def displayed_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as displayed (EXIF orientation applied, as ``read_image`` decodes it), from the header
    alone: the size every layout compares an image and its mask by."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION, 1) in EXIF_TRANSPOSED:
                width, height = height, width
            return height, width
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for empty, truncated, unknown files
        size = path.stat().st_size if path.exists() else None
        what = "empty file (0 bytes)" if size == 0 else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot read image: {what}") from None


def read_index_mask(path: Path) -> np.ndarray:
    """A label image as stored: (H, W) class ids for index modes (a palette mask keeps its *indices*), as
    displayed (EXIF orientation applied, like its image); an RGB(A) file is read as grey when its channels are
    equal, else returned as (H, W, 3) for the caller to refuse."""
    mask = read_image(path, "RGB", keep_modes=INDEX_MODES)  # (H, W) indices or (H, W, 3) colours
    if mask.ndim == 3 and np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2]):
        return mask[..., 0]
    return mask


def read_rgb_image(path: Path) -> np.ndarray:
    """(H, W, 3) float32 for training: ``read_image_file`` (what prediction reads), grey repeated to RGB."""
    image = read_image_file(path).astype(np.float32)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def read_h5_volume(path: Path, self_contained: bool = False) -> np.ndarray:
    """The ``image`` dataset (D, H, W) of a Synapse ``.npy.h5`` test volume.

    A single-file twin of ``vmunet.data.synapse.SynapseVolumes`` (which needs the dataset's list files);
    the label, if present, is not read. Its shape is checked against the voxel limit first, and with
    ``self_contained`` (uploads) its storage (``vmunet.io.limits``).
    """
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading .h5 volumes needs h5py: pip install h5py") from exc
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read HDF5 file: empty file (0 bytes)")
    check_h5_dataset(path, "image", self_contained=self_contained)
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise ValueError(f"{path}: HDF5 file has no dataset 'image' (found: {', '.join(sorted(f)) or 'none'})")
            volume = np.asarray(f["image"][()], dtype=np.float32)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read HDF5 file: {exc}") from exc
    if volume.ndim != 3:
        raise ValueError(f"{path}: image has shape {volume.shape}, expected (D, H, W)")
    check_finite(volume, path)
    return volume


def read_nifti_case(paths: list[Path], case: str):
    """(volume float32 = stored (Z, X, Y): (D, H, W) for one file, (D, H, W, C) for one file per channel; the
    first file's nibabel image for affine and header)."""
    import nibabel as nib

    from vmunet.data.nifti import read_volume

    return read_volume(paths, None, None, case)["image"], nib.load(paths[0])  # the second load reads the header


def read_nifti_volume(path: Path):
    """(volume (D, H, W) float32 = stored (Z, X, Y), the nibabel image for its affine and header)."""
    volume, reference = read_nifti_case([path], output_stem(path))
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a one-channel 3D volume, found shape {volume.shape}")
    return volume, reference


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


def _without_alpha(img: Image.Image, path: Path) -> Image.Image:
    """``img`` without its alpha channel or transparency (values kept, not composited), reported once per file."""
    has_alpha = img.mode in ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img
    key = str(Path(path).resolve())
    if key not in _alpha_reported:
        _alpha_reported.add(key)
        logger.warning("%s: alpha channel (%s%s) dropped: the %s values are used as they are, not composited",
                       path, img.mode, " with transparency" if img.mode not in ALPHA_MODES else "",
                       "grey" if img.mode in ("LA", "La") + GREY_MODES else "colour")
    if img.mode in ("LA", "La"):
        return img.convert("L")
    if img.mode in GREY_MODES:  # grey with a transparent value: the grey values as they are
        img.info.pop("transparency", None)
        return img
    return img.convert("RGBA").convert("RGB")  # P/PA via RGBA: PIL's own P -> RGB warns about transparency


def read_image(path: Path, mode: str | None = None, keep_modes: tuple[str, ...] = (),
               drop_alpha: bool = False) -> np.ndarray:
    """Decode an image file fully (so that a truncated file fails here, naming it), as displayed: EXIF
    orientation applied.

    The image is converted to ``mode`` unless its mode is already ``mode`` or one of ``keep_modes``;
    ``drop_alpha`` first drops an alpha channel or transparency with a warning (``_without_alpha``). The header
    is checked before decoding (``vmunet.io.limits.check_image_header``: the pixel limit, Pillow's bomb warning).
    """
    check_image_header(path)
    try:
        with Image.open(path) as img:
            # a camera's MPO JPEG holds previews after its picture: the first frame is the photo itself
            frames = 1 if img.format == "MPO" else getattr(img, "n_frames", 1)
            if frames == 1:
                img.load()
                if img.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies even when nothing to do
                    img = ImageOps.exif_transpose(img)
                if drop_alpha:
                    img = _without_alpha(img, path)
                if mode is not None and img.mode != mode and img.mode not in keep_modes:
                    img = img.convert(mode)
                return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for empty, truncated, unknown files
        size = path.stat().st_size if path.exists() else None
        what = "empty file (0 bytes)" if size == 0 else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot read image: {what}") from exc
    # a multi-page TIFF or an animated GIF: reading its first frame alone would lose the rest without a word
    raise ValueError(f"{path}: holds {frames} frames (a multi-page or animated file); save each frame as its own "
                     "image")
