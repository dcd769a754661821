"""Ensembles (issue 15): several run folders predicted as one, by the mean of the members' probabilities, each
member with its own preprocessing; --save-probabilities; the same ensemble behind vmunet serve."""

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import blob_image, make_isic
from vmunet.cli import build_parser, main
from vmunet.config import TrainConfig
from vmunet.inference import Ensemble, Predictor, load_predictor
from vmunet.models import create_model
from vmunet.predict import predict_paths
from vmunet.runtime.run_folder import RunInfo, save_checkpoint, write_config, write_run_info


def make_member(root: Path, name: str, seed: int, image_size: int, num_classes: int = 1, input_channels: int = 3,
                normalization: str = "minmax255", dataset: str = "isic", data: Path | None = None) -> Path:
    """A run folder as training writes it, with random weights of ``seed`` (no training)."""
    torch.manual_seed(seed)
    model = create_model("vmunet-tiny", num_classes=num_classes, input_channels=input_channels)
    run_dir = root / name
    save_checkpoint(run_dir / "checkpoints" / "best.pt", {"model": model.state_dict(), "epoch": seed})
    names = ["background", "lesion"] if num_classes == 1 else [f"class{i}" for i in range(num_classes)]
    write_run_info(run_dir, RunInfo(model_preset="vmunet-tiny", model_config=model.config, label_names=names,
                                    normalization=normalization, image_size=image_size, dataset=dataset,
                                    version="test"))
    config = TrainConfig(dataset=dataset, data=None if data is None else str(data), model="vmunet-tiny",
                         num_classes=num_classes, input_channels=input_channels, image_size=image_size,
                         normalization=normalization)
    write_config(run_dir, config.to_dict())
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Binary members that differ in weights, network size and normalisation; 3-class volume members; and members
    that cannot join them (other classes, other channels). Network sizes 32 and 64 keep the CPU time small."""
    root = tmp_path_factory.mktemp("ensemble-runs")
    data = make_isic(root / "isic", counts={"train": 2, "val": 3}, size=(40, 56))
    return {
        "a": make_member(root, "a", 1, 64, data=data),
        "b": make_member(root, "b", 2, 32, normalization="zscore", data=data),
        "c": make_member(root, "c", 7, 32, data=data),  # 32 like b: the cheap pair for the file tests
        "va": make_member(root, "va", 3, 32, num_classes=3, input_channels=1, normalization="zscore",
                          dataset="nifti"),
        "vb": make_member(root, "vb", 4, 32, num_classes=3, input_channels=1, normalization="zscore",
                          dataset="nifti"),
        "three_classes": make_member(root, "three_classes", 5, 32, num_classes=3),
        "grey": make_member(root, "grey", 6, 32, input_channels=1),
        "data": data,
    }


def test_image_probabilities_are_the_mean_of_members_with_their_own_sizes(runs):
    a, b = (Predictor.from_run(runs[k], device="cpu") for k in "ab")
    assert (a.info.image_size, b.info.image_size) == (64, 32)
    ensemble = load_predictor([runs["a"], runs["b"]], device="cpu")
    assert isinstance(ensemble, Ensemble) and ensemble.run_dirs == [runs["a"], runs["b"]]
    assert isinstance(load_predictor(runs["a"], device="cpu"), Predictor)  # one run: today's Predictor
    import vmunet

    assert vmunet.Ensemble is Ensemble and vmunet.load_predictor is load_predictor  # the top-level API mirror
    image = blob_image(np.random.default_rng(0), 45, 70)[0]  # non-square, neither member's network size
    pa, pb = a.predict(image).probabilities, b.predict(image).probabilities  # (1, 45, 70) each
    assert not np.allclose(pa, pb, atol=1e-2), "members must differ for the mean to mean something"
    result = ensemble.predict(image)
    assert result.probabilities.shape == (1, 45, 70) and result.labels.shape == (45, 70)
    mean = (pa + pb) / 2
    np.testing.assert_allclose(result.probabilities, mean, atol=1e-6)
    np.testing.assert_array_equal(result.labels, (mean[0] >= 0.5).astype(np.int64))
    # The mean decides where the members disagree (not simply one member's labels).
    disagree = (pa[0] >= 0.5) != (pb[0] >= 0.5)
    assert disagree.any()
    # Several images of different sizes in one batch: each at its own size, each the mean.
    small = blob_image(np.random.default_rng(1), 33, 40)[0]
    batch = ensemble.predict_images([image, small])
    np.testing.assert_allclose(batch[0].probabilities, mean, atol=1e-6)
    np.testing.assert_allclose(batch[1].probabilities, (a.predict(small).probabilities
                                                         + b.predict(small).probabilities) / 2, atol=1e-6)


def test_volume_probabilities_are_the_mean_and_labels_their_argmax(runs):
    va, vb = (Predictor.from_run(runs[k], device="cpu", batch_size=2) for k in ("va", "vb"))
    ensemble = Ensemble([va, vb])
    volume = np.random.default_rng(2).normal(size=(3, 40, 56)).astype(np.float32)  # (D, H, W), non-cubic
    pa = va.predict_volume(volume, keep_probabilities=True).probabilities
    pb = vb.predict_volume(volume, keep_probabilities=True).probabilities
    assert pa.shape == (3, 3, 40, 56) and not np.allclose(pa, pb, atol=1e-2)
    result = ensemble.predict_volume(volume, keep_probabilities=True)
    mean = (pa + pb) / 2
    np.testing.assert_allclose(result.probabilities, mean, atol=1e-6)
    np.testing.assert_array_equal(result.labels, mean.argmax(0))
    assert len(np.unique(result.labels)) > 1


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("other, problem", [("three_classes", "classes"), ("grey", "input channels")])
def test_members_that_disagree_are_one_line_errors_and_nothing_is_written(runs, tmp_path, capsys, other, problem):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(blob_image(np.random.default_rng(3), 40, 56)[0]).save(inputs / "x.png")
    for command in (["predict", "--run-dir", runs["a"], runs[other], inputs, "--out", tmp_path / "out"],
                    ["evaluate", "--run-dir", runs["a"], runs[other], "--out", tmp_path / "eval"],
                    ["serve", "--run-dir", runs["a"], "--run-dir", runs[other], "--port", "1"]):
        if command[0] == "serve":
            pytest.importorskip("fastapi")
            pytest.importorskip("multipart")
        code, err = run_cli(capsys, *command)
        assert code == 2 and "\n" not in err, err
        assert err.startswith(f"vmunet {command[0]}: error: ") and problem in err
        assert str(runs["a"]) in err and str(runs[other]) in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def test_evaluate_an_ensemble_needs_out_and_records_the_members(runs, tmp_path, capsys):
    code, err = run_cli(capsys, "evaluate", "--run-dir", runs["b"], runs["c"], "--no-progress")
    assert code == 2 and "--out" in err and str(runs["b"]) in err and "\n" not in err
    assert not (runs["b"] / "eval").exists()

    out = tmp_path / "ensemble-eval"
    code, err = run_cli(capsys, "evaluate", "--run-dir", runs["b"], "--run-dir", runs["c"], "--split", "val",
                        "--out", out, "--no-progress")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [m["run_dir"] for m in summary["ensemble"]] == [str(runs["b"]), str(runs["c"])]
    assert [m["epoch"] for m in summary["ensemble"]] == [2, 7]  # each member's own checkpoint
    assert (out / "per_case.csv").is_file() and not (runs["b"] / "eval").exists()
    code, err = run_cli(capsys, "evaluate", "--run-dir", runs["c"], "--split", "val", "--out", tmp_path / "one",
                        "--no-progress")  # one run with --out: there, not in the run folder
    assert code == 0, err
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["epoch"] == 7
    assert not (runs["c"] / "eval").exists()
    # The scores are the ensemble's: recompute each case's DSC from the ensemble's labels.
    from vmunet.config import config_from_dict
    from vmunet.data.splits import evaluation_cases
    from vmunet.runtime.run_folder import read_config_dict

    _, cases = evaluation_cases(config_from_dict(read_config_dict(runs["b"])), None, "val")
    ensemble = load_predictor([runs["b"], runs["c"]], device="cpu")
    rows = {row["case_id"]: row for row in summary["per_case"]}
    assert sorted(rows) == sorted(case["case_id"] for case in cases)
    for case in cases:
        labels = ensemble.predict_image(case["image"]).labels.astype(bool)
        truth = case["label"].astype(bool)
        both = labels.sum() + truth.sum()
        assert both > 0  # the blob images always hold a lesion
        np.testing.assert_allclose(rows[case["case_id"]]["dice"], 2 * (labels & truth).sum() / both, atol=1e-6)


def test_save_probabilities_npz_beside_each_mask_in_stored_axis_order(runs, tmp_path, capsys):
    import nibabel as nib

    inputs = tmp_path / "in"
    inputs.mkdir()
    image = blob_image(np.random.default_rng(4), 37, 61)[0]  # non-square
    Image.fromarray(image).save(inputs / "photo.png")
    code, err = run_cli(capsys, "predict", "--run-dir", runs["b"], runs["c"], inputs, "--out", tmp_path / "out",
                        "--save-probabilities")
    assert code == 0, err
    with np.load(tmp_path / "out" / "photo.npz") as npz:
        assert list(npz.keys()) == ["probabilities"]
        probs = npz["probabilities"]
    # One class: K = 2 (background 1 - p, lesion p), as nnU-Net stores every class.
    assert probs.dtype == np.float32 and probs.shape == (2, 37, 61)
    mean = load_predictor([runs["b"], runs["c"]], device="cpu").predict(image).probabilities[0]
    np.testing.assert_allclose(probs[1], mean, atol=1e-6)
    np.testing.assert_allclose(probs[0], 1 - mean, atol=1e-6)
    mask = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    np.testing.assert_array_equal(probs[1] >= 0.5, mask == 255)

    # A volume stored (X, Y, Z) = (40, 36, 3): probabilities (K, X, Y, Z), aligned with the label file.
    data = np.random.default_rng(5).normal(100, 30, (40, 36, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.7, 2.5, 1.0])), str(inputs / "scan.nii.gz"))
    (inputs / "photo.png").unlink()
    code, err = run_cli(capsys, "predict", "--run-dir", runs["va"], runs["vb"], inputs, "--out", tmp_path / "vol",
                        "--save-probabilities")
    assert code == 0, err
    with np.load(tmp_path / "vol" / "scan.npz") as npz:
        probs = npz["probabilities"]
    assert probs.dtype == np.float32 and probs.shape == (3, 40, 36, 3)
    labels = np.asarray(nib.load(tmp_path / "vol" / "scan.nii.gz").dataobj)
    assert labels.shape == (40, 36, 3) and len(np.unique(labels)) > 1
    np.testing.assert_array_equal(probs.argmax(0), labels)
    expected = load_predictor([runs["va"], runs["vb"]], device="cpu").predict(inputs / "scan.nii.gz")
    np.testing.assert_allclose(probs, expected.probabilities, atol=1e-6)


def test_two_inputs_of_one_stem_cannot_share_a_probabilities_file(runs, tmp_path, capsys):
    import nibabel as nib

    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(inputs / "case.png")
    nib.save(nib.Nifti1Image(np.zeros((20, 30, 2), np.float32), np.eye(4)), str(inputs / "case.nii.gz"))
    code, err = run_cli(capsys, "predict", "--run-dir", runs["va"], inputs, "--out", tmp_path / "out",
                        "--save-probabilities")
    assert code == 2 and "\n" not in err and "case.npz" in err and "separate --out folders" in err
    assert not (tmp_path / "out").exists()


def test_save_probabilities_of_an_mha_volume_follow_simpleitk_array_order(runs, tmp_path, capsys):
    sitk = pytest.importorskip("SimpleITK")
    inputs = tmp_path / "in"
    inputs.mkdir()
    array = np.random.default_rng(6).normal(size=(2, 30, 44)).astype(np.float32)  # SimpleITK's (z, y, x)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(inputs / "case.mha"))
    code, err = run_cli(capsys, "predict", "--run-dir", runs["va"], inputs, "--out", tmp_path / "out",
                        "--save-probabilities")
    assert code == 0, err
    with np.load(tmp_path / "out" / "case.npz") as npz:
        probs = npz["probabilities"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.mha")))
    assert probs.shape == (3, 2, 30, 44) and labels.shape == (2, 30, 44)
    np.testing.assert_array_equal(probs.argmax(0), labels)


def test_cli_forms_of_several_run_folders(runs, tmp_path):
    from vmunet.cli import split_run_folders

    parser = build_parser()
    a, b = str(runs["a"]), str(runs["b"])
    for argv in (["serve", "--run-dir", a, b], ["serve", "--run-dir", a, "--run-dir", b]):
        assert parser.parse_args(argv).run_dir == [a, b]
    assert parser.parse_args(["serve", "--run-dir", a]).run_dir == [a]
    # predict: the run folders, then the inputs, in one --run-dir list (as argparse hands them over)
    photos = tmp_path / "photos"
    photos.mkdir()
    assert split_run_folders([a, b, str(photos)], []) == ([a, b], [str(photos)])
    assert split_run_folders([a, str(photos)], ["x.png"]) == ([a], [str(photos), "x.png"])  # today's form
    assert split_run_folders([a], [str(photos)]) == ([a], [str(photos)])
    with pytest.raises(ValueError, match="INPUT"):
        split_run_folders([a, b], [])
    with pytest.raises(ValueError, match="every member"):  # one checkpoint file cannot serve two runs
        load_predictor([a, b], checkpoint=str(runs["a"] / "checkpoints" / "best.pt"))


def test_serve_with_two_run_dirs_answers_what_predict_writes(runs, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    pytest.importorskip("httpx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from vmunet.serve import create_app

    client = TestClient(create_app([runs["a"], runs["b"]], device="cpu"), base_url="http://127.0.0.1")
    info = client.get("/info").json()
    assert [m["run"] for m in info["members"]] == ["a", "b"] and [m["image_size"] for m in info["members"]] == [64, 32]
    buffer = io.BytesIO()
    Image.fromarray(blob_image(np.random.default_rng(7), 50, 70)[0]).save(buffer, format="PNG")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(buffer.getvalue())
    response = client.post("/predict", files={"file": ("x.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200, response.text
    summary = predict_paths([runs["a"], runs["b"]], [tmp_path / "in"], tmp_path / "out", device="cpu")
    assert summary.exit_code == 0
    assert response.content == (tmp_path / "out" / "x.png").read_bytes()
    served = np.asarray(Image.open(io.BytesIO(response.content)))
    only_a = predict_paths(runs["a"], [tmp_path / "in"], tmp_path / "out-a", device="cpu")
    assert only_a.exit_code == 0 and set(np.unique(served)) == {0, 255}
    assert not np.array_equal(served, np.asarray(Image.open(tmp_path / "out-a" / "x.png"))), \
        "the ensemble's mask should differ from one member's here, else the comparison proves little"


def test_docs_page_loads_its_assets_from_this_server(runs):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi_offline", reason="the serve extra's fastapi-offline serves the /docs assets")
    import re

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from vmunet.serve import create_app

    client = TestClient(create_app(runs["a"], device="cpu"), base_url="http://127.0.0.1")
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+\.(?:js|css))['"]""", page.text)
    assert len(assets) >= 2, page.text
    for url in assets:
        assert not url.startswith(("http://", "https://", "//")), f"/docs fetches {url} from elsewhere"
        assert client.get(url).status_code == 200, url
