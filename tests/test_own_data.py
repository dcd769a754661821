"""Users' own data layouts (issue 14): multi-class 2D folders, on tiny data the tests write."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import ThresholdModel, agreement, asymmetric_labels
from vmunet.cli import main
from vmunet.config import TrainConfig
from vmunet.data.folders import ClassFolder, read_class_map, read_class_mask
from vmunet.evaluation.metrics import multiclass_image_metrics
from vmunet.runtime.run_folder import RunInfo, read_run_info, write_config, write_run_info

TINY = ["--model", "vmunet-tiny", "--image-size", "32", "--no-progress", "--batch-size", "4"]
COLOURS = {"background": [0, 0, 0], "tumour": [255, 0, 0], "organ": [0, 0, 255]}


def palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> Path:
    picture = Image.fromarray(indices.astype(np.uint8), mode="P")
    picture.putpalette([c for colour in palette for c in colour])
    picture.save(path)
    return path


def make_folders(root: Path, colour: bool, counts=None, size=(32, 40), seed=0) -> Path:
    """train/val/test of RGB images whose blocks are brighter by class, masks as colours (+ labels.json) or
    as index PNGs (no labels.json)."""
    rng = np.random.default_rng(seed)
    table = np.array(list(COLOURS.values()), np.uint8)
    for split, count in (counts or {"train": 6, "val": 2, "test": 2}).items():
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            labels = asymmetric_labels(*size, shift=int(rng.integers(0, 4)))
            image = np.clip(60 + 70 * labels[..., None] + rng.normal(0, 10, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"im{i}.png")
            mask = Image.fromarray(table[labels]) if colour else Image.fromarray(labels.astype(np.uint8))
            mask.save(root / split / "masks" / f"im{i}.png")
    if colour:
        (root / "labels.json").write_text(json.dumps(COLOURS))
    return root


# ---------------------------------------------------------------- decoding masks


def test_palette_index_and_colour_masks_decode_to_the_right_classes(tmp_path):
    indices = np.array([[0, 1, 1], [2, 1, 0]])
    mask = palette_png(tmp_path / "p.png", indices, [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    assert np.array_equal(read_class_mask(mask, None, 3), indices)  # no colour map: the palette's indices
    (tmp_path / "labels.json").write_text(json.dumps({"bg": [0, 0, 0], "green": [0, 255, 0], "red": [255, 0, 0]}))
    colour_map = read_class_map(tmp_path)
    assert colour_map.names == ["bg", "green", "red"]
    # with a colour map a palette mask is read as colours: index 1 is red = class 2, index 2 green = class 1
    assert np.array_equal(read_class_mask(mask, colour_map, 3), [[0, 2, 2], [1, 2, 0]])
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.array([[[0, 255, 0], [255, 0, 0]], [[0, 0, 0], [0, 255, 0]]], np.uint8)).save(rgb)
    assert np.array_equal(read_class_mask(rgb, colour_map, 3), [[1, 2], [0, 1]])
    grey_as_rgb = tmp_path / "grey.png"
    Image.fromarray(np.repeat(np.array([[0, 1], [2, 2]], np.uint8)[..., None], 3, 2)).save(grey_as_rgb)
    assert np.array_equal(read_class_mask(grey_as_rgb, None, 3), [[0, 1], [2, 2]])
    sixteen = tmp_path / "i16.png"
    Image.fromarray(np.array([[0, 3], [1, 2]], np.uint16)).save(sixteen)
    assert np.array_equal(read_class_mask(sixteen, None, 4), [[0, 3], [1, 2]])
    (tmp_path / "labels.json").write_text(json.dumps({"background": 0, "b": 2, "a": 1}))
    assert read_class_map(tmp_path).names == ["background", "a", "b"] and read_class_map(tmp_path).colours is None


def test_bad_masks_and_labels_json_are_one_line_errors_naming_file_and_values(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(COLOURS))
    colour_map = read_class_map(tmp_path)
    odd = tmp_path / "odd.png"
    Image.fromarray(np.array([[[0, 0, 0], [7, 8, 9]]], np.uint8)).save(odd)
    with pytest.raises(ValueError, match=r"odd\.png: colours \[\(7, 8, 9\)\] are not in labels\.json"):
        read_class_mask(odd, colour_map, 3)
    with pytest.raises(ValueError, match=r"odd\.png: colour mask \(RGB\) but DATA/labels\.json maps no colours"):
        read_class_mask(odd, None, 3)
    index = tmp_path / "index.png"
    Image.fromarray(np.array([[0, 1], [3, 5]], np.uint8)).save(index)
    with pytest.raises(ValueError, match=r"index\.png: mask values \[3, 5\] are outside the 3 classes 0\.\.2"):
        read_class_mask(index, None, 3)
    for text, problem in (("{not json", "not valid JSON"), ('{"a": 0, "b": [1, 2, 3]}', "all class ids"),
                          ('{"a": 0, "b": 2}', r"class ids \[0, 2\] are not 0\.\.1"),
                          ('{"a": [0, 0, 0], "b": [0, 0, 0]}', "share a colour"), ('{"a": 0}', "at least 2")):
        (tmp_path / "labels.json").write_text(text)
        with pytest.raises(ValueError, match=rf"labels\.json: .*{problem}"):
            read_class_map(tmp_path)


def test_class_count_comes_from_the_training_masks_and_other_splits_are_checked(tmp_path):
    root = make_folders(tmp_path / "d", colour=False, counts={"train": 3, "val": 2})
    train = ClassFolder(root, "train")
    assert train.num_classes == 3 and train.label_names == ["background", "class_1", "class_2"]
    Image.fromarray(np.full((32, 40), 3, np.uint8)).save(root / "val" / "masks" / "im1.png")
    val = ClassFolder(root, "val", train.num_classes)
    with pytest.raises(ValueError, match=r"val/masks/im1\.png: mask values \[3\] are outside the 3 classes"):
        val[1]
    binary = make_folders(tmp_path / "b", colour=False, counts={"train": 2})
    for path in (binary / "train" / "masks").iterdir():
        Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8) * 255).save(path)
    with pytest.raises(ValueError, match="masks are 0/255 .binary.: use --preset isic18"):
        ClassFolder(binary, "train")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "train" / "masks" / "im0.png")
    with pytest.raises(ValueError, match=r"im0\.png and .*im0\.png: image shape \(32, 40\) does not match label"):
        ClassFolder(root, "train")[0]


# ---------------------------------------------------------------- metrics


def test_multiclass_image_metrics_by_hand():
    gt = np.zeros((4, 6), int)
    gt[0:2, 0:2] = 1  # 4 pixels of class 1
    gt[2:4, 3:6] = 2  # 6 pixels of class 2
    pred = np.zeros_like(gt)
    pred[0:2, 0:3] = 1  # 6 pixels: 4 right, 2 wrong
    # class 2 missed, class 3 absent from both
    row = multiclass_image_metrics(pred, gt, 4, case_id="x")
    assert row["dice"][0] == pytest.approx(2 * 4 / (6 + 4)) and row["iou"][0] == pytest.approx(4 / 6)
    assert row["hd95"][0] == pytest.approx(1.0)  # the extra column is one pixel from the truth's surface
    assert row["dice"][1] == 0 and row["iou"][1] == 0 and math.isnan(row["hd95"][1])
    assert all(math.isnan(row[key][2]) for key in ("dice", "iou", "hd95"))


# ---------------------------------------------------------------- end to end


def known_run(root: Path, monkeypatch, image_size: int, colours=None) -> Path:
    """A folders run whose network is ThresholdModel (class = the nearest integer of the first channel)."""
    import vmunet.evaluate as evaluate
    import vmunet.inference as inference

    run = root / "run"
    names = list(COLOURS)
    write_run_info(run, RunInfo(model_preset="threshold", model_config={"num_classes": 3, "input_channels": 3},
                                label_names=names, normalization="none", image_size=image_size, dataset="folders",
                                version="test", label_colours=colours))
    write_config(run, TrainConfig(dataset="folders", num_classes=3, input_channels=3, image_size=image_size,
                                  normalization="none", label_names=names, data=str(root / "data")).to_dict())
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"")

    def load(run_dir, checkpoint="best", allow_pickle=False, **_):
        return ThresholdModel(3, 3), read_run_info(run_dir), {"epoch": 1}

    monkeypatch.setattr(inference, "load_model_from_run", load)
    monkeypatch.setattr(evaluate, "load_model_from_run", load)
    return run


def test_evaluate_scores_each_class_with_a_known_model(tmp_path, monkeypatch, capsys):
    """Images whose pixel value is the predicted class, masks the truth: DSC, IoU and HD95 per class by hand,
    in summary.json and per_case.csv under the class names."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"background": 0, "tumour": 1, "organ": 2}))
    truth = np.zeros((32, 64), np.uint8)
    truth[4:12, 4:12] = 1  # 64 pixels
    truth[16:32, 32:64] = 2  # 512 pixels
    pred = truth.copy()
    pred[4:12, 12:16] = 1  # 32 extra tumour pixels: DSC 128/160, IoU 64/96
    pred[16:32, 32:48] = 0  # half of the organ missed: DSC 512/768, IoU 256/512
    Image.fromarray(np.repeat(pred[..., None], 3, 2)).save(root / "val" / "images" / "a.png")
    Image.fromarray(truth).save(root / "val" / "masks" / "a.png")
    run = known_run(tmp_path, monkeypatch, image_size=32)  # 32 x 64 -> 32 x 32 and back: nearest is exact here
    assert main(["evaluate", "--run-dir", str(run), "--split", "test", "--no-progress"]) == 0, capsys.readouterr().err
    summary = json.loads((run / "eval" / "summary.json").read_text())
    tumour, organ = summary["per_class"]["tumour"], summary["per_class"]["organ"]
    assert tumour["dice"] == pytest.approx(0.8, abs=0.02) and tumour["iou"] == pytest.approx(2 / 3, abs=0.02)
    assert organ["dice"] == pytest.approx(2 / 3, abs=0.02) and organ["iou"] == pytest.approx(0.5, abs=0.02)
    assert organ["hd95"] > 8 and summary["mean_iou"] == pytest.approx((tumour["iou"] + organ["iou"]) / 2)
    assert "mean_iou" in next(iter(summary["empty_mask_policy"]))
    rows = list(csv.DictReader(open(run / "eval" / "per_case.csv")))
    assert float(rows[0]["iou_organ"]) == pytest.approx(organ["iou"]) and rows[-1]["case_id"] == "mean"


