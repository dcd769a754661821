"""``vmunet predict``: apply a trained run to files and folders of images and volumes.

    summary = predict_paths("runs/isic17", ["photos/"], "masks/")

Input discovery (folders, file kinds, a multi-channel NIfTI case's channel files), one output per input named
by its stem, the summary. Reading is ``vmunet.data.readers``, the prediction itself ``vmunet.inference``
(the path evaluation uses), writing ``vmunet.runtime.writers``.
"""

from __future__ import annotations

import glob
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vmunet.data.dicom import DicomSeries, dicom_files, find_series, looks_like_dicom, read_dicom_series
from vmunet.data.readers import (check_file_name, input_kind, list_folder, output_stem, printable_path,
                                 read_h5_volume, read_image_file, read_nifti_case, read_nifti_volume,
                                 read_sitk_volume, sitk_labels)
from vmunet.inference import Ensemble, Prediction, Predictor, check_ensemble_runs, load_predictor
from vmunet.ops.workspace import scan_workspace
from vmunet.evaluation.postprocessing import load_for_run, postprocess_prediction
from vmunet.runtime.dicom_seg import highdicom, write_dicom_seg
from vmunet.runtime.run_folder import run_folder_files
from vmunet.runtime.writers import (atomic_write_bytes, check_output_folder, index_png, mask_png,
                                   refuse_existing_outputs, refuse_overwriting, write_label_volume, write_png,
                                   write_sitk)

