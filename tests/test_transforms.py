"""The paper's augmentation recipes with the defects fixed; resizing for the network and back."""

import numpy as np
import pytest
import torch

import vmunet.data.transforms as T
from vmunet.data import eval_transform, normalize, resize_labels_to, resize_to, train_transform


def _blob_sample(h=40, w=52, seed=0):
    """An image whose first channel equals its label (a disc of class 3), so alignment is checkable."""
    yy, xx = np.mgrid[:h, :w]
    label = (((yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2) < (h * 0.25) ** 2).astype(np.int64) * 3
    image = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    image[:, :, 0] = label
    return image, label


def test_normalize_modes():
    img = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32) * 200 + 10
    official = (img - img.mean()) / img.std()
    official = (official - official.min()) / (official.max() - official.min()) * 255.0
    np.testing.assert_allclose(normalize(img, "minmax255"), official, atol=1e-3)
    assert normalize(img, "minmax255").dtype == np.float32
    np.testing.assert_array_equal(normalize(np.full((3, 3, 1), 7.0), "minmax255"), 0)
    np.testing.assert_array_equal(normalize(img, "none"), img)
    z = normalize(img, "zscore")
    np.testing.assert_allclose(z.mean(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1)), 1, atol=1e-4)
    with pytest.raises(ValueError, match="unknown normalization 'bogus'"):
        normalize(img, "bogus")
    with pytest.raises(ValueError, match="unknown augmentation recipe"):
        train_transform("flip", 16, "none")


def test_rotate_90_is_exact_and_keeps_image_and_label_together():
    image, label = _blob_sample(32, 32)
    x, y = T.to_tensors(image, label)
    rx, ry = T.rotate(x, y, 90.0)
    k = 1 if torch.equal(ry, torch.rot90(y, 1)) else -1  # the sign convention is free, the exactness is not
    torch.testing.assert_close(ry, torch.rot90(y, k))
    torch.testing.assert_close(rx, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("degrees", [17.0, 123.0, 301.5])
def test_rotate_any_angle_label_nearest_and_aligned(degrees):
    image, label = _blob_sample()
    x, y = T.rotate(*T.to_tensors(image, label), degrees)
    assert y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 3}  # no interpolated class ids
    assert abs(int((y == 3).sum()) - int((label == 3).sum())) < 0.1 * (label == 3).sum()  # disc stays inside
    agree = ((x[0] > 1.5) == (y == 3)).float().mean()  # image channel 0 == label, moved identically
    assert agree > 0.98


def test_isic_recipe_draws_a_fresh_angle_per_sample(monkeypatch):
    angles = []
    real = T.rotate

    def spy(x, y, degrees):
        angles.append(degrees)
        return real(x, y, degrees)

    monkeypatch.setattr(T, "rotate", spy)
    image, label = _blob_sample()
    transform = train_transform("isic", 16, "minmax255")
    for i in range(400):
        transform(image, label, np.random.default_rng(i))
    assert 160 < len(angles) < 240  # p = 0.5
    assert len(set(angles)) == len(angles) and min(angles) >= 0 and max(angles) < 360
    assert min(angles) < 30 and max(angles) > 330


def test_isic_recipe_flips_and_outputs():
    image, label = _blob_sample()
    transform = train_transform("isic", (24, 20), "minmax255")
    outs = [transform(image, label, np.random.default_rng(i)) for i in range(40)]
    for x, y in outs:
        assert x.shape == (3, 24, 20) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (24, 20) and y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 3}
        assert 0 <= x.min() and x.max() <= 255 + 1e-3
    distinct = {tuple(y.flatten().tolist()) for _, y in outs}
    assert len(distinct) > 10
    x1, y1 = transform(image, label, np.random.default_rng(7))
    x2, y2 = transform(image, label, np.random.default_rng(7))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_synapse_recipe_branch_probabilities(monkeypatch):
    calls = {"rot90": 0, "rotate": []}
    real_rot90, real_rotate = torch.rot90, T.rotate

    def rot90(t, k, dims):
        calls["rot90"] += 1
        return real_rot90(t, k, dims)

    def rotate(x, y, degrees):
        calls["rotate"].append(degrees)
        return real_rotate(x, y, degrees)

    monkeypatch.setattr(T.torch, "rot90", rot90)
    monkeypatch.setattr(T, "rotate", rotate)
    image, label = _blob_sample(24, 24)
    transform = train_transform("synapse", 16, "none")
    n = 800
    for i in range(n):
        x, y = transform(image[:, :, :1], label, np.random.default_rng(i))
        assert x.shape == (1, 16, 16) and y.shape == (16, 16)
    assert 0.44 < calls["rot90"] / 2 / n < 0.56  # image and label rotated: two calls per sample
    assert 0.20 < len(calls["rotate"]) / n < 0.30
    assert min(calls["rotate"]) >= -20 and max(calls["rotate"]) <= 20 and len(set(calls["rotate"])) > 100


def test_synapse_rot_flip_keeps_alignment():
    image, label = _blob_sample(24, 24)
    transform = train_transform("synapse", None, "none")
    for i in range(30):
        x, y = transform(image[:, :, :1], label, np.random.default_rng(i))
        # rot90/flip are exact; the small rotation may differ on a few border pixels (bilinear vs nearest)
        assert ((x[0] > 1.5).long() * 3 != y).float().mean() < 0.02


def test_label_resize_is_nearest_and_eval_keeps_labels_optional():
    label = np.zeros((40, 52), np.int64)
    label[10:30, 5:20] = 7
    label[20:22, 30:50] = 2
    image = np.random.default_rng(0).random((40, 52, 3)).astype(np.float32)
    x, y = eval_transform(32, "none")(image, label, np.random.default_rng(0))
    assert x.shape == (3, 32, 32) and set(y.unique().tolist()) <= {0, 2, 7}
    x, y = eval_transform(32, "none", resize_label=False)(image, label, np.random.default_rng(0))
    assert x.shape == (3, 32, 32) and torch.equal(y, torch.from_numpy(label))
    x, y = eval_transform(32, "none")(image, None, np.random.default_rng(0))
    assert y is None
    small = torch.tensor([[0, 1], [2, 3]])
    torch.testing.assert_close(resize_labels_to(small, (4, 4)), small.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert resize_labels_to(small[None].repeat(2, 1, 1), (4, 6)).shape == (2, 4, 6)


def test_resize_to_probabilities():
    probs = torch.rand(3, 8, 10)
    probs = probs / probs.sum(0, keepdim=True)
    up = resize_to(probs, (40, 52))
    assert up.shape == (3, 40, 52)
    torch.testing.assert_close(up.sum(0), torch.ones(40, 52))  # a convex combination stays a distribution
    assert resize_to(probs[None], (5, 5)).shape == (1, 3, 5, 5)
    assert resize_to(probs, (8, 10)) is probs or torch.equal(resize_to(probs, (8, 10)), probs)
    # Upsampling a binary map's probabilities and thresholding recovers the map up to its border.
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1
    back = resize_to(mask, (64, 64))[0] > 0.5
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[16:48, 16:48] = True
    assert (back != expected).sum() <= 4 * 32
