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
