"""``vmunet cv``: out-of-fold evaluation of the K runs of one split, and the postprocessing chosen on it.

    cross_validate(["runs/fold0", ..., "runs/fold4"], "cv/")

The runs must be the folds of one split (``vmunet train --folds K --fold k`` for k = 0..K-1: the same dataset,
data folder, classes, seed and K, each fold once). Every training case is predicted by the one run that did
not train on it (its ``split.json`` lists it under "val"), at its own resolution through the inference path of
``vmunet evaluate`` (``vmunet.inference.Predictor``); volumes are scored in 3D with their spacing.

Writes, each file whole or not at all (nothing on failure):

- ``OUT/per_case.csv``: one row per training case, the fold that predicted it, DSC, IoU and HD95 per class
  and their means over classes (the metric rules of ``vmunet evaluate``: ``empty_mask_policy`` in summary.json).
- ``OUT/summary.json``: ``over_cases`` (per class, and ``mean`` of the per-case means over classes: each
  metric's ``mean``, sample ``std`` and ``n`` over the cases), ``per_fold`` (the same for each fold's cases),
  ``over_folds`` (mean and std of the fold means), ``mean_dice``, ``mean_iou``, ... (the protocol's mean over
  classes of the class means, as ``vmunet evaluate``), ``runs`` (fold -> run folder) and the rules used.
- ``OUT/postprocessing.json``: whether keeping the largest connected component raises the out-of-fold DSC
  (``vmunet.evaluation.postprocessing``), for ``vmunet predict`` / ``vmunet evaluate --postprocessing``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from vmunet.config import TrainConfig, config_from_dict
from vmunet.ops.workspace import scan_workspace
from vmunet.runtime.device import progress_bar, resolve_device
from vmunet.runtime.run_folder import RunInfo, read_config_dict, read_run_info, read_split
from vmunet.io.files import publish_together, refuse_existing_outputs
from vmunet.data.fingerprints import case_fingerprints
from vmunet.data.splits import training_case_names, training_case_samples, training_cases
from vmunet.evaluation.metrics import case_metrics, default_names
from vmunet.evaluation import metrics
from vmunet.evaluation.postprocessing import candidate_dice, choose_from_scores
from vmunet.inference import Predictor
from vmunet.runtime.run_folder import checkpoint_dir, read_fingerprints, resolve_checkpoint

OUTPUTS = ("per_case.csv", "summary.json", "postprocessing.json")


@dataclass
class FoldRun:
    """One fold's run folder: its config, run.json and split.json."""

    run_dir: Path
    config: TrainConfig
    info: RunInfo
    split: dict[str, list[str]]

    @property
    def data(self) -> str:
        return str(Path(self.config.data).expanduser().resolve()) if self.config.data else ""


def read_fold_run(run_dir: str | Path) -> FoldRun:
    run_dir = Path(run_dir)
    config = config_from_dict(read_config_dict(run_dir))
    if config.folds is None:
        raise ValueError(f"{run_dir}: not a fold of a cross-validation (trained without --folds K --fold k)")
    return FoldRun(run_dir, config, read_run_info(run_dir), read_split(run_dir))


def _names(runs) -> str:
    return ", ".join(str(run.run_dir) for run in runs)


