"""VM-UNetV2 through the workflows: --model and --pretrained in train, the run folder, predict and export."""

import numpy as np
import torch

from builders import make_isic
from conftest import FIXTURES
from vmunet import VMUNetV2
from vmunet.cli import main
from vmunet.export import export_model, exported_max_difference
from vmunet.inference import Predictor
from vmunet.runtime.run_folder import load_checkpoint, load_model_from_run, read_run_info


def test_v2_trains_from_vmamba_weights_and_its_run_folder_predicts_and_exports(tmp_path, capsys):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 2})
    run_dir = tmp_path / "run"
    code = main(["train", "--preset", "isic18", "--model", "vmunet-v2-tiny", "--image-size", "32", "--no-progress",
                 "--batch-size", "2", "--data", str(data), "--epochs", "1", "--run-dir", str(run_dir),
                 "--set", "max_steps_per_epoch=1", "--set", "drop_path_rate=0.0",
                 "--pretrained", str(FIXTURES / "fake_vmamba_pretrained.pth")])
    out = capsys.readouterr().out
    assert code == 0 and "loaded" in out

    info = read_run_info(run_dir)
    assert info.model_preset == "vmunet-v2-tiny" and info.model_config["deep_supervision"] is True
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    source = torch.load(FIXTURES / "fake_vmamba_pretrained.pth", map_location="cpu", weights_only=True)["model"]
    # encoder-only rule: stage 3 is loaded and then never trained (not computed, not in the optimizer: no decay)
    for key in ("layers.3.blocks.0.self_attention.in_proj.weight", "layers.3.blocks.0.self_attention.A_logs"):
        assert torch.equal(trained["vmunet." + key], source[key]), key
    # a computed encoder weight moved away from the checkpoint by the one step (lr 1e-3)
    key = "layers.0.blocks.0.self_attention.in_proj.weight"
    assert 0 < (trained["vmunet." + key] - source[key]).abs().max() < 1e-2

    model, _, _ = load_model_from_run(run_dir, checkpoint="last")
    assert isinstance(model, VMUNetV2)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)  # resized to 32x32 and back
    prediction = Predictor.from_run(run_dir, checkpoint="last").predict(image)
    assert prediction.labels.shape == (40, 56)

    path = export_model(run_dir, tmp_path / "v2.pt", format="torchscript", image_size=(32, 64), checkpoint="last")
    assert exported_max_difference(model, path, "torchscript", image_size=(32, 64)) < 1e-4
    # a model object, to ONNX (the SDI pooling must have a fixed window for that)
    path = export_model(model, tmp_path / "object.onnx", format="onnx", image_size=(32, 64))
    assert exported_max_difference(model, path, "onnx") < 1e-4


def test_forward_command_takes_the_v2_presets(capsys):
    assert main(["forward", "--model", "vmunet-v2-tiny", "--image-size", "64", "--num-classes", "2"]) == 0
    assert "vmunet-v2-tiny: input (1, 3, 64, 64) -> logits (1, 2, 64, 64)" in capsys.readouterr().out
