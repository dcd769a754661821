"""vmunet predict on a run folder built without training: PNG folders, NIfTI and .h5 volumes, failures, reruns."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vmunet.cli import add_predict_arguments, cmd_predict
from vmunet.config import TrainConfig
from vmunet.inference import Predictor
from vmunet.models import create_model
from vmunet.predict import predict_paths
from vmunet.runtime.run_folder import RunInfo, save_checkpoint, write_config, write_run_info

IMAGE_SIZE = 64  # network side: small for speed


def make_run(root: Path, num_classes=1, input_channels=3, normalization="minmax255", dataset="isic") -> Path:
    """A run folder as training writes it, with random weights (no training)."""
    torch.manual_seed(0)
    model = create_model("vmunet-tiny", num_classes=num_classes, input_channels=input_channels)
    run_dir = root / "run"
    save_checkpoint(run_dir / "checkpoints" / "best.pt", {"model": model.state_dict(), "epoch": 0})
    names = ["background", "lesion"] if num_classes == 1 else [f"class{i}" for i in range(num_classes)]
    write_run_info(run_dir, RunInfo(model_preset="vmunet-tiny", model_config=model.config, label_names=names,
                                    normalization=normalization, image_size=IMAGE_SIZE, dataset=dataset,
                                    version="test"))
    config = TrainConfig(dataset=dataset, model="vmunet-tiny", num_classes=num_classes,
                         input_channels=input_channels, image_size=IMAGE_SIZE, normalization=normalization)
    write_config(run_dir, config.to_dict())
    return run_dir


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("binary"))


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("volume"), num_classes=3, input_channels=1, normalization="zscore",
                    dataset="nifti")


def write_images(folder: Path) -> dict[str, tuple[int, int]]:
    """RGB, grey, RGBA and 16-bit grey images of different sizes; returns {stem: (H, W)}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "rgb": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
        "grey": rng.integers(0, 256, (33, 40), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (64, 64, 4), dtype=np.uint8),
        "grey16": rng.integers(0, 65535, (80, 48), dtype=np.uint16),
    }
    for stem, array in images.items():
        Image.fromarray(array).save(folder / f"{stem}.png")
    Image.fromarray(images["rgb"]).save(folder / "photo.jpg")
    return {**{stem: a.shape[:2] for stem, a in images.items()}, "photo": (50, 70)}


