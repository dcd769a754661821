"""Apply a trained run to new images and volumes.

    predictor = Predictor.from_run("runs/isic17")
    result = predictor.predict(image)            # (H, W[, C]) -> labels (H, W), probabilities (K, H, W)
    summary = predict_paths("runs/isic17", ["photos/"], "masks/")

The input goes through exactly the evaluation pipeline of training (``vmunet.data.transforms.eval_transform``
with the run's normalisation and network size); the probabilities are resized back to the original size
(bilinear) before the threshold (one class, 0.5) or the argmax.

Channels: a grey image given to a 3-channel model is repeated to RGB; an RGB image given to a 1-channel model
is converted to grey with the ITU-R 601 luma weights (0.299 R + 0.587 G + 0.114 B, PIL's "L"); an alpha
channel is dropped.

Volumes are predicted slice by slice, as they were trained: NIfTI arrays as stored (X, Y, Z) are sliced along
their last axis, (D, H, W) = (Z, X, Y) as in ``vmunet.data.nifti``; Synapse ``.npy.h5`` volumes are (D, H, W)
already. Each slice is normalised on its own, as in training and evaluation.

``tta=True`` averages the probabilities of the image and its horizontal, vertical and double flips. This is
not part of the paper's protocol: report such numbers separately.
"""

from __future__ import annotations

import gzip
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vmunet.data.isic import IMAGE_SUFFIXES, read_image
from vmunet.data.transforms import eval_transform, resize_to
from vmunet.engine import predict_probabilities, probabilities_to_labels, resolve_device
from vmunet.models import VMUNet
from vmunet.runs import RunInfo, atomic_write_bytes, load_model_from_run, resolve_checkpoint

NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".npy.h5", ".h5")
GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")  # read as (H, W), without 8-bit conversion
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class Prediction:
    """labels: (H, W) or (D, H, W) int64 class ids (0/1 for one class); probabilities: (K, ...) float32 or None."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------- inputs


def input_kind(path: Path) -> str | None:
    """"image", "nifti", "h5" or None for a file name we do not read."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(H5_SUFFIXES):
        return "h5"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return None


def output_stem(path: Path) -> str:
    """The file name without its (possibly double) extension: case.nii.gz -> case, case.npy.h5 -> case."""
    name = path.name
    for suffix in NIFTI_SUFFIXES + H5_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_image_file(path: Path) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB array with the file's own value range (16-bit stays 16-bit)."""
    return read_image(path, "RGB", keep_modes=GREY_MODES)


