"""Issue 25, nothing lost (round three): a training never replaces or removes a file it did not write, every
output folder refuses to replace existing files without --overwrite, validate first and create last."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from builders import blob_image, make_isic
from vmunet.cli import main

TINY = ["--preset", "isic18", "--model", "vmunet-tiny", "--image-size", "32", "--no-progress"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def tree(folder: Path) -> dict:
    """Every file and folder under ``folder`` (relative name -> bytes, or None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def spoil_last_training_mask(data: Path) -> Path:
    """Values 0/7 in the last training mask: not binary, found only when read in the first epoch."""
    _, mask = blob_image(np.random.default_rng(0), 32, 32)
    bad = sorted((data / "train" / "masks").iterdir())[-1]
    Image.fromarray((mask * 7).astype(np.uint8)).save(bad)
    return bad


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a finished 1-epoch run on it."""
    root = tmp_path_factory.mktemp("kept")
    data = make_isic(root / "data", counts={"train": 4, "val": 2})
    run_dir = root / "run"
    assert main([*map(str, ["train", *TINY, "--epochs", 1, "--data", data, "--run-dir", run_dir])]) == 0
    return data, run_dir


# 1. a training never replaces or removes a file it did not write

@pytest.mark.parametrize("name", ["config.yaml", "history.csv", "split.json"])
@pytest.mark.parametrize("data_ok", [True, False])
def test_a_fresh_training_refuses_a_run_folder_holding_a_file_it_would_write(capsys, tmp_path, name, data_ok):
    """``train --config myexp/config.yaml --run-dir myexp``: the failed start deleted the user's config, a
    successful one replaced it with the generated one."""
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    if not data_ok:
        spoil_last_training_mask(data)
    run_dir = tmp_path / "myexp"
    run_dir.mkdir()
    mine = run_dir / name
    mine.write_text(yaml.safe_dump({"epochs": 1, "batch_size": 1, "val_fraction": 0}) if name == "config.yaml"
                    else "my own notes\n")
    before = tree(run_dir)
    extra = ["--config", mine] if name == "config.yaml" else []
    code, err, _ = run_cli(capsys, "train", *TINY, *extra, "--epochs", 1, "--batch-size", 1, "--data", data,
                           "--run-dir", run_dir)
    assert code == 2 and err.startswith(f"vmunet train: error: {mine}: already in the run folder") and "\n" not in err
    assert tree(run_dir) == before  # the user's file is there, unchanged, and nothing was added


@pytest.mark.parametrize("kept", [["checkpoints/best.pt"], ["run.json"], ["run.json", "checkpoints/best.pt"]])
def test_a_folder_with_run_json_or_any_checkpoint_is_a_run(capsys, trained, tmp_path, kept):
    """best.pt kept and last.pt deleted to save space: a new training there replaced best.pt with another
    dataset's model (or, failing, orphaned it)."""
    data, finished = trained
    run_dir = tmp_path / "old"
    shutil.copytree(finished, run_dir)
    for path in sorted(run_dir.rglob("*"), reverse=True):
        if path.is_file() and str(path.relative_to(run_dir)) not in kept:
            path.unlink()
    before = tree(run_dir)
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", make_isic(tmp_path / "other", seed=3),
                           "--run-dir", run_dir)
    assert code == 2 and "already holds a run" in err and "\n" not in err
    for name in kept:
        assert Path(name).name in err  # names what makes it a run
    assert tree(run_dir) == before


# 1 and 16. a failed start removes only what it made: a TensorBoard event file of its own, not the user's files

def test_a_failed_start_in_a_folder_with_the_users_files_leaves_it_as_it_was(capsys, tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    bad = spoil_last_training_mask(data)
    run_dir = tmp_path / "r"
    (run_dir / "tensorboard").mkdir(parents=True)
    (run_dir / "tensorboard" / "events.out.tfevents.1.mine").write_bytes(b"an earlier run's curves")
    (run_dir / "checkpoints").mkdir()  # an empty folder of the user's: stays
    (run_dir / "notes.txt").write_text("mine")
    before = tree(run_dir)
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", data, "--run-dir", run_dir,
                           "--batch-size", 1, "--set", "val_fraction=0")
    assert code == 2 and bad.name in err and "are not binary" in err
    assert tree(run_dir) == before  # no event file of the failed start, no .lock; the user's files all there
    # and the same folder then takes a good training
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", make_isic(tmp_path / "ok"),
                           "--run-dir", run_dir)
    assert code == 0, err
    assert (run_dir / "tensorboard" / "events.out.tfevents.1.mine").read_bytes() == b"an earlier run's curves"
    assert len(list((run_dir / "tensorboard").iterdir())) == 2


