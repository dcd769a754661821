"""Readers on tiny datasets written into tmp_path; every error names the file it is about."""

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from vmunet.data import (
    IsicFolder,
    NiftiSlices,
    NiftiVolumes,
    SegmentationDataset,
    SynapseSlices,
    SynapseVolumes,
    available_splits,
    check_labels,
    read_label_names,
    train_transform,
)
from vmunet.io.nifti import write_label_volume


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h, w, seed):
    return (np.random.default_rng(seed).random((h, w)) > 0.5).astype(np.uint8)


@pytest.fixture()
def isic(tmp_path):
    """train: a.png/a.png (0/255), ISIC_0000001.jpg/ISIC_0000001_segmentation.png (0/1); val: b.png."""
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
    Image.fromarray(_rgb(6, 8, 0)).save(tmp_path / "train/images/a.png")
    Image.fromarray(_mask(6, 8, 1) * 255).save(tmp_path / "train/masks/a.png")
    Image.fromarray(_rgb(5, 7, 2)).save(tmp_path / "train/images/ISIC_0000001.jpg")
    Image.fromarray(_mask(5, 7, 3)).save(tmp_path / "train/masks/ISIC_0000001_segmentation.png")
    (tmp_path / "train/images/ATTRIBUTION.txt").write_text("not an image")
    (tmp_path / "train/images/.DS_Store").write_bytes(b"x")
    Image.fromarray(_rgb(4, 4, 4)).save(tmp_path / "val/images/b.png")
    Image.fromarray(_mask(4, 4, 5) * 255).convert("RGB").save(tmp_path / "val/masks/b.png")
    return tmp_path


def test_isic_pairs_by_stem_and_reads_raw_values(isic):
    data = IsicFolder(isic, "train")
    assert available_splits(isic) == ["train", "val"]
    assert data.case_ids == ["ISIC_0000001", "a"] and len(data) == 2
    a = data[1]
    assert a["case_id"] == "a" and a["image"].dtype == np.float32 and a["image"].shape == (6, 8, 3)
    np.testing.assert_array_equal(a["image"], _rgb(6, 8, 0).astype(np.float32))
    assert a["label"].dtype == np.int64
    np.testing.assert_array_equal(a["label"], _mask(6, 8, 1))  # 0/255 -> 0/1
    np.testing.assert_array_equal(data[0]["label"], _mask(5, 7, 3))  # 0/1 stays 0/1
    np.testing.assert_array_equal(IsicFolder(isic, "val")[0]["label"], _mask(4, 4, 5))  # RGB mask


def test_isic_unpaired_files_are_named(isic):
    Image.fromarray(_rgb(4, 4, 0)).save(isic / "train/images/lonely.png")
    with pytest.raises(ValueError, match="lonely.png: image has no mask"):
        IsicFolder(isic, "train")
    (isic / "train/images/lonely.png").unlink()
    Image.fromarray(_mask(4, 4, 0)).save(isic / "train/masks/orphan_segmentation.png")
    with pytest.raises(ValueError, match="orphan_segmentation.png: mask has no image"):
        IsicFolder(isic, "train")
    (isic / "train/masks/orphan_segmentation.png").unlink()
    Image.fromarray(_mask(6, 8, 0)).save(isic / "train/masks/a_segmentation.png")  # a second mask for "a"
    with pytest.raises(ValueError, match="two masks pair with case 'a'"):
        IsicFolder(isic, "train")


def test_isic_missing_and_empty_splits(isic, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match=r"test/images: folder not found \(splits found in .*: train, val"):
        IsicFolder(isic, "test")
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        IsicFolder(isic / "nothing", "train")
    empty = tmp_path_factory.mktemp("empty")
    (empty / "train/images").mkdir(parents=True)
    (empty / "train/masks").mkdir(parents=True)
    with pytest.raises(ValueError, match="split 'train' has no images"):
        IsicFolder(empty, "train")