def write_nifti(path: Path, shape=(40, 36, 5)) -> np.ndarray:
    import nibabel as nib

    affine = np.array([[0.8, 0, 0, -10.0], [0, 0.7, 0.1, 5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    data = np.random.default_rng(1).normal(100, 30, shape).astype(np.int16)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return affine


def test_png_folder_masks_have_original_sizes_and_stems(binary_run, tmp_path):
    sizes = write_images(tmp_path / "in")
    out = tmp_path / "out"
    summary = predict_paths(binary_run, [tmp_path / "in"], out, overlay=True, save_probabilities=True,
                            batch_size=3, device="cpu")
    assert summary.exit_code == 0 and not summary.failed
    assert summary.images == len(sizes)
    assert "images/s" in summary.describe()
    for stem, size in sizes.items():
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        assert mask.shape == size and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert (out / "overlays" / f"{stem}.png").is_file()
        assert Image.open(out / "overlays" / f"{stem}.png").size == (size[1], size[0])
        with np.load(out / f"{stem}.npz") as npz:  # beside the mask: background and lesion, as nnU-Net stores
            probs = npz["probabilities"]
        assert probs.shape == (2, *size) and probs.dtype == np.float32 and probs.min() >= 0 and probs.max() <= 1
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-6)
        np.testing.assert_array_equal(probs[1] >= 0.5, mask == 255)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{stem}.png" for stem in sizes)


def test_predictor_arrays_labels_probabilities_and_tta(volume_run):
    import vmunet

    assert vmunet.Predictor is Predictor  # the top-level API mirror
    predictor = Predictor.from_run(volume_run, device="cpu")
    rgb = np.random.default_rng(2).integers(0, 256, (45, 30, 3)).astype(np.uint8)  # RGB to a 1-channel model
    result = predictor.predict(rgb)
    assert result.labels.shape == (45, 30) and result.probabilities.shape == (3, 45, 30)
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    np.testing.assert_allclose(result.probabilities.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(0))

    volume = np.random.default_rng(3).normal(size=(4, 40, 36)).astype(np.float32)
    labels = predictor.predict(volume).labels
    assert labels.shape == (4, 40, 36)

    tta = Predictor.from_run(volume_run, device="cpu", tta=True).predict(rgb)
    assert tta.labels.shape == (45, 30) and tta.probabilities.shape == (3, 45, 30)
    np.testing.assert_allclose(tta.probabilities.sum(0), 1, atol=1e-5)
    # TTA is the mean of the flipped images' probabilities, each flipped back (random weights: flips differ).
    flips = [(), (0,), (1,), (0, 1)]  # image axes (H, W)
    expected = np.mean([np.flip(predictor.predict(np.flip(rgb, axes).copy()).probabilities,
                                tuple(a + 1 for a in axes)) for axes in flips], axis=0)
    np.testing.assert_allclose(tta.probabilities, expected, atol=2e-5)
    assert not np.allclose(tta.probabilities, result.probabilities, atol=1e-3)


def test_nifti_and_h5_volumes_keep_shape_affine_and_header(volume_run, tmp_path):
    import h5py
    import nibabel as nib

    (tmp_path / "in").mkdir()
    affine = write_nifti(tmp_path / "in" / "case_0000.nii.gz")
    with h5py.File(tmp_path / "in" / "case0007.npy.h5", "w") as f:
        f["image"] = np.random.default_rng(4).random((3, 32, 40)).astype(np.float32)
        f["label"] = np.zeros((3, 32, 40), np.float32)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "slice.png")  # mixed inputs in one call
    out = tmp_path / "out"
    summary = predict_paths(volume_run, [tmp_path / "in", tmp_path / "slice.png"], out, overlay=True,
                            save_probabilities=True, device="cpu")
    assert summary.exit_code == 0, summary.failed
    assert (summary.volumes, summary.slices, summary.images) == (2, 8, 1)
    assert "slices/s" in summary.describe()

    source = nib.load(tmp_path / "in" / "case_0000.nii.gz")
    predicted = nib.load(out / "case_0000.nii.gz")
    labels = np.asarray(predicted.dataobj)
    assert labels.shape == (40, 36, 5) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_array_equal(predicted.affine, source.affine)
    np.testing.assert_allclose(predicted.affine, affine)
    np.testing.assert_array_equal(predicted.header.get_zooms(), source.header.get_zooms())
    assert predicted.header.get_xyzt_units() == source.header.get_xyzt_units()
    assert predicted.header.get_intent()[0] == "label"

    with np.load(out / "case_0000.npz") as npz:  # (K, X, Y, Z): the NIfTI's stored order
        probs = npz["probabilities"]
    assert probs.shape == (3, 40, 36, 5) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs.argmax(0), labels)
    assert list((out / "overlays").glob("case_0000_slice*.png"))

    h5_labels = np.asarray(nib.load(out / "case0007.nii.gz").dataobj)
    assert h5_labels.shape == (32, 40, 3)  # stored (H, W, D): read back as (D, H, W) by vmunet.data.nifti
    assert (out / "slice.png").is_file()

    # The Python API on the path agrees with the file, in the file's stored axis order.
    api = Predictor.from_run(volume_run, device="cpu").predict(tmp_path / "in" / "case_0000.nii.gz")
    np.testing.assert_array_equal(api.labels, labels)


