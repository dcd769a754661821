"""The "torch" backend: the two-level chunked scan of scan_chunked.py, with a hand-written backward.

- Training (some input requires grad): a custom autograd Function that keeps only its inputs and each
  chunk's start state, never a (B, D, L, N) tensor; the backward recomputes the rest.
- Inference (no grad needed): the same forward loops, with no autograd bookkeeping.
- Graph tracing (TorchScript / ONNX export / torch.export / torch.compile): the plain-ops scan of
  scan_export.py, which exporters record as it is (the loops here write into buffers in place, and
  ONNX has no cumprod).

The cheap O(B*D*L) parts (bias, softplus, delta * u, the D skip and the z gate, layout changes) stay
ordinary autograd ops around the Function.
"""

from __future__ import annotations

import torch

from vmunet.ops.scan_chunked import ChunkedScan, chunked_forward
from vmunet.ops.scan_ref import finish_output, prepare_inputs
from vmunet.ops.scan_export import graph_capture_active, selective_scan_export


def selective_scan_torch(
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
    if graph_capture_active():
        return selective_scan_export(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                             delta_softplus=delta_softplus, return_last_state=return_last_state)
    dtype_in = u.dtype
    u, delta, A, B, C = prepare_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    inputs = (delta, delta * u, A, B, C)  # dt: (b, D, L), du = dt * u: (b, D, L)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        y, last = ChunkedScan.apply(*inputs)
    else:
        y, _, last = chunked_forward(*inputs, keep_starts=False)

    out = finish_output(y, u, D, z).to(dtype_in)
    if return_last_state:
        return out, last  # (b, dim, N)
    return out
