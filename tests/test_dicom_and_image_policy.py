"""DICOM series through predict and the one image policy of training and predict (issue 14): a series written by
SimpleITK on an anisotropic, oblique, non-square grid keeps its geometry; EXIF orientation, alpha, 16-bit and
palette images are read alike by the training datasets and by predict."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import ThresholdModel, agreement, asymmetric_labels, threshold_predictor
from vmunet.cli import main

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.4242"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.1.4241"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.2.1125.1.4243"
SPACING = (0.7, 1.3, 3.0)  # x, y, z
ORIGIN = (-12.5, 30.25, 7.0)


def oblique_direction() -> tuple[float, ...]:
    """A rotation about z by 30 degrees, then about x by 20 (a proper rotation, as DICOM's slice normal is the
    cross product of the row and column directions)."""
    a, b = np.radians(30), np.radians(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rx @ rz).ravel().tolist())


def write_series(folder: Path, array: np.ndarray, uid: str = SERIES_UID, shuffle_names: bool = True,
                 thickness: bool = True):
    """(z, y, x) int16 -> one DICOM file per slice (SimpleITK's DicomSeriesFromArray pattern); the file names do
    not follow the slice order, so the reader has to order slices by their position. Returns the volume image."""
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing(SPACING)
    volume.SetOrigin(ORIGIN)
    volume.SetDirection(oblique_direction())
    d = oblique_direction()
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    depth = volume.GetDepth()
    for z in range(depth):
        slice_ = volume[:, :, z]
        slice_.SetMetaData("0020|000e", uid)  # Series Instance UID
        slice_.SetMetaData("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))))  # row, column
        slice_.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|0013", str(z + 1))  # Instance Number
        slice_.SetMetaData("0028|0030", f"{SPACING[1]}\\{SPACING[0]}")  # Pixel Spacing: row (y), column (x)
        slice_.SetMetaData("0008|0060", "CT")
        slice_.SetMetaData("0020|000d", STUDY_UID)  # one study and frame of reference, as a scanner writes them
        slice_.SetMetaData("0020|0052", FRAME_OF_REFERENCE_UID)
        if thickness:
            slice_.SetMetaData("0018|0050", str(SPACING[2]))  # Slice Thickness
        writer.SetFileName(str(folder / f"IM{(depth - 1 - z) if shuffle_names else z:04d}.dcm"))
        writer.Execute(slice_)
    return volume


def known_run(root: Path, monkeypatch, num_classes=3) -> Path:
    from test_own_volumes import known_run as volume_run

    return volume_run(root, monkeypatch, num_classes)


def series_truth(depth=5, rows=20, columns=24) -> np.ndarray:
    """(z, y, x) class ids 0..2 that differ per slice and that no flip or transpose maps onto itself."""
    return np.stack([asymmetric_labels(rows, columns, shift=2 * z) for z in range(depth)])


def test_a_dicom_series_folder_is_one_volume_written_as_nifti_on_the_series_grid(tmp_path, monkeypatch):
    sitk = pytest.importorskip("SimpleITK")
    import nibabel as nib

    from vmunet.predict import predict_paths

    run = known_run(tmp_path, monkeypatch)
    truth = series_truth()  # (z, y, x) = 5 slices of 20 rows x 24 columns
    write_series(tmp_path / "CT_0001", truth.astype(np.int16))
    summary = predict_paths(run, [tmp_path / "CT_0001"], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0, summary.failed
    assert summary.volumes == 1 and summary.slices == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CT_0001.nii.gz"]
    written = sitk.ReadImage(str(tmp_path / "out" / "CT_0001.nii.gz"))
    assert written.GetSize() == (24, 20, 5)
    np.testing.assert_allclose(written.GetSpacing(), SPACING, atol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), ORIGIN, atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), oblique_direction(), atol=1e-5)
    labels = sitk.GetArrayFromImage(written)  # (z, y, x)
    assert labels.shape == truth.shape and agreement(labels, truth) > 0.97
    assert agreement(labels, truth[:, ::-1]) < 0.8 and agreement(labels, truth[::-1]) < 0.9  # the test can tell
    # The NIfTI affine (RAS) is the series' LPS index -> physical matrix with x and y negated.
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(oblique_direction()).reshape(3, 3) * np.asarray(SPACING)
    lps[:3, 3] = ORIGIN
    image = nib.load(tmp_path / "out" / "CT_0001.nii.gz")
    np.testing.assert_allclose(image.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    assert np.array_equal(np.asarray(image.dataobj), labels.transpose(2, 1, 0))  # nibabel's (x, y, z)


def test_a_folder_of_two_series_writes_one_file_per_series_uid(tmp_path, monkeypatch):
    pytest.importorskip("SimpleITK")
    from vmunet.predict import predict_paths

    run = known_run(tmp_path, monkeypatch)
    first, second = series_truth(3), series_truth(4)[:, ::-1]
    write_series(tmp_path / "study" / "a", first.astype(np.int16), uid="1.2.3.1")
    write_series(tmp_path / "study" / "b", np.ascontiguousarray(second).astype(np.int16), uid="1.2.3.2")
    for path in (tmp_path / "study" / "b").iterdir():
        path.rename(tmp_path / "study" / "a" / f"b_{path.name}")
    summary = predict_paths(run, [tmp_path / "study" / "a"], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0, summary.failed
    import SimpleITK as sitk

    by_name = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (tmp_path / "out").iterdir()}
    assert sorted(by_name) == ["a_1.2.3.1.nii.gz", "a_1.2.3.2.nii.gz"]
    assert agreement(by_name["a_1.2.3.1.nii.gz"], first) > 0.97
    assert agreement(by_name["a_1.2.3.2.nii.gz"], second) > 0.97


def test_dicom_seg_output_references_the_series_slices_and_holds_the_labels(tmp_path, monkeypatch, capsys):
    sitk = pytest.importorskip("SimpleITK")
    hd = pytest.importorskip("highdicom")
    import pydicom

    run = known_run(tmp_path, monkeypatch)
    truth = series_truth()
    write_series(tmp_path / "CT_0001", truth.astype(np.int16))
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "CT_0001"), "--out", str(out), "--device", "cpu",
                 "--dicom-seg"]) == 0, capsys.readouterr().err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "CT_0001.nii.gz")))  # (z, y, x)
    seg = hd.seg.segread(out / "CT_0001.seg.dcm")
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["class1", "class2"]  # the run's label names
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
    # slice z of the series: the file at image position z, whatever its name
    by_position = {}
    for path in (tmp_path / "CT_0001").iterdir():
        source = pydicom.dcmread(path)
        by_position[int(round(np.dot(np.subtract(source.ImagePositionPatient, ORIGIN),
                                     np.reshape(oblique_direction(), (3, 3))[:, 2]) / SPACING[2]))] = source
    uids = [by_position[z].SOPInstanceUID for z in range(len(by_position))]
    stored = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    assert stored.shape == truth.shape and np.array_equal(stored, labels)  # (frames, rows, columns) = (z, y, x)
    assert agreement(stored, truth) > 0.97


def test_dicom_seg_errors_name_the_extra_or_the_series_and_write_nothing(tmp_path, monkeypatch, capsys):
    import sys

    pytest.importorskip("SimpleITK")
    pytest.importorskip("highdicom")
    from vmunet.predict import predict_paths

    run = known_run(tmp_path, monkeypatch)
    write_series(tmp_path / "CT", series_truth(3).astype(np.int16), thickness=False)  # highdicom needs it
    lines = []
    summary = predict_paths(run, [tmp_path / "CT"], tmp_path / "out", device="cpu", dicom_seg=True,
                            report=lines.append)
    assert summary.exit_code == 1 and len(lines) == 1
    assert str(tmp_path / "CT") in lines[0] and "cannot write a DICOM SEG" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(ImportError, match=r"--dicom-seg needs highdicom: pip install 'vmunet\[dicom-seg\]'"):
        predict_paths(run, [tmp_path / "CT"], tmp_path / "out2", device="cpu", dicom_seg=True)
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("content", ["empty", "not-dicom"])
def test_a_dicom_folder_without_a_readable_series_is_a_one_line_error(tmp_path, monkeypatch, capsys, content):
    pytest.importorskip("SimpleITK")
    run = known_run(tmp_path, monkeypatch)
    folder = tmp_path / "CT_0002"
    folder.mkdir()
    if content == "not-dicom":
        (folder / "IM0001.dcm").write_text("a report, not a DICOM file")
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(run), str(folder), "--out", str(out), "--device", "cpu"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if str(folder) in line]
    expected = "no DICOM series that SimpleITK can read" if content == "not-dicom" else "or DICOM series"
    assert len(lines) == 1 and expected in lines[0], lines
    assert not out.exists() or not any(out.iterdir())


def test_one_slice_of_a_series_given_as_input_asks_for_its_folder(tmp_path):
    from vmunet.predict import collect_inputs

    (tmp_path / "CT").mkdir()
    (tmp_path / "CT" / "IM0001").write_bytes(b"\0" * 128 + b"DICM")  # no ending: the marker says DICOM
    files, problems = collect_inputs([tmp_path / "CT" / "IM0001"])
    assert files == [] and problems == [(tmp_path / "CT" / "IM0001", "a DICOM file: give the folder of its series "
                                                                      "as the input")]


def test_a_dicom_folder_without_simpleitk_names_the_extra(tmp_path, monkeypatch):
    import sys

    from vmunet.predict import collect_series

    (tmp_path / "CT").mkdir()
    (tmp_path / "CT" / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(ImportError, match=r"DICOM needs SimpleITK: pip install 'vmunet\[itk\]'"):
        collect_series([tmp_path / "CT"])


# --- the one image policy ---------------------------------------------------------------------------------------


def exif_rotated(path: Path, stored: np.ndarray, orientation: int) -> Path:
    """Save ``stored`` with an EXIF Orientation tag (6: display rotated 90 degrees clockwise, 8: anticlockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)
    return path


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    return np.rot90(stored, -1 if orientation == 6 else 1)  # 6: clockwise, 8: anticlockwise


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied_in_training_and_predict(tmp_path, orientation):
    from vmunet.data.folders import ClassFolder
    from vmunet.data.isic import IsicFolder
    from vmunet.io.images import read_image_file

    labels = asymmetric_labels(24, 40, binary=True)  # stored 24 x 40, displayed 40 x 24
    stored = np.repeat((labels * 200 + 20).astype(np.uint8)[..., None], 3, axis=2)
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        exif_rotated(tmp_path / split / "images" / "a.png", stored, orientation)
        # the mask was drawn on the displayed picture
        mask = (displayed(labels, orientation) * 255).astype(np.uint8)
        Image.fromarray(mask).save(tmp_path / split / "masks" / "a.png")
    sample = IsicFolder(tmp_path, "train")[0]
    assert sample["image"].shape == (40, 24, 3)
    assert np.array_equal(sample["image"][..., 0] > 100, sample["label"] == 1)
    assert np.array_equal(read_image_file(tmp_path / "train" / "images" / "a.png"), sample["image"])
    # an index mask with the same EXIF tag as its image turns with it
    exif_rotated(tmp_path / "train" / "masks" / "a.png", labels.astype(np.uint8), orientation)
    folder_sample = ClassFolder(tmp_path, "train", num_classes=2)[0]
    assert np.array_equal(folder_sample["label"], displayed(labels, orientation))

    # predict's reader and predictor: the label map has the displayed size, on the displayed pixels (a JPEG)
    exif_rotated(tmp_path / "photo.jpg", stored, orientation)
    predictor, _ = threshold_predictor(num_classes=1, input_channels=3)
    image = read_image_file(tmp_path / "photo.jpg")
    prediction = predictor.predict_image(image / 255.0)
    assert prediction.labels.shape == (40, 24)
    assert agreement(prediction.labels, displayed(labels, orientation)) > 0.97


def test_predict_writes_the_displayed_size_of_an_exif_rotated_jpeg(tmp_path, monkeypatch):
    from test_own_data import known_run as folders_run

    from vmunet.predict import predict_paths

    run = folders_run(tmp_path, monkeypatch, image_size=32)
    labels = asymmetric_labels(24, 40)  # classes 0..2
    exif_rotated(tmp_path / "in.jpg", (labels * 100).astype(np.uint8), 6)
    summary = predict_paths(run, [tmp_path / "in.jpg"], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0, summary.failed
    with Image.open(tmp_path / "out" / "in.png") as written:
        assert written.size == (24, 40)  # (W, H) displayed: the stored picture was 40 wide and 24 high


def test_an_alpha_channel_is_dropped_with_one_warning_per_file(tmp_path, caplog):
    from vmunet.io.images import read_image_file, read_rgb_image

    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    la = np.stack([np.full((8, 10), 90, np.uint8), np.full((8, 10), 255, np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    with caplog.at_level(logging.WARNING, logger="vmunet.io.images"):
        first = read_image_file(tmp_path / "rgba.png")
        assert read_rgb_image(tmp_path / "rgba.png").shape == (8, 10, 3)  # read again: no second warning
        grey = read_image_file(tmp_path / "la.png")
    assert first.shape == (8, 10, 3) and first[0, 0].tolist() == [200, 100, 50]  # kept, not composited
    assert grey.shape == (8, 10) and int(grey[0, 0]) == 90
    warned = [r.getMessage() for r in caplog.records if "alpha channel" in r.getMessage()]
    assert len(warned) == 2 and str(tmp_path / "rgba.png") in warned[0] and "RGBA" in warned[0]


def test_a_16_bit_image_gives_the_same_network_input_in_training_and_predict(tmp_path):
    from vmunet.config import TrainConfig
    from vmunet.data.folders import ClassFolder
    from vmunet.io.images import read_image_file
    from vmunet.data.transforms import eval_transform, recipe_interpolation
    from vmunet.inference import Predictor
    from vmunet.runtime.run_folder import RunInfo

    rng = np.random.default_rng(0)
    grey16 = rng.integers(1000, 60000, (24, 40)).astype(np.uint16)
    labels = asymmetric_labels(24, 40)
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(grey16).save(tmp_path / split / "images" / "a.png")
        Image.fromarray(labels.astype(np.uint8)).save(tmp_path / split / "masks" / "a.png")
    with Image.open(tmp_path / "train" / "images" / "a.png") as img:
        assert img.mode.startswith("I")  # a real 16-bit PNG
    config = TrainConfig(dataset="folders", num_classes=3, image_size=32)
    sample = ClassFolder(tmp_path, "train")[0]
    assert sample["image"].max() > 255  # not reduced to 8 bits
    interpolation = recipe_interpolation(config.augmentation)
    validation = eval_transform(config.image_size, config.normalization, interpolation=interpolation)  # train.py's
    trained_on, _ = validation(sample["image"], sample["label"], np.random.default_rng(0))
    info = RunInfo(model_preset="threshold", model_config={"num_classes": 3, "input_channels": 3},
                   label_names=["a", "b", "c"], normalization=config.normalization, image_size=32, dataset="folders",
                   version="test", interpolation=interpolation)
    predictor = Predictor(ThresholdModel(3, 3), info, device="cpu")
    predicted_on = predictor.network_input(read_image_file(tmp_path / "train" / "images" / "a.png"))
    assert trained_on.shape == predicted_on.shape == (3, 32, 32)
    assert torch_equal(trained_on, predicted_on)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_palette_image_is_read_as_colours_and_a_palette_mask_as_indices(tmp_path):
    from vmunet.data.folders import read_class_mask
    from vmunet.io.cases import read_case_file
    from vmunet.io.images import read_image_file

    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = [0, 0, 0, 250, 10, 10, 10, 240, 10]
    picture = Image.fromarray(indices, "P")
    picture.putpalette(palette)
    picture.save(tmp_path / "p.png")
    colours = read_image_file(tmp_path / "p.png")
    assert colours.shape == (2, 3, 3)
    assert colours[0, 1].tolist() == [250, 10, 10] and colours[1, 0].tolist() == [10, 240, 10]
    assert np.array_equal(read_class_mask(tmp_path / "p.png", None, 3), indices)  # a folders mask
    label, _, _ = read_case_file(tmp_path / "p.png", mask=True)  # an nnU-Net 2D label file
    assert np.array_equal(label[0], indices)
    image, _, _ = read_case_file(tmp_path / "p.png")  # the same file as an nnU-Net 2D image: colours
    assert np.array_equal(image[0], colours)