def read_h5_volume(path: Path) -> np.ndarray:
    """The ``image`` dataset (D, H, W) of a Synapse ``.npy.h5`` test volume.

    A single-file twin of ``vmunet.data.synapse.SynapseVolumes`` (which needs the dataset's list files);
    the label, if present, is not read.
    """
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading .h5 volumes needs h5py: pip install h5py") from exc
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read HDF5 file: empty file (0 bytes)")
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise ValueError(f"{path}: HDF5 file has no dataset 'image' (found: {', '.join(sorted(f)) or 'none'})")
            volume = np.asarray(f["image"][()], dtype=np.float32)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read HDF5 file: {exc}") from exc
    if volume.ndim != 3:
        raise ValueError(f"{path}: image has shape {volume.shape}, expected (D, H, W)")
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


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W[, C]) -> (H, W, channels) float32: grey repeated to RGB, RGB to grey by luma, alpha dropped."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (H, W) or (H, W, C), got {image.shape}")
    if image.shape[2] == channels:  # e.g. the modalities of a multi-channel volume's slice, never alpha here
        return image
    if image.shape[2] in (2, 4):  # grey + alpha, RGB + alpha
        image = image[..., :-1]
    have = image.shape[2]
    if have == channels:
        return image
    if have == 1:
        return np.repeat(image, channels, axis=2)
    if have == 3 and channels == 1:
        return (image @ LUMA)[..., None]
    raise ValueError(f"cannot feed an image with {have} channels to a model with {channels} input channels")


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to predict (folders listed, not recursively, sorted) and (path, problem) for what cannot be.

    A path that does not exist raises FileNotFoundError before anything runs (a typo should not cost a run).
    """
    files, problems = [], []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: input not found")
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and not p.name.startswith(".") and input_kind(p))
            if not found:
                problems.append((path, "folder holds no PNG/JPG/TIFF/BMP images, NIfTI or .h5 volumes"))
            files.extend(found)
        elif input_kind(path) is None:
            problems.append((path, "unsupported file type (expected an image, .nii, .nii.gz or .npy.h5)"))
        else:
            files.append(path)
    return list(dict.fromkeys(files)), problems


# -------------------------------------------------------------------------------------------- predictor


class Predictor:
    """A trained model with the run's preprocessing: arrays or files in, label maps of the input's size out."""

    def __init__(self, model: VMUNet, info: RunInfo, device: str | torch.device = "auto", tta: bool = False,
                 batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.info = info
        self.tta = tta
        self.batch_size = batch_size
        self.transform = eval_transform(info.image_size, info.normalization, resize_label=False,
                                        interpolation=info.interpolation)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto", tta: bool = False,
                 batch_size: int = 8, allow_pickle: bool = False) -> Predictor:
        path = resolve_checkpoint(run_dir, checkpoint)
        last = resolve_checkpoint(run_dir, "last")
        if checkpoint == "best" and not path.is_file() and last.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found (the run has no best checkpoint yet; "
                                    "use --checkpoint last)")
        model, info, _ = load_model_from_run(run_dir, checkpoint, allow_pickle=allow_pickle)
        return cls(model, info, device=device, tta=tta, batch_size=batch_size)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def network_input(self, image: np.ndarray) -> torch.Tensor:
        """(H, W[, C]) raw image -> (input_channels, S, S) float32, normalised and resized as in evaluation."""
        image = to_channels(image, self.info.input_channels)  # (H, W, C)
        tensor, _ = self.transform(image, None, np.random.default_rng(0))  # eval: no randomness used
        return tensor

    def _network_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, K, S, S) float32 probabilities on the CPU."""
        with torch.inference_mode():
            return predict_probabilities(self.model, batch, batch_size=self.batch_size, device=self.device,
                                         tta=self.tta)

    def predict_images(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Images of any sizes, predicted in batches; each result at its image's own size."""
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            inputs = [self.network_input(image) for image in chunk]
            results.extend(self.predict_inputs(inputs, [image.shape[:2] for image in chunk]))
        return results

    def predict_inputs(self, inputs: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]]) -> list[Prediction]:
        """``network_input`` tensors (C, S, S) and the original (H, W) of each -> predictions at those sizes."""
        probs = self._network_probabilities(torch.stack(list(inputs)))  # (N, K, S, S)
        results = []
        for p, size in zip(probs, sizes):
            p = resize_to(p, tuple(size))  # (K, H, W), bilinear on probabilities
            results.append(Prediction(probabilities_to_labels(p[None])[0].numpy(), p.numpy()))
        return results

    def predict_image(self, image: np.ndarray) -> Prediction:
        return self.predict_images([image])[0]

    def predict_volume(self, volume: np.ndarray, keep_probabilities: bool = False) -> Prediction:
        """(D, H, W) volume, or (D, H, W, C) with the model's C input channels -> labels (D, H, W), slices along
        axis 0; probabilities (K, D, H, W) on request."""
        volume = np.asarray(volume)
        if volume.ndim == 4 and volume.shape[3] != self.info.input_channels:
            raise ValueError(f"volume has {volume.shape[3]} channels, the model takes {self.info.input_channels}")
        if volume.ndim not in (3, 4):
            raise ValueError(f"expected a volume of shape (D, H, W) or (D, H, W, C), got {volume.shape}")
        if volume.ndim == 3 and self.info.is_volumetric and self.info.input_channels > 1:
            # Repeating one modality into the others would predict quietly and wrongly.
            raise ValueError(f"the model takes {self.info.input_channels} channels per voxel: pass a (D, H, W, "
                             f"{self.info.input_channels}) volume or the case's channel files")
        labels, probs = [], []
        for start in range(0, volume.shape[0], self.batch_size):
            slices = volume[start:start + self.batch_size]
            batch = torch.stack([self.network_input(s) for s in slices])  # (n, C, S, S)
            p = resize_to(self._network_probabilities(batch), volume.shape[1:3])  # (n, K, H, W)
            labels.append(probabilities_to_labels(p).numpy())
            if keep_probabilities:
                probs.append(p.numpy())
        probabilities = np.concatenate(probs).transpose(1, 0, 2, 3) if keep_probabilities else None
        return Prediction(np.concatenate(labels), probabilities)

    def _predict_stored_order(self, volume: np.ndarray) -> Prediction:
        """A NIfTI volume read as (D, H, W[, C]) -> labels and probabilities in the file's stored (X, Y, Z) order."""
        result = self.predict_volume(volume, keep_probabilities=True)
        return Prediction(np.moveaxis(result.labels, 0, -1), np.moveaxis(result.probabilities, 1, -1))

    def predict(self, array_or_path: np.ndarray | str | Path | Sequence[str | Path]) -> Prediction:
        """An image (H, W), (H, W, 1|3|4) or a volume (D, H, W); or an image, NIfTI or .h5 file; or a list of
        NIfTI files, one per input channel (CASE_0000.nii.gz, CASE_0001.nii.gz, ...).

        Arrays of 3 dimensions whose last size is 1, 3 or 4 are images; other 3D arrays are volumes. For
        NIfTI paths the labels come back in the files' stored axis order, so they line up with their data.
        """
        if isinstance(array_or_path, (list, tuple)):
            paths = [Path(p) for p in array_or_path]
            return self._predict_stored_order(read_nifti_case(paths, output_stem(paths[0]))[0])
        if isinstance(array_or_path, (str, Path)):
            path = Path(array_or_path)
            kind = input_kind(path)
            if kind is None:
                raise ValueError(f"{path}: unsupported file type (expected an image, .nii, .nii.gz or .npy.h5)")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: input not found")
            if kind == "image":
                return self.predict_image(read_image_file(path))
            if kind == "h5":
                return self.predict_volume(read_h5_volume(path), keep_probabilities=True)
            return self._predict_stored_order(read_nifti_volume(path)[0])
        array = np.asarray(array_or_path)
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
            return self.predict_image(array)
        if array.ndim == 3:
            return self.predict_volume(array, keep_probabilities=True)
        raise ValueError(f"expected an image (H, W[, C]) or a volume (D, H, W), got shape {array.shape}")


