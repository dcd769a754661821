"""2D folders of one's own (ISIC's train/val/test layout, masks of class ids or colours with labels.json)."""

from __future__ import annotations

from pathlib import Path

from vmunet.config import TrainConfig
from vmunet.data.folders import ClassFolder
from vmunet.data.layouts.base import Layout
from vmunet.data.layouts.isic import has_test_folder
from vmunet.data.subsets import TrainingData, selection_source, selection_split


class Folders(Layout):
    name = "folders"
    protocol = "images"

    def training_data(self, config: TrainConfig, root: Path) -> TrainingData:
        train = ClassFolder(root, "train", config.num_classes)
        train.check_some_foreground()  # with labels.json too: the class count does not read the masks then
        num_classes, colours = train.num_classes, train.colours
        names = config.label_names or train.label_names
        if not config.folds and (has_test_folder(root) or config.paper_selection):
            val, source = ClassFolder(root, "val", num_classes), "the val/ folder"
        else:
            train, val = selection_split(train, config)
            source = selection_source(config, val, "{count} images held out of train/ (seed {seed}); val/ is the "
                                      "evaluation split")
        channels = config.input_channels or 3
        return TrainingData(train, val, num_classes, channels, list(names), source, label_colours=colours)

    def evaluation_cases(self, config: TrainConfig, root: Path, split: str):
        classes = config.num_classes
        if split == "test":
            return "images", ClassFolder(root, "test" if has_test_folder(root) else "val", classes)
        if not config.folds and (has_test_folder(root) or config.paper_selection):
            return "images", ClassFolder(root, "val", classes)
        return "images", selection_split(ClassFolder(root, "train", classes), config)[1]

    def training_samples(self, config: TrainConfig, root: Path):
        return "images", ClassFolder(root, "train", config.num_classes)