def check_folds(runs: list[FoldRun]) -> None:
    """Raise a one-line ValueError naming the run folders unless ``runs`` are the K folds of one split."""
    if not runs:
        raise ValueError("no run folders given")
    identity = {"datasets": lambda r: r.config.dataset, "data folders": lambda r: r.data,
                "seeds": lambda r: r.config.seed, "fold counts (--folds)": lambda r: r.config.folds,
                "classes": lambda r: (r.info.num_classes, tuple(r.info.label_names)),
                "input channels": lambda r: r.info.input_channels}
    for what, key in identity.items():
        values = {}
        for run in runs:
            values.setdefault(key(run), []).append(run)
        if len(values) > 1:
            shown = "; ".join(f"{_names(group)}: {value}" for value, group in values.items())
            raise ValueError(f"{_names(runs)}: trained with different {what} ({shown}); the folds of one split "
                             "share them")
    folds = runs[0].config.folds
    by_fold: dict[int, list[FoldRun]] = {}
    for run in runs:
        by_fold.setdefault(run.config.fold, []).append(run)
    for fold, group in sorted(by_fold.items()):
        if len(group) > 1:
            raise ValueError(f"{_names(group)}: fold {fold} of {folds} trained twice; give each fold once")
    missing = [k for k in range(folds) if k not in by_fold]
    if missing:
        raise ValueError(f"{_names(runs)}: fold {', '.join(map(str, missing))} of {folds} missing (have "
                         f"{', '.join(map(str, sorted(by_fold)))}); train it with --folds {folds} --fold k")
    pools = {tuple(sorted(run.split["train"] + run.split["val"])) for run in runs}
    held = [case for run in runs for case in run.split["val"]]
    overlap = [run for run in runs if set(run.split["train"]) & set(run.split["val"])]
    if len(pools) > 1 or len(held) != len(set(held)) or set(held) != set(next(iter(pools))) or overlap:
        raise ValueError(f"{_names(runs)}: the split.json files are not the folds of one split (the cases differ, "
                         "or a case is held out by two folds)")


# What says how a fold ran, not what it trained: may differ between the folds of one split (the data folder is
# compared resolved, in check_folds).
HOW_IT_RAN = ("fold", "data", "device", "num_workers", "detect_anomaly", "dist_timeout_minutes", "scan_backend",
              "deterministic")


def check_fold_settings(runs: list[FoldRun]) -> None:
    """Every training setting (config.yaml but ``HOW_IT_RAN``, and run.json's model) is the same in every fold:
    folds of another model, image size, lr or epoch count are not one configuration's cross-validation."""
    settings = [{**{k: v for k, v in run.config.to_dict().items() if k not in HOW_IT_RAN},
                 "model_config": run.info.model_config, "normalization": run.info.normalization,
                 "interpolation": run.info.interpolation} for run in runs]
    differences = []
    for key in settings[0]:
        groups: dict[str, list[FoldRun]] = {}
        for run, values in zip(runs, settings):
            groups.setdefault(json.dumps(values.get(key), sort_keys=True, default=str), []).append(run)
        if len(groups) > 1:
            differences.append(f"{key} " + " vs ".join(f"{value} ({_names(group)})" for value, group in groups.items()))
    if differences:
        more = f" and {len(differences) - 2} more" if len(differences) > 2 else ""
        raise ValueError(f"{_names(runs)}: the folds were trained with different settings: "
                         f"{'; '.join(differences[:2])}{more}; the folds of one split share every setting but --fold")


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was saved at, read without loading its tensors (memory-mapped)."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]})") from None
    epoch = payload.get("epoch") if isinstance(payload, dict) else None
    return int(epoch) if isinstance(epoch, (int, float)) else None


def epochs_trained(run_dir: Path) -> int | None:
    """The epochs a run finished: its last.pt's epoch, else the last row of history.csv (last.pt deleted to save
    space); None when neither says."""
    last = checkpoint_dir(run_dir) / "last.pt"
    if last.is_file():
        return checkpoint_epoch(last)
    history = run_dir / "history.csv"
    if history.is_file():
        with open(history, newline="", encoding="utf-8") as handle:
            epochs = [int(row["epoch"]) for row in csv.DictReader(handle) if (row.get("epoch") or "").isdigit()]
        return max(epochs, default=None)
    return None


def check_folds_finished(runs: list[FoldRun]) -> dict[int, int]:
    """{fold: epochs trained}; a fold that stopped before its planned epochs (killed, or still running) is an
    error naming it: its best.pt is another model than the finished folds'."""
    trained = {}
    for run in runs:
        done, planned = epochs_trained(run.run_dir), run.config.epochs
        if done is None:
            raise ValueError(f"{run.run_dir}: cannot tell whether fold {run.config.fold} finished its {planned} epochs "
                             "(no checkpoints/last.pt or history.csv)")
        if done < planned:
            raise ValueError(f"{run.run_dir}: fold {run.config.fold} stopped at epoch {done} of {planned}; finish it "
                             f"(vmunet train --run-dir {run.run_dir} --resume), then run vmunet cv again")
        trained[run.config.fold] = done
    return trained