def test_a_start_refused_up_front_leaves_no_lock_file(capsys, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", tmp_path / "missing",
                           "--run-dir", run_dir)
    assert code == 2 and "missing" in err
    assert sorted(os.listdir(run_dir)) == ["notes.txt"]


# 3. predict never replaces a file already in --out without --overwrite

def random_run(root: Path, num_classes=1, input_channels=3, dataset="isic", data=None) -> Path:
    """A run folder as training writes it, with random weights of the tiny preset (no training)."""
    import torch

    from vmunet.config import TrainConfig
    from vmunet.models import create_model
    from vmunet.runtime.run_folder import RunInfo, save_checkpoint, write_config, write_run_info

    torch.manual_seed(0)
    model = create_model("vmunet-tiny", num_classes=num_classes, input_channels=input_channels)
    save_checkpoint(root / "checkpoints" / "best.pt", {"model": model.state_dict(), "epoch": 1})
    names = ["background", "lesion"] if num_classes == 1 else [f"class{i}" for i in range(num_classes)]
    write_run_info(root, RunInfo(model_preset="vmunet-tiny", model_config=model.config, label_names=names,
                                 normalization="minmax255" if input_channels == 3 else "zscore", image_size=32,
                                 dataset=dataset, version="test"))
    write_config(root, TrainConfig(dataset=dataset, model="vmunet-tiny", num_classes=num_classes, image_size=32,
                                   input_channels=input_channels, data=str(data) if data else None).to_dict())
    return root


def write_polyp_set(folder: Path, count=3) -> Path:
    """TestDataset/<set>/{images,masks}/ with masks named as the images (.png): predict's outputs' names."""
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = blob_image(rng, 32, 40)
        Image.fromarray(image).save(folder / "images" / f"kva{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "masks" / f"kva{i}.png")
    return folder


def write_volume(path: Path, shape=(32, 32, 3)) -> None:
    import nibabel as nib

    data = np.random.default_rng(2).normal(100, 30, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.8, 2.0, 1.0])), str(path))


def test_predicting_a_polyp_test_set_into_its_masks_folder_is_refused_until_overwrite(capsys, tmp_path):
    run = random_run(tmp_path / "run")
    kvasir = write_polyp_set(tmp_path / "TestDataset" / "Kvasir")
    masks = kvasir / "masks"
    truth = tree(masks)
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run, kvasir / "images", "--out", masks)
    assert code == 2 and "\n" not in err
    assert err == (f"vmunet predict: error: {masks}: 3 output file(s) already exist (kva0.png, kva1.png, kva2.png); "
                   "pass --overwrite to replace them, or choose another --out")
    assert tree(masks) == truth  # the ground truth is untouched, nothing was added
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run, kvasir / "images", "--out", masks, "--overwrite")
    assert code == 0, err
    assert sorted(tree(masks)) == sorted(truth) and tree(masks) != truth  # replaced: the user said so


@pytest.mark.parametrize("existing", ["label map", "probabilities", "overlay", "mhd data file"])
def test_predict_refuses_any_existing_output_file_of_any_kind(capsys, tmp_path, existing):
    """One existing file among the outputs of a volume (NIfTI, .mhd + .zraw) or image input: refused before
    anything is written, whichever output it is."""
    import SimpleITK as sitk

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    if existing == "mhd data file":
        run = random_run(tmp_path / "run", num_classes=3, input_channels=1, dataset="nifti")
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 32, 32), np.float32)), str(inputs / "ct.mhd"), True)
        mine = out / "ct.zraw"
        flags = []
    elif existing == "overlay":
        run = random_run(tmp_path / "run", num_classes=3, input_channels=1, dataset="nifti")
        write_volume(inputs / "ct.nii.gz")
        mine = out / "overlays" / "ct_slice001.png"
        flags = ["--overlay"]
    else:
        run = random_run(tmp_path / "run")
        write_polyp_set(tmp_path / "set", count=2)
        inputs = tmp_path / "set" / "images"
        mine = out / ("kva1.png" if existing == "label map" else "kva1.npz")
        flags = ["--save-probabilities"]
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    before = tree(out)
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run, inputs, "--out", out, *flags)
    assert code == 2 and "1 output file(s) already exist" in err and str(mine.relative_to(out)) in err, err
    assert tree(out) == before


