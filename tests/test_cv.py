"""K-fold cross-validation (issue 15): folds, `vmunet cv` out of fold, postprocessing chosen on it."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from builders import ThresholdModel, make_isic, make_nnunet, make_synapse
from vmunet.cli import main
from vmunet.config import TrainConfig
from vmunet.cv import OUTPUTS, cross_validate
from vmunet.data.splits import evaluation_cases, prepare_training_data, training_cases
from vmunet.data.subsets import assign_folds, case_names, volume_id
from vmunet.inference import Prediction
from vmunet.evaluation.postprocessing import (Postprocessing, apply_postprocessing, choose_postprocessing,
                                              load_postprocessing)
from vmunet.io import files as io_files
from vmunet.runtime.run_folder import RunInfo, read_run_info, read_split, write_config, write_run_info
from vmunet.train import record_split

TINY = ["--model", "vmunet-tiny", "--image-size", "32", "--no-progress", "--batch-size", "4"]


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    return make_isic(tmp_path_factory.mktemp("cv") / "data", counts={"train": 7, "val": 2, "test": 2})


@pytest.fixture(scope="module")
def fold_runs(isic, tmp_path_factory):
    """The two folds of one split, trained for one step each (the only training in this file)."""
    runs = tmp_path_factory.mktemp("cv_runs")
    for fold in (0, 1):
        code = main(["train", "--preset", "isic18", *TINY, "--data", str(isic), "--epochs", "1",
                     "--set", "max_steps_per_epoch=1", "--folds", "2", "--fold", str(fold),
                     "--run-dir", str(runs / f"fold{fold}")])
        assert code == 0
    return [runs / "fold0", runs / "fold1"]


def fold_config(root, dataset, folds, fold, seed=42):
    return TrainConfig(dataset=dataset, data=str(root), folds=folds, fold=fold, seed=seed).validate()


# ---------------------------------------------------------------- folds


@pytest.mark.parametrize("dataset", ["isic", "synapse", "nifti"])
def test_folds_partition_the_training_cases_stably_and_never_hold_the_evaluation_split(tmp_path, dataset):
    if dataset == "isic":
        root = make_isic(tmp_path / "d", counts={"train": 8, "val": 2, "test": 2})
        evaluation = {f"ISIC_{s}{i:05d}" for s in ("val", "test") for i in range(2)}
        every = {f"ISIC_train{i:05d}" for i in range(8)}
    elif dataset == "synapse":
        root = make_synapse(tmp_path / "d", train_cases=7, test_cases=2, depth=3)
        evaluation, every = {"case0100", "case0101"}, {f"case{i:04d}" for i in range(7)}
    else:
        root = make_nnunet(tmp_path / "d", train_cases=5, test_cases=2, shape=(32, 32, 3))
        evaluation, every = {"caseTs000", "caseTs001"}, {f"caseTr{i:03d}" for i in range(5)}
    folds = 3
    held, sizes = [], []
    for fold in range(folds):
        first = prepare_training_data(fold_config(root, dataset, folds, fold))
        again = prepare_training_data(fold_config(root, dataset, folds, fold))
        assert first.train.case_ids == again.train.case_ids and first.val.case_ids == again.val.case_ids
        train, val = set(case_names(first.train)), set(case_names(first.val))
        assert not train & val and train | val == every  # every case, in exactly one of the two
        assert not (train | val) & evaluation
        # slices of one volume: all of them on one side
        assert {volume_id(c) for c in first.train.case_ids}.isdisjoint({volume_id(c) for c in first.val.case_ids})
        held.append(val)
        sizes.append(len(val))
        kind, cases = evaluation_cases(fold_config(root, dataset, folds, fold), None, "val")  # = the fold
        selected = {c["case_id"] for c in cases} if kind == "volumes" else set(cases.case_ids)
        assert selected == val
    assert set().union(*held) == every and sum(sizes) == len(every)  # the val folds partition the cases
    assert max(sizes) - min(sizes) <= 1


def test_fold_assignment_is_the_seeded_shuffle_of_the_sorted_ids_dealt_round_robin():
    ids = [f"c{i}" for i in range(10)]
    order = np.random.default_rng(5).permutation(10)
    expected = {sorted(ids)[index]: position % 4 for position, index in enumerate(order)}
    assert assign_folds(list(reversed(ids)), 4, 5) == expected  # the input order does not matter
    with pytest.raises(ValueError, match="3 training case\\(s\\) cannot make 4 folds; use --folds 3 or fewer"):
        assign_folds(ids[:3], 4, 0)


def test_training_cases_rebuild_volumes_by_id_in_order(tmp_path):
    root = make_synapse(tmp_path / "d", train_cases=3, test_cases=1, depth=4)
    config = fold_config(root, "synapse", 3, 0)
    kind, volumes = training_cases(config, None, ["case0002", "case0000"])
    assert kind == "volumes" and [v["case_id"] for v in volumes] == ["case0002", "case0000"]
    slices = [np.load(root / "train_npz" / f"case0002_slice{z:03d}.npz")["image"] for z in range(4)]
    assert np.array_equal(volumes[0]["image"], np.stack(slices))
    with pytest.raises(ValueError, match="has no case case0100"):  # a test case is no training case
        training_cases(config, None, ["case0100"])
    nnunet = make_nnunet(tmp_path / "n", train_cases=3, test_cases=1, shape=(32, 32, 3))
    kind, volumes = training_cases(fold_config(nnunet, "nifti", 3, 0), None, ["caseTr002"])
    assert kind == "volumes" and volumes[0]["case_id"] == "caseTr002" and volumes[0]["image"].shape == (3, 32, 32)
    assert volumes[0]["spacing"] == pytest.approx((2.0, 0.9, 0.8))  # (D, H, W) = stored (z, x, y): HD95 in mm
    with pytest.raises(ValueError, match="has no case caseTs000"):
        training_cases(fold_config(nnunet, "nifti", 3, 0), None, ["caseTs000"])


@pytest.mark.parametrize("values, message", [
    ({"folds": 1, "fold": 0}, "folds must be >= 2"), ({"folds": 3, "fold": 3}, "fold must be in 0..2"),
    ({"fold": 1}, "fold 1 needs folds"), ({"folds": 3}, "needs fold"),
])
def test_bad_fold_settings_are_one_line_config_errors(isic, tmp_path, capsys, values, message):
    flags = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    code = main(["train", "--preset", "isic18", *TINY, "--data", str(isic), *flags, "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_too_few_cases_for_the_folds_is_an_error_naming_the_data(tmp_path, capsys):
    root = make_isic(tmp_path / "d", counts={"train": 3, "val": 1})
    code = main(["train", "--preset", "isic18", *TINY, "--data", str(root), "--folds", "4", "--fold", "0",
                 "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and f"{root}" in err and "cannot make 4 folds" in err
    assert not (tmp_path / "r").exists()


def test_split_json_records_the_fold_and_resume_refuses_other_cases(fold_runs, isic, tmp_path):
    every = {f"ISIC_train{i:05d}" for i in range(7)}
    folds = assign_folds(sorted(every), 2, 42)
    for fold, run in enumerate(fold_runs):
        split = read_split(run)
        assert split["val"] == sorted(c for c in every if folds[c] == fold)
        assert split["train"] == sorted(c for c in every if folds[c] != fold)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["folds"], config["fold"], config["seed"]) == (2, fold, 42)
    # a non-fold run records its held-out split too
    config = TrainConfig(dataset="isic", data=str(isic)).validate()
    data = prepare_training_data(config)
    record_split(tmp_path, config, data, resume=False)
    assert read_split(tmp_path) == {"train": case_names(data.train), "val": case_names(data.val)}
    # resuming on data with another case: refused, naming split.json
    moved = tmp_path / "moved"
    shutil.copytree(isic, moved)
    for sub in ("images", "masks"):
        shutil.copy(moved / "train" / sub / "ISIC_train00000.png", moved / "train" / sub / "ISIC_extra.png")
    config = fold_config(moved, "isic", 2, 0)
    with pytest.raises(ValueError, match="split.json: the data's training cases differ .*ISIC_extra"):
        record_split(fold_runs[0], config, prepare_training_data(config), resume=True)


# ---------------------------------------------------------------- vmunet cv


class RecordingPredictor:
    """Stands in for a fold's model: remembers which images it was given, predicts a fixed blob."""

    def __init__(self, fold: int, seen: dict):
        self.fold, self.seen = fold, seen

    def predict_image(self, image):
        self.seen.setdefault(np.asarray(image).tobytes(), []).append(self.fold)
        labels = np.zeros(image.shape[:2], np.int64)
        labels[8:20, 8:20] = 1
        return Prediction(labels)


