"""The losses on logits against a direct transcription of PAPER.md's formulas on probabilities."""

import pytest
import torch

from vmunet.losses import BceDiceLoss, CeDiceLoss, build_loss


def official_bce_dice(probs, target):
    """VM-UNet's BceDiceLoss: nn.BCELoss on probabilities + Dice (smooth 1) per sample, mean over the batch."""
    b = probs.shape[0]
    p, t = probs.reshape(b, -1).double(), target.reshape(b, -1).double()
    bce = torch.nn.BCELoss()(p, t)
    dice_score = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + (1 - dice_score.sum() / b)


def official_ce_dice(logits, target, k):
    """VM-UNet's CeDiceLoss: nn.CrossEntropyLoss + TransUNet's DiceLoss(softmax=True), weights 1 and 1."""
    ce = torch.nn.CrossEntropyLoss()(logits.double(), target)
    score = torch.softmax(logits.double(), dim=1)
    loss = 0.0
    for i in range(k):
        s, t = score[:, i], (target == i).double()
        intersect, y_sum, z_sum = (s * t).sum(), (t * t).sum(), (s * s).sum()
        loss = loss + (1 - (2 * intersect + 1e-5) / (z_sum + y_sum + 1e-5))
    return ce + loss / k


def test_bce_dice_matches_the_official_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 12, 10, generator=g) * 3
    target = (torch.rand(4, 1, 12, 10, generator=g) > 0.6).float()
    target[2] = 0  # a sample without foreground: Dice's smooth term matters
    ours = BceDiceLoss()(logits, target)
    torch.testing.assert_close(ours.double(), official_bce_dice(torch.sigmoid(logits), target), rtol=1e-5, atol=1e-6)
    # (B, H, W) integer targets work the same
    torch.testing.assert_close(BceDiceLoss()(logits, target[:, 0].long()), ours)


def test_bce_dice_hand_computed():
    # one pixel, logit 0 -> p 0.5, target 1: bce = ln 2; dice = (2*0.5+1)/(0.5+1+1) = 0.8
    value = BceDiceLoss()(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    torch.testing.assert_close(value, torch.tensor(0.6931471805599453 + 0.2))


def test_ce_dice_matches_the_official_formula():
    g = torch.Generator().manual_seed(1)
    k = 9
    logits = torch.randn(3, k, 8, 9, generator=g) * 2
    target = torch.randint(0, k - 2, (3, 8, 9), generator=g)  # two classes absent: smooth 1e-5 regime
    ours = CeDiceLoss(k)(logits, target)
    torch.testing.assert_close(ours.double(), official_ce_dice(logits, target, k), rtol=1e-5, atol=1e-6)


def test_ce_dice_hand_computed():
    # two classes, one pixel, equal logits: p = (0.5, 0.5), target 0. CE = ln 2.
    # class 0: 1 - (2*0.5 + s)/(0.25 + 1 + s); class 1: 1 - s/(0.25 + s)
    s = 1e-5
    expected = 0.6931471805599453 + ((1 - (1 + s) / (1.25 + s)) + (1 - s / (0.25 + s))) / 2
    value = CeDiceLoss(2)(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))
    torch.testing.assert_close(value.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)


def test_stable_for_extreme_logits_and_under_autocast():
    logits = torch.tensor([[[[200.0, -200.0]]]], requires_grad=True)  # sigmoid saturates in float32
    target = torch.tensor([[[[0.0, 1.0]]]])
    value = BceDiceLoss()(logits, target)
    value.backward()
    assert torch.isfinite(value) and value > 100 and torch.isfinite(logits.grad).all()
    g = torch.Generator().manual_seed(2)
    logits16 = (torch.randn(2, 4, 6, 6, generator=g) * 50).bfloat16().requires_grad_()
    target = torch.randint(0, 4, (2, 6, 6), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = CeDiceLoss(4)(logits16, target)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits16.grad.float()).all()


def test_gradients_match_the_official_formula():
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 3, 5, 5, generator=g)).double().requires_grad_()
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    CeDiceLoss(3)(logits, target).backward()
    ours = logits.grad.clone()
    logits.grad = None
    official_ce_dice(logits, target, 3).backward()
    torch.testing.assert_close(ours, logits.grad, rtol=1e-4, atol=1e-6)


def test_build_loss_and_shape_errors():
    assert isinstance(build_loss(1), BceDiceLoss)
    assert isinstance(build_loss(9), CeDiceLoss) and build_loss(9).num_classes == 9
    with pytest.raises(ValueError, match="expected \\(B, 9, ...\\)"):
        CeDiceLoss(9)(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match logits"):
        CeDiceLoss(3)(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in size"):
        BceDiceLoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="at least 2 classes"):
        CeDiceLoss(1)
