"""Issue 25, messy data (items 5, 6, 8-12, 17): geometry of DICOM series, NaN/inf in 2D images, label values of
folders without labels.json, nnU-Net's ignore label, postprocessing checks, multi-frame files, polyp 0/128 masks,
and messages that name the real cause and the file."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import blob_image
from vmunet.config import read_json
from vmunet.data.folders import ClassFolder
from vmunet.data.isic import IsicFolder
from vmunet.data.nifti import NiftiVolumes, find_cases
from vmunet.data.polyp import PolypFolder
from vmunet.io.h5 import read_h5_volume
from vmunet.io.images import read_image_file
from vmunet.io.sitk import read_sitk_volume


def pairs(root: Path, count: int = 2, size=(32, 40), mask=None, seed=0) -> Path:
    """``root/{images,masks}`` of ``count`` RGB PNG images and 0/255 PNG masks (or ``mask(i)``'s array)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, blob = blob_image(rng, *size)
        Image.fromarray(image).save(root / "images" / f"c{i}.png")
        labels = mask(i) if mask is not None else (blob * 255).astype(np.uint8)
        Image.fromarray(labels).save(root / "masks" / f"c{i}.png")
    return root


def layouts(tmp_path: Path, mask=None) -> dict:
    """The same pairs in the three 2D layouts that read images by stem: ISIC, folders and polyp (training)."""
    isic = pairs(tmp_path / "isic" / "train", mask=mask).parent
    folders = pairs(tmp_path / "folders" / "train", mask=mask).parent
    polyp = pairs(tmp_path / "polyp" / "TrainDataset", mask=mask).parent
    return {"isic": (isic, lambda: IsicFolder(isic, "train")),
            "folders": (folders, lambda: ClassFolder(folders, "train", 2)),
            "polyp": (polyp, lambda: PolypFolder.train(polyp))}


# ---------------------------------------------------------------- 6. NaN / inf in 2D images


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layout", ["isic", "folders", "polyp"])
def test_a_float_image_with_a_nan_or_inf_pixel_is_refused_naming_the_file(tmp_path, layout, bad):
    root, open_split = layouts(tmp_path)[layout]
    image_dir = next(root.glob("*/images"))
    grey = np.linspace(0, 1, 32 * 40, dtype=np.float32).reshape(32, 40)
    grey[5, 7] = bad
    (image_dir / "c0.png").unlink()
    Image.fromarray(grey, mode="F").save(image_dir / "c0.tif")
    with pytest.raises(ValueError, match=r"c0\.tif: image has NaN or infinite values"):
        read_image_file(image_dir / "c0.tif")  # what predict and serve read
    dataset = open_split()
    with pytest.raises(ValueError, match=r"c0\.tif: image has NaN or infinite values"):
        dataset[dataset.case_ids.index("c0")]  # what training reads


def test_predict_skips_a_nan_tiff_naming_it_and_writes_the_others(tmp_path, monkeypatch, capsys):
    from test_cv import threshold_run
    from vmunet.cli import main

    run = threshold_run(tmp_path, monkeypatch)
    grey = np.zeros((64, 64), np.float32)
    grey[3, 4] = np.nan
    Image.fromarray(grey, mode="F").save(tmp_path / "bad.tif")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "good.png")
    code = main(["predict", "--run-dir", str(run), str(tmp_path / "bad.tif"), str(tmp_path / "good.png"), "--out",
                 str(tmp_path / "out"), "--save-probabilities"])
    assert code != 0 and f"{tmp_path / 'bad.tif'}: image has NaN or infinite values" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.npz", "good.png"]


def test_volumes_of_other_kinds_with_a_nan_are_refused_naming_the_file(tmp_path):
    import h5py
    import SimpleITK as sitk

    volume = np.ones((3, 8, 8), np.float32)
    volume[1, 2, 3] = np.nan
    with h5py.File(tmp_path / "v.npy.h5", "w") as f:
        f["image"] = volume
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "v.mha"))
    with pytest.raises(ValueError, match=r"v\.npy\.h5: image has NaN or infinite values"):
        read_h5_volume(tmp_path / "v.npy.h5")
    with pytest.raises(ValueError, match=r"v\.mha: image has NaN or infinite values"):
        read_sitk_volume(tmp_path / "v.mha")