__all__ = ["Ensemble", "PredictSummary", "Prediction", "Predictor", "collect_inputs", "group_channel_files",
           "plan_outputs", "predict_paths", "probabilities_file", "run_folders"]


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to predict (folders listed, not recursively, sorted) and (path, problem) for what cannot be.

    A path that does not exist raises FileNotFoundError before anything runs (a typo should not cost a run).
    """
    files, problems = [], []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{printable_path(path)}: input not found")
        check_file_name(path)  # folders are listed by list_folder, which checks every name in them
        if path.is_dir():
            found = [p for p in list_folder(path) if input_kind(p)]
            if not found and not dicom_files(path):  # a DICOM folder's series: ``collect_series``
                problems.append((path, "folder holds no PNG/JPG/TIFF/BMP images, NIfTI, .mha/.mhd/.nrrd or .h5 "
                                       "volumes, or DICOM series"))
            files.extend(found)
        elif looks_like_dicom(path):  # one slice of a series: the series is the input
            problems.append((path, "a DICOM file: give the folder of its series as the input"))
        elif input_kind(path) is None:
            problems.append((path, "unsupported file type (expected an image, .nii, .nii.gz, .mha, .mhd, .nrrd or "
                                   ".npy.h5, or a folder holding a DICOM series)"))
        else:
            files.append(path)
    return list(dict.fromkeys(files)), problems


def collect_series(inputs: Sequence[str | Path]) -> tuple[list[DicomSeries], list[tuple[Path, str]]]:
    """The DICOM series of the folders among ``inputs``, each one input, and (folder, problem) for a folder
    whose DICOM-looking files hold no series SimpleITK can read. A missing SimpleITK raises ImportError
    (naming the ``itk`` extra) before anything runs."""
    series, problems = [], []
    for raw in dict.fromkeys(Path(p) for p in inputs):
        if not raw.is_dir():
            continue
        try:
            series.extend(find_series(raw))
        except ValueError as error:
            problems.append((raw, str(error).removeprefix(f"{raw}: ")))
    return series, problems


@dataclass
class PredictSummary:
    """What ``predict_paths`` did; ``exit_code`` is 1 when any input failed."""

    written: list[Path] = field(default_factory=list)  # label maps written in this call
    skipped: list[Path] = field(default_factory=list)  # outputs already present (skip_existing)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    images: int = 0
    image_seconds: float = 0.0
    volumes: int = 0
    slices: int = 0
    slice_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def describe(self) -> str:
        parts = []
        if self.images:
            parts.append(f"{self.images} images in {self.image_seconds:.1f} s "
                         f"({self.images / max(self.image_seconds, 1e-9):.2f} images/s)")
        if self.volumes:
            parts.append(f"{self.volumes} volumes, {self.slices} slices in {self.slice_seconds:.1f} s "
                         f"({self.slices / max(self.slice_seconds, 1e-9):.2f} slices/s)")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (output exists)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return "; ".join(parts) or "nothing to do"


@dataclass
class _Job:
    path: Path  # the input (a multi-channel case: its channel 0 file)
    kind: str
    output: Path
    stem: str
    channels: list[Path] | None = None  # a multi-channel NIfTI case's files, in channel order
    series: DicomSeries | None = None  # a DICOM series (kind "sitk", path its folder)


def group_channel_files(files: list[Path], channels: int) -> tuple[list[Path], dict[str, list[Path]],
                                                                     list[tuple[Path, str]]]:
    """For a model with several input channels: NIfTI files named CASE_XXXX.nii[.gz] (nnU-Net layout) become
    one case each. Returns the other files, {case: channel files in order} and (path, problem) for NIfTI
    files that cannot form a case."""
    from vmunet.data.nifti import CHANNEL_FILE

    others, found, problems = [], {}, []
    for path in files:
        if input_kind(path) != "nifti":
            others.append(path)
            continue
        match = CHANNEL_FILE.match(path.name)
        if match is None:
            problems.append((path, f"the model takes {channels} channels: name a case's files "
                                   f"CASE_0000 .. CASE_{channels - 1:04d} (.nii.gz), one per channel"))
            continue
        found.setdefault((path.parent, match["case"]), {})[int(match["channel"])] = path
    cases = {}
    for (folder, case), by_channel in sorted(found.items()):
        if sorted(by_channel) != list(range(channels)):
            problems.append((folder / case, f"case {case!r} has channel files {sorted(by_channel)}, the model "
                                            f"takes channels 0..{channels - 1}"))
        elif case in cases:
            problems.append((folder / case, f"case {case!r} is also in {cases[case][0].parent}"))
        else:
            cases[case] = [by_channel[c] for c in range(channels)]
    return others, cases, problems


def plan_outputs(files: list[Path], out_dir: Path, cases: dict[str, list[Path]] | None = None,
                 series: list[DicomSeries] | None = None) -> list[_Job]:
    """One label file per input, named by its stem (a multi-channel case: CASE.nii.gz, as nnU-Net names
    it; a DICOM series: <folder>.nii.gz, or <folder>_<SeriesInstanceUID>.nii.gz when the folder holds several);
    two inputs that would write one file are an error."""
    jobs, seen = [], {}
    for one in series or []:  # read and written through SimpleITK like an .mha volume, as NIfTI
        output = out_dir / f"{one.stem}.nii.gz"
        if output in seen:
            raise ValueError(f"{one.folder}: would write {output}, as {seen[output]} does; predict them into "
                             "separate --out folders")
        seen[output] = one.folder
        jobs.append(_Job(one.folder, "sitk", output, one.stem, series=one))
    for case, channel_files in (cases or {}).items():
        first = channel_files[0]
        output = out_dir / (case + (".nii.gz" if first.name.lower().endswith(".gz") else ".nii"))
        seen[output] = first
        jobs.append(_Job(first, "nifti", output, case, channel_files))
    for path in files:
        kind = input_kind(path)
        stem = output_stem(path)
        if kind == "image":
            output = out_dir / f"{stem}.png"
        elif kind == "nifti":
            output = out_dir / (stem + (".nii.gz" if path.name.lower().endswith(".gz") else ".nii"))
        elif kind == "sitk":  # the input's own format
            output = out_dir / f"{stem}{path.suffix.lower()}"
        else:
            output = out_dir / f"{stem}.nii.gz"
        if output in seen:
            raise ValueError(f"{path}: would write {output}, as {seen[output]} does; predict them into "
                             "separate --out folders")
        seen[output] = path
        jobs.append(_Job(path, kind, output, stem))
    return jobs


def probabilities_file(job: _Job) -> Path:
    """Where ``--save-probabilities`` writes a job's probabilities: ``<stem>.npz`` beside its label map."""
    return job.output.with_name(f"{job.stem}.npz")


