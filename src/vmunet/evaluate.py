"""Evaluation: score a run folder's model on a split with the dataset's protocol.

- 2D images (ISIC): probabilities are resized back to each image's own size (bilinear) before the
  threshold, so metrics are computed at the image's resolution, not the network's (a defect of the
  official code); pooled-pixel metrics (the paper's) beside per-image means.
- Volumes (Synapse, NIfTI, the demo): slice-wise prediction along the first axis, probabilities resized
  back to the slice size, argmax, then per-organ DSC and HD95 per case (HD95 in mm when the spacing is
  known, in voxels otherwise, as the Synapse protocol), mean over organs and cases.
- Polyp sets (PraNet's layout): each test set scored on its own with the field's metrics (``vmunet.evaluate_polyp``).

Empty masks: each field of ``summary.json`` follows one stated rule, written beside it as
``empty_mask_policy`` (``vmunet.evaluation.metrics.IMAGE_POLICY`` for binary images, ``VOLUME_POLICY`` for volumes).

Ensembles: ``evaluate([run_a, run_b], out_dir=...)`` scores the members' averaged probabilities
(``vmunet.inference.Ensemble``) on the first run's dataset and split; the results go to ``out_dir`` (no member's
folder is the ensemble's), and ``summary.json`` lists the members with their checkpoints and epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

from vmunet.config import config_from_dict
from vmunet.inference import Ensemble, Predictor, Segmenter
from vmunet.ops.workspace import scan_workspace
from vmunet.evaluation.postprocessing import Postprocessing, apply_postprocessing, load_for_run
from vmunet.runtime.device import progress_bar, resolve_device
from vmunet.runtime.run_folder import RunInfo, load_model_from_run, read_config_dict
from vmunet.io.files import check_output_folder, publish_together, refuse_existing_outputs
from vmunet.data.splits import evaluation_cases
from vmunet.evaluate_polyp import evaluate_polyp_sets
from vmunet.evaluation import metrics
from vmunet.evaluation.metrics import case_metrics, default_names
from vmunet.inference import check_ensemble_runs


@scan_workspace()  # frees the CPU scan's scratch buffers when the cases are scored
def evaluate_cases(model, info: RunInfo, kind: str, cases, device="auto", batch_size: int = 8,
                   progress: bool = True, predictor: Segmenter | None = None,
                   postprocessing: Postprocessing | None = None, nsd_tolerance_mm: float | None = None) -> dict:
    """{"summary": dict, "rows": per-case dicts, "table": printable text} for 2D images or volumes.

    ``nsd_tolerance_mm``: the NSD tolerance (the run's config key; None: ``metrics.NSD_TOLERANCE_MM``), in mm
    for cases with a spacing, in pixels/voxels for the others.

    ``predictor``: a ready Predictor or Ensemble to score instead of ``model`` (then None) with ``info``."""
    device = resolve_device(device) if isinstance(device, str) else device
    classes = max(info.num_classes, 2)  # one sigmoid output = background + lesion
    names = info.label_names if len(info.label_names) == classes else default_names(classes)
    if predictor is None:
        predictor = Predictor(model, info, device=device, batch_size=batch_size)  # the path `vmunet predict` takes
    if kind == "polyp":  # {set name: samples}, each set on its own with the polyp metrics
        if postprocessing is not None:  # most of its metrics read the probability map, not the labels
            raise ValueError(f"{postprocessing.source}: the polyp protocol scores probability maps; "
                             "--postprocessing applies to label maps (use it with vmunet predict)")

        return evaluate_polyp_sets(predictor, cases, progress)
    rows, masks, truths = [], [], []
    tolerance = metrics.NSD_TOLERANCE_MM if nsd_tolerance_mm is None else nsd_tolerance_mm
    for index in progress_bar(range(len(cases)), len(cases), f"evaluating {kind}", progress):
        case = cases[index]
        if kind == "images":
            pred = predictor.predict_image(case["image"]).labels  # (H, W)
        else:
            pred = predictor.predict_volume(case["image"]).labels  # (D, H, W[, C]) -> (D, H, W)
        if postprocessing is not None:  # `vmunet cv`'s choice, on the label map at full resolution
            pred = apply_postprocessing(pred, postprocessing)
        if info.num_classes == 1:
            masks.append(pred.astype(bool))
            truths.append(case["label"].astype(bool))
        rows.append(case_metrics(kind, pred, case, info.num_classes, tolerance))
    summary = metrics.summarize_cases(rows, names)
    summary["cases"] = len(rows)
    if postprocessing is not None:
        summary["postprocessing"] = postprocessing.source
    binary_images = kind == "images" and info.num_classes == 1
    policy = metrics.IMAGE_POLICY if binary_images else (
        metrics.MULTICLASS_IMAGE_POLICY if kind == "images" else metrics.VOLUME_POLICY)
    summary["empty_mask_policy"] = dict(policy)
    summary["nsd_tolerance_mm"] = tolerance  # pixels/voxels for cases without a spacing
    table = metrics.format_table(rows, names, per_case=kind == "volumes")
    if info.num_classes == 1:  # the ISIC protocol: pixels pooled over all images, and the per-image mean
        summary["pooled"] = metrics.pooled_binary_metrics(masks, truths)
        summary["per_image_mean"] = metrics.per_image_binary_metrics(masks, truths)
        table += "\n\n" + binary_table(summary["pooled"], summary["per_image_mean"])
    return {"summary": summary, "rows": rows, "table": table, "class_names": names}


def binary_table(pooled: dict, per_image: dict) -> str:
    keys = ["miou", "dsc", "acc", "spe", "sen"]
    lines = [f"{'':<22}" + "".join(f"{k.upper():>9}" for k in keys),
             f"{'pooled pixels (paper)':<22}" + "".join(f"{100 * pooled[k]:>9.2f}" for k in keys),
             f"{'per-image mean':<22}" + "".join(f"{100 * per_image[k]:>9.2f}" for k in keys)]
    return "\n".join(lines)


EVALUATION_FILES = ("summary.json", "per_case.csv")


def check_evaluation_folder(out_dir: str | Path, overwrite: bool) -> None:
    """A user's --out: writable, and holding no summary.json or per_case.csv unless ``overwrite`` (the run's own
    eval/ folder, the default, holds the previous evaluation, which a new one replaces)."""
    check_output_folder(out_dir)
    refuse_existing_outputs(out_dir, [Path(out_dir) / name for name in EVALUATION_FILES], overwrite)


def write_evaluation(run_dir: str | Path, evaluation: dict, eval_dir: str | Path | None = None) -> None:
    """eval/summary.json and eval/per_case.csv (in ``eval_dir`` when given), each written whole or not at all."""
    eval_dir = Path(run_dir) / "eval" if eval_dir is None else Path(eval_dir)
    summary = json.dumps(evaluation["summary"], indent=2, default=float) + "\n"
    write_rows = evaluation.get("write_per_case_csv", metrics.write_per_case_csv)  # the polyp protocol: its own
    # a staging folder of its own per call: two evaluations into one folder never share a temporary file, and
    # the summary and the table published are always one evaluation's
    publish_together(eval_dir, {"summary.json": lambda path: path.write_text(summary, encoding="utf-8"),
                                "per_case.csv": lambda path: write_rows(path, evaluation["rows"],
                                                                        evaluation["class_names"])})


def evaluate(run_dir: str | Path | list[str | Path], data_dir: str | Path | None = None, split: str = "test",
             checkpoint: str = "best", device: str = "auto", batch_size: int = 8, allow_pickle: bool = False,
             progress: bool = True, echo=print, out_dir: str | Path | None = None,
             postprocessing: str | Path | None = None, overwrite: bool = False) -> dict:
    """Evaluate a run on ``split`` of its dataset; writes RUN_DIR/eval/{summary.json, per_case.csv}, or
    OUT_DIR/... when ``out_dir`` is given (existing ones there replaced only with ``overwrite``). Several runs (a
    list): their ensemble, ``out_dir`` required."""
    runs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    if len(runs) > 1:
        return evaluate_ensemble(runs, out_dir, data_dir=data_dir, split=split, checkpoint=checkpoint,
                                 device=device, batch_size=batch_size, allow_pickle=allow_pickle, progress=progress,
                                 echo=echo, postprocessing=postprocessing, overwrite=overwrite)
    run_dir = runs[0]
    if out_dir is not None:
        check_evaluation_folder(out_dir, overwrite)
    model, info, payload = load_model_from_run(run_dir, checkpoint, allow_pickle=allow_pickle)
    spec = load_for_run(postprocessing, info)
    config = config_from_dict(read_config_dict(run_dir))
    kind, cases = evaluation_cases(config, data_dir, split)
    if len(cases) == 0:
        raise ValueError(f"the {split} split of {data_dir or config.data} is empty")
    evaluation = evaluate_cases(model, info, kind, cases, device=device, batch_size=batch_size, progress=progress,
                                postprocessing=spec, nsd_tolerance_mm=config.nsd_tolerance_mm)
    evaluation["summary"].update(split=split, checkpoint=checkpoint, epoch=payload.get("epoch"))
    write_evaluation(run_dir, evaluation, out_dir)
    echo(evaluation["table"])
    return evaluation


def evaluate_ensemble(run_dirs: list[str | Path], out_dir: str | Path | None, data_dir: str | Path | None = None,
                      split: str = "test", checkpoint: str = "best", device: str = "auto", batch_size: int = 8,
                      allow_pickle: bool = False, progress: bool = True, echo=print,
                      postprocessing: str | Path | None = None, overwrite: bool = False) -> dict:
    """The ensemble of ``run_dirs`` on ``split`` of the first run's dataset (its config, or ``data_dir``);
    writes OUT_DIR/{summary.json, per_case.csv}, the members recorded in the summary."""
    if out_dir is None:
        raise ValueError(f"an ensemble of {len(run_dirs)} runs ({', '.join(str(r) for r in run_dirs)}) has no run "
                         "folder of its own: give --out DIR for its summary.json and per_case.csv")
    infos = check_ensemble_runs(run_dirs, checkpoint)  # before the output folder is made
    spec = load_for_run(postprocessing, infos[0])
    check_evaluation_folder(out_dir, overwrite)
    config = config_from_dict(read_config_dict(run_dirs[0]))
    kind, cases = evaluation_cases(config, data_dir, split)
    if len(cases) == 0:
        raise ValueError(f"the {split} split of {data_dir or config.data} is empty")
    ensemble = Ensemble.from_runs(run_dirs, checkpoint, device=device, batch_size=batch_size,
                                  allow_pickle=allow_pickle)
    evaluation = evaluate_cases(None, ensemble.info, kind, cases, device=device, batch_size=batch_size,
                                progress=progress, predictor=ensemble, postprocessing=spec,
                                nsd_tolerance_mm=config.nsd_tolerance_mm)
    members = [{"run_dir": str(m.run_dir), "checkpoint": str(m.checkpoint), "epoch": m.epoch}
               for m in ensemble.members]
    evaluation["summary"].update(split=split, checkpoint=checkpoint, data=str(data_dir or config.data),
                                 ensemble=members)
    write_evaluation(run_dirs[0], evaluation, out_dir)
    echo(evaluation["table"])
    return evaluation
