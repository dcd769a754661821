"""Synapse as the official code ships it: 2D training slices (``train_npz/``), test volumes (``test_vol_h5/``)."""

from __future__ import annotations

from pathlib import Path

from vmunet.config import TrainConfig
from vmunet.data.layouts.base import Layout
from vmunet.data.subsets import (TrainingData, default_label_names, selection_source, selection_split, slices_of,
                                 stack_slices)
from vmunet.data.synapse import SynapseSlices, SynapseVolumes


class Synapse(Layout):
    name = "synapse"
    protocol = "volumes"

    def training_data(self, config: TrainConfig, root: Path) -> TrainingData:
        train = SynapseSlices(root, "train")
        if config.paper_selection:
            val, source = slices_of(SynapseVolumes(root, "test_vol")), "test volumes (paper selection)"
        else:
            train, val = selection_split(train, config)
            source = selection_source(config, val, "{count} training cases held out (seed {seed})")
        num_classes, channels = config.num_classes or 9, config.input_channels or 1
        names = config.label_names or default_label_names(num_classes)
        return TrainingData(train, val, num_classes, channels, list(names), source)

    def evaluation_cases(self, config: TrainConfig, root: Path, split: str):
        if split == "test":
            return "volumes", SynapseVolumes(root, "test_vol")
        held = selection_split(SynapseSlices(root, "train"), config)[1]
        return "volumes", stack_slices(held)

    def training_samples(self, config: TrainConfig, root: Path):
        return "volumes", SynapseSlices(root, "train")
