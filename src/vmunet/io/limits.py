"""Header checks every reader runs before it decodes a file: a size limit and, for uploads, self-containment.

    check_image_header(path, max_voxels)              # Pillow: every frame's pixels; the bomb warning is an error
    check_nifti_header(path, max_voxels)              # nibabel: the header's shape
    check_sitk_header(path, max_voxels, self_contained=True)  # .mha/.mhd/.nrrd/.nhdr: raw header text, then ITK
    check_h5_dataset(path, "image", max_voxels, self_contained=True)
    check_dicom_files(files, folder, max_voxels)      # rows x columns x frames of every slice file

A file whose header claims more values than ``max_voxels`` raises ``TooLarge`` (a ValueError: the callers that
skip a bad file skip it too; serve answers 413) naming the file, its size and the limit. A file that would make a
library read another file (a MetaImage ``ElementDataFile`` other than LOCAL, an NRRD ``data file``, a detached
header, HDF5 external storage, a virtual dataset or an external link) raises ``NotSelfContained`` when
``self_contained`` is asked for (serve's uploads; the CLI reads the user's own detached headers). Its message
never names the other file, so that an answer cannot tell whether some path exists.

``max_voxels`` None means the process default (``default_max_voxels()``, set for a block with ``voxel_limit(n)``:
training sets its config's ``max_voxels`` so).
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CLI_MAX_VOXELS", "SERVE_MAX_VOXELS", "UPLOAD_IMAGE_FORMATS", "NotSelfContained", "TooLarge",
           "check_dicom_files", "check_file", "check_h5_dataset", "check_image_header", "check_nifti_header",
           "check_sitk_header", "check_voxels", "default_max_voxels", "sitk_image_io", "voxel_limit"]

# The CLI's default: refuses headers claiming absurd sizes (1200^3, 30000^3) while a large CT (512 x 512 x 2000)
# passes; about 20 bytes per voxel are held while a volume is predicted, so ~10 GB at the limit.
CLI_MAX_VOXELS = 2 ** 29
# serve's default (`vmunet serve --max-voxels`): 16.8 M voxels (a 4096 x 4096 image, 512 x 512 x 64 volume) keep
# one request's peak under 1 GB above the loaded model (README, "Running the service safely").
SERVE_MAX_VOXELS = 2 ** 24
# What an uploaded image may be (the endings serve accepts): Pillow decodes no other format for serve.
UPLOAD_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")  # JPEG includes MPO (its factory picks)
HEADER_BYTES = 65536  # a MetaImage / NRRD text header longer than this is refused, not searched further

_default = {"max_voxels": CLI_MAX_VOXELS}  # serve passes its limit explicitly; commands set this one


class TooLarge(ValueError):
    """A header claims more values than the limit."""


class NotSelfContained(ValueError):
    """An upload that would make a library open another file."""


def default_max_voxels() -> int:
    return _default["max_voxels"]


@contextmanager
def voxel_limit(max_voxels: int | None) -> Iterator[None]:
    """Within the block, readers called with ``max_voxels=None`` use ``max_voxels`` (None: keep)."""
    if max_voxels is not None and max_voxels < 1:
        raise ValueError(f"max_voxels must be >= 1 (got {max_voxels})")
    old = default_max_voxels()
    _default["max_voxels"] = old if max_voxels is None else int(max_voxels)
    try:
        yield
    finally:
        _default["max_voxels"] = old


def _limit(max_voxels: int | None) -> int:
    return default_max_voxels() if max_voxels is None else int(max_voxels)


def check_voxels(source: str | Path, shape: Sequence[int], max_voxels: int | None = None,
                 what: str = "voxels") -> int:
    """The product of ``shape``; TooLarge naming ``source`` when it is over the limit (or a size is negative)."""
    limit = _limit(max_voxels)
    sizes = [int(s) for s in shape]
    if any(s < 0 for s in sizes):
        raise ValueError(f"{source}: header gives a negative size {' x '.join(map(str, sizes))}")
    count = 1
    for s in sizes:
        count *= s  # Python ints: 30000^3 does not overflow
    if count > limit:
        raise TooLarge(f"{source}: {' x '.join(map(str, sizes))} = {count:,} {what}, over the limit of "
                       f"{limit:,} (--max-voxels)")
    return count


def check_image_header(path: str | Path, max_voxels: int | None = None,
                       formats: Sequence[str] | None = None) -> None:
    """Pillow's header of ``path``: every frame's width x height within the limit and within Pillow's
    ``MAX_IMAGE_PIXELS`` (its DecompressionBombWarning, which it lets through up to twice that, is an error
    here). ``formats``: the Pillow formats accepted (uploads: ``UPLOAD_IMAGE_FORMATS``; Pillow otherwise opens
    whatever format the bytes are, whatever the file's ending). Unreadable headers are left to the reader, which
    names the problem, unless ``formats`` is given."""
    from PIL import Image

    limit = _limit(max_voxels)
    if Image.MAX_IMAGE_PIXELS:
        limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=formats) as img:
                frames = getattr(img, "n_frames", 1)
                sizes = {img.size}
                if img.format == "TIFF":  # each page has its own size; seeking reads its directory only
                    for frame in range(1, frames):
                        img.seek(frame)
                        sizes.add(img.size)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "its size"
        raise TooLarge(f"{path}: {size}, over Pillow's decompression bomb limit of {Image.MAX_IMAGE_PIXELS:,} "
                       "pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if formats is None:
            return  # not an image Pillow reads: read_image says why, naming the file
        size = Path(path).stat().st_size
        what = "empty file (0 bytes)" if size == 0 else f"not a {'/'.join(formats)} image ({type(error).__name__})"
        raise ValueError(f"{path}: cannot read image: {what}") from None
    for width, height in sizes:
        check_voxels(path, (width, height), limit, "pixels")


def check_nifti_header(path: str | Path, max_voxels: int | None = None, self_contained: bool = False) -> None:
    """The NIfTI header's shape (all dimensions) within the limit; nothing but the header is read. With
    ``self_contained``: a single-file NIfTI (magic n+1 / n+2), not the header of a .hdr/.img pair."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(path)
        magic = bytes(image.header.get("magic", b"")) if hasattr(image.header, "get") else b""
        shape = image.shape
    except (OSError, EOFError, ValueError, ImageFileError, zlib.error) as error:
        raise ValueError(f"{path}: cannot read NIfTI file (its header): {type(error).__name__}: {error}") from None
    if self_contained and magic.rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise NotSelfContained(f"{path}: not a single-file NIfTI (magic {magic!r}); upload a .nii or .nii.gz "
                               "that holds its voxels")
    check_voxels(path, shape, max_voxels)


_METAIMAGE = (".mha", ".mhd")
_NRRD = (".nrrd", ".nhdr")
_DETACHED = (".mhd", ".nhdr")
_DATA_FILE_KEY = re.compile(rb"^\s*ElementDataFile\s*[=:]\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_NRRD_DATA_FILE = re.compile(rb"^\s*data\s?file\s*:", re.IGNORECASE | re.MULTILINE)


def _simpleitk():
    try:
        import SimpleITK
    except ImportError:
        raise ImportError("reading .mha, .mhd, .nrrd and DICOM needs SimpleITK: pip install 'vmunet[itk]'") from None
    return SimpleITK


def sitk_image_io(path: str | Path) -> str | None:
    """The ITK reader a file's ending names ("MetaImageIO", "NrrdImageIO"), so that ITK does not guess another
    format from the file's bytes; None for other endings."""
    name = str(path).lower()
    if name.endswith(_METAIMAGE):
        return "MetaImageIO"
    if name.endswith(_NRRD):
        return "NrrdImageIO"
    return None


def _header_text(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEADER_BYTES)


def check_self_contained_sitk(path: str | Path) -> None:
    """An .mha whose ``ElementDataFile`` is LOCAL, an .nrrd without ``data file``; no detached headers. The raw
    header text is read, nothing else: ITK has not opened the file yet."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_DETACHED):
        raise NotSelfContained(f"{path}: a detached header ({path.suffix}) names a second file; upload one file "
                               "that holds its voxels (.mha with ElementDataFile = LOCAL, or .nrrd)")
    text = _header_text(path)
    if name.endswith(_METAIMAGE):
        # MetaIO stops at its first ElementDataFile line: the first one found in any case must be that line
        # (exact spelling) and say LOCAL, so that a look-alike line cannot hide the real one behind it.
        match = _DATA_FILE_KEY.search(text)
        if match is None:
            raise NotSelfContained(f"{path}: no 'ElementDataFile = LOCAL' in the first {HEADER_BYTES // 1024} KiB "
                                   "of the MetaImage header")
        if not match.group(0).lstrip().startswith(b"ElementDataFile") or match.group(1).upper() != b"LOCAL":
            raise NotSelfContained(f"{path}: the header's ElementDataFile names another file; only "
                                   "'ElementDataFile = LOCAL' (voxels in this file) is accepted")
    elif name.endswith(_NRRD):
        ends = [end for end in (text.find(b"\n\n"), text.find(b"\r\n\r\n")) if end >= 0]
        if not ends:  # the header ends at the first blank line; all of it must be seen
            raise NotSelfContained(f"{path}: no end of the NRRD header in its first {HEADER_BYTES // 1024} KiB")
        if _NRRD_DATA_FILE.search(text[:min(ends)]):
            raise NotSelfContained(f"{path}: the header's 'data file' names another file; only an .nrrd holding "
                                   "its voxels is accepted")


def check_sitk_header(path: str | Path, max_voxels: int | None = None, self_contained: bool = False) -> None:
    """Self-containment first (on the raw text, before ITK opens anything), then ITK's ReadImageInformation:
    voxels x components within the limit."""
    if self_contained:
        check_self_contained_sitk(path)
    sitk = _simpleitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image_io = sitk_image_io(path)
    if image_io:
        reader.SetImageIO(image_io)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: cannot read image header: {reason}") from None
    size = list(reader.GetSize())
    components = reader.GetNumberOfComponents()
    check_voxels(path, size + ([components] if components > 1 else []), max_voxels,
                 "voxels" if components <= 1 else "values")


def _h5_link_leaves_file(f, key: str) -> bool:
    """Whether ``key`` is an external link, or a chain of soft links (at most 16) ending in one."""
    import h5py

    for _ in range(16):
        link = f.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            return True
        if not isinstance(link, h5py.SoftLink):
            return False
        key = link.path
    return True  # a longer chain (or a loop) is not followed


def check_h5_dataset(path: str | Path, key: str, max_voxels: int | None = None, self_contained: bool = False) -> None:
    """HDF5 dataset ``key`` (when present; the reader names a missing one): its shape within the limit and,
    with ``self_contained``, stored in this file (no external link, external storage or virtual dataset). The
    links are inspected before the dataset is opened, so that no other file is touched."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.get(key, getlink=True) is None:
                return
            if self_contained and _h5_link_leaves_file(f, key):
                raise NotSelfContained(f"{path}: dataset {key!r} is a link to another file; only datasets stored "
                                       "in this file are accepted")
            dataset = f.get(key)
            if not isinstance(dataset, h5py.Dataset):
                return
            if self_contained and (dataset.external or dataset.is_virtual):
                raise NotSelfContained(f"{path}: dataset {key!r} keeps its data in other files "
                                       f"({'virtual dataset' if dataset.is_virtual else 'external storage'}); only "
                                       "datasets stored in this file are accepted")
            shape = dataset.shape or ()
    except (OSError, KeyError) as error:
        raise ValueError(f"{path}: cannot read HDF5 file: {error}") from None
    check_voxels(path, shape, max_voxels)


def check_dicom_files(files: Sequence[str | Path], source: str | Path, max_voxels: int | None = None) -> None:
    """A DICOM series: the sum over its files of rows x columns x frames (each file's header, through ITK's
    ReadImageInformation) within the limit, named by ``source`` (the folder)."""
    sitk = _simpleitk()
    limit = _limit(max_voxels)
    total = 0
    for file in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(file))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue  # the series reader names an unreadable slice
        columns, rows, frames = (tuple(reader.GetSize()) + (1, 1))[:3]
        total += columns * rows * max(frames, 1) * max(reader.GetNumberOfComponents(), 1)
        if total > limit:
            raise TooLarge(f"{source}: the DICOM series holds more than {limit:,} voxels (rows x columns x frames "
                           f"over its files; --max-voxels)")


def check_file(path: str | Path, kind: str, max_voxels: int | None = None, self_contained: bool = False) -> None:
    """The header checks of one file of a ``vmunet.io.paths.input_kind`` kind ("image", "nifti", "sitk",
    "h5"); with ``self_contained`` (uploads) also the storage checks, and images only in the upload formats."""
    if kind == "image":
        check_image_header(path, max_voxels, UPLOAD_IMAGE_FORMATS if self_contained else None)
    elif kind == "nifti":
        check_nifti_header(path, max_voxels, self_contained)
    elif kind == "sitk":
        check_sitk_header(path, max_voxels, self_contained)
    elif kind == "h5":
        check_h5_dataset(path, "image", max_voxels, self_contained)
    else:
        raise ValueError(f"{path}: unknown file kind {kind!r}")
