"""Training, evaluation and resumption end to end on tiny datasets written by the tests."""

import csv
import json
import random

import numpy as np
import pytest
import torch

import vmunet.data.transforms as T
from builders import make_isic, make_synapse
from vmunet.config import build_config
from vmunet.data.transforms import normalize
from vmunet.evaluate import evaluate
from vmunet.inference import Predictor
from vmunet.runtime.run_folder import load_checkpoint, read_run_info
from vmunet.train import train


def tiny_config(preset, data, **extra):
    values = {"data": str(data), "model": "vmunet-tiny", "epochs": 2, "batch_size": 4, "image_size": 32,
              "t_max": 2, **extra}
    return build_config(preset, overrides=values)


def read_history(run_dir):
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def isic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    data = make_isic(root / "data", counts={"train": 10, "val": 4})
    run_dir = root / "run"
    result = train(tiny_config("isic18", data), run_dir, progress=False, echo=lambda *a: None)
    return data, run_dir, result


def test_isic_run_folder_describes_itself(isic_run):
    data, run_dir, result = isic_run
    for name in ("config.yaml", "run.json", "history.csv", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    history = read_history(run_dir)
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert set(history[0]) == {"epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds"}
    info = read_run_info(run_dir)
    assert (info.num_classes, info.input_channels, info.normalization, info.image_size) == (1, 3, "minmax255", 32)
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "version"} <= set(payload)
    assert "rng" not in payload  # every epoch reseeds from (seed, epoch): a saved state would never be used
    assert payload["epoch"] == 2
    assert all(key.startswith("vmunet.") for key in payload["model"])


def test_isic_selection_holds_out_training_images_not_the_val_folder(isic_run):
    data, run_dir, result = isic_run
    config = build_config(None, run_dir / "config.yaml")
    assert not config.paper_selection
    # the held-out selection images come from train/, and 'val' evaluation uses exactly them
    from vmunet.data.splits import evaluation_cases

    kind, held = evaluation_cases(config, data, "val")
    assert kind == "images" and len(held) == 1 and all(c.startswith("ISIC_train") for c in held.case_ids)
    kind, test = evaluation_cases(config, data, "test")
    assert len(test) == 4 and all(c.startswith("ISIC_val") for c in test.case_ids)


