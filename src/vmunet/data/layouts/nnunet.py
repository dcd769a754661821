"""nnU-Net's raw layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``, optional ``imagesTs/`` and ``labelsTs/``):
the config's dataset "nifti", volumes in any of its file endings, trained on 2D slices."""

from __future__ import annotations

from pathlib import Path

from vmunet.config import TrainConfig
from vmunet.data.layouts.base import Layout, missing_cases
from vmunet.data.nifti import NiftiSlices, NiftiVolumes, read_dataset_json, read_label_names
from vmunet.data.subsets import TrainingData, selection_source, selection_split, volume_id


def nifti_channel_count(root: Path) -> int:
    """Channels named in dataset.json (nnU-Net v2 'channel_names', v1 'modality'); 1 when absent."""
    if not (root / "dataset.json").is_file():
        return 1
    info = read_dataset_json(root)
    channels = info.get("channel_names", info.get("modality"))
    return len(channels) if isinstance(channels, dict) and channels else 1


class NnUNet(Layout):
    name = "nifti"
    protocol = "volumes"

    def training_data(self, config: TrainConfig, root: Path) -> TrainingData:
        train = NiftiSlices(root)
        train, val = selection_split(train, config)
        source = selection_source(config, val, "{count} imagesTr cases held out (seed {seed})")
        names = config.label_names or read_label_names(root)
        num_classes = config.num_classes or len(names)
        channels = config.input_channels or nifti_channel_count(root)
        return TrainingData(train, val, num_classes, channels, list(names), source)

    def evaluation_cases(self, config: TrainConfig, root: Path, split: str):
        if split == "test":
            if not (root / "labelsTs").is_dir():
                raise ValueError(f"{root}: no labelsTs/ folder, so the test split cannot be scored; "
                                 "use --split val, or predict imagesTs/ with `vmunet predict`")
            return "volumes", NiftiVolumes(root, subset="Ts")
        held = selection_split(NiftiSlices(root), config)[1]
        wanted = sorted({volume_id(c) for c in held.case_ids})
        return "volumes", NiftiVolumes(root, subset="Tr", case_ids=wanted)

    def training_samples(self, config: TrainConfig, root: Path):
        return "volumes", NiftiSlices(root)

    # Whole volumes, read case by case: their slices need not be stacked back, and names come from the listing.
    def training_cases(self, config: TrainConfig, root: Path, wanted: list[str]):
        missing = sorted(set(wanted) - set(self.case_names(config, root)))
        if missing:
            raise ValueError(missing_cases(root, missing))
        return "volumes", NiftiVolumes(root, subset="Tr", case_ids=wanted)

    def training_case_samples(self, config: TrainConfig, root: Path):
        return NiftiVolumes(root, subset="Tr")

    def case_names(self, config: TrainConfig, root: Path) -> list[str]:
        return sorted(NiftiVolumes(root, subset="Tr").case_ids)