def test_cv_predicts_every_training_case_with_the_fold_that_held_it_out(fold_runs, isic, tmp_path):
    seen = {}

    def load(run_dir):
        return RecordingPredictor(int(yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["fold"]), seen)

    result = cross_validate(fold_runs, tmp_path / "cv", progress=False, echo=lambda *_: None, load_predictor=load)
    folds = assign_folds([f"ISIC_train{i:05d}" for i in range(7)], 2, 42)  # computed here, not read from the runs
    from vmunet.data import IsicFolder

    train = IsicFolder(isic, "train")
    for i, case_id in enumerate(train.case_ids):
        assert seen.pop(train[i]["image"].tobytes()) == [folds[case_id]]  # its own fold, and only that one
    assert not seen  # nothing else (no val/ or test/ image) was predicted
    assert {r["case_id"]: r["fold"] for r in result["rows"]} == folds


def test_cv_end_to_end_writes_per_case_summary_and_postprocessing(fold_runs, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["cv", *map(str, fold_runs), "--out", str(out), "--no-progress"]) == 0
    assert "out-of-fold over 7 cases, 2 folds" in capsys.readouterr().out
    with open(out / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    held = {c: fold for fold, run in enumerate(fold_runs) for c in read_split(run)["val"]}
    assert {r["case_id"]: int(r["fold"]) for r in rows} == held
    summary = json.loads((out / "summary.json").read_text())
    dice = [float(r["dice_foreground"]) for r in rows]
    assert summary["over_cases"]["per_class"]["foreground"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert summary["over_cases"]["per_class"]["foreground"]["dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
    per_fold = [np.mean([d for d, r in zip(dice, rows) if int(r["fold"]) == k]) for k in (0, 1)]
    assert [f["mean"]["dice"]["mean"] for f in summary["per_fold"]] == pytest.approx(per_fold)
    assert summary["over_folds"]["mean"]["dice"]["std"] == pytest.approx(np.std(per_fold, ddof=1))
    iou = [float(r["iou_foreground"]) for r in rows]
    assert iou == pytest.approx([d / (2 - d) for d in dice])
    assert {"dice", "iou", "hd95"} <= set(summary["metrics"])
    spec = load_postprocessing(out / "postprocessing.json")
    assert spec.num_classes == 1 and set(spec.classes) <= {1}


def fold_loader(fail_at_fold: int | None = None):
    def load(run_dir):
        fold = int(yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["fold"])
        if fold == fail_at_fold:
            raise RuntimeError(f"fold {fold} cannot be loaded")
        return RecordingPredictor(fold, {})
    return load


def folder_contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.mark.parametrize("when", ["mid-run", "mid-publish"])
@pytest.mark.parametrize("before", ["no outputs", "a previous cv's"])
def test_a_failing_cv_leaves_none_of_its_outputs_and_the_previous_ones_intact(fold_runs, tmp_path, monkeypatch,
                                                                               when, before):
    out = tmp_path / "cv"
    quiet = {"progress": False, "echo": lambda *_: None}
    if before == "a previous cv's":
        cross_validate(fold_runs, out, load_predictor=fold_loader(), **quiet)
        for name in OUTPUTS:  # mark them, to tell them from a rerun's equal files
            (out / name).write_bytes((out / name).read_bytes() + b"\n")
    was = folder_contents(out)
    load = fold_loader()
    if when == "mid-run":
        load = fold_loader(fail_at_fold=1)  # fold 0 predicted, then a failure
    else:
        real, moves = os.replace, []

        def replace(source, destination):  # the second file's move into place fails
            moves.append(destination)
            if len(moves) == 2:
                raise OSError(28, "No space left on device")
            return real(source, destination)

        monkeypatch.setattr(io_files.os, "replace", replace)
    with pytest.raises((RuntimeError, OSError)):  # replacing a previous cv's outputs needs overwrite
        cross_validate(fold_runs, out, load_predictor=load, overwrite=True, **quiet)
    assert folder_contents(out) == was


def copy_run(run: Path, to: Path, **config_changes) -> Path:
    shutil.copytree(run, to)
    config = yaml.safe_load((to / "config.yaml").read_text())
    (to / "config.yaml").write_text(yaml.safe_dump({**config, **config_changes}, sort_keys=False))
    return to


@pytest.mark.parametrize("problem, message", [
    ("missing", "fold 1 of 2 missing"), ("twice", "fold 0 of 2 trained twice"),
    ("seed", "trained with different seeds"), ("not a fold", "not a fold of a cross-validation"),
])
def test_cv_refuses_runs_that_are_not_the_folds_of_one_split(fold_runs, tmp_path, capsys, problem, message):
    first, second = fold_runs
    if problem == "missing":
        runs, named = [first], first
    elif problem == "twice":
        named = copy_run(first, tmp_path / "again")
        runs = [first, named, second]
    elif problem == "seed":
        named = copy_run(second, tmp_path / "seed7", seed=7)
        runs = [first, named]
    else:
        named = copy_run(second, tmp_path / "plain", folds=None, fold=None)
        runs = [first, named]
    out = tmp_path / "cv"
    code = main(["cv", *map(str, runs), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert str(named) in err  # names the run folders
    assert not out.exists()


# ---------------------------------------------------------------- postprocessing


def test_largest_component_choice_where_it_helps_and_where_it_hurts():
    truth = np.zeros((32, 32), np.int64)
    truth[4:14, 4:14] = 1  # 100 px
    noisy = truth.copy()
    noisy[25:27, 25:27] = 1  # a 4 px false positive far away
    helps = choose_postprocessing([(noisy, truth)], num_classes=1)
    assert helps["all_foreground"]["apply"] is True
    assert helps["all_foreground"]["dice_before"] == pytest.approx(200 / 204)
    assert helps["all_foreground"]["dice_after"] == pytest.approx(1.0)
    assert helps["mean_dice_after"] == pytest.approx(1.0)

    two = truth.copy()
    two[20:30, 20:24] = 1  # a second real lesion of 40 px, predicted perfectly
    hurts = choose_postprocessing([(two, two)], num_classes=1)
    assert hurts["all_foreground"]["apply"] is False and hurts["classes"]["1"]["apply"] is False
    assert hurts["all_foreground"]["dice_after"] == pytest.approx(200 / 240)
    assert hurts["mean_dice_after"] == pytest.approx(1.0)


def test_all_foreground_is_refused_when_a_class_falls_and_a_class_step_is_chosen_on_top():
    """Class 1 (100 px) and class 2 (36 px) apart: the all-foreground step would delete class 2; class 2's own
    step removes its 4 px false positive. nnU-Net's order: all foreground no, class 2 yes, class 1 no."""
    truth = np.zeros((40, 40), np.int64)
    truth[2:12, 2:12] = 1
    truth[25:31, 25:31] = 2
    pred = truth.copy()
    pred[2:4, 35:37] = 2
    choice = choose_postprocessing([(pred, truth)], num_classes=3, class_names=["bg", "liver", "tumour"])
    assert choice["all_foreground"]["apply"] is False
    assert choice["classes"]["1"]["apply"] is False
    assert choice["classes"]["2"] == {"name": "tumour", "apply": True, "dice_before": pytest.approx(72 / 76),
                                      "dice_after": pytest.approx(1.0)}
    assert choice["mean_dice_before"] == pytest.approx((1 + 72 / 76) / 2) and choice["mean_dice_after"] == 1.0
    spec = Postprocessing(3, False, [2])
    assert np.array_equal(apply_postprocessing(pred, spec), truth)


def test_apply_postprocessing_on_a_hand_case_and_in_3d():
    labels = np.array([[1, 1, 0, 2, 0],
                       [1, 0, 0, 0, 0],
                       [0, 0, 2, 2, 1],
                       [0, 0, 2, 0, 0]])
    # all foreground: the union's largest component is the 2s below and the 1 at (2, 4) (4 pixels)
    assert np.array_equal(apply_postprocessing(labels, Postprocessing(3, True, [])),
                          [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 2, 2, 1], [0, 0, 2, 0, 0]])
    # per class: class 1 keeps its 3-pixel component (not the 1 at (2, 4)), class 2 its 3 (not the 2 at (0, 3))
    assert np.array_equal(apply_postprocessing(labels, Postprocessing(3, False, [1, 2])),
                          [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 2, 2, 0], [0, 0, 2, 0, 0]])
    volume = np.zeros((3, 4, 4), np.int64)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 2, 2] = 1  # one component through the corners (26-neighbours)
    volume[0, 3, 0] = 1  # apart from it
    kept = apply_postprocessing(volume, Postprocessing(1, True, []))
    assert kept.sum() == 3 and kept[0, 3, 0] == 0
    with pytest.raises(ValueError, match="labels hold class ids 1..3, the postprocessing is for classes 0..2"):
        apply_postprocessing(labels + 1, Postprocessing(3, True, []))


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"), ('{"format": "other"}', "not a vmunet postprocessing file"),
    ('{"format": "vmunet-postprocessing/1", "num_classes": 3, "all_foreground": {"apply": true}, '
     '"classes": {"1": {"apply": true}}}', "classes must map each foreground class id \\(1, 2\\)"),
])
def test_bad_postprocessing_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "pp.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        load_postprocessing(path)


