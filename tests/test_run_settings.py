"""Issue 15 run settings: the loss weights (the papers' lambda) and --deterministic."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
import yaml

import vmunet.losses
from builders import make_isic
from vmunet.cli import main
from vmunet.config import build_config
from vmunet.losses import BceDiceLoss, CeDiceLoss, build_loss
from vmunet.runtime.device import deterministic_algorithms
from vmunet.runtime.run_folder import load_checkpoint
from vmunet.train import train

TINY = ["--preset", "isic18", "--model", "vmunet-tiny", "--image-size", "32", "--no-progress"]


# ---------------------------------------------------------------- loss weights


def test_weighted_bce_dice_is_the_weighted_sum_of_its_terms():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 8, 8, generator=g) * 2
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)  # the first term, computed independently
    dice_term = BceDiceLoss(bce_weight=0.0, dice_weight=1.0)(logits, target)
    assert dice_term > 0.1  # a real term, not a zero that any weight would leave unchanged
    weighted = build_loss(1, (0.3, 2.5))(logits, target)
    torch.testing.assert_close(weighted, 0.3 * bce + 2.5 * dice_term)
    torch.testing.assert_close(build_loss(1)(logits, target), bce + dice_term)  # default: the paper's 1, 1


def test_weighted_ce_dice_is_the_weighted_sum_of_its_terms():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    target = torch.randint(0, 4, (2, 6, 6), generator=g)
    ce = F.cross_entropy(logits, target)
    dice_term = CeDiceLoss(4, ce_weight=0.0, dice_weight=1.0)(logits, target)
    loss = build_loss(4, (1.5, 0.25))
    assert (loss.ce_weight, loss.dice_weight) == (1.5, 0.25)
    torch.testing.assert_close(loss(logits, target), 1.5 * ce + 0.25 * dice_term)


@pytest.mark.parametrize("weights, message", [
    ([1.0], "loss_weights must be a list of 2 numbers, e.g. [1.0, 1.0] (got [1.0])"),
    ([1.0, 1.0, 1.0], "loss_weights must be a list of 2 numbers, e.g. [1.0, 1.0] (got [1.0, 1.0, 1.0])"),
    ([-0.5, 1.0], "config: loss_weights must be two numbers >= 0, not both 0 (BCE or CE, then Dice; got [-0.5, 1.0])"),
    ([0, 0], "config: loss_weights must be two numbers >= 0, not both 0 (BCE or CE, then Dice; got [0.0, 0.0])"),
])
def test_invalid_loss_weights_are_config_errors(weights, message):
    with pytest.raises(ValueError) as error:
        build_config("isic18", overrides={"loss_weights": weights})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_negative_loss_weight_on_the_command_line_is_one_line(capsys, tmp_path):
    code = main(["train", *TINY, "--data", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                 "--loss-weights", "1", "-2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("vmunet train: error: config: loss_weights must be two numbers >= 0, not both 0 "
                                 "(BCE or CE, then Dice; got [1.0, -2.0])")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- --deterministic


def test_deterministic_algorithms_sets_and_restores_every_switch(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own valid choice is kept
    with deterministic_algorithms(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    with deterministic_algorithms(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_two_deterministic_runs_are_bitwise_identical_and_record_their_settings(tmp_path, monkeypatch):
    """1 epoch at 32 px with a DataLoader worker (its seeding is part of what must repeat) and weighted losses."""
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    seen = []

    def spy(num_classes, weights=(1.0, 1.0)):  # build_loss runs inside training: record what training sees
        seen.append((tuple(weights), torch.are_deterministic_algorithms_enabled()))
        return real_build_loss(num_classes, weights)

    real_build_loss = vmunet.losses.build_loss
    monkeypatch.setattr(vmunet.losses, "build_loss", spy)
    values = {"data": str(data), "model": "vmunet-tiny", "epochs": 1, "batch_size": 4, "image_size": 32,
              "num_workers": 1, "deterministic": True, "loss_weights": [0.5, 2.0]}
    payloads = []
    for name in ("a", "b"):
        train(build_config("isic18", overrides=values), tmp_path / name, progress=False, echo=lambda *a: None)
        payloads.append(load_checkpoint(tmp_path / name / "checkpoints" / "last.pt"))
    assert seen == [((0.5, 2.0), True)] * 2
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    a, b = payloads
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for p in (a, b) for s in p["optimizer"]["state"].values()]
    half = len(moments) // 2
    assert half and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                        for x, y in zip(moments[:half], moments[half:]))
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["deterministic"] is True and saved["loss_weights"] == [0.5, 2.0]


def test_train_flags_reach_the_recorded_config(tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(data), "--run-dir", str(run), "--epochs", "1",
                 "--deterministic", "--loss-weights", "0.25", "3", "--set", "nsd_tolerance_mm=2.5"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["deterministic"] is True and saved["loss_weights"] == [0.25, 3.0]
    assert saved["nsd_tolerance_mm"] == 2.5
    assert main(["evaluate", "--run-dir", str(run), "--split", "val", "--no-progress"]) == 0  # evaluate uses it
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["nsd_tolerance_mm"] == 2.5 and all("nsd" in v for v in summary["per_class"].values())


def test_negative_nsd_tolerance_is_a_config_error():
    with pytest.raises(ValueError, match="config: nsd_tolerance_mm must be >= 0 \\(got -1.0\\)"):
        build_config("isic18", overrides={"nsd_tolerance_mm": -1})
