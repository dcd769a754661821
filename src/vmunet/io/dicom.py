"""DICOM series (SimpleITK, the ``itk`` extra): a folder that holds a series is one volume.

    for series in find_series(Path("CT_0001")):          # one per SeriesInstanceUID in the folder
        volume, image = read_dicom_series(series)          # (D, H, W) = (z, x, y) float32, the SimpleITK image

GDCM orders the slices along the slice normal (Image Position Patient), SimpleITK gives the volume the series'
size, spacing, origin and direction, and the axis order is that of every other volume (``vmunet.io.sitk``),
so labels written through ``sitk.sitk_labels`` land on the series' grid. Folders are not searched
recursively; files of a folder that belong to no series and are not images of a series' kind (a DICOMDIR, a
report, a SEG) are left alone.

The grid is checked before a volume is returned, since ITK would stack any slices on a uniform grid (a missing
slice stretches the spacing, a duplicate squeezes it, and labels land at wrong positions): slices of one size and
orientation, positions along the slice normal distinct and evenly spaced, every slice decoded (GDCM reports a
codec it lacks, such as 12-bit lossy JPEG, only on stderr and returns noise), no slice of the series' kind left
out because it cannot be read (a truncated file). Each problem is one error naming the folder and the position
or file.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import vmunet
from vmunet.io.checks import check_finite
from vmunet.io.files import atomic_write_bytes
from vmunet.io.limits import check_dicom_files
from vmunet.io.paths import input_kind, list_folder
from vmunet.io.sitk import simpleitk, sitk_to_dhw

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PREAMBLE = 128  # a DICOM Part 10 file: a 128-byte preamble, then "DICM"
LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")  # 4-byte lengths
POSITION, ORIENTATION = "0020|0032", "0020|0037"  # Image Position / Orientation (Patient)
SPACING_TOLERANCE = 0.01  # relative: scanners write positions with float noise; a missing slice is a 100 % gap


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
    return path.suffix.lower() in DICOM_SUFFIXES or _has_marker(path)


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
    the folder when it holds some but SimpleITK reads no series from them, or naming a file of a series' kind
    that no series holds (unreadable: its series would be read without it). One series is named after the
    folder; several are named ``<folder>_<SeriesInstanceUID>`` (a UID names the series unambiguously)."""
    folder = Path(folder)
    candidates = dicom_files(folder)
    if not candidates:
        return []
    reader = simpleitk().ImageSeriesReader
    try:
        uids = sorted(_quietly(lambda: reader.GetGDCMSeriesIDs(str(folder))))
    except RuntimeError as exc:  # GDCM's scan stops at a file it cannot parse, without naming it
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{folder}: GDCM cannot scan this folder's DICOM files ({reason}); move the files that "
                         "are not slices of a series elsewhere") from None
    if not uids:
        more = f" and {len(candidates) - 1} more" if len(candidates) > 1 else ""
        raise ValueError(f"{folder}: holds DICOM-looking files ({candidates[0].name}{more}) but no DICOM series "
                         "that SimpleITK can read")
    series = []
    for uid in uids:
        files = tuple(Path(name) for name in _quietly(lambda uid=uid: reader.GetGDCMSeriesFileNames(str(folder), uid)))
        name = folder_name(folder)
        series.append(DicomSeries(folder, uid, files, name if len(uids) == 1 else f"{name}_{uid}"))
    _check_left_out(folder, candidates, series)
    return series


def _check_left_out(folder: Path, candidates: list[Path], series: list[DicomSeries]) -> None:
    """A file that claims to be DICOM (the "DICM" marker) and stores the same kind of image as a series
    (its SOP class), or whose header is cut short, yet belongs to no series, is a slice GDCM could not read: an
    error naming it. Other objects (a DICOMDIR, a report, an RT plan) are left alone."""
    kinds = {sop_class(one.files[0]) for one in series} - {None}
    held = {path.resolve() for one in series for path in one.files}
    for path in candidates:
        if path.resolve() in held or not _has_marker(path):
            continue
        kind = sop_class(path)
        if kind is None or kind in kinds:
            raise ValueError(f"{path}: DICOM file that cannot be read (truncated or damaged?); its series in {folder} "
                             "would be read without it: replace or remove the file")