# ---------------------------------------------------------------- 8. folders without labels.json


@pytest.mark.parametrize("kind", ["grey", "palette", "sixteen_bit"])
def test_folders_without_labels_json_refuse_label_values_that_are_not_0_to_k(tmp_path, kind):
    values = {"grey": [0, 85, 170, 255], "palette": [0, 5, 9, 12], "sixteen_bit": [0, 1000, 2000]}[kind]
    root = tmp_path / "d"
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(root / "train" / "images" / f"m{i}.png")
        labels = np.array(values, np.uint16)[np.arange(16 * 16).reshape(16, 16) % len(values)]
        if kind == "palette":
            mask = Image.fromarray(labels.astype(np.uint8), mode="P")
            mask.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
        else:
            mask = Image.fromarray(labels.astype(np.uint8 if kind != "sixteen_bit" else np.uint16))
        mask.save(root / "train" / "masks" / f"m{i}.png")
    shown = ", ".join(map(str, values))
    with pytest.raises(ValueError, match=rf"train/masks: mask values \[{shown}\] are not the class ids 0\.\.K-1, "
                                         r"and DATA/labels\.json is absent; .*labels\.json, e\.g\. \{\"background\""):
        ClassFolder(root, "train")
    if kind == "grey":  # the example is a colour map the reader accepts as it stands
        message = ""
        try:
            ClassFolder(root, "train")
        except ValueError as error:
            message = str(error)
        (root / "labels.json").write_text(message[message.index("e.g. ") + 5:])
        folder = ClassFolder(root, "train")
        assert folder.num_classes == 4
        np.testing.assert_array_equal(folder[0]["label"], np.arange(16 * 16).reshape(16, 16) % 4)


def test_folders_contiguous_index_masks_still_count_their_classes(tmp_path):
    root = pairs(tmp_path / "d" / "train", mask=lambda i: np.arange(32 * 40).reshape(32, 40).astype(np.uint8) % 3)
    assert ClassFolder(root.parent, "train").num_classes == 3


# ---------------------------------------------------------------- 11. multi-frame files


def save_frames(path: Path, frames: list[np.ndarray]) -> Path:
    pictures = [Image.fromarray(frame) for frame in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:])
    return path


@pytest.mark.parametrize("layout", ["isic", "folders", "polyp"])
def test_multi_page_tiff_images_and_animated_gif_masks_are_refused(tmp_path, layout):
    root, open_split = layouts(tmp_path)[layout]
    images, masks = next(root.glob("*/images")), next(root.glob("*/masks"))
    image = np.asarray(Image.open(images / "c0.png"))
    (images / "c0.png").unlink()
    save_frames(images / "c0.tif", [image, image[::-1]])
    with pytest.raises(ValueError, match=r"c0\.tif: holds 2 frames \(a multi-page or animated file\)"):
        read_image_file(images / "c0.tif")
    dataset = open_split()
    with pytest.raises(ValueError, match=r"c0\.tif: holds 2 frames"):
        dataset[dataset.case_ids.index("c0")]
    mask = np.asarray(Image.open(masks / "c1.png"))
    (masks / "c1.png").unlink()
    if layout == "polyp":  # its masks may be any image: a multi-page TIFF mask
        save_frames(masks / "c1.tif", [mask, 255 - mask, mask])
        name = r"c1\.tif: holds 3 frames"
    else:
        ids = mask if layout == "isic" else mask // 255  # folders: class ids 0/1
        save_frames(masks / "c1.gif", [ids, ids.max() - ids, ids])  # frames that differ (PIL merges equal ones)
        name = r"c1\.gif: holds 3 frames"
    dataset = open_split()
    with pytest.raises(ValueError, match=name):
        dataset[dataset.case_ids.index("c1")]


def test_a_camera_mpo_jpeg_reads_as_its_photo(tmp_path):
    """An MPO JPEG (what many cameras write) holds previews after the photo: not a multi-frame image to refuse."""
    photo = np.full((8, 10, 3), 40, np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", format="MPO", save_all=True,
                                append_images=[Image.fromarray(np.full((4, 5, 3), 200, np.uint8))])
    assert Image.open(tmp_path / "photo.jpg").n_frames == 2
    assert read_image_file(tmp_path / "photo.jpg").shape == (8, 10, 3)


