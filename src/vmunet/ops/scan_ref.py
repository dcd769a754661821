"""The selective scan (S6) as a sequential loop: slow, obviously correct, any floating dtype.

Semantics follow mamba_ssm's ``selective_scan_ref``, per channel d and state n:

    h_t = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t,   h_0 = 0
    y_t = sum_n C_t[n] * h_t[n] + D[d] * u_t,   out = y * silu(z) if z is given

The arithmetic runs in float32, or in the input dtype when that is wider (float64 for tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float32, or float64 when any input is float64 (the scan never runs in half precision)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, groups, N, L) -> (batch, dim, N, L): each group is shared by dim // groups channels."""
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def prepare_inputs(u, delta, A, B, C, delta_bias, delta_softplus):
    """Every backend's common start: cast to the compute dtype, add the bias and apply softplus to delta."""
    work = compute_dtype(u, delta, A, B, C)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    return u, prepare_delta(delta, delta_bias, delta_softplus), A, B, C


def finish_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """Add the skip term D * u and apply the SiLU gate z."""
    if D is not None:
        y = y + u * D[:, None].to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_ref(
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
    B = expand_groups(B, dim)  # (batch, dim, N, L)
    C = expand_groups(C, dim)  # (batch, dim, N, L)

    h = u.new_zeros(batch, dim, A.shape[1])  # (batch, dim, N)
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)  # (batch, dim, N)
        dBu = delta[:, :, t, None] * B[:, :, :, t] * u[:, :, t, None]  # (batch, dim, N)
        h = dA * h + dBu
        ys.append((h * C[:, :, :, t]).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)  # (batch, dim, L)
    out = finish_output(y, u, D, z).to(dtype_in)
    return (out, h) if return_last_state else out
