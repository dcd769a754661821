"""The one path from an image or a volume to probabilities and labels: evaluation, prediction and the demo.

    predictor = Predictor.from_run("runs/isic17")
    result = predictor.predict(image)            # (H, W[, C]) -> labels (H, W), probabilities (K, H, W)

The input goes through exactly the evaluation pipeline of training (``vmunet.data.transforms.eval_transform``
with the run's normalisation, network size and interpolation); the probabilities are resized back to the
original size (bilinear) before the threshold (one class, 0.5) or the argmax.

Channels: a grey image given to a 3-channel model is repeated to RGB; an RGB image given to a 1-channel model
is converted to grey with the ITU-R 601 luma weights (0.299 R + 0.587 G + 0.114 B, PIL's "L"); an alpha
channel is dropped.

Volumes are predicted slice by slice, as they were trained: NIfTI arrays as stored (X, Y, Z) are sliced along
their last axis, (D, H, W) = (Z, X, Y) as in ``vmunet.data.nifti``; Synapse ``.npy.h5`` volumes are (D, H, W)
already. Each slice is normalised on its own, as in training and evaluation.

``tta=True`` averages the probabilities of the image and its horizontal, vertical and double flips. This is
not part of the paper's protocol: report such numbers separately.

An ``Ensemble`` of several runs (``load_predictor([run_a, run_b])``) has the same interface: each member
preprocesses with its own run's settings (image size, normalisation, interpolation) and resizes its
probabilities back to the input's size; the ensemble averages those, then thresholds or takes the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vmunet.io.cases import read_nifti_case, read_nifti_volume
from vmunet.io.h5 import read_h5_volume
from vmunet.io.images import LUMA, read_image_file
from vmunet.io.paths import input_kind, output_stem
from vmunet.io.sitk import read_sitk_volume
from vmunet.data.transforms import eval_transform, resize_to
from vmunet.models import VMUNet, logits_to_probabilities
from vmunet.runtime.device import resolve_device
from vmunet.runtime.run_folder import RunInfo, load_model_from_run, read_run_info, resolve_checkpoint


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 8,
                          device: torch.device | None = None, tta: bool = False) -> torch.Tensor:
    """(N, C, S, S) network-size inputs -> (N, K, S, S) float32 probabilities on the CPU, in batches of
    ``batch_size``. ``tta`` averages the flips (not part of the paper protocol)."""
    device = device or next(model.parameters()).device
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device)
        probs = logits_to_probabilities(model(batch).float())
        if tta:
            for dims in ((3,), (2,), (2, 3)):
                probs = probs + logits_to_probabilities(model(batch.flip(dims)).float()).flip(dims)
            probs = probs / 4
        outputs.append(probs.float().cpu())
    return torch.cat(outputs)


def probabilities_to_labels(probs: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) -> (N, H, W) int64: threshold 0.5 for one class, argmax otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] >= 0.5).long()
    return probs.argmax(1)


@dataclass
class Prediction:
    """labels: (H, W) or (D, H, W) int64 class ids (0/1 for one class); probabilities: (K, ...) float32 or None."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


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