# ---------------------------------------------------------------- 12. polyp masks that are all background


def test_polyp_training_masks_saved_as_0_128_are_refused_as_all_background(tmp_path):
    root = pairs(tmp_path / "p" / "TrainDataset", count=3, mask=lambda i: np.where(
        np.arange(32 * 40).reshape(32, 40) % 7 == 0, 128, 0).astype(np.uint8)).parent
    with pytest.raises(ValueError, match=r"TrainDataset/masks: every training mask is all background \(0\); nothing "
                                         r"to learn \(grey values found: \[0, 128\]"):
        PolypFolder.train(root)
    Image.fromarray(np.full((32, 40), 255, np.uint8)).save(root / "TrainDataset" / "masks" / "c2.png")
    assert len(PolypFolder.train(root)) == 3  # one mask with a polyp is enough


def test_polyp_jpeg_masks_saved_as_0_128_are_refused_despite_their_noise_above_128(tmp_path):
    """Kvasir-style JPEG masks at 0/128: JPEG ringing lifts a few pixels above 128, which is not a polyp."""
    root = pairs(tmp_path / "p" / "TrainDataset", count=2).parent
    masks = root / "TrainDataset" / "masks"
    for i in range(2):
        square = np.zeros((32, 40), np.uint8)
        square[8:20, 10:30] = 128
        (masks / f"c{i}.png").unlink()
        Image.fromarray(square).save(masks / f"c{i}.jpg", quality=60)
    noisy = np.asarray(Image.open(masks / "c0.jpg"))
    assert noisy.max() > 128 and noisy.max() <= 191  # the case: a few pixels pass the threshold
    with pytest.raises(ValueError, match=r"every training mask is all background \(0\); nothing to learn \(grey "
                                         r"values found: .*brightest \d+; a polyp is > 128"):
        PolypFolder.train(root)
    Image.fromarray(np.where(noisy > 64, 255, 0).astype(np.uint8)).save(masks / "c1.jpg", quality=60)
    assert len(PolypFolder.train(root)) == 2  # a 0/255 JPEG mask is a polyp mask


@pytest.mark.parametrize("dataset", ["isic", "folders"])
def test_other_layouts_refuse_a_training_split_of_all_background_masks_too(tmp_path, dataset):
    from vmunet.config import TrainConfig
    from vmunet.data.splits import prepare_training_data

    root = pairs(tmp_path / "d" / "train", count=3, mask=lambda i: np.zeros((32, 40), np.uint8)).parent
    if dataset == "folders":  # with labels.json the class count reads no mask
        (root / "labels.json").write_text(json.dumps({"background": 0, "tumour": 1}))
    with pytest.raises(ValueError, match=r"train/masks: every training mask is all background \(0\); nothing to "
                                         r"learn$"):
        prepare_training_data(TrainConfig(dataset=dataset, data=str(root)))
    Image.fromarray(np.full((32, 40), 255 if dataset == "isic" else 1, np.uint8)).save(root / "train" / "masks" /
                                                                                      "c1.png")
    assert len(prepare_training_data(TrainConfig(dataset=dataset, data=str(root))).train) > 0


# ---------------------------------------------------------------- 17. messages with the real cause


def exif_photo(path: Path, stored: np.ndarray, orientation: int = 6) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)
    return path


@pytest.mark.parametrize("layout", ["isic", "folders", "polyp"])
def test_an_exif_rotated_photo_pairs_with_a_mask_stored_as_displayed_in_every_layout(tmp_path, layout):
    """One rule: an image and its mask are compared as displayed (EXIF applied), in every layout."""
    root, open_split = layouts(tmp_path)[layout]
    images, masks = next(root.glob("*/images")), next(root.glob("*/masks"))
    stored = np.zeros((20, 30, 3), np.uint8)  # stored 20 x 30, displayed 30 x 20 (orientation 6)
    (images / "c0.png").unlink()
    exif_photo(images / "c0.jpg", stored)
    shown = np.zeros((30, 20), np.uint8)
    shown[:5] = 255 if layout != "folders" else 1
    Image.fromarray(shown).save(masks / "c0.png")
    dataset = open_split()
    sample = dataset[dataset.case_ids.index("c0")]
    assert sample["image"].shape[:2] == sample["label"].shape == (30, 20)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(masks / "c0.png")  # as stored: not as displayed
    with pytest.raises(ValueError, match=r"c0\.jpg and .*c0\.png: image shape \(30, 20\) does not match label "
                                         r"shape \(20, 30\)"):
        dataset = open_split()
        dataset[dataset.case_ids.index("c0")]


