"""ISIC folders (``train/``, ``val/``, optional ``test/``; images/ and masks/ in each): binary 2D images."""

from __future__ import annotations

from pathlib import Path

from vmunet.config import TrainConfig
from vmunet.data.isic import IsicFolder
from vmunet.data.layouts.base import Layout
from vmunet.data.subsets import TrainingData, default_label_names, selection_source, selection_split


def has_test_folder(root: Path) -> bool:
    return (root / "test").is_dir()


class Isic(Layout):
    name = "isic"
    protocol = "images"

    def training_data(self, config: TrainConfig, root: Path) -> TrainingData:
        train = IsicFolder(root, "train")
        train.check_some_foreground()
        if not config.folds and (has_test_folder(root) or config.paper_selection):
            source = "the val/ folder" + (" (paper selection: also the reported split)" if not has_test_folder(root)
                                          else "")
            val = IsicFolder(root, "val")
        else:
            train, val = selection_split(train, config)
            source = selection_source(config, val, "{count} images held out of train/ (seed {seed}); val/ is the "
                                      "evaluation split")
        num_classes, channels = config.num_classes or 1, config.input_channels or 3
        names = config.label_names or default_label_names(num_classes)
        return TrainingData(train, val, num_classes, channels, list(names), source)

    def evaluation_cases(self, config: TrainConfig, root: Path, split: str):
        if split == "test":
            return "images", IsicFolder(root, "test" if has_test_folder(root) else "val")
        if not config.folds and (has_test_folder(root) or config.paper_selection):
            return "images", IsicFolder(root, "val")
        return "images", selection_split(IsicFolder(root, "train"), config)[1]

    def training_samples(self, config: TrainConfig, root: Path):
        return "images", IsicFolder(root, "train")
