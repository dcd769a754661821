"""The MONAI bundle (vmunet export --format monai-bundle) run by MONAI itself gives vmunet predict's labels; a
pad_to=32 model in MONAI's sliding window on an odd-sized image."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from builders import UTF8_TEXT
from test_predict import make_run, write_nifti

pytest.importorskip("monai", reason="MONAI is not installed (pip install 'vmunet[monai]')")

from vmunet.cli import main  # noqa: E402 (after the skip)
from vmunet.predict import predict_paths  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """3 classes from 1 channel, z-scored: labels that vary over an image even with untrained weights."""
    run = make_run(tmp_path_factory.mktemp("monai"), num_classes=3, input_channels=1, normalization="zscore",
                   dataset="nifti")
    return run


def write_inputs(folder):
    rng = np.random.default_rng(3)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (45, 70), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (50, 38, 3), dtype=np.uint8)).save(folder / "colour.png")
    write_nifti(folder / "volume.nii.gz", shape=(40, 36, 4))


def test_bundle_run_by_monai_equals_vmunet_predict(run_dir, tmp_path):
    import nibabel as nib

    inputs = tmp_path / "inputs"
    write_inputs(inputs)
    bundle = tmp_path / "bundle"
    assert main(["export", "--format", "monai-bundle", "--run-dir", str(run_dir), "--out", str(bundle)]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["vmunet"]["normalization"] == "zscore" and meta["vmunet"]["image_size"] == 64
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "class0", "1": "class1",
                                                                              "2": "class2"}
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["network_def"]["_target_"] == "vmunet.create_model" and "dataset_dir" in config

    by_monai = tmp_path / "monai_out"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                             str(bundle / "configs" / "inference.json"), "--dataset_dir", str(inputs),
                             "--output_dir", str(by_monai)], capture_output=True, **UTF8_TEXT)
    assert result.returncode == 0, result.stderr[-4000:]
    by_vmunet = tmp_path / "vmunet_out"
    predict_paths(run_dir, [inputs], by_vmunet, device="cpu")

    for name in ("grey.png", "colour.png"):
        expected = np.asarray(Image.open(by_vmunet / name))
        assert len(np.unique(expected)) > 1
        got = np.asarray(Image.open(by_monai / name))
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    expected = nib.load(str(by_vmunet / "volume.nii.gz"))
    got = nib.load(str(by_monai / "volume.nii.gz"))
    labels = np.asarray(expected.dataobj)
    assert labels.shape == (40, 36, 4) and len(np.unique(labels)) > 1  # a comparison that could fail
    np.testing.assert_array_equal(np.asarray(got.dataobj), labels)
    np.testing.assert_allclose(got.affine, expected.affine)


def test_bundle_export_refuses_a_folder_with_files_and_leaves_nothing_on_failure(run_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="must be a new or empty folder"):
        from vmunet.export import export_model

        export_model(run_dir, taken, format="monai-bundle")
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert main(["export", "--format", "monai-bundle", "--run-dir", str(run_dir), "--checkpoint", "last",
                 "--out", str(tmp_path / "bundle")]) == 2  # no last.pt in this run
    assert not (tmp_path / "bundle").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-built bundle


def test_sliding_window_inference_on_an_odd_sized_image():
    from monai.inferers import sliding_window_inference

    from vmunet import create_model

    torch.manual_seed(0)
    model = create_model("vmunet-tiny", num_classes=2, input_channels=1, pad_to=32).eval()
    image = torch.randn(1, 1, 75, 53)  # (B, C, H, W), neither side a multiple of 32
    with torch.no_grad():
        tiled = sliding_window_inference(image, roi_size=(40, 40), sw_batch_size=4, predictor=model, overlap=0.5)
        whole = sliding_window_inference(image, roi_size=(75, 53), sw_batch_size=1, predictor=model)
        direct = model(image)
    assert tiled.shape == (1, 2, 75, 53)
    torch.testing.assert_close(whole, direct)  # one window = the image: padding inside the model only
    assert torch.isfinite(tiled).all()


def test_export_without_monai_is_one_line_naming_the_extra(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "monai", None)  # as if not installed
    assert main(["export", "--format", "monai-bundle", "--run-dir", str(run_dir), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmunet export: error: MONAI bundles need MONAI") and "pip install 'vmunet[monai]'" in err
    assert not (tmp_path / "b").exists()


def test_a_moved_bundle_says_how_to_point_at_it(run_dir, tmp_path):
    from vmunet import create_model
    from vmunet.integrations.monai_bundle import BundlePredictor

    bundle = tmp_path / "bundle"
    assert main(["export", "--format", "monai-bundle", "--run-dir", str(run_dir), "--out", str(bundle)]) == 0
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["bundle_root"] == str(bundle.resolve())
    moved = bundle.rename(tmp_path / "moved")
    network = create_model(config["network_def"]["name"], **{k: v for k, v in config["network_def"].items()
                                                            if k not in ("_target_", "name")})
    with pytest.raises(FileNotFoundError, match="bundle's weights are not there.*--bundle_root NEW_FOLDER"):
        BundlePredictor(network, f"{config['bundle_root']}/models/model.pt", moved / "configs" / "metadata.json")
    predictor = BundlePredictor(network, moved / "models" / "model.pt", moved / "configs" / "metadata.json")
    assert predictor.info.num_classes == 3