def test_labels_of_a_multichannel_nnunet_case_are_refused_over_its_labelstr(capsys, tmp_path):
    run = random_run(tmp_path / "run", num_classes=3, input_channels=2, dataset="nifti")
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    for channel in (0, 1):
        write_volume(images / f"case001_{channel:04d}.nii.gz")
    write_volume(labels / "case001.nii.gz")
    before = tree(labels)
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run, images, "--out", labels)
    assert code == 2 and "(case001.nii.gz)" in err and "--overwrite" in err
    assert tree(labels) == before


# 16. validate first, create last: no empty --out folder

def test_predict_that_writes_nothing_makes_no_out_folder(capsys, tmp_path):
    run = random_run(tmp_path / "run")
    inputs = write_polyp_set(tmp_path / "set", count=1) / "images"
    out = tmp_path / "new" / "out"
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run, inputs, "--out", out, "--batch-size", 0)
    assert code == 2 and "--batch-size must be >= 1 (got 0)" in err
    assert not (tmp_path / "new").exists()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run, broken, "--out", out)
    assert code == 1 and str(broken) in err  # the one input failed: nothing to write, no folder made
    assert not (tmp_path / "new").exists()
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run, inputs, "--out", out)
    assert code == 0 and sorted(os.listdir(out)) == ["kva0.png"]


def test_an_ensemble_evaluate_refused_after_its_run_checks_makes_no_out_folder(capsys, tmp_path):
    """--postprocessing on the polyp protocol is refused when the cases are scored: the folder used to be made
    before that check."""
    import json

    data = tmp_path / "polyp"
    write_polyp_set(data / "TestDataset" / "Kvasir", count=1)
    runs = [random_run(tmp_path / name, dataset="polyp", data=data) for name in ("a", "b")]
    keep_largest = {"format": "vmunet-postprocessing/1", "num_classes": 1, "all_foreground": {"apply": True},
                    "classes": {"1": {"apply": False}}}
    (tmp_path / "pp.json").write_text(json.dumps(keep_largest))
    out = tmp_path / "ensemble"
    code, err, _ = run_cli(capsys, "evaluate", "--run-dir", *runs, "--out", out, "--postprocessing",
                           tmp_path / "pp.json", "--no-progress")
    assert code == 2 and "the polyp protocol scores probability maps" in err
    assert not out.exists()


# 4. evaluate --out, cv --out and export --out refuse existing results as predict does

def test_cv_into_a_runs_eval_folder_keeps_evaluates_results(capsys, tmp_path):
    eval_dir = tmp_path / "run" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "summary.json").write_text('{"mean_dice": 0.9}\n')
    (eval_dir / "per_case.csv").write_text("case_id,dice\n")
    before = tree(eval_dir)
    folds = [random_run(tmp_path / f"fold{k}") for k in (0, 1)]
    code, err, _ = run_cli(capsys, "cv", *folds, "--out", eval_dir, "--no-progress")
    assert code == 2 and "2 output file(s) already exist (per_case.csv, summary.json)" in err and "--overwrite" in err
    assert tree(eval_dir) == before