def dicom_seg_file(job: _Job, out_dir: Path) -> Path:
    """Where ``--dicom-seg`` writes a DICOM series' SEG: ``<stem>.seg.dcm``."""
    return out_dir / f"{job.stem}.seg.dcm"


def planned_files(jobs: list[_Job], out_dir: Path, overlay: bool, save_probabilities: bool,
                  inputs: list[Path], dicom_seg: bool = False) -> list[Path]:
    """Every file predict may write: label maps (an .mhd's data file beside it), probabilities, DICOM SEGs and
    overlays (a volume's overlays are named by slice: any input named like one of them counts)."""
    planned = [job.output for job in jobs]
    planned += [job.output.with_suffix(".zraw") for job in jobs if job.output.suffix == ".mhd"]  # write_sitk's
    planned += [dicom_seg_file(job, out_dir) for job in jobs if dicom_seg and job.series is not None]
    by_npz = {}
    for job in jobs:
        if save_probabilities:
            npz = probabilities_file(job)
            if npz in by_npz:  # a.png and a.nii.gz: two label maps, one a.npz
                raise ValueError(f"{job.path}: would write {npz}, as {by_npz[npz]} does; predict them into "
                                 "separate --out folders")
            by_npz[npz] = job.path
            planned.append(npz)
        if overlay and job.kind == "image":
            planned.append(out_dir / "overlays" / f"{job.stem}.png")
        elif overlay:  # its slices are chosen when predicted: any file named like one of them counts
            overlays = (out_dir / "overlays").resolve()
            planned.extend(path for path in inputs if path.resolve().parent == overlays
                           and path.name.startswith(f"{job.stem}_slice"))
            planned.extend(sorted((out_dir / "overlays").glob(f"{glob.escape(job.stem)}_slice*.png")))
    return planned


# What reading a bad or unreadable file raises (PIL, nibabel, h5py, gzip); caught around reading only.
READ_ERRORS = (OSError, ValueError, KeyError, zlib.error, EOFError)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_folders(run_dir: str | Path | Sequence[str | Path]) -> list[Path]:
    """One run folder or several (an ensemble) as a list."""
    return [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(r) for r in run_dir]


