"""DICOM series (SimpleITK, the ``itk`` extra): a folder that holds a series is one volume.

    for series in find_series(Path("CT_0001")):          # one per SeriesInstanceUID in the folder
        volume, image = read_dicom_series(series)          # (D, H, W) = (z, x, y) float32, the SimpleITK image

GDCM orders the slices along the slice normal (Image Position Patient), SimpleITK gives the volume the series'
size, spacing, origin and direction, and the axis order is that of every other volume (``vmunet.data.readers``),
so labels written through ``readers.sitk_labels`` land on the series' grid. Folders are not searched
recursively; files of a folder that belong to no series (a DICOMDIR, a report) are left alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmunet.data.readers import input_kind, list_folder, simpleitk, sitk_to_dhw

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PREAMBLE = 128  # a DICOM Part 10 file: a 128-byte preamble, then "DICM"


@dataclass(frozen=True)
class DicomSeries:
    """One series of a folder: its SeriesInstanceUID, its files in slice order, the stem of its output."""

    folder: Path
    uid: str
    files: tuple[Path, ...]
    stem: str


def looks_like_dicom(path: Path) -> bool:
    """A DICOM ending (.dcm, .dicom, .ima) or the "DICM" marker after the preamble (series often have no
    endings). Files of a kind vmunet reads otherwise (images, volumes) are not DICOM."""
    if input_kind(path) is not None:
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(PREAMBLE)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (not recursively) that look like DICOM; reading them needs no SimpleITK."""
    return [path for path in list_folder(folder) if looks_like_dicom(path)]


def _quietly(call):
    """``call()`` without ITK's warnings on stderr ("No Series were found"): our own error says it better."""
    sitk = simpleitk()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return call()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def folder_name(folder: Path) -> str:
    """The name a folder's outputs take: its own name however it was given (``.``, ``..``, ``sub/``: the name of
    the folder it means, symbolic links not followed), never an empty or hidden stem ("dicom" for the root)."""
    return Path(os.path.abspath(folder)).name.lstrip(".") or "dicom"


def find_series(folder: Path) -> list[DicomSeries]:
    """The DICOM series of ``folder``, sorted by UID: [] when it holds no DICOM-looking files; a ValueError naming
    the folder when it holds some but SimpleITK reads no series from them. One series is named after the
    folder; several are named ``<folder>_<SeriesInstanceUID>`` (a UID names the series unambiguously)."""
    folder = Path(folder)
    candidates = dicom_files(folder)
    if not candidates:
        return []
    reader = simpleitk().ImageSeriesReader
    uids = sorted(_quietly(lambda: reader.GetGDCMSeriesIDs(str(folder))))
    if not uids:
        more = f" and {len(candidates) - 1} more" if len(candidates) > 1 else ""
        raise ValueError(f"{folder}: holds DICOM-looking files ({candidates[0].name}{more}) but no DICOM series "
                         "that SimpleITK can read")
    series = []
    for uid in uids:
        files = tuple(Path(name) for name in _quietly(lambda uid=uid: reader.GetGDCMSeriesFileNames(str(folder), uid)))
        name = folder_name(folder)
        series.append(DicomSeries(folder, uid, files, name if len(uids) == 1 else f"{name}_{uid}"))
    return series


def read_dicom_series(series: DicomSeries):
    """(volume (D, H, W) = (z, x, y) float32, the SimpleITK image for its geometry) of one series."""
    sitk = simpleitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{series.folder}: cannot read DICOM series {series.uid}: {reason}") from None
    return sitk_to_dhw(image, series.folder).astype(np.float32), image
