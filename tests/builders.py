"""Tiny datasets in the layouts users bring, written by the tests themselves."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def blob_image(rng, height, width, channels=3):
    """A bright disc on a noisy background, and its mask: learnable but not trivial."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    radius = rng.uniform(0.15, 0.3) * min(height, width)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2
    image = rng.normal(80, 20, size=(height, width, channels)) + 100 * mask[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_isic(root: Path, counts=None, size=(32, 32), seed=0, official_names=False) -> Path:
    rng = np.random.default_rng(seed)
    counts = counts or {"train": 8, "val": 3}
    for split, count in counts.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = blob_image(rng, *size)
            stem = f"ISIC_{split}{i:05d}"
            Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
            mask_name = f"{stem}_segmentation.png" if official_names else f"{stem}.png"
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / split / "masks" / mask_name)
    return root


def organ_volume(rng, depth, height, width, num_classes=9):
    """Label volume with a few box 'organs' and an image whose intensity depends on the label."""
    label = np.zeros((depth, height, width), np.uint8)
    for organ in range(1, num_classes):
        if rng.random() < 0.3:
            continue  # some organs absent, as in real cases
        z0, y0, x0 = rng.integers(0, depth - 2), rng.integers(0, height - 6), rng.integers(0, width - 6)
        label[z0:z0 + 3, y0:y0 + 6, x0:x0 + 6] = organ
    image = (label / num_classes + rng.normal(0, 0.05, label.shape)).astype(np.float32)
    return image, label


def make_synapse(root: Path, train_cases=3, test_cases=2, depth=4, size=(32, 32), seed=0) -> Path:
    import h5py

    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir(parents=True)
    (root / "lists" / "lists_Synapse").mkdir(parents=True)
    train_names, test_names = [], []
    for case in range(train_cases):
        image, label = organ_volume(rng, depth, *size)
        for z in range(depth):
            name = f"case{case:04d}_slice{z:03d}"
            np.savez(root / "train_npz" / f"{name}.npz", image=image[z], label=label[z].astype(np.float32))
            train_names.append(name)
    for case in range(100, 100 + test_cases):
        image, label = organ_volume(rng, depth, *size)
        name = f"case{case:04d}"
        with h5py.File(root / "test_vol_h5" / f"{name}.npy.h5", "w") as f:
            f["image"], f["label"] = image, label.astype(np.float32)
        test_names.append(name)
    (root / "lists" / "lists_Synapse" / "train.txt").write_text("\n".join(train_names) + "\n")
    (root / "lists" / "lists_Synapse" / "test_vol.txt").write_text("\n".join(test_names) + "\n")
    return root



class ThresholdModel(torch.nn.Module):
    """A stand-in network with a known output, for geometry tests: class k wherever the input's first channel
    is nearest to k (one class: foreground where it is above ``threshold``). Like VMUNet it takes only inputs
    whose H and W are multiples of 32, so a caller that skips the run's resize fails."""

    def __init__(self, num_classes: int = 1, input_channels: int = 1, threshold: float = 0.5):
        super().__init__()
        self.num_classes, self.input_channels, self.threshold = num_classes, input_channels, threshold
        self.scale = torch.nn.Parameter(torch.tensor(40.0))  # a parameter, so that the model has a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.input_channels, x.shape
        assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0, f"not resized to the network size: {x.shape}"
        value = x[:, :1]
        if self.num_classes == 1:
            return self.scale * (value - self.threshold)
        centres = torch.arange(self.num_classes, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return -self.scale * (value - centres) ** 2


def threshold_predictor(num_classes=1, input_channels=1, image_size=64, dataset="nifti", tta=False):
    """(Predictor around ThresholdModel with normalisation "none", its RunInfo): the expected labels are known."""
    from vmunet.inference import Predictor
    from vmunet.runtime.run_folder import RunInfo

    model = ThresholdModel(num_classes, input_channels)
    names = ["background", "lesion"] if num_classes == 1 else [f"class{i}" for i in range(num_classes)]
    info = RunInfo(model_preset="threshold", model_config={"num_classes": num_classes,
                                                           "input_channels": input_channels},
                   label_names=names, normalization="none", image_size=image_size, dataset=dataset, version="test")
    return Predictor(model, info, device="cpu", tta=tta, batch_size=4), info


def asymmetric_labels(height: int, width: int, binary: bool = False, shift: int = 0) -> np.ndarray:
    """(H, W) label map of large blocks (classes 0, 1, 2; 0/1 if binary) that no flip, rotation or transpose
    maps onto itself; ``shift`` moves the blocks down, for slices that differ."""
    labels = np.zeros((height, width), np.int64)
    labels[shift: height // 2 + shift, : width // 3] = 1
    labels[height // 2 + shift:, width // 2:] = 1 if binary else 2
    labels[height // 5: height // 3, width // 2: width - 4] = 1
    return labels


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal pixels (resizing to the network and back blurs block edges by a pixel or so)."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def make_nnunet(root: Path, train_cases=4, test_cases=2, shape=(40, 32, 3), seed=0) -> Path:
    """An nnU-Net raw dataset (imagesTr/labelsTr/imagesTs/labelsTs, dataset.json), stored (X, Y, Z), 3 labels."""
    import json

    import nibabel as nib

    rng = np.random.default_rng(seed)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"},
                                                   "labels": {"background": 0, "liver": 1, "tumour": 2},
                                                   "numTraining": train_cases, "file_ending": ".nii.gz"}))
    affine = np.diag([0.9, 0.8, 2.0, 1.0])
    for subset, count in (("Tr", train_cases), ("Ts", test_cases)):
        for i in range(count):
            image, label = organ_volume(rng, shape[2], shape[0], shape[1], num_classes=3)  # (Z, X, Y)
            image, label = np.moveaxis(image, 0, -1), np.moveaxis(label, 0, -1)  # stored (X, Y, Z)
            name = f"case{subset}{i:03d}"
            nib.save(nib.Nifti1Image((image * 100).astype(np.float32), affine),
                     str(root / f"images{subset}" / f"{name}_0000.nii.gz"))
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(root / f"labels{subset}" / f"{name}.nii.gz"))
    return root


# Decode a child's output as UTF-8 whatever the locale (a C/POSIX locale decodes as ASCII, and torchrun's or
# torch's messages may hold non-ASCII bytes): subprocess keyword arguments in place of text=True.
UTF8_TEXT = {"encoding": "utf-8", "errors": "replace"}

# Waits in tests are for events (a line printed, a file written); this limit is only there so that a broken
# program cannot hang the suite: far above what any loaded machine needs, never a measure of speed.
HANG_LIMIT_S = 900


def read_until(process, prefix: str, limit_s: float = HANG_LIMIT_S) -> list[str]:
    """Read ``process``'s stdout lines up to the first that starts with ``prefix``; the lines read. A process
    that ends first, or prints nothing for ``limit_s`` (then killed), fails the test with its last lines."""
    import threading

    watchdog = threading.Timer(limit_s, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(prefix):
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"the process ended (status {process.wait()}) before printing {prefix!r}; its last "
                         f"lines: {''.join(lines)[-2000:]}")


def wait_for(condition, what: str, limit_s: float = HANG_LIMIT_S, process=None) -> None:
    """Poll ``condition()`` until it holds (an event: a file written); fail naming ``what`` if ``process`` ends
    first or ``limit_s`` passes."""
    import time

    deadline = time.monotonic() + limit_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}")
        assert time.monotonic() < deadline, f"no {what} within {limit_s:.0f} s"
        time.sleep(0.05)
