"""Nothing lost, nothing silently wrong: the command line's behaviour on bad input, crashes and resumption."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from builders import HANG_LIMIT_S, UTF8_TEXT, make_isic, wait_for
from vmunet.cli import main
from vmunet.runtime.run_folder import load_checkpoint, save_checkpoint

TINY = ["--preset", "isic18", "--model", "vmunet-tiny", "--image-size", "32", "--no-progress"]


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    return make_isic(tmp_path_factory.mktemp("faults") / "data", counts={"train": 6, "val": 2})


def test_missing_data_folder_is_one_line_and_exit_2(capsys, tmp_path):
    code, err = run_cli(capsys, "train", *TINY, "--data", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r"))
    assert code == 2
    assert err == f"vmunet train: error: {tmp_path / 'nowhere'}: data folder does not exist"
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_bad_image_in_data_names_the_file(capsys, isic, tmp_path):
    bad = isic.parent / "bad"
    make_isic(bad, counts={"train": 4, "val": 2})
    (bad / "train" / "images" / "ISIC_train00001.png").write_bytes(b"")  # zero-byte image
    code, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--data", str(bad), "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "ISIC_train00001.png" in err and "\n" not in err
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_bad_configuration_fails_before_training(capsys, isic, tmp_path):
    run_dir = str(tmp_path / "r")
    code, err = run_cli(capsys, "train", *TINY, "--data", str(isic), "--run-dir", run_dir, "--image-size", "100")
    assert code == 2 and "image_size must be a positive multiple of 32 (got 100" in err
    code, err = run_cli(capsys, "train", *TINY, "--data", str(isic), "--run-dir", run_dir, "--set", "lr_max=1")
    assert code == 2 and "unknown config key(s) lr_max" in err
    with pytest.raises(SystemExit):  # argparse: unknown preset, exit 2 with usage
        main(["train", "--preset", "isic19", "--run-dir", run_dir])
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_read_only_run_folder_fails_before_training(capsys, isic, tmp_path):
    """A read-only folder: by permissions for a user; for root (who ignores them) a read-only tmpfs mount."""
    locked = tmp_path / "locked"
    locked.mkdir()
    mounted = False
    if os.geteuid() == 0:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                                capture_output=True, **UTF8_TEXT)
        if result.returncode != 0:
            pytest.skip(f"root ignores file permissions and may not mount here ({result.stderr.strip()})")
        mounted = True
    else:
        locked.chmod(0o500)
    try:
        run_dir = locked / "r"
        code, err = run_cli(capsys, "train", *TINY, "--data", str(isic), "--run-dir", str(run_dir))
        assert code == 2 and "not writable" in err and str(locked) in err
    finally:
        if mounted:
            subprocess.run(["umount", str(locked)], check=True)


def test_unwritable_run_folder_fails_before_training(capsys, isic, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder should go")
    code, err = run_cli(capsys, "train", *TINY, "--data", str(isic), "--run-dir", str(blocker / "r"))
    assert code == 2 and "run folder is not writable" in err


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(capsys, isic, tmp_path):
    run_dir = tmp_path / "r"
    assert run_cli(capsys, "train", *TINY, "--epochs", "1", "--data", str(isic), "--run-dir", str(run_dir))[0] == 0
    good = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # make the weights explode: the next epoch's loss is NaN
    poisoned = {k: (v * float("inf") if k.endswith("final_conv.weight") else v) for k, v in good["model"].items()}
    save_checkpoint(run_dir / "checkpoints" / "last.pt", {**good, "model": poisoned})
    code, err = run_cli(capsys, "train", *TINY, "--epochs", "2", "--data", str(isic), "--run-dir", str(run_dir),
                        "--resume")
    assert code == 2 and "loss is not finite at epoch 2, step 1" in err
    after = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert after["epoch"] == 1  # nothing written for the failed epoch
    for value in load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"].values():
        assert torch.isfinite(value).all()


def test_checkpoint_of_another_architecture_lists_mismatched_keys(capsys, isic, tmp_path):
    run_dir = tmp_path / "r"
    assert run_cli(capsys, "train", *TINY, "--epochs", "1", "--data", str(isic), "--run-dir", str(run_dir))[0] == 0
    from vmunet import create_model

    other = tmp_path / "other.pt"
    torch.save({"model": create_model("vmunet-small").state_dict()}, other)
    code, err = run_cli(capsys, "evaluate", "--run-dir", str(run_dir), "--checkpoint", str(other), "--no-progress")
    assert code == 2 and "checkpoint does not fit this model" in err and "shape mismatch (first: vmunet." in err


def test_untrusted_pickle_checkpoint_needs_an_explicit_flag(capsys, isic, tmp_path):
    run_dir = tmp_path / "r"
    assert run_cli(capsys, "train", *TINY, "--epochs", "1", "--data", str(isic), "--run-dir", str(run_dir))[0] == 0
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({**payload, "note": ValueError("a pickled Python object")}, legacy)
    code, err = run_cli(capsys, "evaluate", "--run-dir", str(run_dir), "--checkpoint", str(legacy), "--no-progress")
    assert code == 2 and "--trust-checkpoint" in err
    code, _ = run_cli(capsys, "evaluate", "--run-dir", str(run_dir), "--checkpoint", str(legacy), "--no-progress",
                      "--trust-checkpoint", "--split", "test")
    assert code == 0


def test_torn_checkpoint_is_reported_not_loaded(capsys, isic, tmp_path):
    run_dir = tmp_path / "r"
    assert run_cli(capsys, "train", *TINY, "--epochs", "1", "--data", str(isic), "--run-dir", str(run_dir))[0] == 0
    best = run_dir / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    code, err = run_cli(capsys, "evaluate", "--run-dir", str(run_dir), "--no-progress")
    assert code == 2 and "best.pt: not a readable PyTorch checkpoint" in err


def train_command(data, run_dir, epochs, *extra):
    return [sys.executable, "-m", "vmunet", "train", *TINY, "--data", str(data), "--run-dir", str(run_dir),
            "--epochs", str(epochs), "--set", "t_max=3", *extra]


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(isic, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(train_command(isic, full, 3), check=True, capture_output=True, env=env, timeout=HANG_LIMIT_S)
    process = subprocess.Popen(train_command(isic, killed, 3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env)
    history = killed / "history.csv"
    wait_for(lambda: history.is_file() and len(history.read_text().splitlines()) >= 2, "epoch 1 in history.csv",
             process=process)
    process.send_signal(signal.SIGKILL)  # somewhere in epoch 2 (or while writing its files)
    process.wait()
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] in (1, 2)  # readable, never torn
    subprocess.run(train_command(isic, killed, 3, "--resume"), check=True, capture_output=True, env=env,
                   timeout=HANG_LIMIT_S)
    a = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # a torn temp file never outlives a run
