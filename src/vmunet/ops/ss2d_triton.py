"""SS2D's four scan directions in one fused Triton call (``ss2d_forward_kernel``/``ss2d_backward_kernel`` in
triton_kernels.py), behind an autograd Function: the design of ss2d_numba.py (one projection of the unpermuted
input, put in each direction's step order; the directions walked by a table of positions; the low-rank dt_proj
inside the kernel; the four outputs added in the official merge order). Runs on CUDA tensors, or on any under
Triton's interpreter (TRITON_INTERPRET=1), which is how the tests check it on a CPU.
"""

from __future__ import annotations

import torch

from vmunet.ops.scan_triton import CHUNK, next_power_of_2, channel_block, interpreting, load_kernels
from vmunet.ops.ss2d_numba import in_step_order, positions
from vmunet.ops.cross_scan import DIRECTIONS


def _config(D: int, N: int, R: int) -> dict:
    block = channel_block(D)
    n_p2 = next_power_of_2(N)
    return dict(BLOCK_D=block, N_P2=n_p2, R_P2=next_power_of_2(R), num_warps=max(1, min(8, block * n_p2 // 128)))


class FusedSS2DTriton(torch.autograd.Function):
    """y = FusedSS2DTriton.apply(x, dtl, BC, Wdt, bias, A, skip, H, W), shapes as ss2d_numba.FusedSS2DScan's;
    every tensor contiguous float32 on one device."""

    @staticmethod
    def forward(ctx, x, dtl, BC, Wdt, bias, A, skip, H, W):
        y, starts = fused_forward(x, dtl, BC, Wdt, bias, A, skip, H, W, keep_starts=True)
        ctx.save_for_backward(x, dtl, BC, Wdt, bias, A, skip, starts)
        ctx.hw = (H, W)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, dtl, BC, Wdt, bias, A, skip, starts = ctx.saved_tensors
        kernels = load_kernels(interpreting())
        b, D, L = x.shape
        N, R = A.shape[2], Wdt.shape[2]
        config = _config(D, N, R)
        P = D // config["BLOCK_D"]
        f32 = dict(dtype=torch.float32, device=x.device)
        g_x = torch.zeros(b, D, L, **f32)
        g_dtl, g_BC = torch.empty(P, *dtl.shape, **f32), torch.empty(P, *BC.shape, **f32)
        g_Wdt, g_A = torch.empty(b, *Wdt.shape, **f32), torch.empty(b, *A.shape, **f32)
        g_bias, g_skip = torch.empty(b, *bias.shape, **f32), torch.empty(b, *skip.shape, **f32)
        scratch = torch.empty(b, P, CHUNK, config["BLOCK_D"], config["N_P2"], **f32)
        kernels.ss2d_backward_kernel[(b, P)](
            x, dtl, BC, Wdt, bias, A, skip, positions(*ctx.hw).to(x.device), starts, gy.float().contiguous(),
            g_x, g_dtl, g_BC, g_Wdt, g_bias, g_A, g_skip, scratch, D, L, N, R, CHUNK=CHUNK, **config)
        return (g_x, g_dtl.sum(0), g_BC.sum(0), g_Wdt.sum(0), g_bias.sum(0), g_A.sum(0), g_skip.sum(0), None,
                None)


def fused_forward(x, dtl, BC, Wdt, bias, A, skip, H, W, keep_starts: bool):
    """y (b, D, L) float32 and the chunk start states (b, 4, D, nc, N) or None."""
    kernels = load_kernels(interpreting())
    b, D, L = x.shape
    N, R = A.shape[2], Wdt.shape[2]
    y = torch.zeros(b, D, L, dtype=torch.float32, device=x.device)  # each direction adds to it
    nc = -(-L // CHUNK)
    starts = x.new_empty(b, DIRECTIONS, D, nc, N) if keep_starts else y  # y: an unused pointer
    kernels.ss2d_forward_kernel[(b, D // channel_block(D))](
        x, dtl, BC, Wdt, bias, A, skip, positions(H, W).to(x.device), y, starts, D, L, N, R,
        CHUNK=CHUNK, KEEP_STARTS=keep_starts, **_config(D, N, R))
    return y, starts if keep_starts else None


def ss2d_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds):
    """x (b, d, H, W) -> (b, d, H*W) float32: SS2D's four selective scans, merged (see ss2d_scan.ss2d_scan)."""
    if not x.is_cuda and not interpreting():
        raise ValueError(f"the 'triton' scan backend runs on CUDA GPUs, not on {x.device.type} tensors (set "
                         "TRITON_INTERPRET=1 to run its kernels in Triton's interpreter, for testing); use "
                         "backend='torch' or 'numba' there")
    b, d, H, W = x.shape
    K, R2, _ = x_proj_weight.shape  # (4, r + 2N, d)
    N = A_logs.shape[1]
    u = x.float().reshape(b, d, H * W).contiguous()  # (b, d, L)
    proj = torch.matmul(u.transpose(1, 2), x_proj_weight.float().reshape(K * R2, d).t()).view(b, H * W, K, R2)
    dtl, BC = in_step_order(proj, H, W, dt_projs_weight.shape[2])  # (b, 4, r, L), (b, 4, L, 2N)
    A = -torch.exp(A_logs.float()).view(K, d, N)
    args = (u, dtl, BC, dt_projs_weight.float().contiguous(), dt_projs_bias.float().contiguous(), A.contiguous(),
            Ds.float().view(K, d).contiguous())
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return FusedSS2DTriton.apply(*args, H, W)
    return fused_forward(*args, H, W, keep_starts=False)[0]
