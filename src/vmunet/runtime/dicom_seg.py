"""A DICOM SEG object (highdicom, the ``dicom-seg`` extra) of a label map predicted on a DICOM series.

    write_dicom_seg(Path("out/CT_0001.seg.dcm"), labels, series, info.label_names, info.num_classes)

One binary segment per class (background excluded, named by the run's label names), one frame per source slice
and segment (empty frames kept, so every slice is referenced), in the series' study and frame of reference; a
viewer (3D Slicer, OHIF) shows it over the series it was predicted on.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vmunet.data.dicom import DicomSeries
from vmunet.runtime.writers import atomic_write_bytes

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

    import vmunet

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