def test_unreadable_input_is_reported_and_skipped(binary_run, tmp_path):
    sizes = write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"")
    (tmp_path / "in" / "empty.nii.gz").write_bytes(b"")
    lines = []
    out = tmp_path / "out"
    summary = predict_paths(binary_run, [tmp_path / "in"], out, device="cpu", report=lines.append)
    assert summary.exit_code == 1
    assert sorted(p.name for p, _ in summary.failed) == ["broken.png", "empty.nii.gz"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert any("broken.png" in line and "empty" in line for line in lines)
    for stem in sizes:
        assert (out / f"{stem}.png").is_file()
    assert not (out / "broken.png").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temp files left behind


def test_skip_existing_keeps_finished_outputs(binary_run, tmp_path):
    write_images(tmp_path / "in")
    out = tmp_path / "out"
    first = predict_paths(binary_run, [tmp_path / "in"], out, device="cpu")
    kept = out / "rgb.png"
    kept.write_bytes(kept.read_bytes())  # same content, new mtime
    stamp = kept.stat().st_mtime_ns
    (out / "grey.png").unlink()  # as if interrupted before this one
    second = predict_paths(binary_run, [tmp_path / "in"], out, device="cpu", skip_existing=True)
    assert [p.name for p in second.written] == ["grey.png"]
    assert len(second.skipped) == len(first.written) - 1
    assert kept.stat().st_mtime_ns == stamp


def test_cli_exit_codes_and_errors(binary_run, tmp_path, capsys):
    write_images(tmp_path / "in")
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    args = parser.parse_args(["--run-dir", str(binary_run), str(tmp_path / "in" / "grey.png"), "--out",
                              str(tmp_path / "out"), "--device", "cpu", "--tta", "--overlay"])
    assert cmd_predict(args) == 0
    assert "images/s" in capsys.readouterr().out
    assert (tmp_path / "out" / "overlays" / "grey.png").is_file()

    (tmp_path / "bad.png").write_bytes(b"not a png")
    args = parser.parse_args(["--run-dir", str(binary_run), str(tmp_path / "bad.png"), str(tmp_path / "in"),
                              "--out", str(tmp_path / "out2"), "--device", "cpu"])
    assert cmd_predict(args) == 1
    assert "bad.png" in capsys.readouterr().err

    with pytest.raises(FileNotFoundError, match="missing.png"):
        predict_paths(binary_run, [tmp_path / "missing.png"], tmp_path / "out3")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        Predictor.from_run(binary_run, checkpoint="last")
    (tmp_path / "in" / "rgb.jpg").write_bytes((tmp_path / "in" / "photo.jpg").read_bytes())
    with pytest.raises(ValueError, match="rgb"):  # rgb.png and rgb.jpg would both write rgb.png
        predict_paths(binary_run, [tmp_path / "in"], tmp_path / "out4")


def test_multichannel_nifti_cases_are_grouped_like_nnunet(tmp_path):
    """A 2-channel model predicts CASE_0000 + CASE_0001 as one case (CASE.nii.gz), from both channels;
    a case missing a channel and a file not named by channel are reported, not guessed."""
    import nibabel as nib

    run = make_run(tmp_path, num_classes=3, input_channels=2, normalization="zscore", dataset="nifti")
    folder = tmp_path / "in"
    folder.mkdir()
    affine = write_nifti(folder / "brain_0000.nii.gz")
    t2 = np.random.default_rng(9).normal(50, 10, (40, 36, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(t2, affine), str(folder / "brain_0001.nii.gz"))
    write_nifti(folder / "lonely_0000.nii.gz")  # its channel 1 is missing
    write_nifti(folder / "unnamed.nii.gz")
    out = tmp_path / "out"
    lines = []
    summary = predict_paths(run, [folder], out, device="cpu", report=lines.append)
    assert summary.exit_code == 1 and summary.volumes == 1
    assert sorted(p.name for p in out.iterdir()) == ["brain.nii.gz"]
    assert any("lonely" in line and "channel files [0]" in line for line in lines), lines
    assert any("unnamed.nii.gz" in line and "CASE_0000" in line for line in lines), lines

    predicted = np.asarray(nib.load(out / "brain.nii.gz").dataobj)
    np.testing.assert_array_equal(nib.load(out / "brain.nii.gz").affine, nib.load(folder / "brain_0000.nii.gz").affine)
    predictor = Predictor.from_run(run, device="cpu")
    t1 = np.asarray(nib.load(folder / "brain_0000.nii.gz").dataobj, np.float32)
    both = np.stack([np.moveaxis(t1, -1, 0), np.moveaxis(t2, -1, 0)], axis=-1)  # (D, H, W, 2)
    np.testing.assert_array_equal(np.moveaxis(predicted, -1, 0), predictor.predict_volume(both).labels)
    api = predictor.predict([folder / "brain_0000.nii.gz", folder / "brain_0001.nii.gz"])
    np.testing.assert_array_equal(api.labels, predicted)
    # The second channel matters: the same case with another T2 predicts differently.
    assert not np.array_equal(predictor.predict_volume(both[..., ::-1].copy()).labels, np.moveaxis(predicted, -1, 0))
    with pytest.raises(ValueError, match="takes 2 channels per voxel"):
        predictor.predict_volume(both[..., 0])


def test_predictor_takes_multichannel_slices_and_volumes_as_readme_says():
    """(H, W, C) slices and (D, H, W, C) volumes of a multi-channel model (issue 13: every 4-D array was an error,
    and an (H, W, 2) slice went down the volume path). The model is a known threshold of channel 0."""
    from builders import agreement, asymmetric_labels, threshold_predictor

    predictor, _ = threshold_predictor(num_classes=3, input_channels=2)
    truth = np.stack([asymmetric_labels(40, 56, shift=s) for s in range(3)])  # (D, H, W)
    noise = np.random.default_rng(0).random(truth.shape)
    volume = np.stack([truth, noise], axis=-1).astype(np.float32)  # (D, H, W, 2): channel 0 carries the classes
    result = predictor.predict(volume)
    assert result.labels.shape == (3, 40, 56) and result.probabilities.shape == (3, 3, 40, 56)
    assert agreement(result.labels, truth) > 0.99
    one = predictor.predict(volume[1])  # (H, W, 2): a slice, not a volume of 40 slices of 56 x 2
    assert one.labels.shape == (40, 56) and agreement(one.labels, truth[1]) > 0.99
    with pytest.raises(ValueError, match="volume has 3 channels, the model takes 2"):
        predictor.predict(np.zeros((2, 40, 56, 3), np.float32))


def test_a_bug_inside_prediction_propagates_instead_of_skipping_the_file(volume_run, tmp_path, monkeypatch):
    """Only reading is guarded: an error raised by the prediction itself is a bug, not 'skipped FILE'."""
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "case_0000.nii.gz")

    def broken(self, volume, keep_probabilities=False):
        raise KeyError("a programming error")

    monkeypatch.setattr(Predictor, "predict_volume", broken)
    lines = []
    with pytest.raises(KeyError, match="a programming error"):
        predict_paths(volume_run, [tmp_path / "in"], tmp_path / "out", device="cpu", report=lines.append)
    assert not lines


def threshold_run(root: Path, monkeypatch, num_classes=3, input_channels=1) -> Path:
    """A run folder whose model is replaced by the known ThresholdModel (normalisation "none")."""
    import vmunet.inference as inference
    from builders import ThresholdModel
    from vmunet.runtime.run_folder import read_run_info

    run = make_run(root, num_classes=num_classes, input_channels=input_channels, normalization="none",
                   dataset="nifti")
    monkeypatch.setattr(inference, "load_model_from_run", lambda run_dir, checkpoint="best", allow_pickle=False: (
        ThresholdModel(num_classes, input_channels), read_run_info(run_dir), {}))
    return run


def test_labels_land_where_the_structures_are_in_arrays_and_nifti_files(tmp_path, monkeypatch):
    """A model with a known output on non-square, asymmetric slices that differ from slice to slice: a flip, an
    x/y swap or a slice shuffle anywhere between the file and the written labels shows."""
    import nibabel as nib

    from builders import agreement, asymmetric_labels

    run = threshold_run(tmp_path, monkeypatch)
    predictor = Predictor.from_run(run, device="cpu")
    truth = np.stack([asymmetric_labels(40, 56, shift=2 * z) for z in range(4)])  # (D, H, W)
    labels = predictor.predict(truth.astype(np.float32)).labels
    assert labels.shape == truth.shape and agreement(labels, truth) > 0.99
    assert agreement(labels, truth[::-1]) < 0.99 and agreement(labels, truth[:, ::-1]) < 0.8  # the test can tell

    stored = np.moveaxis(truth, 0, -1).astype(np.float32)  # a NIfTI file stores (X, Y, Z) = (H, W, D)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(stored, np.diag([0.8, 0.7, 2.5, 1.0])), str(tmp_path / "in" / "case.nii.gz"))
    summary = predict_paths(run, [tmp_path / "in"], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0, summary.failed
    written = np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj)
    assert written.shape == stored.shape and agreement(written, stored) > 0.99
    assert agreement(predictor.predict(tmp_path / "in" / "case.nii.gz").labels, stored) > 0.99


def test_multichannel_case_labels_come_from_the_right_channel_in_the_right_place(tmp_path, monkeypatch):
    import nibabel as nib

    from builders import agreement, asymmetric_labels

    run = threshold_run(tmp_path, monkeypatch, input_channels=2)  # the model reads channel 0 only
    truth = np.stack([asymmetric_labels(40, 56, shift=2 * z) for z in range(3)], axis=-1).astype(np.float32)
    noise = np.random.default_rng(0).random(truth.shape).astype(np.float32) * 2
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(noise, np.eye(4)), str(folder / "brain_0001.nii.gz"))
    nib.save(nib.Nifti1Image(truth, np.eye(4)), str(folder / "brain_0000.nii.gz"))
    summary = predict_paths(run, [folder], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0, summary.failed
    written = np.asarray(nib.load(tmp_path / "out" / "brain.nii.gz").dataobj)
    assert written.shape == truth.shape and agreement(written, truth) > 0.99