def test_predict_writes_palette_index_pngs_and_legend_overlays_on_the_images_grid(tmp_path, monkeypatch):
    from vmunet.predict import predict_paths

    table = np.array(list(COLOURS.values()), np.uint8)
    run = known_run(tmp_path, monkeypatch, image_size=64, colours=table.tolist())
    truth = asymmetric_labels(40, 72)  # non-square: a transpose or flip shows
    (tmp_path / "in").mkdir()
    Image.fromarray(np.repeat(truth[..., None], 3, 2).astype(np.uint8)).save(tmp_path / "in" / "x.png")
    summary = predict_paths(run, [tmp_path / "in"], tmp_path / "out", overlay=True, device="cpu")
    assert summary.exit_code == 0, summary.failed
    written = Image.open(tmp_path / "out" / "x.png")
    assert written.mode == "P" and written.size == (72, 40)
    assert np.array_equal(np.array(written.getpalette()[:9]).reshape(3, 3), table)  # the dataset's colours
    assert agreement(np.asarray(written), truth) > 0.97 and agreement(np.asarray(written), truth[::-1]) < 0.8
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / "x.png"))
    assert overlay.shape[1] == 72 and overlay.shape[0] > 40  # the legend below the picture
    legend = overlay[40:]
    for colour in table[1:]:  # a swatch of each foreground class
        assert np.all(legend == colour, axis=-1).any()


