"""Writing one prediction's files, shared by ``vmunet predict`` and ``vmunet serve``: the label map in the input's
format (PNG for images, NIfTI / .mha / .nrrd / .npy.h5 for volumes, on the input's grid), and on request the
probabilities (``<stem>.npz``) and overlay pictures. Extras are written first and the label map last, so that an
existing label map means the input is complete.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vmunet.io.dicom import DicomSeries
from vmunet.io.sitk import sitk_labels
from vmunet.inference import Prediction
from vmunet.overlay import class_colours, contour_overlay, legend_overlay, representative_slices, window_to_uint8
from vmunet.io.files import atomic_write_bytes
from vmunet.io.images import index_png, mask_png, write_png
from vmunet.io.nifti import write_label_volume
from vmunet.io.sitk import write_sitk

__all__ = ["OutputJob", "READ_ERRORS", "probabilities_file", "stored_order", "write_image_outputs",
           "write_overlays", "write_probabilities", "write_volume_outputs"]

# What reading a bad or unreadable file raises (PIL, nibabel, h5py, gzip); caught around reading only.
READ_ERRORS = (OSError, ValueError, KeyError, zlib.error, EOFError)


@dataclass
class OutputJob:
    """One input and where its label map goes."""

    path: Path  # the input (a multi-channel case: its channel 0 file)
    kind: str
    output: Path
    stem: str
    channels: list[Path] | None = None  # a multi-channel NIfTI case's files, in channel order
    series: DicomSeries | None = None  # a DICOM series (kind "sitk", path its folder)



def probabilities_file(job: OutputJob) -> Path:
    """Where ``--save-probabilities`` writes a job's probabilities: ``<stem>.npz`` beside its label map."""
    return job.output.with_name(f"{job.stem}.npz")


def write_image_outputs(job: OutputJob, image: np.ndarray, prediction: Prediction, num_classes: int, out_dir: Path,
                         overlay: bool, save_probabilities: bool, info=None) -> None:
    """A multi-class 2D-folder run (``info.dataset == "folders"``) writes palette PNGs of class ids (the
    dataset's colours) and overlays with a legend; other runs 0/255 or grey class-id PNGs and contours."""
    folders = info is not None and info.dataset == "folders" and num_classes <= 256
    colours = class_colours(num_classes, info.label_colours) if folders else None

    # Extras first, the label map last: an existing label map means this input is complete (skip_existing).
    stem = job.stem
    if save_probabilities:
        write_probabilities(probabilities_file(job), prediction.probabilities, num_classes)  # (K, H, W)
    if overlay:
        picture = legend_overlay(image, prediction.labels, info.label_names, colours) if folders else \
            contour_overlay(image, prediction.labels)
        write_png(out_dir / "overlays" / f"{stem}.png", Image.fromarray(picture))
    labels = prediction.labels
    write_png(job.output, index_png(labels, colours) if folders else mask_png(labels, num_classes))


def write_volume_outputs(job: OutputJob, volume: np.ndarray, reference, prediction: Prediction, out_dir: Path,
                          overlay: bool, save_probabilities: bool) -> None:
    stem = job.stem
    labels = prediction.labels  # (D, H, W)
    if save_probabilities:
        write_probabilities(probabilities_file(job), stored_order(job.kind, prediction.probabilities),
                            prediction.probabilities.shape[0])
    if job.kind == "sitk":  # labels in the input's format on its grid
        if overlay:
            write_overlays(out_dir, stem, volume, labels)
        write_sitk(job.output, sitk_labels(labels, reference))
        return
    if overlay:
        write_overlays(out_dir, stem, volume, labels)
    write_label_volume(job.output, labels, reference)


def stored_order(kind: str, probabilities: np.ndarray) -> np.ndarray:
    """(K, D, H, W) probabilities of a volume read as (D, H, W) -> (K, ...) in the axis order of the input's array
    as its reader gives it: NIfTI (K, X, Y, Z) as nibabel's (D, H, W) = (Z, X, Y); .mha/.mhd/.nrrd (K, z, y, x)
    as SimpleITK's GetArrayFromImage (read as (z, x, y)); .npy.h5 (K, D, H, W) as stored."""
    if kind == "nifti":
        return np.moveaxis(probabilities, 1, -1)
    if kind == "sitk":
        return probabilities.transpose(0, 1, 3, 2)
    return probabilities


def write_probabilities(path: Path, probabilities: np.ndarray, num_classes: int) -> None:
    """``path`` (.npz, compressed) with the key ``probabilities``: float32 (K, ...), one map per class including
    the background, as nnU-Net stores them; a one-class (sigmoid) run's (1, ...) map p becomes (1 - p, p), so
    that K is always the number of label values and the argmax over axis 0 is the label map (at p = 0.5
    exactly the label is 1, the argmax 0)."""
    probabilities = np.asarray(probabilities, np.float32)
    if num_classes == 1 and probabilities.shape[0] == 1:
        probabilities = np.concatenate([1 - probabilities, probabilities])
    array = np.ascontiguousarray(probabilities)
    atomic_write_bytes(path, lambda handle: np.savez_compressed(handle, probabilities=array))


def write_overlays(out_dir: Path, stem: str, volume: np.ndarray, labels: np.ndarray) -> None:
    display = window_to_uint8(volume[..., 0] if volume.ndim == 4 else volume)  # (D, H, W): windowed whole
    for z in representative_slices(labels):
        write_png(out_dir / "overlays" / f"{stem}_slice{z:03d}.png", Image.fromarray(contour_overlay(display[z],
                                                                                                     labels[z])))