def test_evaluate_into_an_out_folder_with_results_needs_overwrite(capsys, trained, tmp_path):
    data, run_dir = trained
    out = tmp_path / "results"
    out.mkdir()
    (out / "per_case.csv").write_text("an earlier evaluation\n")
    code, err, _ = run_cli(capsys, "evaluate", "--run-dir", run_dir, "--out", out, "--no-progress")
    assert code == 2 and "1 output file(s) already exist (per_case.csv)" in err
    assert os.listdir(out) == ["per_case.csv"] and (out / "per_case.csv").read_text() == "an earlier evaluation\n"
    code, err, _ = run_cli(capsys, "evaluate", "--run-dir", run_dir, "--out", out, "--no-progress", "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["per_case.csv", "summary.json"]
    # the run's own eval/ folder (no --out) holds evaluate's previous results, which a new evaluation replaces
    for _ in range(2):
        assert run_cli(capsys, "evaluate", "--run-dir", run_dir, "--no-progress")[0] == 0


def test_export_refuses_an_existing_file_until_overwrite(capsys, tmp_path):
    run = random_run(tmp_path / "run")
    mine = tmp_path / "model.pt"
    mine.write_bytes(b"my deployed model")
    code, err, _ = run_cli(capsys, "export", "--run-dir", run, "--format", "torchscript", "--out", mine, "--no-check")
    assert code == 2 and "1 output file(s) already exist (model.pt)" in err and "--overwrite" in err
    assert mine.read_bytes() == b"my deployed model"
    code, err, _ = run_cli(capsys, "export", "--run-dir", run, "--format", "torchscript", "--out", mine, "--no-check",
                           "--overwrite")
    assert code == 0, err
    assert mine.read_bytes() != b"my deployed model"


# 13. a DICOM folder given as "." is named after itself; an ensemble's member given twice is refused

@pytest.mark.parametrize("spelling", [".", "./", "sub/.."])
def test_a_dicom_folder_given_as_dot_writes_an_output_named_after_the_folder(tmp_path, monkeypatch, spelling):
    pytest.importorskip("SimpleITK")
    from test_dicom_and_image_policy import known_run, series_truth, write_series
    from vmunet.predict import predict_paths

    run = known_run(tmp_path, monkeypatch)
    folder = tmp_path / "CT_0001"
    write_series(folder, series_truth().astype(np.int16))
    (folder / "sub").mkdir()
    monkeypatch.chdir(folder)
    summary = predict_paths(run, [spelling], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0, summary.failed
    assert sorted(os.listdir(tmp_path / "out")) == ["CT_0001.nii.gz"]  # not a hidden ".nii.gz"


@pytest.mark.parametrize("second", ["same", "dot slash"])
def test_an_ensemble_of_one_run_given_twice_is_refused(capsys, tmp_path, monkeypatch, second):
    random_run(tmp_path / "run")
    inputs = write_polyp_set(tmp_path / "set", count=1) / "images"
    monkeypatch.chdir(tmp_path)
    again = "run" if second == "same" else "./run/"
    for command in (["predict", "--run-dir", "run", again, inputs, "--out", tmp_path / "out"],
                    ["evaluate", "--run-dir", "run", again, "--out", tmp_path / "out", "--no-progress"]):
        code, err, _ = run_cli(capsys, *command)
        assert code == 2 and "given twice as an ensemble member" in err and "\n" not in err, err
        assert not (tmp_path / "out").exists()


# 7. vmunet cv: folds that finished, with the same settings, on the same contents; epochs in summary.json

CV_TINY = ["--model", "vmunet-tiny", "--image-size", "32", "--no-progress", "--batch-size", "4"]


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory):
    """The two folds of one split of a tiny ISIC folder, one step of one epoch each."""
    root = tmp_path_factory.mktemp("folds")
    data = make_isic(root / "data", counts={"train": 6, "val": 2})
    for fold in (0, 1):
        assert main(["train", "--preset", "isic18", *CV_TINY, "--data", str(data), "--epochs", "1",
                     "--set", "max_steps_per_epoch=1", "--folds", "2", "--fold", str(fold),
                     "--run-dir", str(root / f"fold{fold}")]) == 0
    return data, [root / "fold0", root / "fold1"]


def edit_config(run: Path, **changes) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, **changes}, sort_keys=False))


def test_cv_refuses_a_fold_that_stopped_before_its_planned_epochs(capsys, two_folds, tmp_path):
    import torch

    _, runs = two_folds
    copies = [tmp_path / run.name for run in runs]
    for run, copy in zip(runs, copies):
        shutil.copytree(run, copy)
        edit_config(copy, epochs=40)  # both planned 40 epochs ...
    last = copies[1] / "checkpoints" / "last.pt"
    torch.save({**torch.load(last, weights_only=True), "epoch": 40}, last)  # ... fold 1 finished them, fold 0 not
    out = tmp_path / "cv"
    code, err, _ = run_cli(capsys, "cv", *copies, "--out", out, "--no-progress")
    assert code == 2 and "\n" not in err
    assert f"{copies[0]}: fold 0 stopped at epoch 1 of 40" in err and "--resume" in err
    (copies[0] / "checkpoints" / "last.pt").unlink()  # last.pt deleted to save space: history.csv says the same
    code, err, _ = run_cli(capsys, "cv", *copies, "--out", out, "--no-progress")
    assert code == 2 and "fold 0 stopped at epoch 1 of 40" in err
    assert not out.exists()


