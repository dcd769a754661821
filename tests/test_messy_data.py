"""Issue 19, messy data and configs: nothing silently accepted, one line instead of a traceback, clear messages,
no leftovers of a failed start."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from builders import blob_image, make_isic
from vmunet.cli import main
from vmunet.data.isic import IsicFolder
from vmunet.data.nifti import NiftiVolumes
from vmunet.io.images import read_image_file
from vmunet.runtime.run_folder import load_checkpoint

TINY = ["--preset", "isic18", "--model", "vmunet-tiny", "--image-size", "32", "--no-progress"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    data = make_isic(root / "data", counts={"train": 4, "val": 2})
    run_dir = root / "run"
    assert main([*map(str, ["train", *TINY, "--epochs", 1, "--data", data, "--run-dir", run_dir])]) == 0
    return data, run_dir


# 4. one image reader for training and prediction, keeping the dynamic range

@pytest.mark.parametrize("kind", ["png16", "float_tiff"])
def test_training_reads_16_bit_and_float_images_as_prediction_does(tmp_path, kind):
    data = make_isic(tmp_path / "data", counts={"train": 1})
    image_path = next((data / "train" / "images").iterdir())
    grey = np.linspace(0, 4000, 32 * 32).reshape(32, 32)
    image_path.unlink()
    if kind == "png16":
        path = image_path.with_suffix(".png")
        Image.fromarray(grey.astype(np.uint16)).save(path)
    else:
        path = image_path.with_suffix(".tif")
        Image.fromarray((grey / 4000).astype(np.float32), mode="F").save(path)
    sample = IsicFolder(data, "train")[0]["image"]  # (H, W, 3)
    predicted = read_image_file(path)  # what `vmunet predict` reads
    assert sample.std() > 0, "constant image"
    for channel in range(3):
        np.testing.assert_array_equal(sample[..., channel], predicted.astype(np.float32))


# 5. NIfTI files of one case must share their affine

def make_nifti_case(root, label_affine, second_channel_affine=None):
    affine = np.diag([0.9, 0.8, 2.0, 1.0])
    channels = {"0": "T1"} if second_channel_affine is None else {"0": "T1", "1": "T2"}
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": {"background": 0, "a": 1}}))
    image = np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / "c1_0000.nii.gz"))
    if second_channel_affine is not None:
        nib.save(nib.Nifti1Image(image, second_channel_affine), str(root / "imagesTr" / "c1_0001.nii.gz"))
    nib.save(nib.Nifti1Image((image > 0).astype(np.uint8), label_affine), str(root / "labelsTr" / "c1.nii.gz"))
    return root


def test_label_with_another_affine_is_rejected_with_both_affines(tmp_path):
    shifted = np.diag([0.9, 0.8, 2.0, 1.0])
    shifted[0, 3] = 5.0  # the same shape, 5 mm elsewhere
    volumes = NiftiVolumes(make_nifti_case(tmp_path / "d", shifted))
    with pytest.raises(ValueError, match="c1.nii.gz: affine .*0.9 0 0 5.* differs from c1_0000.nii.gz's .*0.9 0 0 0"):
        volumes[0]
    noisy = np.diag([0.9, 0.8, 2.0, 1.0]) + 1e-7  # float noise of a header is accepted
    assert NiftiVolumes(make_nifti_case(tmp_path / "n", noisy))[0]["label"].shape == (3, 16, 16)


def test_channels_with_different_affines_are_rejected(tmp_path):
    other = np.diag([1.0, 0.8, 2.0, 1.0])
    volumes = NiftiVolumes(make_nifti_case(tmp_path / "d", np.diag([0.9, 0.8, 2.0, 1.0]), other))
    with pytest.raises(ValueError, match="c1_0001.nii.gz: affine .* differs from c1_0000.nii.gz's"):
        volumes[0]


# 7. a dataset too small to hold out a selection set

def test_one_image_dataset_says_so_up_front_and_selects_by_training_loss(capsys, tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 1, "val": 1})
    run_dir = tmp_path / "run"
    code, err, out = run_cli(capsys, "train", *TINY, "--epochs", 3, "--set", "lr=0.01", "--data", data,
                             "--run-dir", run_dir)
    assert code == 0, err
    lines = out.splitlines()
    warning = next(i for i, line in enumerate(lines) if "no samples to select the best checkpoint on" in line)
    assert warning < next(i for i, line in enumerate(lines) if line.startswith("epoch 1/"))
    assert "lowest training loss" in lines[warning] and "nan" not in out
    rows = (run_dir / "history.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in rows]
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] == 1 + int(np.argmin(losses))


# 9. one line instead of a traceback

@pytest.mark.parametrize("setting, message", [
    ("betas=0.9", "--set: betas must be a list of 2 numbers, e.g. [0.9, 0.999] (got 0.9)"),
    ("num_classes=abc", "--set: num_classes must be an integer (got 'abc')"),
    ("lr=null", "--set: lr must be a number (got None)"),
    ("lr=-0.5", "config: lr must be > 0 (got -0.5)"),
])
def test_config_type_errors_are_one_line(capsys, tmp_path, setting, message):
    code, err, _ = run_cli(capsys, "train", *TINY, "--data", tmp_path, "--run-dir", tmp_path / "r", "--set", setting)
    assert (code, err) == (2, f"vmunet train: error: {message}")


def test_yaml_type_error_names_the_file(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("betas: 0.9\n")
    code, err, _ = run_cli(capsys, "train", "--config", config, "--run-dir", tmp_path / "r")
    assert code == 2 and err.startswith(f"vmunet train: error: {config}: betas must be a list of 2 numbers")


@pytest.mark.parametrize("device, message", [("foo", "unknown device 'foo'"), ("mps", "device 'mps' requested but"),
                                             ("cuda:7", "device 'cuda:7' requested but")])
def test_unknown_or_unavailable_devices_are_one_line(capsys, trained, tmp_path, device, message):
    if device == "mps" and torch.backends.mps.is_available() or device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("available here")
    data, run_dir = trained
    code, err, _ = run_cli(capsys, "train", *TINY, "--data", data, "--run-dir", tmp_path / "r", "--device", device)
    assert code == 2 and message in err and "\n" not in err
    code, err, _ = run_cli(capsys, "predict", "--run-dir", run_dir, data / "val" / "images", "--out", tmp_path / "o",
                           "--device", device)
    assert code == 2 and message in err and "\n" not in err


def test_out_of_memory_says_what_was_asked_for(capsys, trained, tmp_path, monkeypatch):
    """The allocator's failure as the CPU reports it, at the first forward pass."""
    import vmunet.models.vmunet as network

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried "
                           "to allocate 1099511627776 bytes.")

    monkeypatch.setattr(network.VMUNet, "forward", no_memory)
    data, _ = trained
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", data, "--run-dir", tmp_path / "r",
                           "--batch-size", 2)
    assert code == 2 and "\n" not in err
    assert "out of memory on cpu training vmunet-tiny at image_size 32, batch 2" in err
    assert "smaller --image-size or --batch-size" in err


