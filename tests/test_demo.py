"""The demo's task: the template's labels, the scanner corruption and the threshold baseline (no training)."""

import numpy as np
import pytest
from builders import UTF8_TEXT, agreement

pytest.importorskip("nilearn")

from vmunet import demo  # noqa: E402


@pytest.fixture(scope="module")
def template():
    return demo.load_template()


def test_template_becomes_a_three_class_task_on_a_32_multiple_grid(template):
    assert template.t1.shape == template.labels.shape == (189, 192, 192)
    assert set(np.unique(template.labels)) == {0, 1, 2}
    # grey matter is darker than white matter on T1
    assert template.t1[template.labels == 1].mean() < template.t1[template.labels == 2].mean()
    data = demo.demo_data(template, template.t1)
    trained = set(data.train.zs)
    for start, stop in list(demo.TEST_SLABS) + [demo.SELECTION_SLAB]:
        assert not trained & set(range(start - demo.GAP, stop + demo.GAP))  # held-out slabs never trained on
    # README: held-out slabs z 52-67 and 96-111, the selection slab 78-85, two slices of gap around each plus the
    # one slice of context a training input carries on either side, brain tissue in z 6-149: every other slice trains.
    assert demo.CONTEXT == 1
    held_out = set(range(49, 71)) | set(range(93, 115)) | set(range(75, 89))
    assert trained == set(range(6, 150)) - held_out and data.num_classes == 3
    assert data.input_channels == 3
    for z in trained:  # no training input (a slice and its neighbours) within GAP slices of a held-out slab
        for start, stop in list(demo.TEST_SLABS) + [demo.SELECTION_SLAB]:
            assert all(not start - demo.GAP <= n < stop + demo.GAP for n in (z - 1, z, z + 1))
    assert all((template.labels[z] > 0).any() for z in trained)  # every training slice holds tissue


def test_context_channels_are_the_neighbouring_slices_in_order():
    volume = np.arange(5)[:, None, None] * np.ones((5, 2, 3))  # slice z holds the value z
    stacked = demo.with_context(volume)
    assert stacked.shape == (5, 2, 3, 3)
    np.testing.assert_array_equal(stacked[2, 0, 0], [1, 2, 3])
    np.testing.assert_array_equal(stacked[0, 1, 2], [0, 0, 1])  # the edge slice repeated past the volume
    np.testing.assert_array_equal(stacked[4, 0, 1], [3, 4, 4])
    np.testing.assert_array_equal(demo.with_context(volume, [3])[0], stacked[3])


def test_a_training_sample_shares_one_bias_field_over_its_slices_with_noise_of_their_own():
    flat = np.full((96, 96, 3), 100.0, np.float32)
    noisy = demo.corrupt(flat, np.random.default_rng(0))
    assert noisy.shape == flat.shape
    smooth = [demo.ndimage.uniform_filter(noisy[..., c], 15) for c in range(3)]  # the noise averaged away
    assert np.abs(smooth[0] - smooth[0].mean()).max() > 15  # a field of up to +-30 %
    assert np.abs(smooth[0] - smooth[2]).max() < 6  # the same field on every slice (separate fields differ by ~30)
    assert np.abs(noisy[..., 0] - noisy[..., 1]).mean() > 5  # independent noise (sigma 10)


def test_corruption_is_a_bounded_smooth_field_plus_rician_noise():
    rng = np.random.default_rng(0)
    field = demo.smooth_bias_field((64, 64), rng)
    assert 0.7 - 1e-6 <= field.min() and field.max() <= 1.3 + 1e-6 and np.abs(field - 1).max() > 0.2
    assert np.abs(np.diff(field, axis=0)).max() < 0.1  # smooth
    flat = np.full((200, 200), 100.0, np.float32)
    noisy = demo.rician_noise(flat, 10.0, rng)
    assert abs(noisy.std() - 10.0) < 0.5 and noisy.min() >= 0
    zero = demo.rician_noise(np.zeros((200, 200), np.float32), 10.0, rng)
    assert abs(zero.mean() - 10.0 * np.sqrt(np.pi / 2)) < 0.3  # a Rayleigh floor, as magnitude MRI has


def test_threshold_baseline_finds_the_separating_thresholds():
    label = np.repeat(np.array([0, 1, 2]), 30)[None, None, :].repeat(4, 0).repeat(4, 1)
    image = (label * 100.0).astype(np.float32)
    result = demo.threshold_baseline([{"image": image, "label": label}])
    assert result["mean_dice"] == pytest.approx(1.0)
    assert 0 < result["thresholds"][0] <= 100 < result["thresholds"][1] <= 200


