"""Keep the largest connected component: the postprocessing that ``vmunet cv`` chooses on out-of-fold predictions.

nnU-Net's semantics (``remove_all_but_largest_component_from_segmentation``): components are found per 2D image
or per 3D volume (whatever array is given) with full connectivity (8 neighbours in 2D, 26 in 3D); "all
foreground" keeps the largest component of the union of the foreground classes and turns the voxels of every
other foreground component to background; "class k" does the same for class k alone. The choice is made in
nnU-Net's order: first all foreground (kept if the mean DSC over foreground classes rises and no class's DSC
falls), then each class on top of that (kept if that class's DSC rises).

DSC for the choice: per case and class, then the mean over the cases where the class is in the truth or the
prediction (a class absent from both is left out, as nnU-Net does). Keeping a component never empties or fills a
class, so which cases are left out is the same before and after.

``postprocessing.json`` (written by ``vmunet cv``, read by ``load_postprocessing``)::

    {
      "format": "vmunet-postprocessing/1",
      "num_classes": 3,              # the runs' output classes; 1 = one sigmoid output, class 1 the foreground
      "class_names": ["background", "liver", "tumour"],
      "volumetric": true,            # chosen on components of 3D volumes (true) or of 2D images (false)
      "connectivity": "full",
      "cases": 20,                   # out-of-fold cases the choice was made on
      "all_foreground": {"apply": true, "dice_before": 0.81, "dice_after": 0.83},   # mean over classes
      "classes": {"1": {"name": "liver", "apply": false, "dice_before": 0.90, "dice_after": 0.89}, ...},
      "mean_dice_before": 0.81,      # mean DSC over foreground classes without postprocessing
      "mean_dice_after": 0.84,       # ... with the chosen postprocessing
      "dice": "the DSC rule above, in words"
    }

A class's ``dice_before`` is on top of the all-foreground choice, ``dice_after`` with its own step as well.
Only ``format``, ``num_classes``, ``all_foreground.apply`` and ``classes.*.apply`` are needed to apply it;
``class_names`` and ``volumetric``, when given, must match the run it is applied to (``load_for_run``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from vmunet.config import read_json

FORMAT = "vmunet-postprocessing/1"
DICE_RULE = ("DSC per case and class, mean over the cases where the class is in the truth or the prediction "
             "(absent from both: left out)")


def foreground_classes(num_classes: int) -> list[int]:
    """Class ids 1..K-1 (one sigmoid output: class 1)."""
    return list(range(1, max(num_classes, 2)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """(H, W) or (D, H, W) bool -> the same with only its largest fully-connected component (ties: the first)."""
    components, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())[1:]  # (count,) voxels per component
    return components == 1 + int(np.argmax(sizes))


def keep_largest_foreground(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Keep the largest component of the union of ``classes``; their voxels outside it become background (0)."""
    labels = np.asarray(labels)
    union = np.isin(labels, list(classes))
    out = labels.copy()
    out[union & ~largest_component(union)] = 0
    return out


