"""Which samples train, which select the best checkpoint, which are evaluated: per dataset kind.

Model selection never looks at the evaluation split. Where a dataset has no validation split of its
own (the paper's ISIC folders are train/val, and its val is what it reports; Synapse is train/test),
a seeded fraction of the training *cases* is held out for selection (slices of one volume stay together).
``paper_selection`` restores the paper's behaviour (select on the split it reports) for exact comparison.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmunet.config import TrainConfig

_SLICE_SUFFIX = re.compile(r"_slice\d+$")


class Subset(Sequence):
    """A view of some items of a sequence of samples (keeps ``case_ids``)."""

    def __init__(self, items: Sequence, indices: Sequence[int]):
        self.items = items
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.items[self.indices[i]]

    @property
    def case_ids(self) -> list[str]:
        ids = self.items.case_ids
        return [ids[i] for i in self.indices]


def volume_id(case_id: str) -> str:
    """'case0005_slice012' -> 'case0005'; NIfTI slices 'NAME:z' -> 'NAME'; 2D images are their own case."""
    return _SLICE_SUFFIX.sub("", case_id.split(":")[0])


def hold_out(samples: Sequence, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Split by case (volume), seeded: (train, held_out). At least one case is held out if fraction > 0."""
    groups: dict[str, list[int]] = {}
    for index, case_id in enumerate(samples.case_ids):
        groups.setdefault(volume_id(case_id), []).append(index)
    names = sorted(groups)
    if fraction <= 0 or len(names) < 2:
        return Subset(samples, range(len(samples))), Subset(samples, [])
    count = max(1, round(fraction * len(names)))
    chosen = set(np.random.default_rng(seed).choice(len(names), size=count, replace=False).tolist())
    held = [i for k, name in enumerate(names) if k in chosen for i in groups[name]]
    kept = [i for k, name in enumerate(names) if k not in chosen for i in groups[name]]
    return Subset(samples, kept), Subset(samples, held)


@dataclass
class TrainingData:
    train: Sequence  # 2D samples
    val: Sequence  # 2D samples for selection (may be empty)
    num_classes: int
    input_channels: int
    label_names: list[str]
    val_source: str  # a sentence for the log: where the selection samples come from
    # Optional (image, rng) -> image applied to every training sample before the augmentation recipe
    # (the demo's scanner corruption, drawn afresh per sample).
    corrupt: Callable | None = None
    label_colours: list[list[int]] | None = None  # (K, 3) RGB of a colour-mask dataset (folders + labels.json)