def test_a_key_given_twice_in_a_json_file_is_named(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"background": 0, "liver": 1, "liver": 2, "tumour": 3}')
    with pytest.raises(ValueError, match=r"labels\.json: key 'liver' appears twice in one object"):
        read_json(path)
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0, "a": 1}, "labels": {"background": 0}}')
    with pytest.raises(ValueError, match=r"dataset\.json: key 'labels' appears twice"):
        NiftiVolumes(tmp_path)


def test_a_json_file_that_is_not_utf8_asks_for_utf8_json(tmp_path):
    path = tmp_path / "split.json"
    path.write_bytes('{"train": ["caf\xe9"]}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"split\.json: not a UTF-8 text file \(byte \d+: .*\); save it as UTF-8 "
                                         r"JSON$"):
        read_json(path)


def test_nnunet_file_ending_that_matches_nothing_says_what_was_found(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    for name in ("a_0000.nrrd", "b_0000.nrrd"):
        (tmp_path / "imagesTr" / name).write_bytes(b"x")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}, "file_ending": ".mha"}))
    with pytest.raises(ValueError, match=r"imagesTr: no images named CASE_XXXX\.mha found \(found: a_0000\.nrrd, "
                                         r"b_0000\.nrrd; dataset\.json's file_ending is '\.mha'\)"):
        find_cases(tmp_path)


def test_a_2d_mha_in_a_3d_nnunet_set_is_named_with_its_dimension(tmp_path):
    import SimpleITK as sitk

    from builders import make_nnunet

    root = make_nnunet(tmp_path / "d", train_cases=2, test_cases=0)
    info = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**info, "file_ending": ".mha"}))
    for folder in ("imagesTr", "labelsTr"):
        for path in (root / folder).glob("*.nii.gz"):
            sitk.WriteImage(sitk.ReadImage(str(path)), str(path).replace(".nii.gz", ".mha"))
            path.unlink()
    flat = root / "imagesTr" / "caseTr001_0000.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 40), np.float32)), str(flat))
    volumes = NiftiVolumes(root)
    assert volumes[0]["image"].ndim == 3
    with pytest.raises(ValueError, match=r"caseTr001_0000\.mha: expected a one-channel 3D volume, found a 2D image of "
                                         r"size 40 x 30"):
        volumes[1]


# ---------------------------------------------------------------- 10. postprocessing checks more than the class count


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_postprocessing_chosen_for_other_class_names_or_for_volumes_is_refused(tmp_path, monkeypatch, capsys,
                                                                                command):
    from test_cv import KEEP_LARGEST, lesion_and_speck, threshold_run
    from vmunet.cli import main

    image, lesion = lesion_and_speck()
    data = tmp_path / "data"
    for sub, picture in (("images", image), ("masks", lesion * 255)):
        (data / "val" / sub).mkdir(parents=True)
        Image.fromarray(picture.astype(np.uint8)).save(data / "val" / sub / "a.png")
    run = threshold_run(tmp_path, monkeypatch, data)  # 2D, classes background, lesion
    args = {"predict": ["predict", "--run-dir", run, data / "val" / "images" / "a.png"],
            "evaluate": ["evaluate", "--run-dir", run, "--split", "test", "--no-progress"]}[command]
    cases = [({"class_names": ["background", "polyp"], "volumetric": False},
              "chosen for the classes background, polyp; this run's classes are background, lesion"),
             ({"class_names": ["background", "lesion"], "volumetric": True},
              "chosen on the components of 3D volumes; this run predicts 2D images")]
    for i, (fields, message) in enumerate(cases):
        (tmp_path / f"pp{i}.json").write_text(json.dumps({**KEEP_LARGEST, **fields}))
        out, spec = tmp_path / f"out{i}", tmp_path / f"pp{i}.json"
        code = main([str(a) for a in [*args, "--out", out, "--postprocessing", spec]])
        assert code == 2 and f"pp{i}.json: {message}" in capsys.readouterr().err
        assert command == "evaluate" or not out.exists()  # (evaluate's --out folder: another item of issue 25)
    (tmp_path / "ok.json").write_text(json.dumps({**KEEP_LARGEST, "class_names": ["background", "lesion"],
                                                  "volumetric": False}))
    assert main([str(a) for a in [*args, "--out", tmp_path / "ok", "--postprocessing", tmp_path / "ok.json"]]) == 0


