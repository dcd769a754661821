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


def test_isic_recipe_draws_a_fresh_angle_per_sample():
    draws = [T.isic_params(np.random.default_rng(i)) for i in range(400)]
    angles = [d["angle"] for d in draws if d["angle"] is not None]
    assert 160 < len(angles) < 240  # p = 0.5
    assert len(set(angles)) == len(angles) and min(angles) >= 0 and max(angles) < 360
    assert min(angles) < 30 and max(angles) > 330
    assert 160 < sum(d["hflip"] for d in draws) < 240 and 160 < sum(d["vflip"] for d in draws) < 240


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


def test_synapse_recipe_branch_probabilities():
    n = 2000
    draws = [T.synapse_params(np.random.default_rng(i)) for i in range(n)]
    rot_flip = [d for d in draws if d["k"] is not None]
    rotated = [d["angle"] for d in draws if d["angle"] is not None]
    assert 0.46 < len(rot_flip) / n < 0.54 and 0.22 < len(rotated) / n < 0.28
    assert {d["k"] for d in rot_flip} == {0, 1, 2, 3} and {d["flip_axis"] for d in rot_flip} == {0, 1}
    assert min(rotated) >= -20 and max(rotated) <= 20 and len(set(rotated)) == len(rotated)


def _all_rot_flips(t):
    return [torch.rot90(t, k, dims=(-2, -1)).flip(axis) for k in range(4) for axis in (-2, -1)]


def test_composed_flips_and_quarter_turns_are_exact():
    image, label = _blob_sample(24, 24)
    x, y = T.to_tensors(image, label)
    for hflip in (False, True):
        for vflip in (False, True):
            m = T.isic_matrix({"hflip": hflip, "vflip": vflip, "angle": None}, 24, 24)
            wx, wy = T.warp(x, y, m, (24, 24))
            dims = [d for d, f in ((-1, hflip), (-2, vflip)) if f]
            ex, ey = (x.flip(dims), y.flip(dims)) if dims else (x, y)
            torch.testing.assert_close(wx, ex, atol=1e-5, rtol=0)
            torch.testing.assert_close(wy, ey, atol=0, rtol=0)
    for k in range(4):
        for axis in (0, 1):
            m = T.synapse_matrix({"k": k, "flip_axis": axis, "angle": None}, 24, 24)
            wx, wy = T.warp(x, y, m, (24, 24))
            match = [i for i, c in enumerate(_all_rot_flips(y)) if torch.equal(c, wy)]
            assert match and torch.allclose(_all_rot_flips(x)[match[0]], wx, atol=1e-5)


def test_composed_geometry_matches_rotate_then_resize():
    """One map applied at the output size == the official order (rotate the original, then resize)."""
    image, label = _blob_sample(60, 80)
    x, y = T.to_tensors(image, label)
    m = T.isic_matrix({"hflip": False, "vflip": False, "angle": 35.0}, 60, 80)
    _, wy = T.warp(T.resize_image(x, (30, 30)), y, m, (30, 30))
    _, ry = T.rotate(x, y, 35.0)
    assert (resize_labels_to(ry, (30, 30)) != wy).float().mean() < 0.02


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
    for shape, size in [((40, 52), (32, 32)), ((13, 7), (29, 30)), ((512, 680), (256, 256)), ((512, 512), (224, 224))]:
        y = torch.randint(0, 9, shape)
        expected = torch.nn.functional.interpolate(y[None, None].float(), size=size, mode="nearest-exact")[0, 0]
        torch.testing.assert_close(resize_labels_to(y, size), expected.long())
        image = np.zeros((*shape, 1), np.float32)
        torch.testing.assert_close(eval_transform(size, "none")(image, y.numpy(), None)[1], expected.long())
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
