"""vmunet.io.limits in the CLI and the readers: a file whose header is over the limit is skipped by predict with
one line naming it and the limit, the rest predicted, exit 1, no empty --out left; the CLI still reads detached
headers (its user owns the files); DICOM series are counted from their headers; the process limit and the
config key."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import blob_image
from test_predict import make_run
from hostile_files import nifti_claiming, png_claiming
from vmunet.cli import main
from vmunet.config import TrainConfig
from vmunet.io.images import read_image_file
from vmunet.io.sitk import read_sitk_volume
from vmunet.io.limits import CLI_MAX_VOXELS, TooLarge, check_dicom_files, default_max_voxels, voxel_limit


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("limits-run"))


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("limits-volume"), num_classes=3, input_channels=1,
                    normalization="zscore", dataset="nifti")


def good_png(path: Path, seed: int = 0) -> Path:
    Image.fromarray(blob_image(np.random.default_rng(seed), 40, 48)[0]).save(path)
    return path


def test_predict_skips_bombs_with_one_line_and_predicts_the_rest(run, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good_png(inputs / "a_good.png")
    (inputs / "bomb.png").write_bytes(png_claiming(12000, 12000))  # Pillow warns and would decode it
    good_png(inputs / "z_good.png", seed=1)
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(run), str(inputs), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    bomb = [line for line in err.strip().splitlines() if "bomb.png" in line]
    assert len(bomb) == 1 and "decompression bomb limit of 89,478,485 pixels" in bomb[0], err
    assert sorted(p.name for p in out.iterdir()) == ["a_good.png", "z_good.png"]


def test_predict_skips_a_nifti_claiming_30000_cubed(volume_run, tmp_path, capsys):
    import nibabel as nib

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "huge.nii").write_bytes(nifti_claiming((30000, 30000, 30000)))  # was "error: MemoryError"
    volume = np.random.default_rng(0).normal(size=(24, 20, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), inputs / "ok.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(volume_run), str(inputs), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    huge = [line for line in err.strip().splitlines() if "huge.nii" in line]
    assert len(huge) == 1 and "30000 x 30000 x 30000" in huge[0] and f"{CLI_MAX_VOXELS:,}" in huge[0], err
    assert sorted(p.name for p in out.iterdir()) == ["ok.nii.gz"]


def test_predict_of_only_over_limit_files_leaves_no_empty_out(run, tmp_path, capsys):
    (tmp_path / "bomb.png").write_bytes(png_claiming(12000, 12000))
    out = tmp_path / "new" / "out"
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "bomb.png"), "--out", str(out),
                 "--device", "cpu"]) == 1
    assert "bomb.png" in capsys.readouterr().err and not out.exists()
    kept = tmp_path / "mine"
    kept.mkdir()  # the user's own (empty) folder stays
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "bomb.png"), "--out", str(kept),
                 "--device", "cpu"]) == 1
    assert kept.is_dir()


def test_predict_max_voxels_option(run, tmp_path, capsys):
    good_png(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "a.png"), "--out", str(out), "--device", "cpu",
                 "--max-voxels", "1000"]) == 1
    err = capsys.readouterr().err
    assert "a.png: 48 x 40 = 1,920 pixels, over the limit of 1,000 (--max-voxels)" in err
    assert main(["predict", "--run-dir", str(run), str(tmp_path / "a.png"), "--out", str(out), "--device", "cpu",
                 "--max-voxels", "1920"]) == 0
    assert default_max_voxels() == CLI_MAX_VOXELS  # the command's limit ends with it


def test_voxel_limit_and_config_key(tmp_path):
    path = good_png(tmp_path / "a.png")
    with voxel_limit(100):
        with pytest.raises(TooLarge, match="a.png: 48 x 40 = 1,920 pixels, over the limit of 100"):
            read_image_file(path)
    assert read_image_file(path).shape == (40, 48, 3)
    with pytest.raises(ValueError, match="max_voxels must be >= 1"):
        TrainConfig(max_voxels=0).validate()
    assert TrainConfig(max_voxels=10).validate().max_voxels == 10


def test_cli_keeps_reading_detached_headers(tmp_path):
    """Self-containment is for uploads: the CLI's own .mhd with its .raw beside it reads as before."""
    sitk = pytest.importorskip("SimpleITK")
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (z, y, x)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "scan.mhd"))
    assert (tmp_path / "scan.raw").is_file() or (tmp_path / "scan.zraw").is_file()
    volume, _ = read_sitk_volume(tmp_path / "scan.mhd")
    np.testing.assert_array_equal(volume, array.transpose(0, 2, 1))
    with voxel_limit(100):
        with pytest.raises(TooLarge, match=r"scan.mhd: 6 x 5 x 4 = 120 voxels"):
            read_sitk_volume(tmp_path / "scan.mhd")


def test_dicom_series_is_counted_from_its_headers(tmp_path):
    pytest.importorskip("SimpleITK")
    from test_dicom_and_image_policy import write_series

    write_series(tmp_path / "ct", np.zeros((5, 20, 24), np.int16))
    files = sorted((tmp_path / "ct").iterdir())
    check_dicom_files(files, tmp_path / "ct", 5 * 20 * 24)
    with pytest.raises(TooLarge, match=r"ct: the DICOM series holds more than 2,399 voxels"):
        check_dicom_files(files, tmp_path / "ct", 5 * 20 * 24 - 1)
    from vmunet.io.dicom import find_series, read_dicom_series

    series = find_series(tmp_path / "ct")[0]
    assert read_dicom_series(series)[0].shape == (5, 24, 20)
    with voxel_limit(1000), pytest.raises(TooLarge, match="ct: the DICOM series holds more than 1,000 voxels"):
        read_dicom_series(series)  # what predict and training read through