def test_evaluate_on_a_run_whose_config_is_not_yaml(capsys, trained, tmp_path):
    import shutil

    _, run_dir = trained
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "config.yaml").write_text("epochs: [1, 2\n")
    code, err, _ = run_cli(capsys, "evaluate", "--run-dir", broken, "--no-progress")
    assert code == 2 and err.startswith(f"vmunet evaluate: error: {broken / 'config.yaml'}: not valid YAML")
    assert "\n" not in err


@pytest.mark.parametrize("workers", [0, 2])
def test_data_error_in_a_loader_worker_is_the_same_one_line(capsys, tmp_path, workers):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    for image in (data / "train" / "images").iterdir():
        image.write_bytes(b"")  # every image empty: the first one read fails, whichever rank or worker reads it
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", data, "--run-dir", tmp_path / "r",
                           "--num-workers", workers)
    assert code == 2 and "\n" not in err
    assert err.startswith("vmunet train: error: ") and ": cannot read image: empty file (0 bytes)" in err


# 10. clear messages

def test_float_labels_are_shown_as_stored(tmp_path):
    from vmunet.io.checks import check_labels

    with pytest.raises(ValueError, match=r"non-integer values \[1.0000001\]"):
        check_labels(np.array([0, 1.0000001], np.float32), 2, "f")