def require_data_dir(config: TrainConfig) -> Path:
    if not config.data:
        raise ValueError("no data folder given (--data DIR)")
    root = Path(config.data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder does not exist")
    return root


def default_label_names(num_classes: int) -> list[str]:
    return ["background", "foreground"] if num_classes == 1 else ["background"] + [
        f"class {i}" for i in range(1, num_classes)]


def isic_has_test(root: Path) -> bool:
    return (root / "test").is_dir()


def prepare_training_data(config: TrainConfig) -> TrainingData:
    """Readers for the config's dataset, split into training and selection samples."""
    from vmunet import data as readers

    root = require_data_dir(config)
    colours = None
    if config.dataset == "isic":
        train = readers.IsicFolder(root, "train")
        if isic_has_test(root) or config.paper_selection:
            source = "the val/ folder" + (" (paper selection: also the reported split)" if not isic_has_test(root)
                                          else "")
            val = readers.IsicFolder(root, "val")
        else:
            train, val = hold_out(train, config.val_fraction, config.seed)
            source = f"{len(val)} images held out of train/ (seed {config.seed}); val/ is the evaluation split"
        num_classes, channels = config.num_classes or 1, config.input_channels or 3
        names = config.label_names or default_label_names(num_classes)
    elif config.dataset == "synapse":
        train = readers.SynapseSlices(root, "train")
        if config.paper_selection:
            val, source = slices_of(readers.SynapseVolumes(root, "test_vol")), "test volumes (paper selection)"
        else:
            train, val = hold_out(train, config.val_fraction, config.seed)
            source = f"{len({volume_id(c) for c in val.case_ids})} training cases held out (seed {config.seed})"
        num_classes, channels = config.num_classes or 9, config.input_channels or 1
        names = config.label_names or default_label_names(num_classes)
    elif config.dataset == "nifti":
        train = readers.NiftiSlices(root)
        train, val = hold_out(train, config.val_fraction, config.seed)
        source = f"{len({volume_id(c) for c in val.case_ids})} imagesTr cases held out (seed {config.seed})"
        names = config.label_names or readers.read_label_names(root)
        num_classes = config.num_classes or len(names)
        channels = config.input_channels or nifti_channel_count(root)
    elif config.dataset == "folders":
        from vmunet.data.folders import ClassFolder

        train = ClassFolder(root, "train", config.num_classes)
        num_classes, colours = train.num_classes, train.colours
        names = config.label_names or train.label_names
        if isic_has_test(root) or config.paper_selection:
            val, source = ClassFolder(root, "val", num_classes), "the val/ folder"
        else:
            train, val = hold_out(train, config.val_fraction, config.seed)
            source = f"{len(val)} images held out of train/ (seed {config.seed}); val/ is the evaluation split"
        channels = config.input_channels or 3
    else:
        raise ValueError(f"dataset {config.dataset!r} has no folder reader; the demo builds its data in memory")
    if len(train) == 0:
        raise ValueError(f"{root}: the training split is empty")
    return TrainingData(train, val, num_classes, channels, list(names), source, label_colours=colours)


def nifti_channel_count(root: Path) -> int:
    """Channels named in dataset.json (nnU-Net v2 'channel_names', v1 'modality'); 1 when absent."""
    from vmunet.data.nifti import read_dataset_json

    if not (root / "dataset.json").is_file():
        return 1
    info = read_dataset_json(root)
    channels = info.get("channel_names", info.get("modality"))
    return len(channels) if isinstance(channels, dict) and channels else 1


class SliceList(Sequence):
    """2D samples of a list of volumes, one per slice along the first axis."""

    def __init__(self, volumes: Sequence):
        self.volumes = volumes
        self.index = [(v, z) for v in range(len(volumes)) for z in range(volumes[v]["image"].shape[0])]
        self.case_ids = [f"{volumes[v]['case_id']}:{z}" for v, z in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, z = self.index[i]
        volume = self.volumes[v]
        image = volume["image"][z]
        return {"image": image[..., None] if image.ndim == 2 else image, "label": volume["label"][z],
                "case_id": self.case_ids[i]}


def slices_of(volumes) -> SliceList:
    return SliceList([volumes[i] for i in range(len(volumes))])


def evaluation_cases(config: TrainConfig, data_dir: str | Path | None, split: str):
    """('images', 2D samples) or ('volumes', volume dicts) of the requested split."""
    from vmunet import data as readers

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test' (got {split!r})")
    config = TrainConfig(**{**config.__dict__, "data": str(data_dir) if data_dir else config.data})
    root = require_data_dir(config)
    if config.dataset == "isic":
        if split == "test":
            return "images", readers.IsicFolder(root, "test" if isic_has_test(root) else "val")
        if isic_has_test(root) or config.paper_selection:
            return "images", readers.IsicFolder(root, "val")
        return "images", hold_out(readers.IsicFolder(root, "train"), config.val_fraction, config.seed)[1]
    if config.dataset == "folders":
        from vmunet.data.folders import ClassFolder

        classes = config.num_classes
        if split == "test":
            return "images", ClassFolder(root, "test" if isic_has_test(root) else "val", classes)
        if isic_has_test(root) or config.paper_selection:
            return "images", ClassFolder(root, "val", classes)
        return "images", hold_out(ClassFolder(root, "train", classes), config.val_fraction, config.seed)[1]
    if config.dataset == "synapse":
        if split == "test":
            return "volumes", readers.SynapseVolumes(root, "test_vol")
        held = hold_out(readers.SynapseSlices(root, "train"), config.val_fraction, config.seed)[1]
        return "volumes", stack_slices(held)
    if config.dataset == "nifti":
        if split == "test":
            if not (root / "labelsTs").is_dir():
                raise ValueError(f"{root}: no labelsTs/ folder, so the test split cannot be scored; "
                                 "use --split val, or predict imagesTs/ with `vmunet predict`")
            return "volumes", readers.NiftiVolumes(root, subset="Ts")
        held = hold_out(readers.NiftiSlices(root), config.val_fraction, config.seed)[1]
        wanted = sorted({volume_id(c) for c in held.case_ids})
        return "volumes", readers.NiftiVolumes(root, subset="Tr", case_ids=wanted)
    raise ValueError(f"dataset {config.dataset!r} cannot be evaluated from a folder")


def stack_slices(samples: Sequence) -> list[dict]:
    """Reassemble held-out 2D slices ('caseXXXX_sliceYYY') into volumes ordered by slice number."""
    by_case: dict[str, list[tuple[int, int]]] = {}
    for i, case_id in enumerate(samples.case_ids):
        number = re.search(r"(\d+)$", case_id)
        by_case.setdefault(volume_id(case_id), []).append((int(number.group(1)) if number else i, i))
    volumes = []
    for case, entries in sorted(by_case.items()):
        items = [samples[i] for _, i in sorted(entries)]
        volumes.append({"image": np.stack([s["image"][..., 0] if s["image"].ndim == 3 else s["image"]
                                           for s in items]),
                        "label": np.stack([s["label"] for s in items]), "case_id": case, "spacing": None,
                        "affine": None})
    return volumes