def lesion_and_speck() -> tuple[np.ndarray, np.ndarray]:
    """(image, lesion): a 30 x 30 lesion of ones and, apart from it, a 3 x 3 speck of ones; 64 x 64."""
    lesion = np.zeros((64, 64), np.uint8)
    lesion[10:40, 10:40] = 1
    image = lesion.copy()
    image[55:58, 55:58] = 1
    return image, lesion


def threshold_run(root: Path, monkeypatch, data: Path | None = None) -> Path:
    """A binary run whose network is ThresholdModel: foreground where the (grey) pixel is 1."""
    import vmunet.evaluate as evaluate
    import vmunet.inference as inference

    run = root / "run"
    write_run_info(run, RunInfo(model_preset="threshold", model_config={"num_classes": 1, "input_channels": 1},
                                label_names=["background", "lesion"], normalization="none", image_size=64,
                                dataset="isic", version="test"))
    write_config(run, TrainConfig(dataset="isic", num_classes=1, input_channels=1, image_size=64,
                                  normalization="none", data=str(data) if data else None).to_dict())
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"")

    def load(run_dir, checkpoint="best", allow_pickle=False, **_):
        return ThresholdModel(1, 1), read_run_info(run_dir), {"epoch": 1}

    monkeypatch.setattr(inference, "load_model_from_run", load)
    monkeypatch.setattr(evaluate, "load_model_from_run", load)
    return run