def test_evaluate_reproduces_the_selection_metric_of_best_checkpoint(isic_run):
    data, run_dir, result = isic_run
    evaluation = evaluate(run_dir, split="val", progress=False, echo=lambda *a: None)
    best = read_history(run_dir)[result.best_epoch - 1]
    # images are already at the network size, so the pooled DSC equals the training-time validation Dice
    assert evaluation["summary"]["pooled"]["dsc"] == pytest.approx(float(best["val_dice"]), abs=1e-6)
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["epoch"] == result.best_epoch
    assert (run_dir / "eval" / "per_case.csv").is_file()


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 8, "val": 2})
    full = tmp_path / "full"
    train(tiny_config("isic18", data), full, progress=False, echo=lambda *a: None)
    part = tmp_path / "part"
    train(tiny_config("isic18", data, epochs=1), part, progress=False, echo=lambda *a: None)  # "killed" here
    # A new process starts with other generator states: the resumed epochs draw the same stream all the same.
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    train(tiny_config("isic18", data), part, resume=True, progress=False, echo=lambda *a: None)
    a = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    def strip(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert strip(read_history(full)) == strip(read_history(part))


def test_progress_bars_do_not_change_the_run(tmp_path):
    """Same seed, bars on or off: the same weights (drop-path masks must not depend on how the loader is
    iterated; tqdm over a DataLoader used to shift the global RNG)."""
    data = make_isic(tmp_path / "data", counts={"train": 8, "val": 2})
    runs = {}
    for progress in (False, True):
        runs[progress] = tmp_path / f"progress_{progress}"
        train(tiny_config("isic18", data, max_steps_per_epoch=1), runs[progress], progress=progress,
              echo=lambda *a: None)
    a = load_checkpoint(runs[False] / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(runs[True] / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_existing_run_is_not_overwritten(isic_run, tmp_path):
    data, run_dir, _ = isic_run
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train(tiny_config("isic18", data), run_dir, progress=False, echo=lambda *a: None)


def test_synapse_run_and_per_organ_evaluation(tmp_path):
    data = make_synapse(tmp_path / "data")
    run_dir = tmp_path / "run"
    lines = []
    train(tiny_config("synapse", data), run_dir, progress=False, echo=lines.append)
    assert "training cases held out" in lines[0]
    # Training zoomed the 512-pixel slices bicubically (the official recipe); evaluation must do the same.
    info = read_run_info(run_dir)
    assert info.interpolation == "bicubic"
    slice_ = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    normalised = torch.from_numpy(normalize(slice_[..., None], info.normalization)).permute(2, 0, 1)
    expected = T.resize_image(normalised, (info.image_size,) * 2, "bicubic")
    torch.testing.assert_close(Predictor.from_run(run_dir, device="cpu").network_input(slice_), expected)
    evaluation = evaluate(run_dir, split="test", progress=False, echo=lines.append)
    assert evaluation["summary"]["cases"] == 2
    assert "aorta" in lines[-1] and "stomach" in lines[-1]
    with open(run_dir / "eval" / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows[:2]] == ["case0100", "case0101"]


def test_ranks_probing_the_run_folder_at_once_do_not_delete_each_others_probe(tmp_path, monkeypatch):
    """A torchrun --resume: every rank checks the folder at the same moment (issue 13: one shared .write-test file,
    deleted under the others, made the job fail with 'not writable (No such file or directory)')."""
    import os

    import vmunet.train as training

    real_fsync, probes = os.fsync, []

    def fsync_while_another_rank_probes(fd):
        real_fsync(fd)
        if not probes:
            probes.append(fd)
            training.check_writable(tmp_path)  # the other rank runs its whole check in the middle of ours

    monkeypatch.setattr(os, "fsync", fsync_while_another_rank_probes)
    training.check_writable(tmp_path)
    assert probes and list(tmp_path.iterdir()) == []  # both probes gone, neither tripped over the other


def test_weight_decay_spares_biases_norms_d_and_a_and_decays_every_weight_matrix():
    from vmunet.config import TrainConfig
    from vmunet.models import create_model
    from vmunet.train import parameter_groups

    model = create_model("vmunet-tiny")
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, spared = parameter_groups(model, TrainConfig(weight_decay=0.01))
    assert (decayed["weight_decay"], spared["weight_decay"]) == (0.01, 0.0)
    decayed = {names[id(p)] for p in decayed["params"]}
    spared = {names[id(p)] for p in spared["params"]}
    assert decayed | spared == set(names.values()) and not decayed & spared
    # Written from the rule, not from the code: the conv / linear / projection weights, and nothing else.
    shapes = dict(model.named_parameters())
    expected_decay = {n for n in names.values()
                      if (n.endswith(".weight") and shapes[n].ndim >= 2) or n.endswith(("x_proj_weight",
                                                                                       "dt_projs_weight"))}
    assert decayed == expected_decay
    assert any(n.endswith("dt_projs_bias") for n in spared)  # the 2-D bias of the SS2D: a bias all the same
    assert all(n.endswith(("bias", "A_logs", "Ds")) or shapes[n].ndim == 1 for n in spared)
    everything = parameter_groups(model, TrainConfig(weight_decay=0.01, paper_weight_decay=True))
    assert len(everything) == 1 and len(everything[0]["params"]) == len(names)


def test_binary_image_summary_states_one_empty_mask_rule_per_field():
    """ISIC: mean_dice scored empty/empty as 0 while per_image_mean scored it 1 (issue 13). Now the per-image
    fields share one rule, written into the summary; pooled counts pixels over all images."""
    from builders import threshold_predictor
    from vmunet.evaluate import evaluate_cases

    predictor, info = threshold_predictor(num_classes=1, input_channels=3, dataset="isic")
    disc = np.zeros((40, 48), np.int64)
    disc[10:30, 12:36] = 1
    empty = np.zeros_like(disc)

    def case(image_mask, truth, name):  # the threshold model predicts exactly image_mask
        return {"image": np.repeat(image_mask[..., None], 3, -1).astype(np.float32), "label": truth, "case_id": name}

    cases = [case(disc, disc, "hit"), case(empty, empty, "both_empty"), case(disc, empty, "false_alarm")]
    evaluation = evaluate_cases(predictor.model, info, "images", cases, device="cpu", progress=False)
    summary = evaluation["summary"]
    per_case = {c["case_id"]: c["dice"] for c in summary["per_case"]}
    assert per_case["hit"] == pytest.approx(1.0, abs=0.02)
    assert per_case["both_empty"] == 1.0 and per_case["false_alarm"] == 0.0
    assert summary["mean_dice"] == pytest.approx(summary["per_image_mean"]["dsc"])
    assert summary["mean_dice"] == pytest.approx(2 / 3, abs=0.01)
    assert summary["pooled"]["dsc"] == pytest.approx(2 * 480 / (2 * 480 + 480), abs=0.02)  # 480 px hit, 480 px wrong
    assert set(summary["empty_mask_policy"]) >= {"pooled", "per_image_mean"}
