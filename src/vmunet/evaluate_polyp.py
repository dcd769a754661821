"""Evaluation of the polyp protocol (PraNet's layout): every test set scored on its own.

Each image is predicted through the same path as ``vmunet predict`` (the run's resize and normalisation; the
probabilities resized back to the image's size), then scored by ``vmunet.evaluation.polyp_metrics``: mDice, mIoU, MAE,
wFm, Sm, meanEm per image, their means per set, and maxEm per set. ``summary.json`` holds a section per set,
the mean over the sets (each set counts once, as the papers' tables read) and the per-image mean over all test
images; ``per_case.csv`` one line per image with its set.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet.evaluation.polyp_metrics import DEFINITIONS, PER_IMAGE_KEYS, polyp_image_metrics, summarize_polyp_set
from vmunet.runtime.device import progress_bar
from vmunet.io.files import write_text_atomic

TABLE_KEYS = ("mDice", "mIoU", "MAE", "wFm", "Sm", "meanEm", "maxEm")


def evaluate_polyp_sets(predictor, sets: dict[str, Sequence], progress: bool = True) -> dict:
    """{"summary", "rows", "table", "class_names", "write_per_case_csv"} for ``{set name: 2D samples}``.

    ``predictor``: anything with ``predict_image(image) -> Prediction`` whose ``probabilities`` are (1, H, W)
    (a Predictor or an Ensemble of one-class runs)."""
    rows_by_set: dict[str, list[dict]] = {}
    for name, cases in sets.items():
        rows = rows_by_set.setdefault(name, [])
        for index in progress_bar(range(len(cases)), len(cases), f"evaluating {name}", progress):
            case = cases[index]
            probabilities = predictor.predict_image(case["image"]).probabilities
            if probabilities is None or probabilities.shape[0] != 1:
                raise ValueError("the polyp protocol scores one-class (sigmoid) models; this run predicts "
                                 f"{None if probabilities is None else probabilities.shape[0]} classes")
            # clip: bilinear resizing keeps values in [0, 1] up to rounding
            rows.append({"set": name, **polyp_image_metrics(np.clip(probabilities[0], 0.0, 1.0), case["label"] > 0,
                                                            case_id=case["case_id"])})
    summary = polyp_summary(rows_by_set)
    all_rows = [row for rows in rows_by_set.values() for row in rows]
    return {"summary": summary, "rows": all_rows, "table": polyp_table(summary),
            "class_names": ["background", "polyp"], "write_per_case_csv": write_polyp_csv}


def polyp_summary(rows_by_set: dict[str, list[dict]]) -> dict:
    sets = {name: summarize_polyp_set(rows) for name, rows in rows_by_set.items()}
    all_rows = [row for rows in rows_by_set.values() for row in rows]
    return {
        "protocol": "polyp",
        "sets": sets,
        "mean_over_sets": {key: float(np.mean([s[key] for s in sets.values()])) for key in TABLE_KEYS},
        "all_images": summarize_polyp_set(all_rows),
        "cases": len(all_rows),
        "metrics": dict(DEFINITIONS),
    }


def polyp_table(summary: dict) -> str:
    """One line per set, the mean over the sets and over all images; three decimals, as the papers' tables."""
    named = [*summary["sets"].items(), (f"mean of {len(summary['sets'])} sets", summary["mean_over_sets"]),
             (f"all {summary['cases']} images", summary["all_images"])]
    width = max(len(name) for name, _ in named) + 2
    lines = [f"{'test set':<{width}}{'images':>7}" + "".join(f"{key:>8}" for key in TABLE_KEYS)]
    for name, values in named:
        count = values.get("images", "")
        lines.append(f"{name:<{width}}{count:>7}" + "".join(f"{values[key]:>8.3f}" for key in TABLE_KEYS))
    return "\n".join(lines)


def write_polyp_csv(path: str | Path, rows: Sequence[dict], class_names: Sequence[str] | None = None) -> None:
    """One line per image: set, case_id and the per-image metrics (``class_names`` unused: one class)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["set", "case_id", *PER_IMAGE_KEYS])
    for row in rows:
        writer.writerow([row["set"], row["case_id"], *(f"{row[key]:.6f}" for key in PER_IMAGE_KEYS)])
    write_text_atomic(Path(path), buffer.getvalue())
