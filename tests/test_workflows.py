"""The command line's training options and the user's paths end to end, on tiny data the tests write."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from builders import ThresholdModel, asymmetric_labels, make_isic, make_nnunet
from conftest import FIXTURES, load_fixture
from vmunet.cli import main
from vmunet.runtime.run_folder import RunInfo, load_checkpoint, read_run_info, write_config, write_run_info

TINY = ["--model", "vmunet-tiny", "--image-size", "32", "--no-progress", "--batch-size", "4"]


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    return make_isic(tmp_path_factory.mktemp("workflows") / "data", counts={"train": 8, "val": 3})


def train_cli(capsys, *args) -> tuple[int, str]:
    code = main(["train", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return code, captured.out


def test_amp_trains_in_bfloat16_on_the_cpu(isic, tmp_path, capsys, monkeypatch):
    import vmunet.models.ss2d as ss2d

    seen = []
    forward = ss2d.SS2D.forward

    def recording(self, x, *args, **kwargs):  # the dtype the blocks compute in under --amp
        out = forward(self, x, *args, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(ss2d.SS2D, "forward", recording)
    common = ["--preset", "isic18", *TINY, "--data", str(isic), "--epochs", "1"]
    train_cli(capsys, *common, "--run-dir", str(tmp_path / "amp"), "--amp")
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    train_cli(capsys, *common, "--run-dir", str(tmp_path / "fp32"))
    assert set(seen) == {torch.float32}
    amp, fp32 = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("amp", "fp32"))
    assert all(torch.isfinite(v).all() for v in amp["model"].values() if v.is_floating_point())
    assert any(not torch.equal(amp["model"][k], fp32["model"][k]) for k in fp32["model"])  # AMP changed the sums


def test_pretrained_encoder_through_train(isic, tmp_path, capsys):
    """--pretrained loads the VMamba checkpoint (official rule) before training: after one step the encoder is
    the checkpoint's up to the step size, and the summary is printed."""
    run_dir = tmp_path / "run"
    _, out = train_cli(capsys, "--preset", "isic18", *TINY, "--data", str(isic), "--epochs", "1",
                       "--set", "max_steps_per_epoch=1", "--set", "lr=1e-5", "--set", "drop_path_rate=0.0",
                       "--pretrained", str(FIXTURES / "fake_vmamba_pretrained.pth"), "--run-dir", str(run_dir))
    assert "loaded" in out
    source = torch.load(FIXTURES / "fake_vmamba_pretrained.pth", map_location="cpu", weights_only=True)["model"]
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    for key in ("patch_embed.proj.weight", "layers.0.blocks.0.self_attention.in_proj.weight"):
        assert (trained["vmunet." + key] - source[key]).abs().max() < 1e-3, key
    # the decoder stage 3 starts from encoder stage 0 (the official rule)
    assert (trained["vmunet.layers_up.3.blocks.0.self_attention.in_proj.weight"]
            - source["layers.0.blocks.0.self_attention.in_proj.weight"]).abs().max() < 1e-3