def test_isic_bad_files_are_named(isic):
    data = IsicFolder(isic, "train")
    png = isic / "train/images/a.png"
    payload = png.read_bytes()
    png.write_bytes(payload[: len(payload) // 2])  # truncated
    with pytest.raises(ValueError, match=r"a\.png: cannot read image"):
        data[1]
    png.write_bytes(b"")
    with pytest.raises(ValueError, match=r"a\.png: cannot read image: empty file \(0 bytes\)"):
        data[1]
    Image.fromarray(_rgb(6, 8, 0)).save(png)
    Image.fromarray(np.full((6, 8), 7, np.uint8)).save(isic / "train/masks/a.png")
    with pytest.raises(ValueError, match=r"masks/a\.png: mask values \[7\] are not binary"):
        data[1]
    Image.fromarray(_mask(6, 9, 0)).save(isic / "train/masks/a.png")
    with pytest.raises(ValueError, match=r"a\.png and .*a\.png: image shape \(6, 8\) does not match label shape"):
        data[1]


def test_check_labels():
    assert check_labels(np.array([[0, 2]], np.uint8), 3, "x").dtype == np.int64
    np.testing.assert_array_equal(check_labels(np.array([0.0, 1.0, 2.0], np.float32), 3, "x"), [0, 1, 2])
    with pytest.raises(ValueError, match=r"f\.png: label values \[3, 9\] are outside \[0, 3\) "
                                         r"\(values found: \[0, 3, 9\]\)"):
        check_labels(np.array([0, 3, 9, 9]), 3, "f.png")
    with pytest.raises(ValueError, match=r"g: label values \[-1\]"):
        check_labels(np.array([-1, 0]), 3, "g")
    with pytest.raises(ValueError, match="h: label map has non-integer values"):
        check_labels(np.array([0.5, 1.0]), 3, "h")


@pytest.fixture()
def synapse(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    (tmp_path / "lists/lists_Synapse").mkdir(parents=True)
    names = ["case0005_slice000", "case0005_slice001"]
    for name in names:
        np.savez(tmp_path / f"train_npz/{name}.npz", image=rng.random((8, 8)).astype(np.float32),
                 label=rng.integers(0, 9, (8, 8)).astype(np.float32))
    (tmp_path / "lists/lists_Synapse/train.txt").write_text("\n".join(names) + "\n\n")
    with h5py.File(tmp_path / "test_vol_h5/case0001.npy.h5", "w") as f:
        f["image"] = rng.random((3, 8, 8)).astype(np.float32)
        f["label"] = rng.integers(0, 9, (3, 8, 8)).astype(np.float32)
    (tmp_path / "lists/lists_Synapse/test_vol.txt").write_text("case0001\n")
    return tmp_path


def test_synapse_slices_and_volumes(synapse):
    slices = SynapseSlices(synapse)
    assert len(slices) == 2 and slices.case_ids == ["case0005_slice000", "case0005_slice001"]
    s = slices[1]
    with np.load(synapse / "train_npz/case0005_slice001.npz") as raw:
        np.testing.assert_array_equal(s["image"][:, :, 0], raw["image"])
        np.testing.assert_array_equal(s["label"], raw["label"].astype(np.int64))
    assert s["image"].shape == (8, 8, 1) and s["image"].dtype == np.float32 and s["label"].dtype == np.int64
    volumes = SynapseVolumes(synapse)
    v = volumes[0]
    assert v["image"].shape == (3, 8, 8) and v["label"].shape == (3, 8, 8) and v["label"].dtype == np.int64
    assert v["spacing"] is None and v["affine"] is None and v["case_id"] == "case0001"
    assert h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE) == []  # no HDF5 file left open


def test_synapse_errors_name_the_file(synapse):
    np.savez(synapse / "train_npz/case0005_slice001.npz", image=np.zeros((8, 8)), label=np.full((8, 8), 12.0))
    with pytest.raises(ValueError, match=r"case0005_slice001\.npz: label values \[12\]"):
        SynapseSlices(synapse)[1]
    np.savez(synapse / "train_npz/case0005_slice001.npz", image=np.zeros((8, 8)), label=np.zeros((8, 7)))
    with pytest.raises(ValueError, match=r"case0005_slice001\.npz: image shape \(8, 8\) does not match"):
        SynapseSlices(synapse)[1]
    np.savez(synapse / "train_npz/case0005_slice001.npz", img=np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"^[^ ]*case0005_slice001\.npz: npz file has no key .image."):
        SynapseSlices(synapse)[1]
    (synapse / "train_npz/case0005_slice001.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match=r"case0005_slice001\.npz: cannot read npz file"):
        SynapseSlices(synapse)[1]
    (synapse / "train_npz/case0005_slice001.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case0005_slice001\.npz: file listed in train\.txt not found"):
        SynapseSlices(synapse)
    h5 = synapse / "test_vol_h5/case0001.npy.h5"
    h5.write_bytes(h5.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"case0001\.npy\.h5: cannot read HDF5 file"):
        SynapseVolumes(synapse)[0]
    with h5py.File(h5, "w") as f:
        f["image"] = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match=r"case0001\.npy\.h5: HDF5 file has no dataset 'label'"):
        SynapseVolumes(synapse)[0]
    with pytest.raises(FileNotFoundError, match=r"lists_Synapse/nope\.txt: list file not found"):
        SynapseVolumes(synapse, "nope")


def _write_nifti(path, array, zooms=(2.0, 3.0, 4.0)):
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [10.0, -5.0, 1.0]
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture()
def nnunet(tmp_path):
    """Two cases of stored shape (X, Y, Z) = (6, 5, 3) and (6, 5, 2), one channel, three labels."""
    rng = np.random.default_rng(0)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
         "numTraining": 2, "file_ending": ".nii.gz"}))
    for name, depth in (("la_001", 3), ("la_002", 2)):
        _write_nifti(tmp_path / f"imagesTr/{name}_0000.nii.gz", rng.random((6, 5, depth)).astype(np.float32))
        _write_nifti(tmp_path / f"labelsTr/{name}.nii.gz", rng.integers(0, 3, (6, 5, depth)).astype(np.uint8))
    return tmp_path


