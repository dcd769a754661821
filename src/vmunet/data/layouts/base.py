"""What a dataset layout answers: its training samples, its evaluation cases, its case and class names, and the
protocol that scores it. One subclass per layout (``vmunet.data.layouts``); ``vmunet.data.splits`` asks them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from vmunet.config import TrainConfig
from vmunet.data.subsets import Subset, TrainingData, case_names, group_by_case, stack_slices


class Layout(ABC):
    name: str  # the config's ``dataset``
    # How its evaluation cases are scored (``vmunet.evaluate``): "images" (2D, per image), "volumes" (3D, per
    # volume) or "polyp" (each test set on its own with the polyp metrics).
    protocol: str

    @abstractmethod
    def training_data(self, config: TrainConfig, root: Path) -> TrainingData:
        """The training samples, the selection samples (never the evaluation split), classes and channels."""

    @abstractmethod
    def evaluation_cases(self, config: TrainConfig, root: Path, split: str) -> tuple[str, object]:
        """(protocol, cases) of ``split`` ("val" or "test"): 2D samples, volume dicts, or {set name: samples}."""

    @abstractmethod
    def training_samples(self, config: TrainConfig, root: Path) -> tuple[str, Sequence]:
        """("images" | "volumes", the training split's 2D samples): what folds and ``vmunet cv`` divide."""

    def training_cases(self, config: TrainConfig, root: Path, wanted: list[str]):
        """(kind, the training cases named ``wanted``, in that order); an id the data lacks names the folder."""
        kind, samples = self.training_samples(config, root)
        groups = group_by_case(samples.case_ids)
        missing = [c for c in wanted if c not in groups]
        if missing:
            raise ValueError(missing_cases(root, missing))
        chosen = Subset(samples, [i for c in wanted for i in groups[c]])
        if kind == "images":
            return kind, chosen
        by_name = {volume["case_id"]: volume for volume in stack_slices(chosen)}
        return kind, [by_name[c] for c in wanted]

    def training_case_samples(self, config: TrainConfig, root: Path):
        """The training split's samples whose files ``vmunet.data.fingerprints`` digests."""
        return self.training_samples(config, root)[1]

    def case_names(self, config: TrainConfig, root: Path) -> list[str]:
        """Every case id of the training split, sorted."""
        return case_names(self.training_samples(config, root)[1])


def missing_cases(root: Path, missing: Sequence[str]) -> str:
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    return f"{root}: the training split has no case {', '.join(missing[:3])}{more}; the data changed since training"