def test_paper_settings_select_on_the_reported_split_and_decay_every_parameter(isic, tmp_path, capsys):
    """The paper's run (--paper-selection, paper_weight_decay) against ours, end to end: the split selected on,
    and the optimizer's groups in the checkpoint (which parameters: test_train.py's parameter_groups test)."""
    _, out = train_cli(capsys, "--preset", "isic18", *TINY, "--data", str(isic), "--epochs", "1",
                       "--paper-selection", "--set", "paper_weight_decay=true", "--run-dir", str(tmp_path / "paper"))
    assert "selecting on 3 (the val/ folder (paper selection: also the reported split))" in out
    _, out = train_cli(capsys, "--preset", "isic18", *TINY, "--data", str(isic), "--epochs", "1",
                       "--run-dir", str(tmp_path / "ours"))
    assert "training on 7 samples, selecting on 1 (1 images held out of train/" in out
    paper = load_checkpoint(tmp_path / "paper" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    ours = load_checkpoint(tmp_path / "ours" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in paper] == [0.01]
    assert [g["weight_decay"] for g in ours] == [0.01, 0.0]
    assert len(paper[0]["params"]) == len(ours[0]["params"]) + len(ours[1]["params"])


def test_nifti_preset_end_to_end_trains_and_scores_val_and_test(tmp_path, capsys):
    data = make_nnunet(tmp_path / "data")
    run_dir = tmp_path / "run"
    _, out = train_cli(capsys, "--preset", "nifti", *TINY, "--data", str(data), "--epochs", "1",
                       "--run-dir", str(run_dir))
    assert "imagesTr cases held out" in out
    info = read_run_info(run_dir)
    assert (info.num_classes, info.label_names, info.dataset) == (3, ["background", "liver", "tumour"], "nifti")
    for split, cases in (("val", 1), ("test", 2)):
        assert main(["evaluate", "--run-dir", str(run_dir), "--split", split, "--no-progress"]) == 0
        printed = capsys.readouterr().out
        summary = json.loads((run_dir / "eval" / "summary.json").read_text())
        assert summary["split"] == split and summary["cases"] == cases
        assert set(summary["per_class"]) == {"liver", "tumour"} and "liver" in printed
        assert all(c["case_id"].startswith("caseTs" if split == "test" else "caseTr") for c in summary["per_case"])


def test_evaluate_data_scores_another_folder_at_its_own_image_sizes(tmp_path, capsys, monkeypatch):
    """`evaluate --data DIR` on non-square images of other sizes than the network's: the probabilities are resized
    back to each image. With a model of known output (a threshold of the image) the lesions must be found where
    they are; a flip or an x/y swap of the resize-back would not score near 1."""
    import vmunet.evaluate as evaluate

    run_dir = tmp_path / "run"
    info = RunInfo(model_preset="vmunet-tiny", model_config={"num_classes": 1, "input_channels": 3},
                   label_names=["background", "lesion"], normalization="minmax255", image_size=64,
                   dataset="isic", version="test")
    write_run_info(run_dir, info)
    write_config(run_dir, {"dataset": "isic", "data": str(tmp_path / "elsewhere"), "image_size": 64})
    other = tmp_path / "other"
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (other / split / folder).mkdir(parents=True)
    for i, (h, w) in enumerate([(40, 56), (56, 40), (48, 72)]):
        mask = asymmetric_labels(h, w, binary=True)
        for split in ("train", "val"):
            Image.fromarray(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, -1)).save(
                other / split / "images" / f"case{i}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(other / split / "masks" / f"case{i}.png")
    monkeypatch.setattr(evaluate, "load_model_from_run", lambda run_dir, checkpoint="best", allow_pickle=False: (
        ThresholdModel(1, 3, threshold=127.5), read_run_info(run_dir), {"epoch": 7}))
    assert main(["evaluate", "--run-dir", str(run_dir), "--data", str(other), "--split", "test",
                 "--no-progress"]) == 0
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["epoch"] == 7
    assert summary["pooled"]["dsc"] > 0.98 and summary["per_image_mean"]["dsc"] > 0.98
    assert "pooled pixels (paper)" in capsys.readouterr().out


def test_an_official_checkpoint_file_predicts_the_official_logits(tmp_path):
    """An official VM-UNet checkpoint (a bare state_dict, keys `vmunet.*`) given as --checkpoint / checkpoint=
    to a run folder, through the path a user takes, gives the official model's logits."""
    from vmunet.inference import Predictor
    from vmunet.runtime.run_folder import load_model_from_run

    reference = load_fixture("tiny_binary.pt")
    official = tmp_path / "best.pth"
    torch.save(reference["state_dict"], official)  # what the official train.py writes
    config = {**reference["model_config"], "drop_path_rate": 0.0}
    write_run_info(tmp_path / "run", RunInfo(model_preset="vmunet-tiny", model_config=config,
                                             label_names=["background", "lesion"], normalization="none",
                                             image_size=64, dataset="isic", version="official"))
    model, _, _ = load_model_from_run(tmp_path / "run", checkpoint=str(official))
    with torch.no_grad():
        torch.testing.assert_close(model(reference["input"]), reference["logits"], atol=1e-4, rtol=1e-4)
    predictor = Predictor.from_run(tmp_path / "run", checkpoint=str(official), device="cpu")
    image = reference["input"][0].permute(1, 2, 0).numpy()  # (64, 64, 3) at the network size: no resize
    expected = torch.sigmoid(reference["logits"][0, 0]).numpy()
    np.testing.assert_allclose(predictor.predict(image).probabilities[0], expected, atol=1e-4)