KEEP_LARGEST = {"format": "vmunet-postprocessing/1", "num_classes": 1, "all_foreground": {"apply": True},
                "classes": {"1": {"apply": False}}}


def test_evaluate_with_postprocessing_scores_the_kept_component(tmp_path, monkeypatch, capsys):
    image, lesion = lesion_and_speck()
    data = tmp_path / "data"
    for sub, picture in (("images", image), ("masks", lesion * 255)):
        (data / "val" / sub).mkdir(parents=True)
        Image.fromarray(picture.astype(np.uint8)).save(data / "val" / sub / "a.png")
    run = threshold_run(tmp_path, monkeypatch, data)
    (tmp_path / "pp.json").write_text(json.dumps(KEEP_LARGEST))
    assert main(["evaluate", "--run-dir", str(run), "--split", "test", "--no-progress"]) == 0
    raw = json.loads((run / "eval" / "summary.json").read_text())
    assert raw["mean_dice"] == pytest.approx(2 * 900 / (900 + 909)) and "postprocessing" not in raw
    assert main(["evaluate", "--run-dir", str(run), "--split", "test", "--no-progress",
                 "--postprocessing", str(tmp_path / "pp.json")]) == 0
    kept = json.loads((run / "eval" / "summary.json").read_text())
    assert kept["mean_dice"] == pytest.approx(1.0) and kept["postprocessing"] == str(tmp_path / "pp.json")