def test_dangling_image_symlink_is_named_as_such(tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 2})
    image = sorted((data / "train" / "images").iterdir())[0]
    image.unlink()
    os.symlink(tmp_path / "gone.png", image)
    with pytest.raises(ValueError, match=f"{image}: broken symbolic link"):
        IsicFolder(data, "train")


def test_jpeg_mask_is_named_not_ignored(tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 2}, official_names=True)
    mask = sorted((data / "train" / "masks").iterdir())[0]
    Image.open(mask).convert("L").save(mask.with_suffix(".jpg"))
    mask.unlink()
    with pytest.raises(ValueError, match=f"{mask.with_suffix('.jpg')}: masks must be lossless"):
        IsicFolder(data, "train")


def test_non_utf8_config_names_the_file(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes("epochs: 3 # \u00e9\n".encode("latin-1"))
    code, err, _ = run_cli(capsys, "train", "--config", config, "--run-dir", tmp_path / "r")
    assert code == 2 and err.startswith(f"vmunet train: error: {config}: not a UTF-8 text file")


def test_non_finite_loss_before_any_checkpoint_does_not_claim_one_is_kept(capsys, tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 6, "val": 1})
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", data, "--run-dir", tmp_path / "r",
                           "--batch-size", 1, "--set", "lr=1e30")
    assert code == 2 and "loss is not finite at epoch 1" in err
    assert "no checkpoint had been written" in err and "is kept" not in err


def test_vmunet_checkpoint_as_pretrained_starts_from_its_weights(capsys, trained, tmp_path):
    data, run_dir = trained
    best = run_dir / "checkpoints" / "best.pt"
    code, err, out = run_cli(capsys, "train", *TINY, "--epochs", 1, "--set", "lr=1e-12", "--set", "eta_min=0",
                             "--data", data, "--run-dir", tmp_path / "r", "--pretrained", best)
    assert code == 0, err
    assert "from a vmunet checkpoint, by name" in out and "--resume" in out
    start = load_checkpoint(best)["model"]
    after = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["model"]
    assert max(float((start[k].float() - after[k].float()).abs().max()) for k in start) < 1e-3


# 11. a failed start leaves nothing behind

def test_failed_start_leaves_no_run_folder(capsys, tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    last = sorted((data / "train" / "images").iterdir())[-1]
    last.write_bytes(b"")  # found only when read, in the first epoch
    run_dir = tmp_path / "r"
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", data, "--run-dir", run_dir,
                           "--batch-size", 1, "--set", "val_fraction=0")
    assert code == 2 and last.name in err
    assert not run_dir.exists()


def test_leftovers_in_an_existing_folder_are_removed_and_not_a_run(capsys, tmp_path):
    data = make_isic(tmp_path / "data", counts={"train": 4, "val": 1})
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    image, mask = blob_image(np.random.default_rng(0), 32, 32)
    bad = data / "train" / "masks" / sorted(p.name for p in (data / "train" / "masks").iterdir())[-1]
    Image.fromarray((mask * 7).astype(np.uint8)).save(bad)  # values 0/7: not binary, found when read
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", data, "--run-dir", run_dir,
                           "--batch-size", 1, "--set", "val_fraction=0")
    assert code == 2 and "are not binary" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]  # the user's file stays, ours are gone
    code, err, _ = run_cli(capsys, "train", *TINY, "--epochs", 1, "--data", make_isic(tmp_path / "ok"),
                           "--run-dir", run_dir)
    assert code == 0, err  # not "already holds a run"