def brute_force_baseline(cases, steps):
    """Every threshold pair scored on the voxels themselves (the obvious, slow search)."""
    from vmunet.evaluation.metrics import dice

    image = np.concatenate([c["image"].ravel() for c in cases])
    truth = np.concatenate([c["label"].ravel() for c in cases])
    candidates = np.quantile(image, np.linspace(0.01, 0.99, steps))
    best = (-1.0, None)
    for i, low in enumerate(candidates):
        for high in candidates[i + 1:]:
            pred = np.digitize(image, [low, high])
            score = np.mean([dice(pred == k, truth == k) for k in (1, 2)])
            if score > best[0]:
                best = (score, [float(low), float(high)])
    return best


def test_threshold_baseline_equals_brute_force_search():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, size=(2, 30, 30))
    cases = [{"image": (label[c] * 40.0 + rng.normal(0, 25, size=(30, 30))).astype(np.float32), "label": label[c]}
             for c in range(2)]
    cases[1]["image"][:5] = 60.0  # ties: many voxels on one candidate value
    score, thresholds = brute_force_baseline(cases, steps=24)
    result = demo.threshold_baseline(cases, steps=24)
    assert result["thresholds"] == thresholds
    pooled = demo.threshold_baseline([{"image": np.concatenate([c["image"] for c in cases]),
                                       "label": np.concatenate([c["label"] for c in cases])}], steps=24)
    assert pooled["mean_dice"] == pytest.approx(score, abs=1e-12)


def test_the_demo_predicts_its_volume_through_the_runs_inference_path():
    """Normalisation, resize to the network and back, as evaluate and predict (issue 13: the demo fed the raw
    slices to the model, at their own size). The threshold model rejects inputs not resized to the network."""
    from builders import asymmetric_labels, threshold_predictor

    predictor, info = threshold_predictor(num_classes=3, image_size=64, dataset="demo")
    volume = np.stack([asymmetric_labels(50, 70, shift=s) for s in range(3)])  # (Z, X, Y), not a multiple of 32
    labels = demo.predict_volume_labels(predictor.model, info, volume.astype(np.float32))
    assert labels.shape == volume.shape and agreement(labels, volume) > 0.99


def test_the_demo_predicts_with_test_time_flips(monkeypatch):
    """demo.TTA averages the slice and its flips, so a network that is not flip-symmetric (a random convolution)
    gives labels that follow a flipped input exactly; the same network without the flips does not."""
    import torch

    from vmunet.runtime.run_folder import RunInfo

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, kernel_size=5, padding=2)  # (N, 3, S, S) -> (N, 3, S, S) logits
    info = RunInfo(model_preset="conv", model_config={"num_classes": 3, "input_channels": 3},
                   label_names=list(demo.LABEL_NAMES), normalization="none", image_size=32, dataset="demo",
                   version="test")
    volume = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)  # (Z, X, Y, C)

    def flip_agreement():
        labels = demo.predict_volume_labels(model, info, volume)
        flipped = demo.predict_volume_labels(model, info, np.ascontiguousarray(volume[:, ::-1]))
        return agreement(flipped[:, ::-1], labels)

    assert demo.TTA
    assert flip_agreement() > 0.999  # float summation order aside
    monkeypatch.setattr(demo, "TTA", False)
    assert flip_agreement() < 0.9


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """`vmunet demo --quick` as a user runs it (about a minute on 2 cores): the table and every promised file."""
    import json
    import subprocess
    import sys

    import nibabel as nib

    run_dir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "vmunet", "demo", "--quick", "--no-progress", "--run-dir",
                             str(run_dir)], capture_output=True, **UTF8_TEXT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in ("grey matter", "white matter", "mean", "threshold baseline (two thresholds chosen on the test labels)",
                "demo finished in"):
        assert row in out, row
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["cases"] == len(demo.TEST_SLABS) and set(summary["per_class"]) == {"grey matter", "white matter"}
    assert 0.3 < summary["mean_dice"] <= 1 and "threshold_baseline" in summary
    assert (run_dir / "eval" / "per_case.csv").read_text().count("\n") == len(demo.TEST_SLABS) + 2
    assert sorted(p.name for p in (run_dir / "overlays").glob("*.png")) == [
        f"slice_{(a + b) // 2:03d}.png" for a, b in demo.TEST_SLABS]
    from PIL import Image

    from vmunet.overlay import PALETTE

    for figure in (run_dir / "overlays").glob("*.png"):  # a legend swatch for grey and for white matter
        pixels = np.asarray(Image.open(figure).convert("RGB"))
        assert all(np.all(pixels == PALETTE[k], axis=-1).sum() >= 50 for k in (1, 2)), figure.name
    prediction = nib.load(run_dir / "prediction.nii.gz")
    template = demo.load_template()
    assert prediction.shape == template.full_shape
    np.testing.assert_array_equal(prediction.affine, template.affine)
    labels = np.asarray(prediction.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 2).any()
    recorded = json.loads((run_dir / "demo.json").read_text())
    assert recorded["mean_dice"] == pytest.approx(summary["mean_dice"])
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "history.csv", "run.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
