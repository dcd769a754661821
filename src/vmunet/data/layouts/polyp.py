"""PraNet's polyp layout: ``TrainDataset/`` to train on, ``TestDataset/<set>/`` scored each on its own."""

from __future__ import annotations

from pathlib import Path

from vmunet.config import TrainConfig
from vmunet.data.layouts.base import Layout
from vmunet.data.polyp import PolypFolder, polyp_test_sets
from vmunet.data.subsets import TrainingData, selection_source, selection_split


def polyp_training_folder(config: TrainConfig, root: Path):
    """TrainDataset/ of the polyp layout. The official VM-UNetV2 code chooses its checkpoint on the test sets;
    there is no paper selection to restore here, and the model is binary (one sigmoid output)."""
    if config.paper_selection:
        raise ValueError("paper_selection: the polyp preset selects on held-out TrainDataset images only (the "
                         "official code's selection on the test sets is the defect it fixes)")
    if config.num_classes not in (None, 1):
        raise ValueError(f"the polyp protocol is binary: num_classes must be 1 (got {config.num_classes})")
    return PolypFolder.train(root)


class Polyp(Layout):
    name = "polyp"
    protocol = "polyp"

    def training_data(self, config: TrainConfig, root: Path) -> TrainingData:
        train, val = selection_split(polyp_training_folder(config, root), config)
        source = selection_source(config, val, "{count} images held out of TrainDataset/ (seed {seed}); the "
                                  "TestDataset/ sets are never seen in training or selection")
        num_classes, channels = 1, config.input_channels or 3
        names = config.label_names or ["background", "polyp"]
        return TrainingData(train, val, num_classes, channels, list(names), source)

    def evaluation_cases(self, config: TrainConfig, root: Path, split: str):  # {set name: 2D samples}
        if split == "test":
            return "polyp", polyp_test_sets(root)
        return "polyp", {"TrainDataset (held out)": selection_split(polyp_training_folder(config, root), config)[1]}

    def training_samples(self, config: TrainConfig, root: Path):  # TrainDataset/: the test sets are never in a fold
        return "images", polyp_training_folder(config, root)
