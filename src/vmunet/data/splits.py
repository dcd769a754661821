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


def group_by_case(case_ids: Sequence[str]) -> dict[str, list[int]]:
    """{case (volume) id: indices of its samples}: the slices of one volume form one case."""
    groups: dict[str, list[int]] = {}
    for index, case_id in enumerate(case_ids):
        groups.setdefault(volume_id(case_id), []).append(index)
    return groups


def assign_folds(cases: Sequence[str], folds: int, seed: int, where: str = "the data") -> dict[str, int]:
    """{case id: fold}: the sorted case ids shuffled with ``seed``, then dealt round-robin into ``folds``.

    Depends only on the set of ids, ``folds`` and ``seed``, so every fold's run (and ``vmunet cv``) computes the
    same assignment; fold sizes differ by at most one.
    """
    names = sorted(set(cases))
    if len(names) < folds:
        advice = f"use --folds {len(names)} or fewer" if len(names) >= 2 else "cross-validation needs 2 cases"
        raise ValueError(f"{where}: {len(names)} training case(s) cannot make {folds} folds; {advice}")
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[index]: position % folds for position, index in enumerate(order)}


def fold_split(samples: Sequence, folds: int, fold: int, seed: int, where: str = "the data") -> tuple[Subset, Subset]:
    """(train, val) by case: fold ``fold`` of ``assign_folds`` is val, the other folds train."""
    groups = group_by_case(samples.case_ids)
    assignment = assign_folds(list(groups), folds, seed, where)
    val = [i for name in sorted(groups) if assignment[name] == fold for i in groups[name]]
    train = [i for name in sorted(groups) if assignment[name] != fold for i in groups[name]]
    return Subset(samples, train), Subset(samples, val)


def selection_split(samples: Sequence, config: TrainConfig) -> tuple[Subset, Subset]:
    """The training split's (train, selection) samples: fold ``config.fold`` with folds, else a held-out fraction."""
    if config.folds:
        return fold_split(samples, config.folds, config.fold, config.seed, config.data or "the data")
    return hold_out(samples, config.val_fraction, config.seed)


def case_names(samples: Sequence) -> list[str]:
    """The sorted case ids of some samples (image stems, volume names): what ``split.json`` lists."""
    return sorted(group_by_case(samples.case_ids)) if len(samples) else []


def selection_source(config: TrainConfig, val: Sequence, held_out: str) -> str:
    """The log's sentence for selection samples that come from the training split; ``held_out`` formats
    the case count and the seed when there are no folds."""
    count = len({volume_id(c) for c in val.case_ids}) if len(val) else 0
    if config.folds:
        return f"fold {config.fold} of {config.folds}: {count} training cases (seed {config.seed}), never the " \
               "evaluation split"
    return held_out.format(count=count, seed=config.seed)


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
        train.check_some_foreground()
        if not config.folds and (isic_has_test(root) or config.paper_selection):
            source = "the val/ folder" + (" (paper selection: also the reported split)" if not isic_has_test(root)
                                          else "")
            val = readers.IsicFolder(root, "val")
        else:
            train, val = selection_split(train, config)
            source = selection_source(config, val, "{count} images held out of train/ (seed {seed}); val/ is the "
                                      "evaluation split")
        num_classes, channels = config.num_classes or 1, config.input_channels or 3
        names = config.label_names or default_label_names(num_classes)
    elif config.dataset == "synapse":
        train = readers.SynapseSlices(root, "train")
        if config.paper_selection:
            val, source = slices_of(readers.SynapseVolumes(root, "test_vol")), "test volumes (paper selection)"
        else:
            train, val = selection_split(train, config)
            source = selection_source(config, val, "{count} training cases held out (seed {seed})")
        num_classes, channels = config.num_classes or 9, config.input_channels or 1
        names = config.label_names or default_label_names(num_classes)
    elif config.dataset == "nifti":
        train = readers.NiftiSlices(root)
        train, val = selection_split(train, config)
        source = selection_source(config, val, "{count} imagesTr cases held out (seed {seed})")
        names = config.label_names or readers.read_label_names(root)
        num_classes = config.num_classes or len(names)
        channels = config.input_channels or nifti_channel_count(root)
    elif config.dataset == "folders":
        from vmunet.data.folders import ClassFolder

        train = ClassFolder(root, "train", config.num_classes)
        train.check_some_foreground()  # with labels.json too: the class count does not read the masks then
        num_classes, colours = train.num_classes, train.colours
        names = config.label_names or train.label_names
        if not config.folds and (isic_has_test(root) or config.paper_selection):
            val, source = ClassFolder(root, "val", num_classes), "the val/ folder"
        else:
            train, val = selection_split(train, config)
            source = selection_source(config, val, "{count} images held out of train/ (seed {seed}); val/ is the "
                                      "evaluation split")
        channels = config.input_channels or 3
    elif config.dataset == "polyp":
        train, val = selection_split(polyp_training_folder(config, root), config)
        source = selection_source(config, val, "{count} images held out of TrainDataset/ (seed {seed}); the "
                                  "TestDataset/ sets are never seen in training or selection")
        num_classes, channels = 1, config.input_channels or 3
        names = config.label_names or ["background", "polyp"]
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
    """('images', 2D samples) or ('volumes', volume dicts) of the requested split; ('polyp', {set name: 2D
    samples}) for the polyp layout."""
    from vmunet import data as readers

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test' (got {split!r})")
    config = TrainConfig(**{**config.__dict__, "data": str(data_dir) if data_dir else config.data})
    root = require_data_dir(config)
    if config.dataset == "isic":
        if split == "test":
            return "images", readers.IsicFolder(root, "test" if isic_has_test(root) else "val")
        if not config.folds and (isic_has_test(root) or config.paper_selection):
            return "images", readers.IsicFolder(root, "val")
        return "images", selection_split(readers.IsicFolder(root, "train"), config)[1]
    if config.dataset == "folders":
        from vmunet.data.folders import ClassFolder

        classes = config.num_classes
        if split == "test":
            return "images", ClassFolder(root, "test" if isic_has_test(root) else "val", classes)
        if not config.folds and (isic_has_test(root) or config.paper_selection):
            return "images", ClassFolder(root, "val", classes)
        return "images", selection_split(ClassFolder(root, "train", classes), config)[1]
    if config.dataset == "synapse":
        if split == "test":
            return "volumes", readers.SynapseVolumes(root, "test_vol")
        held = selection_split(readers.SynapseSlices(root, "train"), config)[1]
        return "volumes", stack_slices(held)
    if config.dataset == "nifti":
        if split == "test":
            if not (root / "labelsTs").is_dir():
                raise ValueError(f"{root}: no labelsTs/ folder, so the test split cannot be scored; "
                                 "use --split val, or predict imagesTs/ with `vmunet predict`")
            return "volumes", readers.NiftiVolumes(root, subset="Ts")
        held = selection_split(readers.NiftiSlices(root), config)[1]
        wanted = sorted({volume_id(c) for c in held.case_ids})
        return "volumes", readers.NiftiVolumes(root, subset="Tr", case_ids=wanted)
    if config.dataset == "polyp":  # {set name: 2D samples}: each set is scored on its own
        from vmunet.data.polyp import polyp_test_sets

        if split == "test":
            return "polyp", polyp_test_sets(root)
        return "polyp", {"TrainDataset (held out)": selection_split(polyp_training_folder(config, root), config)[1]}
    raise ValueError(f"dataset {config.dataset!r} cannot be evaluated from a folder")


