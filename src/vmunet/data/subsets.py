"""Samples split by case: a held-out fraction or a fold for checkpoint selection, the case of a slice, slices
stacked back into volumes. The dataset layouts (``vmunet.data.layouts``) split their samples with these; a
volume's slices always stay together.
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
