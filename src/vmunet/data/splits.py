"""Which samples train, which select the best checkpoint, which are evaluated: each dataset layout says
(``vmunet.data.layouts``), these functions ask it by the config's ``dataset``.

Model selection never looks at the evaluation split. Where a dataset has no validation split of its
own (the paper's ISIC folders are train/val, and its val is what it reports; Synapse is train/test),
a seeded fraction of the training *cases* is held out for selection (slices of one volume stay together).
``paper_selection`` restores the paper's behaviour (select on the split it reports) for exact comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vmunet.config import TrainConfig
from vmunet.data.layouts import Layout, find_layout
from vmunet.data.subsets import TrainingData, require_data_dir


def _layout(config: TrainConfig, missing: str) -> Layout:
    layout = find_layout(config.dataset)
    if layout is None:
        raise ValueError(f"dataset {config.dataset!r} {missing}")
    return layout


def _with_data(config: TrainConfig, data_dir: str | Path | None) -> TrainConfig:
    return TrainConfig(**{**config.__dict__, "data": str(data_dir) if data_dir else config.data})


def prepare_training_data(config: TrainConfig) -> TrainingData:
    """Readers for the config's dataset, split into training and selection samples."""
    root = require_data_dir(config)
    data = _layout(config, "has no folder reader; the demo builds its data in memory").training_data(config, root)
    if len(data.train) == 0:
        raise ValueError(f"{root}: the training split is empty")
    return data


def evaluation_cases(config: TrainConfig, data_dir: str | Path | None, split: str):
    """('images', 2D samples) or ('volumes', volume dicts) of the requested split; ('polyp', {set name: 2D
    samples}) for the polyp layout."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test' (got {split!r})")
    config = _with_data(config, data_dir)
    root = require_data_dir(config)
    return _layout(config, "cannot be evaluated from a folder").evaluation_cases(config, root, split)


def training_cases(config: TrainConfig, data_dir: str | Path | None, case_ids: Sequence[str]):
    """('images', 2D samples) or ('volumes', volume dicts) of the training split's cases named ``case_ids``
    (image stems or volume names), in that order: what ``vmunet cv`` predicts out of fold. An id the data
    does not hold is an error naming the folder."""
    config = _with_data(config, data_dir)
    root = require_data_dir(config)
    return _layout(config, "has no training cases in a folder").training_cases(config, root, list(case_ids))


def training_case_samples(config: TrainConfig, data_dir: str | Path | None):
    """The training split's samples (nifti: its volumes), whose files ``vmunet.data.fingerprints`` digests."""
    config = _with_data(config, data_dir)
    root = require_data_dir(config)
    return _layout(config, "has no training cases in a folder").training_case_samples(config, root)


def training_case_names(config: TrainConfig, data_dir: str | Path | None) -> list[str]:
    """Every case id of the training split, sorted (from the file listing; no image is read)."""
    config = _with_data(config, data_dir)
    root = require_data_dir(config)
    return _layout(config, "has no training cases in a folder").case_names(config, root)