class Segmenter:
    """What a Predictor and an Ensemble share: probabilities of images and slices (each subclass's own) turned
    into labels, and the dispatch from arrays and files. Subclasses give ``info``, ``batch_size``,
    ``image_probabilities``, ``slice_probabilities``, ``check_image`` and ``check_volume``."""

    info: RunInfo
    batch_size: int

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def image_probabilities(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Images (H, W[, C]) of any sizes -> (K, H, W) float32 probabilities each, at its own size."""
        raise NotImplementedError

    def slice_probabilities(self, slices: np.ndarray) -> torch.Tensor:
        """(n, H, W[, C]) slices of a volume -> (n, K, H, W) float32 probabilities at the slices' size."""
        raise NotImplementedError

    def check_image(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def check_volume(self, volume: np.ndarray) -> None:
        raise NotImplementedError

    def predict_images(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Images of any sizes, predicted in batches; each result at its image's own size."""
        results = []
        for start in range(0, len(images), self.batch_size):
            for p in self.image_probabilities(images[start:start + self.batch_size]):  # (K, H, W)
                results.append(Prediction(probabilities_to_labels(p[None])[0].numpy(), p.numpy()))
        return results

    def predict_image(self, image: np.ndarray) -> Prediction:
        return self.predict_images([image])[0]

    def predict_volume(self, volume: np.ndarray, keep_probabilities: bool = False) -> Prediction:
        """(D, H, W) volume, or (D, H, W, C) with the model's C input channels -> labels (D, H, W), slices along
        axis 0; probabilities (K, D, H, W) on request."""
        volume = np.asarray(volume)
        self.check_volume(volume)
        labels, probs = [], []
        for start in range(0, volume.shape[0], self.batch_size):
            p = self.slice_probabilities(volume[start:start + self.batch_size])  # (n, K, H, W)
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
        """An image (H, W), (H, W, C) or a volume (D, H, W), (D, H, W, C); or an image, NIfTI or .h5 file; or a
        list of NIfTI files, one per input channel (CASE_0000.nii.gz, CASE_0001.nii.gz, ...).

        Arrays of 3 dimensions whose last size is 1 to 4 or the model's channel count are images; other 3D
        arrays are (D, H, W) volumes; 4D arrays are (D, H, W, C) volumes. For
        NIfTI paths the labels come back in the files' stored axis order, so they line up with their data.
        """
        if isinstance(array_or_path, (list, tuple)):
            paths = [Path(p) for p in array_or_path]
            return self._predict_stored_order(read_nifti_case(paths, output_stem(paths[0]))[0])
        if isinstance(array_or_path, (str, Path)):
            path = Path(array_or_path)
            kind = input_kind(path)
            if kind is None:
                raise ValueError(f"{path}: unsupported file type (expected an image, .nii, .nii.gz, .mha, .mhd, .nrrd "
                                 "or .npy.h5)")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: input not found")
            if kind == "image":
                return self.predict_image(read_image_file(path))
            if kind == "h5":
                return self.predict_volume(read_h5_volume(path), keep_probabilities=True)
            if kind == "sitk":  # read as (z, x, y); returned in the file's array order (z, y, x), as SimpleITK's
                result = self.predict_volume(read_sitk_volume(path)[0], keep_probabilities=True)
                return Prediction(result.labels.transpose(0, 2, 1), result.probabilities.transpose(0, 1, 3, 2))
            return self._predict_stored_order(read_nifti_volume(path)[0])
        array = np.asarray(array_or_path)
        if array.ndim == 2 or (array.ndim == 3 and self.is_channel_axis(array.shape[2])):
            return self.predict_image(array)
        if array.ndim in (3, 4):
            return self.predict_volume(array, keep_probabilities=True)
        raise ValueError(f"expected an image (H, W[, C]) or a volume (D, H, W[, C]), got shape {array.shape}")

    def is_channel_axis(self, size: int) -> bool:
        """Whether a last axis of ``size`` holds channels: 1 to 4 (grey, grey + alpha, RGB, RGBA) or the
        model's own channel count (the modalities of a multi-channel slice). A (D, H, W) volume is never
        that narrow."""
        return 1 <= size <= 4 or size == self.info.input_channels


class Predictor(Segmenter):
    """A trained model with the run's preprocessing: arrays or files in, label maps of the input's size out."""

    def __init__(self, model: VMUNet, info: RunInfo, device: str | torch.device = "auto", tta: bool = False,
                 batch_size: int = 8, run_dir: str | Path | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.info = info
        self.tta = tta
        self.batch_size = batch_size
        self.transform = eval_transform(info.image_size, info.normalization, resize_label=False,
                                        interpolation=info.interpolation)
        self.run_dir = None if run_dir is None else Path(run_dir)  # named in an ensemble's messages and summary
        self.checkpoint: Path | None = None  # the file and its epoch, set by from_run (an evaluation records them)
        self.epoch: int | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto", tta: bool = False,
                 batch_size: int = 8, allow_pickle: bool = False) -> Predictor:
        path = resolve_checkpoint(run_dir, checkpoint)
        last = resolve_checkpoint(run_dir, "last")
        if checkpoint == "best" and not path.is_file() and last.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found (the run has no best checkpoint yet; "
                                    "use --checkpoint last)")
        model, info, payload = load_model_from_run(run_dir, checkpoint, allow_pickle=allow_pickle)
        predictor = cls(model, info, device=device, tta=tta, batch_size=batch_size, run_dir=run_dir)
        predictor.checkpoint, predictor.epoch = path, payload.get("epoch")
        return predictor

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

    def image_probabilities(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        probs = self._network_probabilities(torch.stack([self.network_input(image) for image in images]))
        return [resize_to(p, tuple(image.shape[:2])) for p, image in zip(probs, images)]  # (K, H, W), bilinear

    def slice_probabilities(self, slices: np.ndarray) -> torch.Tensor:
        batch = torch.stack([self.network_input(s) for s in slices])  # (n, C, S, S)
        return resize_to(self._network_probabilities(batch), tuple(slices.shape[1:3]))  # (n, K, H, W)

    def check_image(self, image: np.ndarray) -> None:
        """Raise ValueError, naming the shape, when ``image`` cannot be fed to this model."""
        to_channels(image, self.info.input_channels)

    def check_volume(self, volume: np.ndarray) -> None:
        """Raise ValueError, naming the shape, when ``volume`` cannot be fed to this model."""
        shape = np.shape(volume)
        if len(shape) == 4 and shape[3] != self.info.input_channels:
            raise ValueError(f"volume has {shape[3]} channels, the model takes {self.info.input_channels}")
        if len(shape) not in (3, 4):
            raise ValueError(f"expected a volume of shape (D, H, W) or (D, H, W, C), got {shape}")
        if len(shape) == 3 and self.info.is_volumetric and self.info.input_channels > 1:
            # Repeating one modality into the others would predict quietly and wrongly.
            raise ValueError(f"the model takes {self.info.input_channels} channels per voxel: pass a (D, H, W, "
                             f"{self.info.input_channels}) volume or the case's channel files")


def check_ensemble_members(run_dirs: Sequence[str | Path], infos: Sequence[RunInfo]) -> None:
    """Raise one-line ValueError naming the run folders when runs cannot be averaged: they must predict the same
    classes (count and names) from the same number of input channels. Image size, normalisation and the model
    may differ: each member preprocesses as its own run did."""
    first, name = infos[0], Path(run_dirs[0])
    for run_dir, info in zip(run_dirs[1:], infos[1:]):
        if info.num_classes != first.num_classes or list(info.label_names) != list(first.label_names):
            raise ValueError(f"the ensemble's runs disagree on their classes: {name} predicts {first.num_classes} "
                             f"({', '.join(first.label_names)}), {Path(run_dir)} {info.num_classes} "
                             f"({', '.join(info.label_names)}); members must predict the same classes")
        if info.input_channels != first.input_channels:
            raise ValueError(f"the ensemble's runs disagree on their input channels: {name} takes "
                             f"{first.input_channels}, {Path(run_dir)} {info.input_channels}; members must take the "
                             "same channels")


def check_ensemble_runs(run_dirs: Sequence[str | Path], checkpoint: str = "best") -> list[RunInfo]:
    """Before anything is loaded or written: the runs' run.json agree (``check_ensemble_members``) and the
    checkpoint is a choice every member can make (best or last, not one file). Returns their RunInfos."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"--checkpoint {checkpoint}: one file cannot be every member's checkpoint; with several "
                         "run folders use best or last")
    counts = {}  # the same run twice would weigh it double: not an ensemble of different models
    for run_dir in run_dirs:
        counts.setdefault(Path(run_dir).resolve(), []).append(str(run_dir))
    twice = next((names for names in counts.values() if len(names) > 1), None)
    if twice:
        raise ValueError(f"{twice[-1]}: given twice as an ensemble member ({' and '.join(twice)}); give each run "
                         "folder once")
    infos = [read_run_info(run_dir) for run_dir in run_dirs]
    check_ensemble_members(run_dirs, infos)
    return infos


class Ensemble(Segmenter):
    """Several trained runs as one model: each member's probabilities, resized back to the input's size by
    the member itself, are averaged (equal weights) before the threshold or the argmax.

    ``info`` is the first member's: the classes, names, colours and channels, which all members share
    (``check_ensemble_members``); ``members`` gives each run's own settings.
    """

    def __init__(self, members: Sequence[Predictor]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members (got {len(members)})")
        self.members = list(members)
        check_ensemble_members([m.run_dir or f"member {i}" for i, m in enumerate(self.members)],
                               [m.info for m in self.members])
        self.info = self.members[0].info
        self.batch_size = self.members[0].batch_size
        self.tta = self.members[0].tta

    @classmethod
    def from_runs(cls, run_dirs: Sequence[str | Path], checkpoint: str = "best", device: str = "auto",
                  tta: bool = False, batch_size: int = 8, allow_pickle: bool = False) -> Ensemble:
        """Every run with the same checkpoint choice, TTA and batch size; the runs are checked to agree
        (``check_ensemble_members``, from run.json) before any model is loaded."""
        check_ensemble_runs(run_dirs, checkpoint)
        return cls([Predictor.from_run(run_dir, checkpoint, device=device, tta=tta, batch_size=batch_size,
                                       allow_pickle=allow_pickle) for run_dir in run_dirs])

    @property
    def run_dirs(self) -> list[Path | None]:
        return [member.run_dir for member in self.members]

    def image_probabilities(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        total = None
        for member in self.members:
            probs = member.image_probabilities(images)  # each (K, H, W) at its image's size
            total = probs if total is None else [t + p for t, p in zip(total, probs)]
        return [t / len(self.members) for t in total]

    def slice_probabilities(self, slices: np.ndarray) -> torch.Tensor:
        total = self.members[0].slice_probabilities(slices)  # (n, K, H, W)
        for member in self.members[1:]:
            total = total + member.slice_probabilities(slices)
        return total / len(self.members)

    def check_image(self, image: np.ndarray) -> None:
        for member in self.members:
            member.check_image(image)

    def check_volume(self, volume: np.ndarray) -> None:
        for member in self.members:
            member.check_volume(volume)


def load_predictor(run_dirs: str | Path | Sequence[str | Path], checkpoint: str = "best", device: str = "auto",
                   tta: bool = False, batch_size: int = 8, allow_pickle: bool = False) -> Predictor | Ensemble:
    """One run folder: its Predictor; several: their Ensemble (the same options for every member)."""
    runs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not runs:
        raise ValueError("give at least one run folder")
    options = dict(device=device, tta=tta, batch_size=batch_size, allow_pickle=allow_pickle)
    if len(runs) == 1:
        return Predictor.from_run(runs[0], checkpoint, **options)
    return Ensemble.from_runs(runs, checkpoint, **options)
