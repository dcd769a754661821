"""Users' own volumes (issue 14): nnU-Net raw datasets of any file ending, .mha/.mhd/.nrrd through predict, the
axis orders of nibabel and SimpleITK, geometry kept on non-square, anisotropic, oblique grids."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import ThresholdModel, agreement, asymmetric_labels, organ_volume
from vmunet.cli import main
from vmunet.config import TrainConfig
from vmunet.runtime.run_folder import RunInfo, read_run_info, write_config, write_run_info

sitk = pytest.importorskip("SimpleITK")

TINY = ["--model", "vmunet-tiny", "--image-size", "32", "--no-progress", "--batch-size", "4"]
SPACING = (0.7, 1.3, 3.0)  # x, y, z
ORIGIN = (-12.5, 30.25, 7.0)


def oblique_direction() -> tuple[float, ...]:
    """A rotation about z by 30 degrees, then about x by 20: no axis along a world axis."""
    a, b = np.radians(30), np.radians(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rx @ rz).ravel().tolist())


def oblique_image(array: np.ndarray):
    """A SimpleITK image of a (z, y, x) array on an anisotropic, oblique, shifted grid."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(oblique_direction())
    return image


def known_run(root: Path, monkeypatch, num_classes=3) -> Path:
    """A volume run whose network is ThresholdModel (class = the nearest integer of the voxel value)."""
    import vmunet.inference as inference

    run = root / "run"
    names = [f"class{i}" for i in range(num_classes)]
    write_run_info(run, RunInfo(model_preset="threshold", model_config={"num_classes": num_classes,
                                                                        "input_channels": 1},
                                label_names=names, normalization="none", image_size=64, dataset="nifti",
                                version="test"))
    write_config(run, TrainConfig(dataset="nifti", num_classes=num_classes, input_channels=1, image_size=64,
                                  normalization="none").to_dict())
    monkeypatch.setattr(inference, "load_model_from_run", lambda run_dir, checkpoint="best", allow_pickle=False: (
        ThresholdModel(num_classes, 1), read_run_info(run_dir), {}))
    return run


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".mhd"])
def test_sitk_volume_round_trips_through_predict_on_its_own_grid(tmp_path, monkeypatch, ending):
    from vmunet.inference import Predictor
    from vmunet.predict import predict_paths

    run = known_run(tmp_path, monkeypatch)
    truth = np.stack([asymmetric_labels(40, 24, shift=3 * z) for z in range(3)])  # (z, y, x): 24 x 40 x 3 voxels
    (tmp_path / "in").mkdir()
    sitk.WriteImage(oblique_image(truth.astype(np.float32)), str(tmp_path / "in" / f"scan{ending}"))
    summary = predict_paths(run, [tmp_path / "in"], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0, summary.failed
    written = sitk.ReadImage(str(tmp_path / "out" / f"scan{ending}"))
    assert written.GetSize() == (24, 40, 3)
    np.testing.assert_allclose(written.GetSpacing(), SPACING)
    np.testing.assert_allclose(written.GetOrigin(), ORIGIN)
    np.testing.assert_allclose(written.GetDirection(), oblique_direction(), atol=1e-12)
    labels = sitk.GetArrayFromImage(written)  # (z, y, x)
    assert labels.shape == truth.shape and agreement(labels, truth) > 0.97
    assert agreement(labels, truth[:, ::-1]) < 0.8 and agreement(labels, truth[::-1]) < 0.97  # the test can tell
    from_python = Predictor.from_run(run, device="cpu").predict(tmp_path / "in" / f"scan{ending}").labels
    assert from_python.shape == truth.shape and agreement(from_python, truth) > 0.97  # the file's array order


def test_nibabel_and_simpleitk_read_one_file_into_the_same_axis_order(tmp_path):
    import nibabel as nib

    from vmunet.io.cases import read_case_file
    from vmunet.io.sitk import read_sitk_volume

    stored = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)  # nibabel (x, y, z)
    nib.save(nib.Nifti1Image(stored, np.diag([0.5, 0.9, 2.5, 1])), str(tmp_path / "v.nii.gz"))
    through_nibabel, spacing, _ = read_case_file(tmp_path / "v.nii.gz")
    through_sitk, image = read_sitk_volume(tmp_path / "v.nii.gz")
    assert through_nibabel.shape == (3, 5, 7) and np.array_equal(through_nibabel, stored.transpose(2, 0, 1))
    assert np.array_equal(through_sitk, through_nibabel)  # SimpleITK's own array is (z, y, x) = (3, 7, 5)
    assert sitk.GetArrayFromImage(image).shape == (3, 7, 5) and spacing == pytest.approx((2.5, 0.5, 0.9))