def test_predict_with_postprocessing_keeps_only_the_largest_component(tmp_path, monkeypatch, capsys):
    """A known-output model (foreground where the pixel is 1): the lesion and a speck come back as they are
    without --postprocessing, the lesion alone with it."""
    run = threshold_run(tmp_path, monkeypatch)
    image, lesion = lesion_and_speck()
    Image.fromarray(image).save(tmp_path / "photo.png")
    spec = KEEP_LARGEST
    (tmp_path / "pp.json").write_text(json.dumps(spec))
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "photo.png"), "--out", str(tmp_path / "raw")]) == 0
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "photo.png"), "--out", str(tmp_path / "pp"),
                 "--postprocessing", str(tmp_path / "pp.json")]) == 0
    raw = np.asarray(Image.open(tmp_path / "raw" / "photo.png")) > 0
    kept = np.asarray(Image.open(tmp_path / "pp" / "photo.png")) > 0
    assert np.array_equal(raw, image > 0) and np.array_equal(kept, lesion > 0)
    # a postprocessing chosen for other classes is refused before anything is written
    (tmp_path / "pp3.json").write_text(json.dumps({**spec, "num_classes": 3, "classes": {"1": {"apply": False},
                                                                                         "2": {"apply": False}}}))
    code = main(["predict", "--run-dir", str(run), str(tmp_path / "photo.png"), "--out", str(tmp_path / "no"),
                 "--postprocessing", str(tmp_path / "pp3.json")])
    assert code == 2 and "pp3.json: chosen for runs of 3 output class(es); this run has 1" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_cv_of_volumes_predicts_whole_volumes_out_of_fold_and_scores_them_in_3d(tmp_path):
    """Synapse folds (run folders written here, a stand-in model): each case's volume goes whole to the fold
    that held it out, and its row is the 3D score of the volume, not a mean over slices."""
    from vmunet.evaluation.metrics import synapse_case_metrics
    from vmunet.runtime.run_folder import RunInfo, write_config, write_run_info, write_split

    root = make_synapse(tmp_path / "d", train_cases=5, test_cases=1, depth=4)
    ids = [f"case{i:04d}" for i in range(5)]
    folds = assign_folds(ids, 2, 3)
    runs = []
    for fold in (0, 1):
        run = tmp_path / f"fold{fold}"
        write_config(run, TrainConfig(dataset="synapse", data=str(root), folds=2, fold=fold, seed=3,
                                      num_classes=9).to_dict())
        write_run_info(run, RunInfo(model_preset="threshold", model_config={"num_classes": 9, "input_channels": 1},
                                    label_names=[f"c{i}" for i in range(9)], normalization="none", image_size=32,
                                    dataset="synapse", version="test"))
        write_split(run, sorted(c for c in ids if folds[c] != fold), sorted(c for c in ids if folds[c] == fold))
        (run / "history.csv").write_text("epoch\n300\n")  # finished its 300 planned epochs
        runs.append(run)
    truths = {}
    for case in ids:
        slices = [np.load(root / "train_npz" / f"{case}_slice{z:03d}.npz") for z in range(4)]
        truths[case] = (np.stack([s["image"] for s in slices]), np.stack([s["label"] for s in slices]).astype(int))
    seen = []

    class VolumePredictor:
        def __init__(self, fold):
            self.fold = fold

        def predict_volume(self, volume):
            case = next(c for c, (image, _) in truths.items() if np.array_equal(image, volume))
            seen.append((case, self.fold))
            labels = truths[case][1].copy()
            labels[-1] = 0  # the last slice missed: a 3D DSC below 1, a per-slice mean would differ
            return Prediction(labels)

    def load(run_dir):
        return VolumePredictor(int(Path(run_dir).name[-1]))

    result = cross_validate(runs, tmp_path / "cv", progress=False, echo=lambda *_: None, load_predictor=load)
    assert sorted(seen) == sorted(folds.items())
    for row in result["rows"]:
        image, truth = truths[row["case_id"]]
        missed = truth.copy()
        missed[-1] = 0
        assert row["dice"] == pytest.approx(synapse_case_metrics(missed, truth, 9)["dice"])
        assert row["fold"] == folds[row["case_id"]]
    assert result["postprocessing"]["volumetric"] is True
