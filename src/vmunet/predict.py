"""``vmunet predict``: apply a trained run to files and folders of images and volumes.

    summary = predict_paths("runs/isic17", ["photos/"], "masks/")

Input discovery (folders, file kinds, a multi-channel NIfTI case's channel files), one output per input named
by its stem, the summary. Reading is ``vmunet.io``, the prediction itself ``vmunet.inference``
(the path evaluation uses), writing one prediction's files ``vmunet.prediction_outputs`` (shared with serve).
"""

from __future__ import annotations

import glob
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vmunet.io.dicom import DicomSeries, dicom_files, find_series, looks_like_dicom, read_dicom_series
from vmunet.io.cases import read_nifti_case, read_nifti_volume
from vmunet.io.h5 import read_h5_volume
from vmunet.io.images import read_image_file
from vmunet.io.paths import check_file_name, input_kind, list_folder, output_stem, printable_path
from vmunet.io.sitk import read_sitk_volume
from vmunet.inference import Ensemble, Prediction, Predictor, check_ensemble_runs, load_predictor
from vmunet.ops.workspace import scan_workspace
from vmunet.evaluation.postprocessing import load_for_run, postprocess_prediction
from vmunet.io.dicom import highdicom, write_dicom_seg
from vmunet.runtime.run_folder import run_folder_files
from vmunet.prediction_outputs import (READ_ERRORS, OutputJob, probabilities_file, write_image_outputs,
                                      write_volume_outputs)
from vmunet.io.files import check_output_folder, refuse_existing_outputs, refuse_overwriting
from vmunet.data.nifti import CHANNEL_FILE
from vmunet.runtime.run_folder import read_run_info

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


def group_channel_files(files: list[Path], channels: int) -> tuple[list[Path], dict[str, list[Path]],
                                                                     list[tuple[Path, str]]]:
    """For a model with several input channels: NIfTI files named CASE_XXXX.nii[.gz] (nnU-Net layout) become
    one case each. Returns the other files, {case: channel files in order} and (path, problem) for NIfTI
    files that cannot form a case."""
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
                 series: list[DicomSeries] | None = None) -> list[OutputJob]:
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
        jobs.append(OutputJob(one.folder, "sitk", output, one.stem, series=one))
    for case, channel_files in (cases or {}).items():
        first = channel_files[0]
        output = out_dir / (case + (".nii.gz" if first.name.lower().endswith(".gz") else ".nii"))
        seen[output] = first
        jobs.append(OutputJob(first, "nifti", output, case, channel_files))
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
        jobs.append(OutputJob(path, kind, output, stem))
    return jobs


def dicom_seg_file(job: OutputJob, out_dir: Path) -> Path:
    """Where ``--dicom-seg`` writes a DICOM series' SEG: ``<stem>.seg.dcm``."""
    return out_dir / f"{job.stem}.seg.dcm"


def planned_files(jobs: list[OutputJob], out_dir: Path, overlay: bool, save_probabilities: bool,
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
    the series (``vmunet.io.dicom.write_dicom_seg``; the ``dicom-seg`` extra); other inputs are predicted as usual.

    ``postprocessing``: a postprocessing.json of ``vmunet cv`` (``vmunet.evaluation.postprocessing``), applied to
    every label map before it is written; the probabilities stay as the network gave them.

    An input that cannot be read or predicted is reported (one line through ``report``) and skipped; the
    others are still predicted, and the summary's ``exit_code`` is 1.

    Before anything is written: an output that would replace an input or a run's file is an error, and so is
    one that already exists in ``out_dir`` (a dataset's ground truth, an earlier result) unless ``overwrite``
    (``skip_existing`` leaves an input whose label map exists alone, and writes none of its files). ``out_dir``
    is made by the first output written into it.
    """
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

    def fail(job: OutputJob, error: Exception) -> None:
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
                write_image_outputs(job, image, prediction, predictor.num_classes, out_dir, **options,
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
            write_volume_outputs(job, volume, reference, prediction, out_dir, **options)
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


