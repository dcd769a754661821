"""torchrun + DDP on CPU (gloo): the README's command line, 2 processes x batch b == 1 process x batch 2b."""

import csv
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from builders import HANG_LIMIT_S, UTF8_TEXT, make_isic, read_until
from vmunet.runtime.distributed import EpochSampler
from vmunet.runtime.run_folder import load_checkpoint

COMMON = ["--preset", "isic18", "--model", "vmunet-tiny", "--image-size", "32", "--epochs", "2", "--no-progress",
          "--set", "drop_path_rate=0.0", "--set", "t_max=2"]


def run(command, timeout=HANG_LIMIT_S):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, **UTF8_TEXT, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def torchrun():
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def losses(run_dir):
    with open(run_dir / "history.csv", newline="") as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]


def test_epoch_sampler_splits_one_permutation_across_ranks():
    single = list(EpochSampler(10, seed=3))
    ranks = [list(EpochSampler(10, seed=3, rank=r, world_size=2)) for r in range(2)]
    for k in range(0, 5, 2):  # batch k of 2 ranks x batch 2 == batch k of 1 process x batch 4
        assert sorted(ranks[0][k:k + 2] + ranks[1][k:k + 2]) == sorted(single[2 * k:2 * k + 4])
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != single


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 8, "val": 2, "test": 2})
    two = tmp_path / "two"
    out = run(torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "vmunet", "train", "--data", str(data),
                            "--run-dir", str(two), "--batch-size", "2", *COMMON])
    assert "batch 2 per process x 2 process(es) x accumulate 1 = global batch 4" in out
    one = tmp_path / "one"
    run([sys.executable, "-m", "vmunet", "train", "--data", str(data), "--run-dir", str(one), "--batch-size", "4",
         *COMMON])
    accumulated = tmp_path / "accumulated"
    run([sys.executable, "-m", "vmunet", "train", "--data", str(data), "--run-dir", str(accumulated),
         "--batch-size", "2", "--accumulate", "2", *COMMON])
    # The per-epoch replica check inside train() has passed on both ranks; now compare with one process.
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    assert losses(accumulated) == pytest.approx(losses(one), abs=1e-5)
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (two, one))
    c = load_checkpoint(accumulated / "checkpoints" / "last.pt")["model"]
    # AdamW divides by sqrt(v): where a gradient is ~0, float-rounding differences of the reduction order move a
    # weight by up to ~lr per step. So: nearly every weight within 1e-5, none further than a fraction of a step.
    for name, other in (("DDP", a), ("accumulate", c)):
        diffs = torch.cat([(other[key] - b[key]).abs().flatten() for key in b])
        assert diffs.max() < 2e-4, f"{name}: max weight difference {diffs.max():.2e}"
        assert (diffs > 1e-5).float().mean() < 1e-3, f"{name}: {(diffs > 1e-5).sum()} weights differ by > 1e-5"


def test_a_killed_rank_fails_the_job_instead_of_hanging(tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 64, "val": 2, "test": 2})
    command = torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "vmunet", "train", "--data", str(data),
                            "--run-dir", str(tmp_path / "run"), "--batch-size", "2", *COMMON[:-2], "--epochs", "50"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **UTF8_TEXT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        read_until(launcher, "epoch 1/")  # the event: both ranks are training (their first epoch is done)
        children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, **UTF8_TEXT).stdout.split()
        assert len(children) == 2, f"torchrun runs {len(children)} workers, not 2"
        os.kill(int(children[1]), signal.SIGKILL)
        _, err = launcher.communicate(timeout=HANG_LIMIT_S)  # no hang: torchrun stops the other rank and fails
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "SIGKILL" in err and "Root Cause" in err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_three_processes_resume_a_run(tmp_path):
    """The README's --resume under torchrun with 3 ranks, which probe the run folder at the same moment."""
    data = make_isic(tmp_path / "data", counts={"train": 9, "val": 2, "test": 2})
    run_dir = tmp_path / "run"
    first = [sys.executable, "-m", "vmunet", "train", "--data", str(data), "--run-dir", str(run_dir),
             "--batch-size", "1", *COMMON[:-2], "--set", "t_max=2", "--epochs", "1"]
    run(first)
    out = run(torchrun() + ["--standalone", "--nproc_per_node", "3", "-m", "vmunet", "train", "--data", str(data),
                            "--run-dir", str(run_dir), "--batch-size", "1", *COMMON[:-2], "--set", "t_max=2",
                            "--epochs", "2", "--resume"])
    assert "resuming" in out and "x 3 process(es)" in out
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2
    assert len(losses(run_dir)) == 2
    assert not list(run_dir.glob(".write-test*"))