def test_nifti_volumes_axis_order_spacing_affine(nnunet):
    volumes = NiftiVolumes(nnunet)
    assert volumes.case_ids == ["la_001", "la_002"] and volumes.label_names == ["background", "liver", "tumour"]
    v = volumes[0]
    stored = np.asanyarray(nib.load(nnunet / "imagesTr/la_001_0000.nii.gz").dataobj)
    assert v["image"].shape == (3, 6, 5) and v["image"].dtype == np.float32
    np.testing.assert_array_equal(v["image"], np.moveaxis(stored, -1, 0))  # (X, Y, Z) -> (Z, X, Y)
    assert v["label"].shape == (3, 6, 5) and v["label"].dtype == np.int64
    assert v["spacing"] == (4.0, 2.0, 3.0)
    assert v["affine"][0, 0] == 2.0 and v["affine"][0, 3] == 10.0


def test_nifti_slices_match_volumes(nnunet):
    slices = NiftiSlices(nnunet)
    assert len(slices) == 5 and slices.case_ids[3] == "la_002_slice000"
    vol = NiftiVolumes(nnunet)[1]
    s = slices[4]
    assert s["case_id"] == "la_002_slice001" and s["image"].shape == (6, 5, 1)
    np.testing.assert_array_equal(s["image"][:, :, 0], vol["image"][1])
    np.testing.assert_array_equal(s["label"], vol["label"][1])
    small = NiftiSlices(nnunet, cache_bytes=1)  # evicts down to one volume
    for i in range(len(small)):
        small[i]
    assert len(small._cache) == 1


def test_nifti_multichannel_and_test_subset(nnunet):
    info = json.loads((nnunet / "dataset.json").read_text())
    info["channel_names"] = {"0": "T1", "1": "T2"}
    (nnunet / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"case 'la_001' has channels \[0\], expected 0..1"):
        NiftiVolumes(nnunet)
    for name, depth in (("la_001", 3), ("la_002", 2)):
        _write_nifti(nnunet / f"imagesTr/{name}_0001.nii.gz", np.ones((6, 5, depth), np.float32))
    v = NiftiVolumes(nnunet)[0]
    assert v["image"].shape == (3, 6, 5, 2) and np.all(v["image"][..., 1] == 1)
    assert NiftiSlices(nnunet)[0]["image"].shape == (6, 5, 2)
    (nnunet / "imagesTs").mkdir()
    for c in (0, 1):
        _write_nifti(nnunet / f"imagesTs/new_{c:04d}.nii.gz", np.zeros((4, 4, 2), np.float32))
    t = NiftiVolumes(nnunet, subset="Ts")[0]
    assert t["label"] is None and t["image"].shape == (2, 4, 4, 2)


def test_read_label_names_v1_and_v2(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"1": "left atrium", "0": "background"}}))
    assert read_label_names(tmp_path) == ["background", "left atrium"]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "b": 2}}))
    with pytest.raises(ValueError, match=r"dataset\.json: class ids \[0, 2\] are not 0..1"):
        read_label_names(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2]}}))
    with pytest.raises(ValueError, match="region-based"):
        read_label_names(tmp_path)