def _has_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(PREAMBLE)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def sop_class(path: Path) -> str | None:
    """The Media Storage SOP Class UID (0002,0002) of a DICOM Part 10 file's meta header (always explicit VR
    little endian): what kind of object it stores (a CT image, a DICOMDIR, a report); "" when the header names
    none, None when it cannot be read (no "DICM" marker, or a file cut short)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(PREAMBLE)
            if handle.read(4) != b"DICM":
                return None
            while True:
                head = handle.read(6)
                if len(head) < 6:
                    return None
                group, element = struct.unpack("<HH", head[:4])
                if group != 2:
                    return ""  # the meta header ended without naming a SOP class
                if head[4:6] in LONG_VRS:
                    raw = handle.read(6)
                    length = struct.unpack("<I", raw[2:])[0] if len(raw) == 6 else -1
                else:
                    raw = handle.read(2)
                    length = struct.unpack("<H", raw)[0] if len(raw) == 2 else -1
                if length < 0:
                    return None
                value = handle.read(length)
                if element == 2:
                    return value.rstrip(b"\x00 ").decode("ascii", errors="replace") if len(value) == length else None
    except OSError:
        return None


@contextmanager
def _native_stderr():
    """Collect what native code writes to file descriptor 2 meanwhile (GDCM's codecs report a failed decode
    there, and nowhere else); the lines are in the yielded list when the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a detached process): nothing to collect, nothing to hide
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def _undecodable(files: tuple[Path, ...]) -> tuple[Path, str] | None:
    """The first file whose pixel data GDCM cannot decode, with the codec's message; None if all decode."""
    sitk = simpleitk()
    for path in files:
        with _native_stderr() as messages:
            try:
                _quietly(lambda path=path: sitk.ReadImage(str(path)))
            except RuntimeError as exc:
                messages.append(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        if messages:
            return path, messages[0]
    return None


SliceHeader = tuple  # (file, size (columns, rows[, slices]), position text, orientation text)


def _slice_headers(series: DicomSeries) -> list[SliceHeader]:
    """The header of every slice, read file by file (slow: only to explain a series that did not read); an
    unreadable header names its file."""
    sitk = simpleitk()
    headers = []
    for path in series.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            _quietly(reader.ReadImageInformation)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: cannot read this DICOM slice's header ({reason})") from None
        tags = set(reader.GetMetaDataKeys())
        headers.append((path, tuple(reader.GetSize()),
                        reader.GetMetaData(POSITION) if POSITION in tags else "",
                        reader.GetMetaData(ORIENTATION) if ORIENTATION in tags else ""))
    return headers


def _read_headers(reader, series: DicomSeries, size: tuple) -> list[SliceHeader]:
    """The header of every slice from a series reader that kept each slice's tags (no second read)."""
    headers = []
    for i, path in enumerate(series.files):
        tags = set(reader.GetMetaDataKeys(i))
        headers.append((path, size, reader.GetMetaData(i, POSITION) if POSITION in tags else "",
                        reader.GetMetaData(i, ORIENTATION) if ORIENTATION in tags else ""))
    return headers


def _numbers(text: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.split("\\")], np.float64)
    except ValueError:
        return None
    return values if values.shape == (count,) else None


def check_slices(folder: Path, headers: list[SliceHeader]) -> None:
    """The slices lie on one grid: one size, one orientation, distinct positions along the slice normal at even
    spacing. A ValueError names the folder and the offending slices (files and positions in mm)."""
    first = headers[0]
    for path, size, _, _ in headers[1:]:
        if size[:2] != first[1][:2]:
            raise ValueError(f"{folder}: DICOM slices differ in size: {first[0].name} is {first[1][0]} x "
                             f"{first[1][1]}, {path.name} is {size[0]} x {size[1]} (columns x rows)")
    if len(headers) < 2:
        return
    orientations = [_numbers(h[3], 6) for h in headers]
    positions = [_numbers(h[2], 3) for h in headers]
    if any(o is None for o in orientations) or any(p is None for p in positions):
        return  # no geometry in the headers (e.g. secondary capture): ITK stacks them as given
    for (path, _, _, text), orientation in zip(headers[1:], orientations[1:]):
        if not np.allclose(orientation, orientations[0], atol=1e-4):
            raise ValueError(f"{folder}: DICOM slices are not parallel: {path.name} has orientation {text}, "
                             f"{first[0].name} {first[3]}")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = np.array([float(p @ normal) for p in positions])  # (slices,) mm along the normal
    order = np.argsort(along, kind="stable")
    along, names = along[order], [headers[i][0].name for i in order]
    gaps = np.diff(along)  # (slices - 1,)
    step = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        if abs(gap) <= 1e-3 * max(abs(step), 1e-3):
            raise ValueError(f"{folder}: two DICOM slices at the same position {along[i]:.6g} mm along the "
                             f"slice normal: {names[i]} and {names[i + 1]} (a duplicated slice?)")
    for i, gap in enumerate(gaps):
        if abs(gap - step) > SPACING_TOLERANCE * step:
            raise ValueError(f"{folder}: DICOM slices are not evenly spaced: {gap:.6g} mm between {names[i]} "
                             f"({along[i]:.6g} mm) and {names[i + 1]} ({along[i + 1]:.6g} mm), {step:.6g} mm "
                             "elsewhere (a missing slice?)")


