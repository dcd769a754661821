"""The chunked selective scan in plain differentiable tensor ops (the "torch" backend before issue 3).

Kept for two jobs: graph tracers (TorchScript, ONNX, torch.compile) see only ordinary ops here, and the
benchmarks measure it as the "before" of the hand-written backward in scan_torch.py. Its autograd keeps
several (B, D, L, N) tensors, so prefer ``selective_scan_torch`` for training.

Python steps are ~2*sqrt(L), not L.

The sequence is cut into nc chunks of T steps and laid out as (T, ..., nc), so that step t of
every chunk is one vectorised op:

1. inside each chunk, run the recurrence from a zero state  -> local states hs (T, ..., nc);
2. across chunks, propagate the chunk-end states           -> start state S_c of each chunk;
3. correct: h_t = hs_t + (prod_{s<=t} dA_s) * S_c, then y_t = <C_t, h_t>.

Every exponential is exp(delta * A) with delta >= 0 and A < 0 in a model (never exp of a large
positive number), and the in-chunk decay is a cumulative product of numbers in (0, 1], so long
sequences and extreme steps underflow gracefully to zero instead of overflowing to inf/NaN.
Autograd flows through plain tensor ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vmunet.ops.scan_ref import finish_output, prepare_inputs


def sqrt_chunk_length(length: int) -> int:
    """T ~ sqrt(L) balances the T in-chunk steps against the L / T cross-chunk steps."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def _to_chunks(x: torch.Tensor, T: int, nc: int) -> torch.Tensor:
    """(..., L) -> (T, ..., nc), zero-padded to nc * T positions."""
    pad = nc * T - x.shape[-1]
    if pad:
        x = F.pad(x, (0, pad))
    x = x.unflatten(-1, (nc, T))  # (..., nc, T)
    return x.movedim(-1, 0)  # (T, ..., nc)


def selective_scan_torch_autograd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L); D, delta_bias: (dim,)."""
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    groups, N = B.shape[1], A.shape[1]
    per_group = dim // groups
    T = sqrt_chunk_length(length)
    nc = max(1, -(-length // T))

    # Padded positions get delta = 0: dA = 1 and dBu = 0, so they change nothing.
    delta_c = _to_chunks(delta, T, nc).unflatten(2, (groups, per_group))  # (T, b, g, h, nc)
    du_c = _to_chunks(delta * u, T, nc).unflatten(2, (groups, per_group))  # (T, b, g, h, nc)
    B_c = _to_chunks(B, T, nc)  # (T, b, g, N, nc)
    C_c = _to_chunks(C, T, nc)  # (T, b, g, N, nc)
    A_g = A.view(groups, per_group, N)  # (g, h, N)

    dA = torch.exp(delta_c[:, :, :, :, None, :] * A_g[None, None, :, :, :, None])  # (T, b, g, h, N, nc)
    dBu = du_c[:, :, :, :, None, :] * B_c[:, :, :, None, :, :]  # (T, b, g, h, N, nc)

    # 1. recurrence inside every chunk at once, from a zero state
    h = torch.zeros_like(dBu[0])
    local = []
    for t in range(T):
        h = dA[t] * h + dBu[t]
        local.append(h)
    hs = torch.stack(local)  # (T, b, g, h, N, nc)

    # 2. chunk-start states: S_0 = 0, S_{c+1} = P_c * S_c + hs_{T-1, c}
    decay = torch.cumprod(dA, dim=0)  # (T, b, g, h, N, nc): prod_{s<=t} dA_s inside each chunk
    chunk_decay, chunk_end = decay[-1], hs[-1]  # (b, g, h, N, nc)
    state = torch.zeros_like(chunk_end[..., 0])
    starts = []
    for c in range(nc):
        starts.append(state)
        state = chunk_decay[..., c] * state + chunk_end[..., c]
    start = torch.stack(starts, dim=-1)  # (b, g, h, N, nc)

    # 3. correct the local states and contract with C
    h_all = hs + decay * start  # (T, b, g, h, N, nc)
    y = (h_all * C_c[:, :, :, None, :, :]).sum(4)  # (T, b, g, h, nc)
    y = y.flatten(2, 3).movedim(0, -1).flatten(-2)[..., :length]  # (b, dim, L)

    out = finish_output(y, u, D, z).to(dtype_in)
    if return_last_state:
        last = h_all[(length - 1) % T, ..., (length - 1) // T].flatten(1, 2)  # (b, dim, N)
        return out, last
    return out