# ---------------------------------------------------------------------------------------------- outputs


def mask_png(labels: np.ndarray, num_classes: int):
    """(H, W) class ids -> PIL image: 0/255 for one class, the ids themselves for several."""
    from PIL import Image

    if num_classes == 1:
        return Image.fromarray((labels > 0).astype(np.uint8) * 255)
    if num_classes <= 256:
        return Image.fromarray(labels.astype(np.uint8))
    return Image.fromarray(labels.astype(np.uint16))


def write_png(path: Path, picture) -> None:
    atomic_write_bytes(path, lambda handle: picture.save(handle, format="PNG"))


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda handle: np.save(handle, array))


def write_nifti(path: Path, data: np.ndarray, reference, intent: str | None = None, compresslevel: int = 6) -> None:
    """Write ``data`` (stored axis order) with ``reference``'s affine and header (None: identity affine)."""
    import nibabel as nib

    if reference is None:
        image = nib.Nifti1Image(data, np.eye(4))
    else:
        image = type(reference)(data, reference.affine, header=reference.header.copy())
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)  # the input's intensity scaling must not rescale labels
    image.header["cal_min"], image.header["cal_max"] = float(data.min(initial=0)), float(data.max(initial=0))
    if intent is not None:
        image.header.set_intent(intent)
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=compresslevel, mtime=0)
    atomic_write_bytes(path, lambda handle: handle.write(payload))


# ------------------------------------------------------------------------------------------- workflow


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


def plan_outputs(files: list[Path], out_dir: Path, cases: dict[str, list[Path]] | None = None) -> list[_Job]:
    """One label file per input, named by its stem (a multi-channel case: CASE.nii.gz, as nnU-Net names
    it); two inputs that would write one file are an error."""
    jobs, seen = [], {}
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
        else:
            output = out_dir / f"{stem}.nii.gz"
        if output in seen:
            raise ValueError(f"{path}: would write {output}, as {seen[output]} does; predict them into "
                             "separate --out folders")
        seen[output] = path
        jobs.append(_Job(path, kind, output, stem))
    return jobs


