"""The demo's task: the template's labels, the scanner corruption and the threshold baseline (no training)."""

import numpy as np
import pytest

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
    assert len(trained) == 92 and data.num_classes == 3


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