def test_nifti_errors_name_the_file(nnunet):
    _write_nifti(nnunet / "labelsTr/la_002.nii.gz", np.full((6, 5, 2), 5, np.uint8))
    with pytest.raises(ValueError, match=r"la_002\.nii\.gz: label values \[5\] are outside \[0, 3\)"):
        NiftiVolumes(nnunet)[1]
    _write_nifti(nnunet / "labelsTr/la_002.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"la_002\.nii\.gz \(label vs la_002_0000\.nii\.gz\): image shape"):
        NiftiVolumes(nnunet)[1]
    image = nnunet / "imagesTr/la_002_0000.nii.gz"
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"la_002_0000\.nii\.gz: cannot read NIfTI file"):
        NiftiVolumes(nnunet)[1]
    image.write_bytes(b"")
    with pytest.raises(ValueError, match=r"la_002_0000\.nii\.gz: cannot read NIfTI file: empty file"):
        NiftiVolumes(nnunet)[1]
    (nnunet / "labelsTr/la_002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"la_002\.nii\.gz: label file not found"):
        NiftiVolumes(nnunet)
    with pytest.raises(FileNotFoundError, match=r"imagesTs: folder not found"):
        NiftiVolumes(nnunet, subset="Ts")


def test_a_label_volume_written_on_its_image_grid_is_the_stored_label_file(nnunet, tmp_path):
    v = NiftiVolumes(nnunet)[0]
    out = tmp_path / "pred.nii.gz"
    write_label_volume(out, v["label"], nib.load(nnunet / "imagesTr/la_001_0000.nii.gz"))
    written = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj),
                                  np.asanyarray(nib.load(nnunet / "labelsTr/la_001.nii.gz").dataobj))
    np.testing.assert_allclose(written.affine, v["affine"])


class _Samples:
    """Random 2D samples; counts reads to show the dataset reads lazily."""

    def __init__(self, n):
        rng = np.random.default_rng(1)
        self.items = [{"image": rng.random((20, 24, 3)).astype(np.float32) * 255,
                       "label": (rng.random((20, 24)) > 0.5).astype(np.int64), "case_id": str(i)} for i in range(n)]
        self.reads = []  # indices read, in order

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.items[i]


def _epoch(loader):
    return [torch.cat(parts) for parts in zip(*list(loader))]


def test_dataset_deterministic_whatever_the_workers():
    samples = _Samples(8)
    data = SegmentationDataset(samples, train_transform("isic", 16, "minmax255"), seed=3)
    assert samples.reads == []  # building the dataset reads nothing
    x, y = data[5]
    assert samples.reads == [5]  # one sample read, on access
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y.shape == (16, 16) and y.dtype == torch.int64
    torch.testing.assert_close(data[5][0], x, rtol=0, atol=0)
    epoch0 = _epoch(torch.utils.data.DataLoader(data, batch_size=3, num_workers=0))
    data.set_epoch(1)
    epoch1 = _epoch(torch.utils.data.DataLoader(data, batch_size=3, num_workers=0))
    assert not torch.equal(epoch0[0], epoch1[0])  # a new epoch draws new augmentations
    workers = _epoch(torch.utils.data.DataLoader(data, batch_size=3, num_workers=2))
    torch.testing.assert_close(workers[0], epoch1[0], rtol=0, atol=0)
    torch.testing.assert_close(workers[1], epoch1[1], rtol=0, atol=0)
    other_seed = SegmentationDataset(data.samples, data.transform, seed=4)
    other_seed.set_epoch(1)
    assert not torch.equal(_epoch(torch.utils.data.DataLoader(other_seed, batch_size=8))[0], epoch1[0])
    with pytest.raises(ValueError, match="no samples"):
        SegmentationDataset([], data.transform)


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_volumes_spacing_follows_its_array_axes_so_hd95_is_in_mm(tmp_path, ending, axis):
    """Voxels of 0.5 x 1.5 x 4 mm (stored x, y, z); a prediction shifted by 2 voxels along one array axis of
    (D, H, W) = (z, x, y) is 2 x that axis's voxel size away: HD95 in mm through the reader's spacing."""
    from vmunet.io.cases import read_case_file, read_header
    from vmunet.evaluation.metrics import case_metrics

    stored_spacing = (0.5, 1.5, 4.0)
    truth_xyz = np.zeros((20, 18, 16), np.uint8)
    truth_xyz[6:12, 5:11, 4:10] = 1
    path = tmp_path / f"labelsTr/case{ending}"
    path.parent.mkdir()
    if ending == ".mha":
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(truth_xyz.transpose(2, 1, 0))  # SimpleITK arrays are (z, y, x)
        image.SetSpacing(stored_spacing)
        sitk.WriteImage(image, str(path))
    else:
        nib.save(nib.Nifti1Image(truth_xyz, np.diag([*stored_spacing, 1.0])), str(path))
    volume, spacing, _ = read_case_file(path, mask=True)
    assert spacing == (4.0, 0.5, 1.5) and read_header(path)[1] == spacing  # (sz, sx, sy)
    prediction = np.roll(volume, 2, axis=axis)
    row = case_metrics("volumes", prediction, {"label": volume.astype(np.int64), "spacing": spacing,
                                               "case_id": "case"}, 1, 1.0)
    assert row["hd95"][0] == pytest.approx(2 * spacing[axis])
