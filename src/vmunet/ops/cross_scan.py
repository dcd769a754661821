"""The four scan directions of SS2D and their merge back to (h, w) order."""

from __future__ import annotations

import torch

DIRECTIONS = 4  # rows, columns, and both reversed: the order of cross_scan's copies and cross_merge's sum


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): row-major, column-major, and both reversed."""
    rows = x.flatten(2)  # (B, C, L), l = h * W + w
    cols = x.transpose(2, 3).flatten(2)  # (B, C, L), l = w * H + h
    forward = torch.stack([rows, cols], dim=1)  # (B, 2, C, L)
    return torch.cat([forward, forward.flip(-1)], dim=1)  # (B, 4, C, L)


def cross_merge(ys: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 4, C, L) scan outputs -> (B, C, L) summed in row-major (h, w) order.

    The sum runs in the official order (row, reversed row, column, reversed column) so that
    float32 results match it bit for bit where possible.
    """
    B, _, C, L = ys.shape
    reversed_ = ys[:, 2:4].flip(-1)  # (B, 2, C, L) back to forward order
    col = ys[:, 1].view(B, C, W, H).transpose(2, 3).reshape(B, C, L)
    col_rev = reversed_[:, 1].view(B, C, W, H).transpose(2, 3).reshape(B, C, L)
    return ys[:, 0] + reversed_[:, 0] + col + col_rev