READ_ERRORS = (OSError, ValueError, KeyError, zlib.error, EOFError)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def predict_paths(run_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, checkpoint: str = "best",
                  tta: bool = False, overlay: bool = False, batch_size: int = 8, device: str = "auto",
                  skip_existing: bool = False, save_probabilities: bool = False, allow_pickle: bool = False,
                  report: Callable[[str], None] = _stderr) -> PredictSummary:
    """Predict image files, volumes and folders of them into ``out_dir``.

    Writes ``OUT/<stem>.png`` per image (original size; 0/255 for one class, class ids for several),
    ``OUT/<stem>.nii[.gz]`` per volume (class ids, the input's affine and header; ``.npy.h5`` volumes get an
    identity affine and are stored (H, W, D) so that ``vmunet.data.nifti`` reads them back as (D, H, W)),
    ``OUT/overlays/`` with ``overlay`` and ``OUT/probabilities/`` with ``save_probabilities`` (images: (K, H, W)
    float32 ``.npy``; volumes: (X, Y, Z, K) float32 NIfTI). Every file is written atomically.

    An input that cannot be read or predicted is reported (one line through ``report``) and skipped; the
    others are still predicted, and the summary's ``exit_code`` is 1.
    """
    from vmunet.runs import read_run_info

    out_dir = Path(out_dir)
    files, problems = collect_inputs(inputs)
    channels = read_run_info(run_dir).input_channels
    cases = None
    if channels > 1:
        files, cases, unpaired = group_channel_files(files, channels)
        problems += unpaired
    jobs = plan_outputs(files, out_dir, cases)
    summary = PredictSummary()
    for path, problem in problems:
        summary.failed.append((path, problem))
        report(f"skipped {path}: {problem}")
    if skip_existing:
        summary.skipped = [job.output for job in jobs if job.output.is_file()]
        jobs = [job for job in jobs if not job.output.is_file()]
    if not jobs:
        return summary
    predictor = Predictor.from_run(run_dir, checkpoint, device=device, tta=tta, batch_size=batch_size,
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
        pending = []  # (job, image (H, W[, C]), network input (C, S, S))
        for job in images[start:start + batch_size]:
            try:
                image = read_image_file(job.path)
                pending.append((job, image, predictor.network_input(image)))
            except READ_ERRORS as error:
                fail(job, error)
        if not pending:
            continue
        predictions = predictor.predict_inputs([x for _, _, x in pending], [im.shape[:2] for _, im, _ in pending])
        for (job, image, _), prediction in zip(pending, predictions):
            try:
                _write_image_outputs(job, image, prediction, predictor.num_classes, out_dir, **options)
            except OSError as error:
                fail(job, error)
            else:
                summary.written.append(job.output)
                summary.images += 1
    summary.image_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for job in (job for job in jobs if job.kind != "image"):
        try:
            if job.channels:
                volume, reference = read_nifti_case(job.channels, job.stem)  # (D, H, W, C)
            elif job.kind == "nifti":
                volume, reference = read_nifti_volume(job.path)
            else:
                volume, reference = read_h5_volume(job.path), None
            prediction = predictor.predict_volume(volume, keep_probabilities=save_probabilities)
            _write_volume_outputs(job, volume, reference, prediction, out_dir, **options)
        except READ_ERRORS as error:
            fail(job, error)
        except torch.OutOfMemoryError as error:
            fail(job, ValueError(f"out of memory ({error}); try a smaller --batch-size"))
        else:
            summary.written.append(job.output)
            summary.volumes += 1
            summary.slices += volume.shape[0]
    summary.slice_seconds = time.perf_counter() - started
    return summary


def _write_image_outputs(job: _Job, image: np.ndarray, prediction: Prediction, num_classes: int, out_dir: Path,
                         overlay: bool, save_probabilities: bool) -> None:
    from PIL import Image

    from vmunet.overlay import contour_overlay

    # Extras first, the label map last: an existing label map means this input is complete (skip_existing).
    stem = job.stem
    if save_probabilities:
        write_npy(out_dir / "probabilities" / f"{stem}.npy", prediction.probabilities.astype(np.float32))
    if overlay:
        write_png(out_dir / "overlays" / f"{stem}.png", Image.fromarray(contour_overlay(image, prediction.labels)))
    write_png(job.output, mask_png(prediction.labels, num_classes))


def _write_volume_outputs(job: _Job, volume: np.ndarray, reference, prediction: Prediction, out_dir: Path,
                          overlay: bool, save_probabilities: bool) -> None:
    from PIL import Image

    from vmunet.overlay import contour_overlay, representative_slices

    stem = job.stem
    labels = prediction.labels  # (D, H, W)
    if save_probabilities:
        probs = prediction.probabilities.transpose(2, 3, 1, 0)  # (K, D, H, W) -> stored (X, Y, Z, K)
        suffix = ".nii" if job.output.name.endswith(".nii") else ".nii.gz"
        write_nifti(out_dir / "probabilities" / f"{stem}{suffix}", np.ascontiguousarray(probs, np.float32),
                    reference, compresslevel=1)
    if overlay:
        for z in representative_slices(labels):
            write_png(out_dir / "overlays" / f"{stem}_slice{z:03d}.png",
                      Image.fromarray(contour_overlay(volume[z, ..., 0] if volume.ndim == 4 else volume[z],
                                                      labels[z])))
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.int16
    write_nifti(job.output, np.ascontiguousarray(np.moveaxis(labels, 0, -1), dtype), reference, intent="label")