def test_folders_train_evaluate_predict_end_to_end(tmp_path, capsys):
    root = make_folders(tmp_path / "data", colour=True)
    run = tmp_path / "run"
    assert main(["train", "--preset", "folders", *TINY, "--data", str(root), "--epochs", "1",
                 "--run-dir", str(run)]) == 0, capsys.readouterr().err
    info = read_run_info(run)
    assert info.num_classes == 3 and info.label_names == list(COLOURS) and info.label_colours == list(COLOURS.values())
    assert "the val/ folder" in capsys.readouterr().out  # test/ exists: selection on val, never on test
    assert main(["evaluate", "--run-dir", str(run), "--split", "test", "--no-progress"]) == 0
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["cases"] == 2 and set(summary["per_class"]) == {"tumour", "organ"}
    assert set(summary["per_class"]["organ"]) == {"dice", "iou", "hd95", "nsd"}
    header = next(csv.reader(open(run / "eval" / "per_case.csv")))
    assert header[:3] == ["case_id", "dice_tumour", "dice_organ"] and "iou_organ" in header
    assert main(["predict", "--run-dir", str(run), str(root / "test" / "images"), "--out", str(tmp_path / "out"),
                 "--overlay", "--device", "cpu"]) == 0
    mask = Image.open(tmp_path / "out" / "im0.png")
    assert mask.mode == "P" and mask.size == (40, 32) and np.asarray(mask).max() < 3