@scan_workspace()  # frees the CPU scan's scratch buffers when the predictions are written
def predict_paths(run_dir: str | Path | Sequence[str | Path], inputs: Sequence[str | Path], out_dir: str | Path,
                  checkpoint: str = "best", tta: bool = False, overlay: bool = False, batch_size: int = 8,
                  device: str = "auto", skip_existing: bool = False, save_probabilities: bool = False,
                  allow_pickle: bool = False, report: Callable[[str], None] = _stderr,
                  postprocessing: str | Path | None = None, dicom_seg: bool = False,
                  overwrite: bool = False) -> PredictSummary:
    """Predict image files, volumes and folders of them into ``out_dir`` with one run, or with several
    (``run_dir`` a list): their ensemble, ``vmunet.inference.Ensemble``.

    Writes ``OUT/<stem>.png`` per image (original size; 0/255 for one class, class ids for several),
    ``OUT/<stem>.nii[.gz]`` per volume (class ids, the input's affine and header; ``.npy.h5`` volumes get an
    identity affine and are stored (H, W, D) so that ``vmunet.data.nifti`` reads them back as (D, H, W)),
    ``OUT/overlays/`` with ``overlay``, and with ``save_probabilities`` ``OUT/<stem>.npz`` beside each label map
    (``write_probabilities``: key ``probabilities``, float32 (K, ...) in the input's stored axis order). Every file
    is written atomically.

    ``dicom_seg``: a DICOM series also gets ``OUT/<stem>.seg.dcm``, a DICOM SEG of its labels that references
    the series (``vmunet.runtime.dicom_seg``; the ``dicom-seg`` extra); other inputs are predicted as usual.

    ``postprocessing``: a postprocessing.json of ``vmunet cv`` (``vmunet.evaluation.postprocessing``), applied to
    every label map before it is written; the probabilities stay as the network gave them.

    An input that cannot be read or predicted is reported (one line through ``report``) and skipped; the
    others are still predicted, and the summary's ``exit_code`` is 1.

    Before anything is written: an output that would replace an input or a run's file is an error, and so is
    one that already exists in ``out_dir`` (a dataset's ground truth, an earlier result) unless ``overwrite``
    (``skip_existing`` leaves an input whose label map exists alone, and writes none of its files). ``out_dir``
    is made by the first output written into it.
    """
    from vmunet.runtime.run_folder import read_run_info

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 (got {batch_size})")
    runs = run_folders(run_dir)
    out_dir = Path(out_dir)
    files, problems = collect_inputs(inputs)
    if dicom_seg:
        highdicom()  # a missing extra is an error before anything is written
    # an ensemble's members are checked to agree before anything is written
    infos = check_ensemble_runs(runs, checkpoint) if len(runs) > 1 else [read_run_info(runs[0])]
    spec = load_for_run(postprocessing, infos[0])  # `vmunet cv`'s choice, applied to the labels
    channels = infos[0].input_channels
    inputs_read = list(files)
    cases = None
    if channels > 1:
        files, cases, unpaired = group_channel_files(files, channels)
        problems += unpaired
    series, unreadable = collect_series(inputs)  # DICOM folders: one input per series
    problems += unreadable
    inputs_read += [path for one in series for path in one.files]
    jobs = plan_outputs(files, out_dir, cases, series)
    planned = planned_files(jobs, out_dir, overlay, save_probabilities, inputs_read, dicom_seg)  # errors first
    out_existed = out_dir.exists()  # a folder made here and left empty (every input skipped) is removed
    check_output_folder(out_dir)
    refuse_overwriting(planned, inputs_read + [path for run in runs for path in run_folder_files(run)])
    summary = PredictSummary()
    if skip_existing:
        summary.skipped = [job.output for job in jobs if job.output.is_file()]
        jobs = [job for job in jobs if not job.output.is_file()]
        planned = planned_files(jobs, out_dir, overlay, save_probabilities, inputs_read, dicom_seg)
    refuse_existing_outputs(out_dir, planned, overwrite)
    for path, problem in problems:
        summary.failed.append((path, problem))
        report(f"skipped {path}: {problem}")
    if not jobs:
        _remove_if_empty(out_dir, out_existed)
        return summary
    predictor = load_predictor(runs, checkpoint, device=device, tta=tta, batch_size=batch_size,
                               allow_pickle=allow_pickle)
    options = dict(overlay=overlay, save_probabilities=save_probabilities)

    def fail(job: _Job, error: Exception) -> None:
        message = str(error)
        if not message.startswith(str(job.path)):
            message = f"{job.path}: {type(error).__name__}: {message}"
        summary.failed.append((job.path, message))
        report(f"skipped {message}")

    images = [job for job in jobs if job.kind == "image"]
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        pending = []  # (job, image (H, W[, C]))
        for job in images[start:start + batch_size]:
            try:  # reading and the input's own checks only: a failure beyond these is a bug, not a bad file
                image = read_image_file(job.path)
                predictor.check_image(image)
            except READ_ERRORS as error:
                fail(job, error)
            else:
                pending.append((job, image))
        if not pending:
            continue
        predictions = predictor.predict_images([image for _, image in pending])  # each member's own preprocessing
        predictions = [postprocess_prediction(prediction, spec) for prediction in predictions]
        for (job, image), prediction in zip(pending, predictions):
            try:
                _write_image_outputs(job, image, prediction, predictor.num_classes, out_dir, **options,
                                     info=predictor.info)
            except OSError as error:
                fail(job, error)
            else:
                summary.written.append(job.output)
                summary.images += 1
    summary.image_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for job in (job for job in jobs if job.kind != "image"):
        try:  # reading and the input's own checks only: a failure beyond these is a bug, not a bad file
            if job.channels:
                volume, reference = read_nifti_case(job.channels, job.stem)  # (D, H, W, C)
            elif job.kind == "nifti":
                volume, reference = read_nifti_volume(job.path)
            elif job.series is not None:
                volume, reference = read_dicom_series(job.series)  # (z, x, y), the SimpleITK image
            elif job.kind == "sitk":
                volume, reference = read_sitk_volume(job.path)  # (z, x, y), the SimpleITK image
            else:
                volume, reference = read_h5_volume(job.path), None
            predictor.check_volume(volume)
        except READ_ERRORS as error:
            fail(job, error)
            continue
        try:
            prediction = postprocess_prediction(predictor.predict_volume(volume, keep_probabilities=save_probabilities),
                                                spec)
        except torch.OutOfMemoryError as error:
            fail(job, ValueError(f"out of memory ({error}); try a smaller --batch-size"))
            continue
        if dicom_seg and job.series is not None:  # before the label map, which marks the input complete
            try:
                write_dicom_seg(dicom_seg_file(job, out_dir), prediction.labels, job.series,
                                predictor.info.label_names, predictor.num_classes)
            except (OSError, ValueError) as error:
                fail(job, error)
                continue
        try:
            _write_volume_outputs(job, volume, reference, prediction, out_dir, **options)
        except OSError as error:
            fail(job, error)
        else:
            summary.written.append(job.output)
            summary.volumes += 1
            summary.slices += volume.shape[0]
    summary.slice_seconds = time.perf_counter() - started
    _remove_if_empty(out_dir, out_existed)
    return summary


