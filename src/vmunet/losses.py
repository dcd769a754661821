"""The paper's losses, on logits: BCE + Dice for one class, CE + Dice for several.

Both compute in float32 with autocast disabled (safe under AMP) and take logits straight from the model:
the sigmoid/softmax is applied here, never inside the network (the official code's BCE on probabilities is
unstable and not AMP-safe).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _float32(logits: torch.Tensor):
    """A context that turns autocast off, and the logits in float32."""
    return torch.autocast(device_type=logits.device.type, enabled=False), logits.float()


class BceDiceLoss(nn.Module):
    """``w_bce * BCE + w_dice * (1 - mean_b (2 sum(p t) + 1) / (sum p + sum t + 1))`` with p = sigmoid(logits).

    logits: (B, 1, H, W) or (B, H, W); target: same number of elements per sample, values in {0, 1}.
    BCE is the mean over all pixels (as ``nn.BCELoss`` on the official probabilities); Dice (smooth 1) is per
    sample and averaged over the batch.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        no_autocast, logits = _float32(logits)
        with no_autocast:
            b = logits.shape[0]
            x = logits.reshape(b, -1)  # (B, N)
            t = target.reshape(b, -1).float()  # (B, N)
            if x.shape != t.shape:
                raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in size")
            bce = F.binary_cross_entropy_with_logits(x, t)
            p = torch.sigmoid(x)
            dice = (2 * (p * t).sum(1) + self.smooth) / (p.sum(1) + t.sum(1) + self.smooth)  # (B,)
            return self.bce_weight * bce + self.dice_weight * (1 - dice.mean())


class CeDiceLoss(nn.Module):
    """``w_ce * CE + w_dice * mean_k (1 - (2 sum(p_k t_k) + s) / (sum p_k^2 + sum t_k^2 + s))``, s = 1e-5.

    p = softmax(logits) over classes; sums run over the whole batch and all pixels (TransUNet's DiceLoss, used by
    the paper's Synapse code); the mean is over all ``num_classes`` classes including background.
    logits: (B, K, H, W); target: (B, H, W) class ids.
    """

    def __init__(self, num_classes: int, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"CeDiceLoss needs at least 2 classes, got {num_classes} (use BceDiceLoss)")
        self.num_classes = num_classes
        self.ce_weight, self.dice_weight, self.smooth = ce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() < 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits of shape {tuple(logits.shape)}: expected (B, {self.num_classes}, ...)")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target of shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        no_autocast, logits = _float32(logits)
        with no_autocast:
            target = target.long()
            ce = F.cross_entropy(logits, target)
            p = torch.softmax(logits, dim=1).transpose(0, 1).reshape(self.num_classes, -1)  # (K, B*H*W)
            t = F.one_hot(target, self.num_classes).movedim(-1, 0).reshape(self.num_classes, -1).float()  # (K, N)
            dice = (2 * (p * t).sum(1) + self.smooth) / ((p * p).sum(1) + (t * t).sum(1) + self.smooth)  # (K,)
            return self.ce_weight * ce + self.dice_weight * (1 - dice).mean()


def build_loss(num_classes: int, weights: tuple[float, float] = (1.0, 1.0)) -> nn.Module:
    """The paper's loss for ``num_classes``: BCE + Dice for 1 (sigmoid), CE + Dice for 2 or more (softmax).

    ``weights``: (BCE or CE weight, Dice weight), the config's ``loss_weights`` (the papers' lambda; 1, 1).
    """
    first, dice = (float(w) for w in weights)
    if num_classes == 1:
        return BceDiceLoss(bce_weight=first, dice_weight=dice)
    return CeDiceLoss(num_classes, ce_weight=first, dice_weight=dice)