def check_contents_unchanged(runs: list[FoldRun], data_dir: str | Path | None) -> list[str]:
    """The fingerprints of the training cases' files (split.json, recorded when each fold trained) agree between
    the folds and with the data now; an error names the cases whose contents differ. Returns warnings for runs
    trained before fingerprints were recorded (their contents cannot be compared)."""
    recorded = {run.run_dir: read_fingerprints(run.run_dir) for run in runs}
    warnings = [f"warning: {run}: split.json has no content fingerprints (trained before they were recorded): "
                "files changed under the same names cannot be detected" for run, prints in recorded.items()
                if prints is None]
    known = [(run, prints) for run, prints in recorded.items() if prints is not None]
    if not known:
        return warnings
    first_run, first = known[0]
    for run, prints in known[1:]:
        differ = sorted(case for case in set(first) & set(prints) if first[case] != prints[case])
        if differ:
            raise ValueError(f"{first_run}, {run}: the folds trained on different contents of {len(differ)} case(s) "
                             f"(e.g. {', '.join(differ[:3])}); train every fold on the same data")
    now = case_fingerprints(training_case_samples(runs[0].config, data_dir)) or {}
    then = {case: value for _, prints in known for case, value in prints.items()}
    changed = sorted(case for case in set(now) & set(then) if now[case] != then[case])
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ValueError(f"{data_dir or runs[0].config.data}: the contents of {len(changed)} training case(s) changed "
                         f"since {_names(runs)} were trained ({', '.join(changed[:3])}{more}: other image or mask "
                         "bytes under the same names); give --data the data they trained on, or train the folds again")
    return warnings


def check_data_unchanged(runs: list[FoldRun], data_dir: str | Path | None) -> None:
    """Every training case of the data folder is in the runs' split, and no other."""
    now = set(training_case_names(runs[0].config, data_dir))
    then = set(runs[0].split["train"] + runs[0].split["val"])
    if now != then:
        new, gone = sorted(now - then), sorted(then - now)
        parts = ([f"{len(new)} case(s) in no fold (e.g. {new[0]})"] if new else []) + \
                ([f"{len(gone)} case(s) gone (e.g. {gone[0]})"] if gone else [])
        raise ValueError(f"{data_dir or runs[0].config.data}: the training cases changed since {_names(runs)} "
                         f"were trained: {', '.join(parts)}")


def case_row(kind: str, pred: np.ndarray, case: dict, num_classes: int, nsd_tolerance_mm: float) -> dict:
    """The per-case metrics of ``vmunet evaluate`` (its rules per data kind, the run's NSD tolerance), with
    IoU = DSC / (2 - DSC) added where the kind's row has none (exact for one case's masks)."""
    row = case_metrics(kind, pred, case, num_classes, nsd_tolerance_mm)
    if "iou" not in row:
        row["iou"] = [d / (2.0 - d) if d == d else math.nan for d in row["dice"]]
    return row


@scan_workspace()  # frees the CPU scan's scratch buffers when the cases are scored
def predict_out_of_fold(runs: list[FoldRun], data_dir: str | Path | None = None, checkpoint: str = "best",
                        device: str = "auto", batch_size: int = 8, allow_pickle: bool = False,
                        progress: bool = True, load_predictor=None) -> tuple[str, list[dict], list[dict]]:
    """(kind, per-case rows with their "fold", ``candidate_dice`` per case): each case predicted by the run
    whose split.json holds it out. ``load_predictor(run_dir)`` replaces ``Predictor.from_run`` (tests)."""
    device = resolve_device(device)
    load_predictor = load_predictor or (lambda run_dir: Predictor.from_run(
        run_dir, checkpoint, device=device, batch_size=batch_size, allow_pickle=allow_pickle))
    num_classes = runs[0].info.num_classes
    rows, scores, kind = [], [], "images"
    for run in sorted(runs, key=lambda r: r.config.fold):
        kind, cases = training_cases(run.config, data_dir, run.split["val"])
        predictor = load_predictor(run.run_dir)
        label = f"cv fold {run.config.fold}/{run.config.folds}: {kind}"
        for index in progress_bar(range(len(cases)), len(cases), label, progress):
            case = cases[index]
            if kind == "images":
                pred = predictor.predict_image(case["image"]).labels  # (H, W)
            else:
                pred = predictor.predict_volume(case["image"]).labels  # (D, H, W)
            rows.append({**case_row(kind, pred, case, num_classes, run.config.nsd_tolerance_mm),
                         "fold": run.config.fold})
            scores.append(candidate_dice(pred, case["label"], num_classes))
        del predictor
    return kind, rows, scores