def make_sitk_dataset(root: Path, ending=".mha", train=4, test=2, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ending,
                                                   "labels": {"background": 0, "liver": 1, "tumour": 2}}))
    for subset, count in (("Tr", train), ("Ts", test)):
        for i in range(count):
            image, label = organ_volume(rng, 3, 32, 24, num_classes=3)  # our (D, H, W) = (z, x, y)
            name = f"case{subset}{i}"
            # SimpleITK arrays are (z, y, x)
            sitk.WriteImage(oblique_image(np.ascontiguousarray(image.transpose(0, 2, 1) * 100)),
                            str(root / f"images{subset}" / f"{name}_0000{ending}"))
            sitk.WriteImage(oblique_image(np.ascontiguousarray(label.transpose(0, 2, 1))),
                            str(root / f"labels{subset}" / f"{name}{ending}"))
    return root


def test_nnunet_mha_dataset_trains_and_evaluates_with_spacing_in_mm(tmp_path, capsys):
    from vmunet.data.nifti import NiftiVolumes

    root = make_sitk_dataset(tmp_path / "Dataset002_Liver")
    volume = NiftiVolumes(root, "Tr")[0]
    assert volume["image"].shape == (3, 32, 24) and volume["spacing"] == (3.0, 0.7, 1.3)
    run = tmp_path / "run"
    assert main(["train", "--preset", "nnunet", *TINY, "--data", str(root), "--epochs", "1",
                 "--run-dir", str(run)]) == 0, capsys.readouterr().err
    assert read_run_info(run).label_names == ["background", "liver", "tumour"]
    assert main(["evaluate", "--run-dir", str(run), "--split", "test", "--no-progress"]) == 0
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["cases"] == 2 and set(summary["per_class"]) == {"liver", "tumour"}


def test_nnunet_2d_png_dataset_rgb_channels_and_its_test_split(tmp_path, capsys):
    from vmunet.data.nifti import NiftiVolumes
    from vmunet.data.layouts.nnunet import nifti_channel_count

    root = tmp_path / "Dataset120_Road"
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                   "labels": {"background": 0, "road": 1}, "file_ending": ".png"}))
    for subset, count in (("Tr", 4), ("Ts", 2)):
        for i in range(count):
            labels = asymmetric_labels(32, 48, binary=True, shift=int(rng.integers(0, 4)))
            image = np.zeros((32, 48, 3), np.uint8)
            image[..., 1] = 60 + 120 * labels  # the road is in the green channel only
            Image.fromarray(image).save(root / f"images{subset}" / f"road{i}_0000.png")
            Image.fromarray(labels.astype(np.uint8)).save(root / f"labels{subset}" / f"road{i}.png")
    case = NiftiVolumes(root, "Ts")[1]
    assert case["image"].shape == (1, 32, 48, 3) and case["label"].shape == (1, 32, 48)
    assert np.array_equal(case["image"][0, ..., 1] > 100, case["label"][0] == 1)  # channel 1 is G, on its pixels
    assert nifti_channel_count(root) == 3
    run = tmp_path / "run"
    assert main(["train", "--preset", "nnunet", *TINY, "--data", str(root), "--epochs", "1",
                 "--run-dir", str(run)]) == 0, capsys.readouterr().err
    assert read_run_info(run).input_channels == 3
    assert main(["evaluate", "--run-dir", str(run), "--split", "test", "--no-progress"]) == 0
    assert json.loads((run / "eval" / "summary.json").read_text())["cases"] == 2


def test_bad_nnunet_inputs_are_one_line_errors(tmp_path):
    from vmunet.data.nifti import NiftiVolumes

    root = make_sitk_dataset(tmp_path / "d", train=1, test=0)
    label = sitk.ReadImage(str(root / "labelsTr" / "caseTr0.mha"))
    label.SetSpacing((0.7, 1.3, 2.0))  # another grid
    sitk.WriteImage(label, str(root / "labelsTr" / "caseTr0.mha"))
    with pytest.raises(ValueError, match=r"caseTr0\.mha: affine .* differs from caseTr0_0000\.mha's"):
        NiftiVolumes(root, "Tr")[0]
    (root / "dataset.json").write_text('{"labels": ')
    with pytest.raises(ValueError, match=r"dataset\.json: not valid JSON"):
        NiftiVolumes(root, "Tr")
    (root / "dataset.json").write_text('{"file_ending": ".mha"}')
    with pytest.raises(ValueError, match=r"dataset\.json: no 'labels' mapping"):
        NiftiVolumes(root, "Tr")
    (root / "dataset.json").write_text('{"file_ending": ".dcm", "labels": {"background": 0, "a": 1}}')
    with pytest.raises(ValueError, match=r"dataset\.json: file_ending '\.dcm' is not one of"):
        NiftiVolumes(root, "Tr")
    (root / "broken.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n")
    from vmunet.io.sitk import read_sitk_volume
    with pytest.raises(ValueError, match=r"broken\.mha: cannot read image"):
        read_sitk_volume(root / "broken.mha")


def test_a_missing_simpleitk_names_the_extra(monkeypatch, tmp_path):
    from vmunet.io.sitk import read_sitk_volume

    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(ImportError, match=r"needs SimpleITK: pip install 'vmunet\[itk\]'"):
        read_sitk_volume(tmp_path / "x.mha")
