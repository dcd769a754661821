"""SS2D's four scan directions in one fused numba call (kernels: ``ss2d_forward``/``ss2d_backward`` in
numba_kernels.py), behind an autograd Function.

The plain path (ss2d_scan.ss2d_scan_plain) builds four (b, d, L) copies of the input, projects each, scans them as
4d channels and merges four outputs. Here the per-position projection runs once on the unpermuted input (``W_k @
perm_k(x) = perm_k(W_k @ x)``: one (b, L, d) x (d, 4 (r + 2N)) matmul, whose small output is then put in each
direction's step order), the kernel walks every direction over x by a table of positions, computes the low-rank dt
inside, and adds the four outputs into one (b, d, L) in the official merge order. Autograd keeps x, the projections
and the state entering every 64-step chunk of every direction, (b, 4, d, L/64, N): for N = 16 as large as x
itself.
"""

from __future__ import annotations

import functools

import torch

from vmunet.ops.scan_numba import as_float32, compiled_kernels, run_kernel
from vmunet.ops.cross_scan import DIRECTIONS


@functools.lru_cache(maxsize=64)
def positions(H: int, W: int) -> torch.Tensor:
    """(4, L) int64: the row-major position of step t of each direction (rows, columns, both reversed)."""
    # Cached for the process, so never an inference tensor: a first call under inference_mode (vmunet info, an
    # evaluation) would otherwise break every later training step that indexes with it.
    with torch.inference_mode(False):
        rows = torch.arange(H * W)
        cols = rows.view(H, W).t().reshape(-1)  # step t = w * H + h visits h * W + w
        return torch.stack([rows, cols, rows.flip(0), cols.flip(0)]).contiguous()


def in_step_order(proj: torch.Tensor, H: int, W: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """proj (b, L, 4, r + 2N) per position -> the low-rank dt (b, 4, r, L) and B, C (b, 4, L, 2N), per direction
    in its own step order, so that the kernels read them sequentially (small copies: 4 (r + 2N) floats a
    position, against the plain path's four copies of d). Autograd scatters their gradients back."""
    K = proj.shape[2]
    # indexing, not gather: gather's backward keeps its whole input, indexing's only the indices
    steps = proj[:, positions(H, W), torch.arange(K)[:, None]]  # (b, 4, L, r + 2N)
    return steps[..., :rank].transpose(2, 3).contiguous(), steps[..., rank:].contiguous()


def _f32_any(t: torch.Tensor) -> torch.Tensor:
    """float32 and cut from autograd, in any layout: the kernels copy each channel's row once, so a channels-last
    (b, d, L) view needs no transposed copy."""
    return t.detach().to(torch.float32)


def _grain(D: int, batch: int) -> int:
    """Blocks of channels per batch element in the backward: enough tasks for every thread."""
    return max(1, min(D, -(-torch.get_num_threads() // batch)))


class FusedSS2DScan(torch.autograd.Function):
    """y = FusedSS2DScan.apply(x, dtl, BC, Wdt, bias, A, skip, H, W): x (b, D, L); in each direction's step order
    dtl (b, 4, r, L) and BC (b, 4, L, 2N); Wdt (4, D, r), bias and skip (4, D), A (4, D, N); y (b, D, L) float32,
    the four directions summed."""

    @staticmethod
    def forward(ctx, x, dtl, BC, Wdt, bias, A, skip, H, W):
        y, starts, arrays = fused_forward(x, dtl, BC, Wdt, bias, A, skip, H, W, keep_starts=True)
        ctx.save_for_backward(*arrays, starts)
        ctx.hw = (H, W)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, dtl, BC, Wdt, bias, A, skip, starts = ctx.saved_tensors
        b, D, L = x.shape
        P = _grain(D, b)
        g_x = torch.empty_like(x)  # x's strides
        g_dtl, g_BC = torch.zeros((P, *dtl.shape)), torch.zeros((P, *BC.shape))
        g_Wdt = torch.empty(b, *Wdt.shape)
        g_bias, g_skip = torch.empty(b, *bias.shape), torch.empty(b, *skip.shape)
        g_A = torch.empty(b, *A.shape)
        run_kernel(compiled_kernels().ss2d_backward, x, dtl, BC, Wdt, bias, A, skip, positions(*ctx.hw), starts,
                   _f32_any(gy), g_x, g_dtl, g_BC, g_Wdt, g_bias, g_A, g_skip)
        g_dtl, g_BC = (g.sum(0) if P > 1 else g[0] for g in (g_dtl, g_BC))
        return g_x, g_dtl, g_BC, g_Wdt.sum(0), g_bias.sum(0), g_A.sum(0), g_skip.sum(0), None, None


def fused_forward(x, dtl, BC, Wdt, bias, A, skip, H, W, keep_starts: bool):
    """Run the forward kernel: y (b, D, L), the chunk start states (b, 4, D, nc, N) or None, and the float32
    arrays it read (x, dtl, BC, Wdt, bias, A, skip), which the backward reuses."""
    kernels = compiled_kernels()
    x = _f32_any(x)
    dtl, BC, Wdt, bias, A, skip = (as_float32(t) for t in (dtl, BC, Wdt, bias, A, skip))
    b, D, L = x.shape
    N = A.shape[2]
    y = torch.empty_like(x)  # x's strides: channels-last in, channels-last out
    nc = -(-L // kernels.CHUNK)
    starts = torch.empty(b, DIRECTIONS, D, nc, N) if keep_starts else torch.empty(0, 0, 0, 0, 0)
    run_kernel(kernels.ss2d_forward, x, dtl, BC, Wdt, bias, A * float(kernels.LOG2E), skip, positions(H, W), y, starts)
    return y, starts if keep_starts else None, (x, dtl, BC, Wdt, bias, A, skip)


def ss2d_scan_numba(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """x (b, d, H, W) -> (b, d, H*W) float32: SS2D's four selective scans, merged (see ss2d_scan.ss2d_scan)."""
    b, d, H, W = x.shape
    K, R2, _ = x_proj_weight.shape  # (4, r + 2N, d)
    N = A_logs.shape[1]
    u = x.float().reshape(b, d, H * W)  # (b, d, L)
    # the projection of every direction at once, per position: (b, L, d) x (d, 4 (r + 2N))
    proj = torch.matmul(u.transpose(1, 2), x_proj_weight.float().reshape(K * R2, d).t()).view(b, H * W, K, R2)
    dtl, BC = in_step_order(proj, H, W, dt_projs_weight.shape[2])  # (b, 4, r, L), (b, 4, L, 2N)
    A = -torch.exp(A_logs.float()).view(K, d, N)  # (4, d, N)
    args = (u, dtl, BC, dt_projs_weight.float(), dt_projs_bias.float(), A, Ds.float().view(K, d))
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return FusedSS2DScan.apply(*args, H, W)
    return fused_forward(*args, H, W, keep_starts=False)[0]