def read_dicom_series(series: DicomSeries):
    """(volume (D, H, W) = (z, x, y) float32, the SimpleITK image for its geometry) of one series whose slices
    pass ``check_slices``; a slice GDCM cannot decode, or a NaN, is an error naming the file."""
    sitk = simpleitk()
    check_dicom_files(series.files, series.folder)  # rows x columns x frames: the voxel limit before decoding
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's tags, for the grid check
    with _native_stderr() as messages:
        try:
            image = _quietly(reader.Execute)
        except RuntimeError as exc:
            check_slices(series.folder, _slice_headers(series))  # names the slice when it explains the failure
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{series.folder}: cannot read DICOM series {series.uid}: {reason}") from None
    if messages:  # a codec complained: find the slice, so that the error can name it
        path, reason = _undecodable(series.files) or (series.folder, messages[0])
        raise ValueError(f"{path}: the DICOM image data cannot be decoded ({reason})")
    check_slices(series.folder, _read_headers(reader, series, tuple(image.GetSize())))
    volume = sitk_to_dhw(image, series.folder).astype(np.float32)
    check_finite(volume, series.folder)
    return volume, image


# DICOM SEG output (highdicom, the ``dicom-seg`` extra): a label map predicted on a series, as one binary
# segment per class and one frame per source slice and segment (empty frames kept, so every slice is referenced),
# in the series' study and frame of reference; a viewer (3D Slicer, OHIF) shows it over the series.

SEG_SERIES_NUMBER = 9100  # any number: viewers list series by it; far from scanners' usual 1..99


def highdicom():
    """The highdicom module; a one-line error naming the extra when it is not installed."""
    try:
        import highdicom
    except ImportError:
        raise ImportError("--dicom-seg needs highdicom: pip install 'vmunet[dicom-seg]'") from None
    return highdicom


def segment_names(label_names: list[str], num_classes: int) -> list[str]:
    """Names of the foreground classes 1..K-1 (a one-class run: class 1)."""
    count = max(num_classes, 2)
    names = list(label_names)[:count] if label_names else []
    return [names[k] if k < len(names) else f"class_{k}" for k in range(1, count)]


def write_dicom_seg(path: Path, labels: np.ndarray, series: DicomSeries, label_names: list[str],
                    num_classes: int) -> None:
    """Write ``labels`` (D, H, W) = (z, x, y) class ids, predicted on ``series``, as a binary DICOM SEG at ``path``
    (atomically). A source series that highdicom cannot reference (no StudyInstanceUID, no SliceThickness, ...)
    is a ValueError naming the folder."""
    hd = highdicom()
    import pydicom
    from pydicom.sr.codedict import codes


    sources = [pydicom.dcmread(path_, stop_before_pixels=True) for path_ in series.files]
    pixels = np.ascontiguousarray(np.asarray(labels).transpose(0, 2, 1), np.uint8)  # (frames, rows, columns)
    algorithm = hd.AlgorithmIdentificationSequence(name="vmunet", version=vmunet.__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(segment_number=number, segment_label=name,
                                          segmented_property_category=codes.SCT.Tissue,
                                          segmented_property_type=codes.SCT.Tissue,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                          algorithm_identification=algorithm)
                for number, name in enumerate(segment_names(label_names, num_classes), start=1)]
    try:
        seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels,
                                  segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                                  segment_descriptions=segments, series_instance_uid=hd.UID(),
                                  series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
                                  manufacturer="vmunet", manufacturer_model_name="vmunet",
                                  software_versions=vmunet.__version__, device_serial_number="none",
                                  series_description="vmunet segmentation", omit_empty_frames=False)
    except (ValueError, AttributeError, TypeError, KeyError) as exc:  # highdicom's checks of the source series
        raise ValueError(f"{series.folder}: cannot write a DICOM SEG of series {series.uid}: "
                         f"{type(exc).__name__}: {exc}") from None
    encoded = io.BytesIO()
    seg.save_as(encoded)
    atomic_write_bytes(path, lambda handle: handle.write(encoded.getvalue()))