def _remove_if_empty(folder: Path, existed: bool) -> None:
    """Remove ``folder`` when this call made it and wrote nothing into it (e.g. every input over the size limit):
    no empty --out is left behind. A folder that existed before is the user's: kept."""
    if not existed and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _write_image_outputs(job: _Job, image: np.ndarray, prediction: Prediction, num_classes: int, out_dir: Path,
                         overlay: bool, save_probabilities: bool, info=None) -> None:
    """A multi-class 2D-folder run (``info.dataset == "folders"``) writes palette PNGs of class ids (the
    dataset's colours) and overlays with a legend; other runs 0/255 or grey class-id PNGs and contours."""
    from PIL import Image

    from vmunet.overlay import class_colours, contour_overlay, legend_overlay

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


def _write_volume_outputs(job: _Job, volume: np.ndarray, reference, prediction: Prediction, out_dir: Path,
                          overlay: bool, save_probabilities: bool) -> None:
    stem = job.stem
    labels = prediction.labels  # (D, H, W)
    if save_probabilities:
        write_probabilities(probabilities_file(job), stored_order(job.kind, prediction.probabilities),
                            prediction.probabilities.shape[0])
    if job.kind == "sitk":  # labels in the input's format on its grid
        if overlay:
            _write_overlays(out_dir, stem, volume, labels)
        write_sitk(job.output, sitk_labels(labels, reference))
        return
    if overlay:
        _write_overlays(out_dir, stem, volume, labels)
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


def _write_overlays(out_dir: Path, stem: str, volume: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    from vmunet.overlay import contour_overlay, representative_slices, window_to_uint8

    display = window_to_uint8(volume[..., 0] if volume.ndim == 4 else volume)  # (D, H, W): windowed whole
    for z in representative_slices(labels):
        write_png(out_dir / "overlays" / f"{stem}_slice{z:03d}.png", Image.fromarray(contour_overlay(display[z],
                                                                                                     labels[z])))
