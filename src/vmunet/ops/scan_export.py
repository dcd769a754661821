"""The selective scan in plain tensor ops that graph exporters (ONNX, TorchScript, torch.export) can record.

Same signature and three-phase chunked algorithm as the "torch" backend (see scan_chunked.py), written so
that exporters can record it:

1. inside every chunk, the recurrence from a zero state -> each chunk's end state;
2. across chunks, S_{c+1} = P_c S_c + end_c with P_c = exp(A * sum of dt over chunk c);
3. inside every chunk again, from the true start state S_c, contracting with C at every step.

What exporting needs, and the other backends do not give:
- no ``torch.cumprod`` (neither ONNX exporter translates it; ONNX has no CumProd) and no in-place writes into
  scratch buffers: only out-of-place tensor ops;
- no padding of the sequence (the TorchScript exporter mistranslates it): chunks of T steps with T dividing L;
- no ``torch.zeros_like`` of a batch-shaped tensor (folded into a constant of the traced batch size);
- no custom ``torch.autograd.Function``. Meant for inference; autograd works but is not tuned.

Every exponent is dt * A or A * (sum of dt), <= 0 in a model (dt >= 0 after softplus, A < 0): it underflows to 0
and never overflows. The Python loops are unrolled when traced (2T + nc steps per scan, T ~ sqrt(L)), so the
graph is fixed to the traced sequence length, i.e. to the image size; the batch may stay dynamic.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from vmunet.ops.scan_ref import finish_output, prepare_inputs

_warned_compile = False


def graph_capture_active() -> bool:
    """True while TorchScript, ONNX export, torch.export or torch.compile records the model: the fast backends
    write into buffers in place (or call compiled kernels), so the scan then runs as this file's plain ops."""
    capturing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
    if capturing and torch.compiler.is_compiling():
        _warn_compile()
    return capturing


@torch.compiler.disable
def _warn_compile() -> None:
    global _warned_compile
    if not _warned_compile:
        _warned_compile = True
        warnings.warn("vmunet: under torch.compile the selective scan runs as plain tensor ops, without the "
                      "memory-saving backward of the 'torch' and 'numba' backends: autograd keeps the "
                      "per-step states, so training takes more memory", stacklevel=3)


def dividing_chunk_length(length: int) -> int:
    """T: the divisor of L nearest above sqrt(L), so that L = nc * T exactly.

    No padding: the TorchScript exporter mistranslates the padded layout (broadcast errors in onnxruntime).
    SS2D's L is (H/4)(W/4), (H/8)(W/8), ... with H, W multiples of 32, so a divisor near sqrt(L) exists;
    a prime L (only possible at the smallest stage) costs L steps in one chunk.
    """
    if length < 1:
        raise ValueError(f"a scan of length {length} has no chunks: the chunk length needs L >= 1")
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
    u, delta, A, B, C = prepare_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    _, dim, length = u.shape
    groups, N = B.shape[1], A.shape[1]
    per_group = dim // groups
    if length == 0:  # an empty sequence: no output, the zero state (as the reference scan)
        empty = finish_output(u * 0, u, D, z).to(dtype_in)  # (b, dim, 0)
        return (empty, u.new_zeros(u.shape[0], dim, N)) if return_last_state else empty
    T = dividing_chunk_length(length)
    nc = length // T

    delta_c = _to_chunks(delta, T, nc).unflatten(2, (groups, per_group))  # (T, b, g, h, nc)
    du_c = _to_chunks(delta * u, T, nc).unflatten(2, (groups, per_group))  # (T, b, g, h, nc)
    B_c = _to_chunks(B, T, nc)[:, :, :, None]  # (T, b, g, 1, N, nc)
    C_c = _to_chunks(C, T, nc)[:, :, :, None]  # (T, b, g, 1, N, nc)
    A_g = A.view(groups, per_group, N)[None, :, :, :, None]  # (1, g, h, N, 1)

    def step(t: int, h: torch.Tensor | None) -> torch.Tensor:
        """h_t = exp(dt_t A) h_{t-1} + du_t B_t for every chunk at once: (b, g, h, N, nc)."""
        dBu = du_c[t, :, :, :, None, :] * B_c[t]
        return dBu if h is None else torch.exp(delta_c[t, :, :, :, None, :] * A_g) * h + dBu

    # Nothing of size (T, ..., N, nc) is materialised: every step works on (b, g, h, N, nc), so the
    # graph's memory traffic stays ~T times below a stacked-states formulation.
    # 1. inside every chunk, the recurrence from a zero state -> each chunk's local end state
    h = None
    for t in range(T if nc > 1 else 0):  # one chunk starts from zero: nothing to carry
        h = step(t, h)
    chunk_end = h  # (b, g, h, N, nc)

    # 2. chunk-start states S_0 = 0, S_{c+1} = P_c S_c + end_c with P_c = exp(A * sum of dt over chunk c)
    #    (exp of a sum: ONNX has no cumprod). No zeros_like: the TorchScript exporter folds it into a constant
    #    of the traced batch size; S_0 = 0 comes from a pad instead.
    if nc > 1:
        chunk_decay = torch.exp(delta_c.sum(0)[:, :, :, None, :] * A_g)  # (b, g, h, N, nc)
        state = chunk_end[..., 0]  # S_1: (b, g, h, N)
        starts = [state]
        for c in range(1, nc - 1):
            state = chunk_decay[..., c] * state + chunk_end[..., c]
            starts.append(state)
        h = F.pad(torch.stack(starts, dim=-1), (1, 0))  # (b, g, h, N, nc): S_0..S_{nc-1}
    else:
        h = None

    # 3. inside every chunk again, from the true start state, contracting with C on the way
    ys = []
    for t in range(T):
        h = step(t, h)
        ys.append((h * C_c[t]).sum(3))  # (b, g, h, nc)
    y = torch.stack(ys)  # (T, b, g, h, nc)
    y = y.flatten(2, 3).permute(1, 2, 3, 0).flatten(2)  # (b, dim, nc * T) = (b, dim, L)

    out = finish_output(y, u, D, z).to(dtype_in)
    if return_last_state:
        last = h[..., -1].flatten(1, 2)  # the state after step L - 1: (b, dim, N)
        return out, last
    return out
