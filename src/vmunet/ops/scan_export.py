"""The selective scan in plain tensor ops that graph exporters (ONNX, TorchScript, torch.export) can record.

Same chunked algorithm and signature as ``selective_scan_torch`` (see scan_torch.py), with two changes that
exporting needs:

- the in-chunk decay prod_{s<=t} exp(delta_s * A) is computed as exp(A * cumsum(delta)) instead of with
  ``torch.cumprod``, which neither ONNX exporter can translate (ONNX has CumSum, no CumProd). The exponent
  is <= 0 in a model (delta >= 0 after softplus, A < 0), so it underflows to 0 and never overflows;
- no custom ``torch.autograd.Function``: exporters see the forward ops themselves. It is meant for
  inference; autograd works but is not tuned.

The Python loops are unrolled when traced (about 2 * sqrt(L) steps per scan), so the graph is fixed to the
traced sequence length, i.e. to the image size; the batch may stay dynamic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vmunet.ops.scan_ref import compute_dtype, finish_output, prepare_delta


def chunk_length(length: int) -> int:
    """T: the divisor of L nearest above sqrt(L), so that L = nc * T exactly.

    No padding: the TorchScript exporter mistranslates the padded layout (broadcast errors in onnxruntime).
    SS2D's L is (H/4)(W/4), (H/8)(W/8), ... with H, W multiples of 32, so a divisor near sqrt(L) exists;
    a prime L (only possible at the smallest stage) costs L steps in one chunk.
    """
    small = max(t for t in range(1, math.isqrt(max(length, 1)) + 1) if length % t == 0)
    return length // small


def _to_chunks(x: torch.Tensor, T: int, nc: int) -> torch.Tensor:
    """(..., L) -> (T, ..., nc) with L = nc * T."""
    # Non-negative dims only: the TorchScript exporter writes movedim(-1, 0) as the invalid perm [-1, ...].
    x = x.unflatten(x.dim() - 1, (nc, T))  # (..., nc, T)
    last = x.dim() - 1
    return x.permute(last, *range(last))  # (T, ..., nc)


def selective_scan_export(
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
    work = compute_dtype(u, delta, A, B, C)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    _, dim, length = u.shape
    groups, N = B.shape[1], A.shape[1]
    per_group = dim // groups
    T = chunk_length(length)
    nc = length // T

    delta_c = _to_chunks(delta, T, nc).unflatten(2, (groups, per_group))  # (T, b, g, h, nc)
    du_c = _to_chunks(delta * u, T, nc).unflatten(2, (groups, per_group))  # (T, b, g, h, nc)
    B_c = _to_chunks(B, T, nc)  # (T, b, g, N, nc)
    C_c = _to_chunks(C, T, nc)  # (T, b, g, N, nc)
    A_g = A.view(groups, per_group, N)[None, None, :, :, :, None]  # (1, 1, g, h, N, 1)

    dA = torch.exp(delta_c[:, :, :, :, None, :] * A_g)  # (T, b, g, h, N, nc)
    dBu = du_c[:, :, :, :, None, :] * B_c[:, :, :, None, :, :]  # (T, b, g, h, N, nc)
    # prod_{s<=t} dA_s inside each chunk, as one exp of a cumulative sum (exporters lack cumprod)
    decay = torch.exp(torch.cumsum(delta_c, dim=0)[:, :, :, :, None, :] * A_g)  # (T, b, g, h, N, nc)

    # 1. recurrence inside every chunk at once, from a zero state
    h = dBu[0]
    local = [h]
    for t in range(1, T):
        h = dA[t] * h + dBu[t]
        local.append(h)
    hs = torch.stack(local)  # (T, b, g, h, N, nc)

    # 2. chunk-start states: S_0 = 0, S_{c+1} = P_c * S_c + hs_{T-1, c}. No zeros_like: the TorchScript
    #    exporter folds it into a constant of the traced batch size; S_0 = 0 comes from a pad instead.
    chunk_decay, chunk_end = decay[-1], hs[-1]  # (b, g, h, N, nc)
    if nc == 1:
        h_all = hs  # (T, b, g, h, N, 1)
    else:
        state = chunk_end[..., 0]  # S_1: (b, g, h, N)
        starts = [state]
        for c in range(1, nc - 1):
            state = chunk_decay[..., c] * state + chunk_end[..., c]
            starts.append(state)
        start = F.pad(torch.stack(starts, dim=-1), (1, 0))  # (b, g, h, N, nc): S_0..S_{nc-1}

        # 3. correct the local states
        h_all = hs + decay * start[None]  # (T, b, g, h, N, nc)
    # contract with C
    y = (h_all * C_c[:, :, :, None, :, :]).sum(4)  # (T, b, g, h, nc)
    y = y.flatten(2, 3).permute(1, 2, 3, 0).flatten(2)  # (b, dim, nc * T) = (b, dim, L)

    out = finish_output(y, u, D, z).to(dtype_in)
    if return_last_state:
        last = h_all[(length - 1) % T, ..., (length - 1) // T].flatten(1, 2)  # (b, dim, N)
        return out, last
    return out