def polyp_training_folder(config: TrainConfig, root: Path):
    """TrainDataset/ of the polyp layout. The official VM-UNetV2 code chooses its checkpoint on the test sets;
    there is no paper selection to restore here, and the model is binary (one sigmoid output)."""
    from vmunet.data.polyp import PolypFolder

    if config.paper_selection:
        raise ValueError("paper_selection: the polyp preset selects on held-out TrainDataset images only (the "
                         "official code's selection on the test sets is the defect it fixes)")
    if config.num_classes not in (None, 1):
        raise ValueError(f"the polyp protocol is binary: num_classes must be 1 (got {config.num_classes})")
    return PolypFolder.train(root)


def _training_samples(config: TrainConfig, root: Path):
    """('images' | 'volumes', the training split's 2D samples) of a folder dataset other than nifti."""
    from vmunet import data as readers

    if config.dataset == "isic":
        return "images", readers.IsicFolder(root, "train")
    if config.dataset == "folders":
        from vmunet.data.folders import ClassFolder

        return "images", ClassFolder(root, "train", config.num_classes)
    if config.dataset == "polyp":  # TrainDataset/: the test sets are never in a fold
        return "images", polyp_training_folder(config, root)
    if config.dataset == "synapse":
        return "volumes", readers.SynapseSlices(root, "train")
    raise ValueError(f"dataset {config.dataset!r} has no training cases in a folder")


def training_cases(config: TrainConfig, data_dir: str | Path | None, case_ids: Sequence[str]):
    """('images', 2D samples) or ('volumes', volume dicts) of the training split's cases named ``case_ids``
    (image stems or volume names), in that order: what ``vmunet cv`` predicts out of fold. An id the data
    does not hold is an error naming the folder."""
    from vmunet import data as readers

    config = TrainConfig(**{**config.__dict__, "data": str(data_dir) if data_dir else config.data})
    root = require_data_dir(config)
    wanted = list(case_ids)
    if config.dataset == "nifti":
        missing = sorted(set(wanted) - set(training_case_names(config, root)))
        if missing:
            raise ValueError(_missing_cases(root, missing))
        return "volumes", readers.NiftiVolumes(root, subset="Tr", case_ids=wanted)
    kind, samples = _training_samples(config, root)
    groups = group_by_case(samples.case_ids)
    missing = [c for c in wanted if c not in groups]
    if missing:
        raise ValueError(_missing_cases(root, missing))
    chosen = Subset(samples, [i for c in wanted for i in groups[c]])
    if kind == "images":
        return kind, chosen
    by_name = {volume["case_id"]: volume for volume in stack_slices(chosen)}
    return kind, [by_name[c] for c in wanted]


def _missing_cases(root: Path, missing: Sequence[str]) -> str:
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    return f"{root}: the training split has no case {', '.join(missing[:3])}{more}; the data changed since training"


def training_case_samples(config: TrainConfig, data_dir: str | Path | None):
    """The training split's samples (nifti: its volumes), whose files ``vmunet.data.fingerprints`` digests."""
    from vmunet import data as readers

    config = TrainConfig(**{**config.__dict__, "data": str(data_dir) if data_dir else config.data})
    root = require_data_dir(config)
    if config.dataset == "nifti":
        return readers.NiftiVolumes(root, subset="Tr")
    return _training_samples(config, root)[1]


def training_case_names(config: TrainConfig, data_dir: str | Path | None) -> list[str]:
    """Every case id of the training split, sorted (from the file listing; no image is read)."""
    from vmunet import data as readers

    config = TrainConfig(**{**config.__dict__, "data": str(data_dir) if data_dir else config.data})
    root = require_data_dir(config)
    if config.dataset == "nifti":
        return sorted(readers.NiftiVolumes(root, subset="Tr").case_ids)
    return case_names(_training_samples(config, root)[1])


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
