"""File names: which kind of file a name is (image, NIfTI, SimpleITK format, HDF5), its stem, a folder's
visible files, and names that cannot be printed or written (not UTF-8).
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".npy.h5", ".h5")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd")


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
