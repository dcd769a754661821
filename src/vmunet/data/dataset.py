"""A torch Dataset over 2D samples whose augmentation depends only on (seed, epoch, index)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


class SegmentationDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (image (C, H, W) float32, label (H, W) int64)`` after ``transform``.

    Sample i of epoch e is augmented with ``np.random.default_rng([seed, e, i])``: the same whatever the number
    of DataLoader workers or DDP ranks, and reproducible on resume. Call ``set_epoch(e)`` before iterating an
    epoch (the DataLoader copies the dataset into its workers when iteration starts, so do not combine this
    with ``persistent_workers=True``).
    """

    def __init__(self, samples: Sequence[dict], transform: Callable, seed: int = 0):
        if len(samples) == 0:
            raise ValueError("SegmentationDataset: no samples")
        self.samples = samples
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.transform(sample["image"], sample["label"], rng)
