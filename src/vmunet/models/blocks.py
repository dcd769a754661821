"""Building blocks of VM-UNet outside the SS2D core: drop-path, patch embed/merge/expand.

Tensors are channels-last, (B, H, W, C), between blocks, as in the official code.
"""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample (residual branch dropped with probability p, scaled by 1/(1-p))."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed2D(nn.Module):
    """(B, C_in, H, W) -> (B, H/p, W/p, C): p x p conv with stride p, then LayerNorm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): 2x2 neighbours concatenated, LayerNorm(4C), Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Neighbour order (row, col) = (0,0), (1,0), (0,1), (1,1), as the official code.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def pixel_shuffle_last(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, H, W, s*s*c) -> (B, s*H, s*W, c) with channel index (p1 * s + p2) * c + ch."""
    B, H, W, C = x.shape
    c = C // (scale * scale)
    x = x.view(B, H, W, scale, scale, c).permute(0, 1, 3, 2, 4, 5)  # (B, H, p1, W, p2, c)
    return x.reshape(B, H * scale, W * scale, c)


class PatchExpand2D(nn.Module):
    """(B, H, W, C) -> (B, 2H, 2W, C/2): Linear C -> 2C, pixel-shuffle 2x2, LayerNorm(C/2).

    ``dim`` is the output width C/2, as in the official constructor.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), 2))


class FinalPatchExpand2D(nn.Module):
    """(B, H, W, C) -> (B, 4H, 4W, C/4): Linear C -> 4C, pixel-shuffle 4x4, LayerNorm(C/4)."""

    def __init__(self, dim: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim // scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), self.scale))