@pytest.mark.parametrize("key, value, named", [("image_size", 64, "image_size 32"), ("model", "vmunet", "model "),
                                               ("lr", 0.5, "lr 0.001")])
def test_cv_refuses_folds_trained_with_different_settings_naming_them(capsys, two_folds, tmp_path, key, value,
                                                                      named):
    _, runs = two_folds
    other = tmp_path / "fold1"
    shutil.copytree(runs[1], other)
    edit_config(other, **{key: value})
    code, err, _ = run_cli(capsys, "cv", runs[0], other, "--out", tmp_path / "cv", "--no-progress")
    assert code == 2 and "trained with different settings" in err and named in err and str(other) in err, err
    assert "\n" not in err and not (tmp_path / "cv").exists()


def test_cv_refuses_training_cases_whose_contents_changed_under_the_same_names(capsys, two_folds, tmp_path):
    data, runs = two_folds
    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    mask = changed / "train" / "masks" / "ISIC_train00003.png"
    Image.fromarray(255 - np.asarray(Image.open(mask))).save(mask)  # the same name, another mask
    code, err, _ = run_cli(capsys, "cv", *runs, "--out", tmp_path / "cv", "--data", changed, "--no-progress")
    assert code == 2 and "\n" not in err
    assert f"{changed}: the contents of 1 training case(s) changed" in err and "ISIC_train00003" in err
    assert not (tmp_path / "cv").exists()


