"""Issue 19, data loss and run folders: outputs never replace inputs, one training per run folder, --resume
continues the run as saved, paths that work from any directory, files with the permissions of a plain open()."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from builders import HANG_LIMIT_S, UTF8_TEXT, make_isic, wait_for
from vmunet.cli import main
from vmunet.runtime.run_folder import load_checkpoint
from vmunet.io.files import write_text_atomic

TINY = ["--preset", "isic18", "--model", "vmunet-tiny", "--image-size", "32", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def train_command(data, run_dir, *extra):
    return [sys.executable, "-m", "vmunet", "train", *TINY, "--data", str(data), "--run-dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a finished 2-epoch run on it."""
    root = tmp_path_factory.mktemp("lost")
    data = make_isic(root / "data", counts={"train": 4, "val": 2})
    run_dir = root / "run"
    assert main([*map(str, ["train", *TINY, "--epochs", 2, "--set", "t_max=2", "--data", data,
                            "--run-dir", run_dir])]) == 0
    return data, run_dir


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# 1. an output never replaces an input

@pytest.mark.parametrize("spelling", ["same", "dot", "slash", "symlink"])
def test_predict_refuses_an_out_folder_that_is_its_input_before_writing(capsys, trained, tmp_path, spelling):
    data, run_dir = trained
    inputs = tmp_path / "P"
    shutil.copytree(data / "val" / "images", inputs)
    before = snapshot(inputs)
    out = {"same": inputs, "dot": inputs / ".", "slash": f"{inputs}/", "symlink": tmp_path / "link"}[spelling]
    if spelling == "symlink":
        os.symlink(inputs, out)
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run_dir, inputs, "--out", out)
    assert code == 2 and "would overwrite the input" in err and "\n" not in err
    assert snapshot(inputs) == before  # nothing written, not even one mask


def test_predict_refuses_overlays_and_probabilities_that_would_replace_inputs(capsys, trained, tmp_path):
    data, run_dir = trained
    overlays = tmp_path / "out" / "overlays"
    shutil.copytree(data / "val" / "images", overlays)
    before = snapshot(overlays)
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run_dir, overlays, "--out", tmp_path / "out", "--overlay")
    assert code == 2 and "would overwrite the input" in err
    assert snapshot(overlays) == before


def test_predict_out_that_is_a_file_is_one_error_up_front(capsys, trained, tmp_path):
    data, run_dir = trained
    blocker = tmp_path / "masks.png"
    blocker.write_bytes(b"not a folder")
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run_dir, data / "val" / "images", "--out", blocker)
    assert code == 2 and err == f"vmunet predict: error: {blocker}: --out must be a folder, and this is a file"


def test_export_checks_its_destination_before_exporting(capsys, trained, tmp_path):
    _, run_dir = trained
    best = run_dir / "checkpoints" / "best.pt"
    before = best.read_bytes()
    code, err, _ = run_cli(capsys, "export", "--run-dir", run_dir, "--format", "torchscript", "--out", best)
    assert code == 2 and "would overwrite the input" in err and best.read_bytes() == before
    code, err, _ = run_cli(capsys, "export", "--run-dir", run_dir, "--out", tmp_path)
    assert code == 2 and err.startswith(f"vmunet export: error: {tmp_path}: --out is a folder") and "\n" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err, _ = run_cli(capsys, "export", "--run-dir", run_dir, "--out", blocker / "model.onnx")
    assert code == 2 and str(blocker) in err and ".tmp" not in err and "Warning" not in err


# 2. one training per run folder, the lock dies with its process