# ---------------------------------------------------------------- 5. DICOM series geometry (pydicom's real files)


def ct_series(folder: Path, positions: list[float], size=None) -> Path:
    """A series of pydicom's CT_small.dcm slices (a real scanner file, 128 x 128) at ``positions`` mm along the
    slice normal (z), one SOP instance each; ``size`` {index: (rows, columns)} crops those slices."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(positions):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, z]
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        if size and i in size:
            rows, columns = size[i]
            ds.PixelData = ds.pixel_array[:rows, :columns].copy().tobytes()
            ds.Rows, ds.Columns = rows, columns
        ds.save_as(folder / f"IM{len(positions) - i:04d}")  # names not in slice order, no ending (as scanners do)
    return folder


def read_series(folder: Path):
    from vmunet.io.dicom import find_series, read_dicom_series

    (series,) = find_series(folder)
    return read_dicom_series(series)


def test_an_evenly_spaced_ct_series_reads_with_its_spacing(tmp_path):
    pytest.importorskip("SimpleITK")
    volume, image = read_series(ct_series(tmp_path / "CT", [-10.0, -7.5, -5.0, -2.5]))
    assert volume.shape == (4, 128, 128) and image.GetSpacing()[2] == pytest.approx(2.5)


@pytest.mark.parametrize("case, positions, message", [
    ("missing", [0.0, 2.0, 4.0, 8.0, 10.0], r"DICOM slices are not evenly spaced: 4 mm between IM0003 \(4 mm\) and "
                                            r"IM0002 \(8 mm\), 2 mm elsewhere \(a missing slice\?\)"),
    ("duplicate", [0.0, 2.0, 2.0, 4.0], r"two DICOM slices at the same position 2 mm along the slice normal: "
                                        r"IM0003 and IM0002 \(a duplicated slice\?\)"),
    ("uneven", [0.0, 1.0, 3.0, 4.0, 5.0], r"DICOM slices are not evenly spaced: 2 mm between IM0004"),
])
def test_a_series_with_a_gap_a_duplicate_or_uneven_spacing_is_refused_naming_folder_and_position(tmp_path, case,
                                                                                                  positions, message):
    pytest.importorskip("SimpleITK")
    folder = ct_series(tmp_path / case, positions)
    with pytest.raises(ValueError, match=rf"^{folder}: {message}"):
        read_series(folder)


def test_a_truncated_slice_is_named_instead_of_being_left_out(tmp_path):
    pytest.importorskip("SimpleITK")
    folder = ct_series(tmp_path / "CT", [0.0, 2.0, 4.0, 6.0])
    data = (folder / "IM0002").read_bytes()
    (folder / "IM0002").write_bytes(data[: len(data) // 2])  # a copy that stopped half-way
    with pytest.raises(ValueError, match=rf"^{folder / 'IM0002'}: DICOM file that cannot be read \(truncated or "
                                         r"damaged\?\); its series in .* would be read without it"):
        read_series(folder)


def test_files_of_another_kind_beside_a_series_are_still_left_alone(tmp_path):
    pytest.importorskip("SimpleITK")
    import shutil

    from pydicom.data import get_testdata_file

    folder = ct_series(tmp_path / "CT", [0.0, 2.0, 4.0])
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "report.dcm")  # a structured report: no image
    assert read_series(folder)[0].shape == (3, 128, 128)


def test_a_slice_that_cannot_be_decoded_is_named(tmp_path):
    """pydicom's JPEG-lossy.dcm (12-bit lossy JPEG): GDCM lacks the codec, says so on stderr only, and returns
    noise; two copies form a series of their own."""
    pytest.importorskip("SimpleITK")
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder = tmp_path / "lossy"
    folder.mkdir()
    for i in range(2):
        ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"s{i}.dcm")
    with pytest.raises(ValueError, match=rf"^{folder / 's0.dcm'}: the DICOM image data cannot be decoded "
                                         r"\(Unsupported JPEG data precision 12\)"):
        read_series(folder)


def test_slices_of_different_sizes_are_named_with_their_sizes(tmp_path):
    pytest.importorskip("SimpleITK")
    folder = ct_series(tmp_path / "CT", [0.0, 2.0, 4.0], size={1: (40, 30)})
    with pytest.raises(ValueError, match=rf"^{folder}: DICOM slices differ in size: IM0003 is 128 x 128, IM0002 is "
                                         r"30 x 40 \(columns x rows\)"):
        read_series(folder)


def test_predict_skips_a_series_with_a_missing_slice_naming_it_and_predicts_the_rest(tmp_path, monkeypatch):
    pytest.importorskip("SimpleITK")
    from test_dicom_and_image_policy import known_run
    from vmunet.predict import predict_paths

    run = known_run(tmp_path, monkeypatch)
    good = ct_series(tmp_path / "good", [0.0, 5.0, 10.0])
    gap = ct_series(tmp_path / "gap", [0.0, 5.0, 15.0, 20.0])
    lines = []
    summary = predict_paths(run, [good, gap], tmp_path / "out", device="cpu", report=lines.append)
    assert summary.exit_code == 1 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]
    assert lines == [f"skipped {gap}: DICOM slices are not evenly spaced: 10 mm between IM0003 (5 mm) and IM0002 "
                     "(15 mm), 5 mm elsewhere (a missing slice?)"]


# ---------------------------------------------------------------- 9. nnU-Net's ignore label: refused by name


@pytest.mark.parametrize("labels", [{"background": 0, "liver": 1, "tumour": 2, "ignore": 3},
                                    {"0": "background", "1": "liver", "2": "tumour", "3": "ignore"}])
def test_nnunet_ignore_label_is_refused_before_training_starts(tmp_path, capsys, labels):
    from builders import make_nnunet
    from vmunet.cli import main

    root = make_nnunet(tmp_path / "d", train_cases=2, test_cases=0)
    info = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**info, "labels": labels}))
    with pytest.raises(ValueError, match=r"dataset\.json: label 'ignore' \(id 3\) is nnU-Net's ignore label \(pixels "
                                         r"left out of the loss and the metrics\), which vmunet does not support"):
        NiftiVolumes(root)
    code = main(["train", "--preset", "nnunet", "--model", "vmunet-tiny", "--image-size", "32", "--no-progress",
                 "--data", str(root), "--epochs", "1", "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "dataset.json: label 'ignore' (id 3) is nnU-Net's ignore label" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_folders_labels_json_with_an_ignore_class_is_refused_the_same_way(tmp_path):
    from vmunet.data.folders import read_class_map

    for labels in ({"background": 0, "ignore": 1}, {"background": [0, 0, 0], "ignore": [9, 9, 9]}):
        (tmp_path / "labels.json").write_text(json.dumps(labels))
        with pytest.raises(ValueError, match=r"labels\.json: label 'ignore' \(id 1\) is nnU-Net's ignore label"):
            read_class_map(tmp_path)


def test_a_file_that_stops_gdcms_folder_scan_is_a_one_line_error(tmp_path):
    """pydicom's rtdose_1frame.dcm beside a series makes GDCM's scan throw (was a RuntimeError traceback)."""
    pytest.importorskip("SimpleITK")
    import shutil

    from pydicom.data import get_testdata_file

    from vmunet.io.dicom import find_series

    folder = ct_series(tmp_path / "CT", [0.0, 2.0, 4.0])
    shutil.copy(get_testdata_file("rtdose_1frame.dcm"), folder / "dose.dcm")
    with pytest.raises(ValueError, match=rf"^{folder}: GDCM cannot scan this folder's DICOM files \(.*\); move the "
                                         r"files that are not slices of a series elsewhere$"):
        find_series(folder)