def test_cv_records_each_folds_epochs_in_summary_json(capsys, two_folds, tmp_path):
    import json

    from vmunet.runtime.run_folder import read_split

    _, runs = two_folds
    assert main(["cv", *map(str, runs), "--out", str(tmp_path / "cv"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["fold_epochs"] == {"0": {"planned": 1, "trained": 1, "checkpoint_epoch": 1},
                                      "1": {"planned": 1, "trained": 1, "checkpoint_epoch": 1}}
    split = json.loads((runs[0] / "split.json").read_text())
    assert set(split["fingerprints"]) == set(read_split(runs[0])["train"] + read_split(runs[0])["val"])


@pytest.mark.parametrize("layout", ["isic", "polyp", "synapse", "nifti"])
def test_fingerprints_change_with_a_files_bytes_and_only_for_its_case(tmp_path, layout):
    """The rule behind cv's check, on every folder layout: one case's file rewritten with other bytes (same
    name, same size) changes that case's fingerprint and no other."""
    from builders import make_nnunet, make_synapse
    from vmunet.config import TrainConfig
    from vmunet.data.fingerprints import case_fingerprints
    from vmunet.data.splits import prepare_training_data

    if layout == "isic":
        root, victim = make_isic(tmp_path / "d", counts={"train": 4, "val": 1}), ("train/images/ISIC_train00002.png",
                                                                                "ISIC_train00002")
    elif layout == "polyp":
        root = tmp_path / "d"
        write_polyp_set(root / "TrainDataset", count=4)
        victim = ("TrainDataset/masks/kva1.png", "kva1")
    elif layout == "synapse":
        root, victim = make_synapse(tmp_path / "d", train_cases=3, test_cases=1), ("train_npz/case0001_slice002.npz",
                                                                                   "case0001")
    else:
        root, victim = make_nnunet(tmp_path / "d", train_cases=3, test_cases=1), ("labelsTr/caseTr001.nii.gz",
                                                                                  "caseTr001")
    config = TrainConfig(dataset="nifti" if layout == "nifti" else layout, data=str(root)).validate()

    def prints():
        data = prepare_training_data(config)
        return {**case_fingerprints(data.train), **case_fingerprints(data.val)}

    before = prints()
    assert len(before) >= 3 and prints() == before
    path = root / victim[0]
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0xFF  # one byte of the file: the same size and name
    path.write_bytes(bytes(payload))
    after = prints()
    assert {case for case in before if before[case] != after[case]} == {victim[1]}


# 15. a file name that is not valid UTF-8 is refused at the start, naming the file

LATIN1 = b"caf\xe9"  # "café" in Latin-1: not valid UTF-8


def bytes_named_copy(source: Path, folder: Path, suffix: bytes) -> str:
    """Copy ``source`` to ``folder``/café<suffix> with the Latin-1 bytes on disk; returns the name as printed."""
    target = os.path.join(os.fsencode(folder), LATIN1 + suffix)
    with open(target, "wb") as handle:
        handle.write(source.read_bytes())
    return "caf\\xe9" + suffix.decode()


@pytest.mark.parametrize("where", ["train isic", "train nnunet", "evaluate isic", "predict folder", "predict file"])
def test_a_latin1_file_name_is_refused_at_the_start_naming_it(capsys, trained, tmp_path, where):
    from builders import make_nnunet

    data, run_dir = trained
    if where == "train nnunet":
        root = make_nnunet(tmp_path / "d", train_cases=3, test_cases=1)
        shown = bytes_named_copy(root / "imagesTr" / "caseTr000_0000.nii.gz", root / "imagesTr", b"_0000.nii.gz")
        bytes_named_copy(root / "labelsTr" / "caseTr000.nii.gz", root / "labelsTr", b".nii.gz")
        command = ["train", "--preset", "nifti", *CV_TINY, "--epochs", 1, "--data", root, "--run-dir", tmp_path / "r"]
    elif where.startswith("predict"):
        shown = bytes_named_copy(next((data / "val" / "images").iterdir()), tmp_path, b".png")
        given = tmp_path if where == "predict folder" else os.fsdecode(os.path.join(os.fsencode(tmp_path),
                                                                                  LATIN1 + b".png"))
        command = ["predict", "--run-dir", run_dir, given, "--out", tmp_path / "r"]
    else:
        root = tmp_path / "d"
        shutil.copytree(data, root)
        split = "train" if where == "train isic" else "val"
        for sub in ("images", "masks"):
            shown = bytes_named_copy(next((root / split / sub).iterdir()), root / split / sub, b".png")
        command = (["train", *TINY, "--epochs", 1, "--data", root, "--run-dir", tmp_path / "r"] if where == "train isic"
                   else ["evaluate", "--run-dir", run_dir, "--data", root, "--out", tmp_path / "r", "--no-progress"])
    code, err, _ = run_cli(capsys, *command)
    assert code == 2 and "\n" not in err, err
    # a file given on the command line is the CLI's argument check, the same rule in other words
    what = "command-line argument" if where == "predict file" else "file name"
    assert f"{shown}: {what} is not valid UTF-8" in err and "rename it" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
    if where == "predict file":  # and the API refuses it too
        from vmunet.predict import predict_paths

        with pytest.raises(ValueError, match="file name is not valid UTF-8"):
            predict_paths(run_dir, [given], tmp_path / "r")
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argument", ["--data", "--run-dir"])
def test_a_latin1_folder_given_on_the_command_line_is_refused_at_the_start(capsys, tmp_path, argument):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    latin1 = os.fsdecode(os.path.join(os.fsencode(tmp_path), LATIN1))  # the str Python makes of those bytes
    if argument == "--data":
        shutil.copytree(data, latin1)
        paths = ["--data", latin1, "--run-dir", tmp_path / "r"]
    else:
        paths = ["--data", data, "--run-dir", latin1]
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, *paths)
    assert code == 2 and "\n" not in err
    assert "caf\\xe9: command-line argument is not valid UTF-8" in err
    assert not (tmp_path / "r").exists()
    assert not os.path.exists(os.path.join(os.fsencode(tmp_path), LATIN1, b"run.json"))


def test_an_export_that_fails_makes_no_folder_for_its_out_file(capsys, tmp_path):
    run = random_run(tmp_path / "run")
    (run / "checkpoints" / "best.pt").unlink()
    out = tmp_path / "new" / "deploy" / "model.onnx"
    code, err, _ = run_cli(capsys, "export", "--run-dir", run, "--out", out, "--no-check")
    assert code == 2 and "best.pt" in err
    assert not (tmp_path / "new").exists()