def keep_largest_per_class(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """For each class of ``classes`` on its own: keep its largest component, the rest of it becomes background."""
    labels = np.asarray(labels)
    out = labels.copy()
    for k in classes:
        mask = labels == k
        out[mask & ~largest_component(mask)] = 0
    return out


@dataclass
class Postprocessing:
    """What to apply: ``all_foreground`` first, then the largest component of each class in ``classes``;
    ``class_names`` and ``volumetric`` (None when the file does not say) describe the runs it was chosen for."""

    num_classes: int
    all_foreground: bool
    classes: list[int]
    source: str = "postprocessing"
    class_names: list[str] | None = None
    volumetric: bool | None = None

    def check_run(self, num_classes: int, label_names: Sequence[str] | None = None,
                  volumetric: bool | None = None) -> None:
        """Refuse a run this postprocessing was not chosen for: other output classes, other class names, or 2D
        images where it was chosen on 3D volumes (components differ) and the reverse."""
        if num_classes != self.num_classes:
            raise ValueError(f"{self.source}: chosen for runs of {self.num_classes} output class(es); this run "
                             f"has {num_classes}")
        if volumetric is not None and self.volumetric is not None and volumetric != self.volumetric:
            raise ValueError(f"{self.source}: chosen on the components of {_kind(self.volumetric)}; this run "
                             f"predicts {_kind(volumetric)}")
        names = run_class_names(num_classes, label_names)
        if self.class_names is not None and label_names is not None and names != self.class_names:
            raise ValueError(f"{self.source}: chosen for the classes {', '.join(self.class_names)}; this run's "
                             f"classes are {', '.join(names)}")


def _kind(volumetric: bool) -> str:
    return "3D volumes" if volumetric else "2D images"


def run_class_names(num_classes: int, label_names: Sequence[str] | None) -> list[str]:
    """The class names postprocessing.json records for a run: its own when they name every class (one sigmoid
    output: background and foreground), else ``background, class 1, ..``."""
    classes = foreground_classes(num_classes)
    if label_names and len(label_names) == len(classes) + 1:
        return list(label_names)
    return ["background"] + [f"class {k}" for k in classes]


def apply_postprocessing(labels: np.ndarray, spec: Postprocessing) -> np.ndarray:
    """(H, W) or (D, H, W) class ids -> the same with ``spec`` applied (components per given array)."""
    labels = np.asarray(labels)
    top = max(spec.num_classes, 2)
    if labels.size and (labels.min() < 0 or labels.max() >= top):
        raise ValueError(f"{spec.source}: labels hold class ids {int(labels.min())}..{int(labels.max())}, the "
                         f"postprocessing is for classes 0..{top - 1}")
    if spec.all_foreground:
        labels = keep_largest_foreground(labels, foreground_classes(spec.num_classes))
    return keep_largest_per_class(labels, spec.classes) if spec.classes else labels.copy()


def case_dice(pred: np.ndarray, truth: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(len(classes),) DSC of one case per class; NaN where the class is in neither truth nor prediction."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    scores = []
    for k in classes:
        p, t = pred == k, truth == k
        total = int(p.sum()) + int(t.sum())
        scores.append(2.0 * int((p & t).sum()) / total if total else math.nan)
    return np.array(scores, dtype=np.float64)


def candidate_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """The per-class DSC of one case under the four candidates the choice needs: ``raw``, ``raw+class`` (each
    class's own step on the raw labels), ``all`` (the all-foreground step) and ``all+class``.

    A class's own step only turns voxels of that class to background, so a class's DSC under "every class's
    step" equals its DSC under its step alone: four label maps decide every combination.
    """
    classes = foreground_classes(num_classes)
    merged = keep_largest_foreground(pred, classes)
    return {"raw": case_dice(pred, truth, classes),
            "raw+class": case_dice(keep_largest_per_class(pred, classes), truth, classes),
            "all": case_dice(merged, truth, classes),
            "all+class": case_dice(keep_largest_per_class(merged, classes), truth, classes)}


def _mean_over_cases(scores: Sequence[dict], key: str) -> np.ndarray:
    table = np.stack([s[key] for s in scores])  # (cases, classes)
    counted = ~np.isnan(table)
    sums = np.where(counted, table, 0.0).sum(0)
    return np.where(counted.any(0), sums / np.maximum(counted.sum(0), 1), np.nan)


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def choose_from_scores(scores: Sequence[dict], num_classes: int, class_names: Sequence[str] | None = None,
                       volumetric: bool = False) -> dict:
    """The postprocessing.json dict from ``candidate_dice`` of every out-of-fold case (nnU-Net's order)."""
    if not scores:
        raise ValueError("no out-of-fold cases to choose postprocessing on")
    classes = foreground_classes(num_classes)
    names = run_class_names(num_classes, class_names)
    means = {key: _mean_over_cases(scores, key) for key in ("raw", "raw+class", "all", "all+class")}
    raw, merged = means["raw"], means["all"]
    # all foreground: the mean over classes rises, and no class falls (NaN: a class never present, no vote)
    comparable = ~np.isnan(raw) & ~np.isnan(merged)
    use_all = bool(_mean(merged) > _mean(raw) and not np.any(merged[comparable] < raw[comparable]))
    base, stepped = (merged, means["all+class"]) if use_all else (raw, means["raw+class"])
    chosen = [bool(stepped[j] > base[j]) for j in range(len(classes))]  # NaN > x is False: not applied
    final = np.where(chosen, stepped, base)
    return {
        "format": FORMAT,
        "num_classes": int(num_classes),
        "class_names": names,
        "volumetric": bool(volumetric),
        "connectivity": "full",
        "cases": len(scores),
        "all_foreground": {"apply": use_all, "dice_before": _mean(raw), "dice_after": _mean(merged)},
        "classes": {str(k): {"name": names[k], "apply": chosen[j], "dice_before": float(base[j]),
                             "dice_after": float(stepped[j])} for j, k in enumerate(classes)},
        "mean_dice_before": _mean(raw),
        "mean_dice_after": _mean(final),
        "dice": DICE_RULE,
    }


def choose_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int,
                          class_names: Sequence[str] | None = None, volumetric: bool = False) -> dict:
    """postprocessing.json's dict from (predicted labels, true labels) pairs, one per case (image or volume)."""
    scores = [candidate_dice(pred, truth, num_classes) for pred, truth in cases]
    return choose_from_scores(scores, num_classes, class_names, volumetric)


def spec_from_dict(data, source: str = "postprocessing") -> Postprocessing:
    """The ``Postprocessing`` of a postprocessing.json dict; a wrong schema is one error naming ``source``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{source}: not a vmunet postprocessing file (expected \"format\": \"{FORMAT}\", as "
                         "`vmunet cv` writes)")
    num_classes = data.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{source}: num_classes must be an integer >= 1 (got {num_classes!r})")
    merged, classes = data.get("all_foreground"), data.get("classes")
    if not isinstance(merged, dict) or not isinstance(merged.get("apply"), bool):
        raise ValueError(f"{source}: all_foreground must be {{\"apply\": true or false, ...}}")
    valid = {str(k) for k in foreground_classes(num_classes)}
    if not isinstance(classes, dict) or set(classes) != valid or \
            not all(isinstance(v, dict) and isinstance(v.get("apply"), bool) for v in classes.values()):
        raise ValueError(f"{source}: classes must map each foreground class id ({', '.join(sorted(valid, key=int))})"
                         " to {\"apply\": true or false, ...}")
    names, volumetric = data.get("class_names"), data.get("volumetric")
    if names is not None and not (isinstance(names, list) and len(names) == len(valid) + 1
                                  and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{source}: class_names must list {len(valid) + 1} names (the background first)")
    if volumetric is not None and not isinstance(volumetric, bool):
        raise ValueError(f"{source}: volumetric must be true (3D volumes) or false (2D images)")
    return Postprocessing(num_classes, merged["apply"], sorted(int(k) for k, v in classes.items() if v["apply"]),
                          source, names, volumetric)


def load_postprocessing(path: str | Path) -> Postprocessing:
    """Read a postprocessing.json written by ``vmunet cv``; a missing file, bad JSON or schema names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: postprocessing file not found (`vmunet cv` writes OUT/postprocessing.json)")
    return spec_from_dict(read_json(path), str(path))


def postprocess_prediction(prediction, spec: Postprocessing | None):
    """A ``vmunet.inference.Prediction`` with ``spec`` applied to its labels (its probabilities stay raw);
    ``spec`` None: the prediction itself."""
    if spec is None:
        return prediction
    return dataclasses.replace(prediction, labels=apply_postprocessing(prediction.labels, spec))


def load_for_run(path: str | Path | None, info) -> Postprocessing | None:
    """``load_postprocessing(path)`` checked against a run (its ``RunInfo``: output classes, class names, 2D or
    3D); None for no path."""
    if path is None:
        return None
    spec = load_postprocessing(path)
    spec.check_run(info.num_classes, info.label_names, info.is_volumetric)
    return spec