def test_a_second_training_in_a_running_run_folder_fails_at_once_and_a_killed_run_frees_it(capsys, tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 2})
    run_dir = tmp_path / "run"
    first = subprocess.Popen(train_command(data, run_dir, "--epochs", "200", "--set", "t_max=2"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for((run_dir / "checkpoints" / "last.pt").is_file, "first checkpoint", process=first)
        config_before = (run_dir / "config.yaml").read_bytes()
        code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", "1", "--data", data, "--run-dir", run_dir)
        assert code == 2 and "another training is running in this run folder" in err and "\n" not in err
        code, err, _ = run_cli(capsys, "train", "--run-dir", run_dir, "--resume", "--no-progress")
        assert code == 2 and "another training is running in this run folder" in err
        assert (run_dir / "config.yaml").read_bytes() == config_before  # the running run's files are untouched
    finally:
        first.kill()  # SIGKILL: no clean-up code runs in it
        first.wait()
    code, err, _ = run_cli(capsys, "train", "--run-dir", run_dir, "--resume", "--no-progress", "--epochs", "1")
    assert code == 0, err  # the lock died with the process


# 3. --resume continues the run as saved

def test_resume_without_epochs_keeps_the_saved_epoch_count(capsys, trained):
    data, run_dir = trained
    config_before = (run_dir / "config.yaml").read_text()
    # a subprocess with a timeout: the old behaviour trained on to 300 epochs
    result = subprocess.run([sys.executable, "-m", "vmunet", "train", "--run-dir", str(run_dir), "--resume",
                             "--no-progress"], capture_output=True, **UTF8_TEXT, env=ENV, timeout=HANG_LIMIT_S)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"] == 2
    assert yaml.safe_load(config_before)["epochs"] == 2
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("flags, named", [(["--batch-size", "8"], "batch_size 32 -> 8"),
                                          (["--image-size", "64"], "image_size 32 -> 64"),
                                          (["--set", "lr=5e-4"], "lr 0.001 -> 0.0005")])
def test_resume_refuses_settings_that_would_make_another_run(capsys, trained, flags, named):
    _, run_dir = trained
    config_before = (run_dir / "config.yaml").read_bytes()
    code, err, _ = run_cli(capsys, "train", "--run-dir", run_dir, "--resume", "--no-progress", *flags)
    assert code == 2 and named in err and "\n" not in err
    assert (run_dir / "config.yaml").read_bytes() == config_before


def test_resume_with_more_epochs_and_a_moved_dataset_applies_both(capsys, tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 2})
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", *TINY, "--epochs", 1, "--set", "t_max=2", "--data", data, "--run-dir",
                   run_dir)[0] == 0
    moved = tmp_path / "moved"
    data.rename(moved)
    code, err, _ = run_cli(capsys, "train", "--run-dir", run_dir, "--resume", "--no-progress", "--epochs", 2,
                           "--data", moved)
    assert code == 0, err
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["data"] == str(moved)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


# 6. a run folder works from any directory

def test_run_folder_stores_absolute_paths_and_evaluates_from_elsewhere(capsys, tmp_path, monkeypatch):
    make_isic(tmp_path / "data", counts={"train": 4, "val": 2})
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", "data", "--run-dir", "run")[0] == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"] == str(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, err, _ = run_cli(capsys, "evaluate", "--run-dir", tmp_path / "run", "--no-progress")
    assert code == 0, err


# 8. permissions of a plain open()

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_permissions_of_a_plain_open(trained, tmp_path, umask):
    data, run_dir = trained
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as handle:
            handle.write("x")
        expected = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
        write_text_atomic(tmp_path / "atomic.txt", "x")
        assert main(["predict", "--run-dir", str(run_dir), str(data / "val" / "images"), "--out",
                     str(tmp_path / "masks"), "--save-probabilities"]) == 0
        written = [tmp_path / "atomic.txt", *(tmp_path / "masks").rglob("*.*")]
    finally:
        os.umask(old)
    assert expected == 0o666 & ~umask
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path
    for path in [run_dir / "config.yaml", run_dir / "history.csv", *(run_dir / "checkpoints").glob("*.pt")]:
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o044, path  # readable by others under the default umask


# 9. a full disk while saving: one line, the old checkpoints kept

def test_full_disk_while_saving_is_one_line_and_keeps_the_old_checkpoints(capsys, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs a small tmpfs (root)")
    small = tmp_path / "small"
    small.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(small)], capture_output=True,
                            **UTF8_TEXT)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        data = make_isic(tmp_path / "data", counts={"train": 4, "val": 2})
        run_dir = small / "run"
        assert run_cli(capsys, "train", *TINY, "--epochs", 1, "--set", "t_max=2", "--data", data,
                       "--run-dir", run_dir)[0] == 0
        before = (run_dir / "checkpoints" / "last.pt").read_bytes()
        filler = small / "filler"
        with open(filler, "wb") as handle:  # fill the disk, then free a little: the writability probe passes
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        os.truncate(filler, max(0, filler.stat().st_size - 200_000))
        code, err, _ = run_cli(capsys, "train", "--run-dir", run_dir, "--resume", "--no-progress", "--epochs", 2)
        assert code == 2 and "No space left on device" in err and "is kept" in err and "\n" not in err
        assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
        assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_mask_png_written_for_an_input_keeps_its_own_name(trained, tmp_path):
    """Predicting into a fresh folder still works (the check refuses only real collisions)."""
    data, run_dir = trained
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(run_dir), str(data / "val" / "images"), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(p.name for p in (data / "val" / "images").glob("*.png"))
    assert Image.open(out / names[0]).mode == "L"