def _stats(values) -> dict:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than 2 values), NaN entries left out."""
    values = np.asarray([v for v in values if v == v], dtype=np.float64)
    return {"mean": float(values.mean()) if values.size else math.nan,
            "std": float(values.std(ddof=1)) if values.size > 1 else math.nan, "n": int(values.size)}


def metric_keys(rows: list[dict]) -> list[str]:
    """The per-class metrics of the rows ("dice", "iou", "hd95" and any other list a row holds)."""
    return [key for key, value in rows[0].items() if isinstance(value, list)]


def summarize_cv(rows: list[dict], class_names: list[str], folds: int) -> dict:
    """Per class and for the mean over classes: mean/std over cases, per fold, and mean/std over the folds."""
    keys = metric_keys(rows)
    names = list(class_names)
    tables = {key: np.array([r[key] for r in rows], dtype=np.float64) for key in keys}  # (cases, classes)
    fold_of = np.array([r["fold"] for r in rows])

    def block(selected: np.ndarray) -> dict:
        per_class = {name: {key: _stats(tables[key][selected, j]) for key in keys} for j, name in enumerate(names)}
        # the case's mean over classes (NaN classes left out), as evaluate's per_case
        case_means = {key: [np.nan if np.all(np.isnan(v)) else float(np.nanmean(v)) for v in tables[key][selected]]
                      for key in keys}
        return {"per_class": per_class, "mean": {key: _stats(case_means[key]) for key in keys}}

    everything = block(np.ones(len(rows), bool))
    per_fold = []
    for fold in range(folds):
        chosen = fold_of == fold
        if chosen.any():
            per_fold.append({"fold": fold, "cases": int(chosen.sum()), **block(chosen)})
    over_folds = {
        "per_class": {name: {key: _stats([f["per_class"][name][key]["mean"] for f in per_fold]) for key in keys}
                      for name in names},
        "mean": {key: _stats([f["mean"][key]["mean"] for f in per_fold]) for key in keys},
    }
    # the protocol's overall mean (vmunet.evaluation.metrics.summarize_cases): the mean over classes of the class means
    overall = {f"mean_{key}": _stats([everything["per_class"][n][key]["mean"] for n in names])["mean"] for key in keys}
    return {"cases": len(rows), "folds": folds, "class_names": names, "metrics": keys, **overall,
            "over_cases": everything, "per_fold": per_fold, "over_folds": over_folds}


def per_case_csv(rows: list[dict], class_names: list[str]) -> str:
    keys = metric_keys(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case_id", "fold", *(f"{k}_{n}" for k in keys for n in class_names), *(f"mean_{k}" for k in keys)])
    for row in rows:
        means = [np.nan if np.all(np.isnan(row[k])) else float(np.nanmean(row[k])) for k in keys]
        writer.writerow([row["case_id"], row["fold"], *(v for k in keys for v in row[k]), *means])
    return buffer.getvalue()


def write_outputs(out_dir: Path, files: dict[str, str]) -> None:
    """Write every file, all of them or none (the previous ones, if any, kept as they were)."""
    publish_together(out_dir, {name: partial(write_text, text=text) for name, text in files.items()})


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def check_out_dir(out_dir: Path, overwrite: bool = False) -> None:
    """--out is a folder (or will be) that holds none of the outputs yet, unless ``overwrite`` (a run's eval/
    folder holds ``vmunet evaluate``'s summary.json and per_case.csv)."""

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: --out must be a folder, and this is a file")
    refuse_existing_outputs(out_dir, [out_dir / name for name in OUTPUTS], overwrite)


def cross_validate(run_dirs: list[str | Path], out_dir: str | Path, data_dir: str | Path | None = None,
                   checkpoint: str = "best", device: str = "auto", batch_size: int = 8, allow_pickle: bool = False,
                   progress: bool = True, echo=print, load_predictor=None, overwrite: bool = False) -> dict:
    """Check the folds, predict out of fold, write OUT/{per_case.csv, summary.json, postprocessing.json} (any of
    them already there is an error before anything runs, unless ``overwrite``)."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    runs = [read_fold_run(run_dir) for run_dir in run_dirs]
    check_folds(runs)
    check_fold_settings(runs)
    trained = check_folds_finished(runs)
    check_data_unchanged(runs, data_dir)
    for warning in check_contents_unchanged(runs, data_dir):
        echo(warning)
    info = runs[0].info
    classes = max(info.num_classes, 2)
    names = info.label_names if len(info.label_names) == classes else default_names(classes)
    kind, rows, scores = predict_out_of_fold(runs, data_dir, checkpoint, device, batch_size, allow_pickle,
                                             progress, load_predictor)
    summary = summarize_cv(rows, names[1:], runs[0].config.folds)
    policy = (metrics.IMAGE_POLICY if info.num_classes == 1 else metrics.MULTICLASS_IMAGE_POLICY) \
        if kind == "images" else metrics.VOLUME_POLICY
    summary.update(checkpoint=checkpoint, data=str(data_dir or runs[0].config.data), dataset=runs[0].config.dataset,
                   seed=runs[0].config.seed, nsd_tolerance_mm=runs[0].config.nsd_tolerance_mm,
                   runs={str(run.config.fold): str(run.run_dir) for run in sorted(runs, key=lambda r: r.config.fold)},
                   fold_epochs={str(run.config.fold): fold_epochs(run, trained[run.config.fold], checkpoint)
                                for run in sorted(runs, key=lambda r: r.config.fold)},
                   std="sample standard deviation (ddof 1); NaN entries (a class absent from an image, an "
                       "undefined HD95) are left out of every mean and standard deviation",
                   iou="IoU = DSC / (2 - DSC) per case and class where the protocol has none",
                   empty_mask_policy=dict(policy))
    choice = choose_from_scores(scores, info.num_classes, names, volumetric=kind == "volumes")
    write_outputs(out_dir, {"per_case.csv": per_case_csv(rows, names[1:]),
                            "summary.json": json.dumps(summary, indent=2, default=float) + "\n",
                            "postprocessing.json": json.dumps(choice, indent=2) + "\n"})
    echo(describe(summary, choice, out_dir))
    return {"summary": summary, "rows": rows, "postprocessing": choice}


def fold_epochs(run: FoldRun, trained: int, checkpoint: str) -> dict:
    """What summary.json records of a fold's training: epochs planned and trained, and the epoch of the
    checkpoint that predicted its cases."""
    path = resolve_checkpoint(run.run_dir, checkpoint)
    return {"planned": run.config.epochs, "trained": trained,
            "checkpoint_epoch": checkpoint_epoch(path) if path.is_file() else None}


def describe(summary: dict, choice: dict, out_dir: Path) -> str:
    """A few printable lines: out-of-fold DSC per class (mean +- std over cases), the postprocessing chosen."""
    lines = [f"out-of-fold over {summary['cases']} cases, {summary['folds']} folds:"]
    for name, values in summary["over_cases"]["per_class"].items():
        dice = values["dice"]
        lines.append(f"  {name:<16} DSC {100 * dice['mean']:6.2f} +- {100 * dice['std']:5.2f}")
    folds = summary["over_folds"]["mean"]["dice"]
    lines.append(f"  {'mean':<16} DSC {100 * summary['mean_dice']:6.2f}  (over folds {100 * folds['mean']:.2f} +- "
                 f"{100 * folds['std']:.2f})")
    steps = (["all foreground"] if choice["all_foreground"]["apply"] else []) + \
        [c["name"] for c in choice["classes"].values() if c["apply"]]
    lines.append(f"postprocessing (largest component): {', '.join(steps) or 'none'}; mean DSC "
                 f"{100 * choice['mean_dice_before']:.2f} -> {100 * choice['mean_dice_after']:.2f}")
    lines.append(f"wrote {', '.join(str(out_dir / name) for name in OUTPUTS)}")
    return "\n".join(lines)
