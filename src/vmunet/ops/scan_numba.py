"""The "numba" backend: fused CPU kernels (numba_kernels.py) behind an autograd Function.

numba is an optional dependency (the ``fast`` extra, which the README's commands install); it is imported on
first use, so ``import vmunet`` never pays for it. The kernels compute in float32 on contiguous CPU tensors:
half and bfloat16 inputs are cast up and the output cast back, as the other backends do; float64 inputs are
refused (the "torch" and "ref" backends compute in float64, and "auto" sends float64 there).

What is fused: bias + softplus of delta, delta * u, the recurrence, the contraction with C and the D skip, and in
the backward all their gradients. The z gate stays an ordinary autograd op around the Function. Autograd keeps
the inputs and the state entering every 64-step chunk, (b, D, L/64, N): for N = 16 a quarter of one input,
never a (b, D, L, N) tensor.

Threads: each call runs on torch.get_num_threads() numba threads (capped at numba's pool size), so
torch.set_num_threads and torchrun's per-process settings hold for the scan too. Calls from several Python
threads are serialised by a lock: each already uses every thread, and numba's workqueue layer cannot run
two parallel regions at once.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F

from vmunet.ops.scan_export import graph_capture_active, selective_scan_export

INSTALL_HINT = "pip install 'vmunet[fast]' (or pip install numba)"
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def load_kernels():
    """Return (numba_kernels module, None) when numba imports, else (None, reason)."""
    try:
        from vmunet.ops import numba_kernels
    except ImportError as error:
        return None, f"{type(error).__name__}: {error}"
    return numba_kernels, None


def is_available() -> bool:
    return load_kernels()[0] is not None


def compiled_kernels():
    kernels, reason = load_kernels()
    if kernels is None:
        raise ImportError(f"the 'numba' scan backend needs numba: {INSTALL_HINT} (import failed with {reason})")
    return kernels


@functools.lru_cache(maxsize=1)
def _start_numba_threads() -> None:
    """Start numba's thread pool once, keeping torch's thread count: the OpenMP layer shares torch's libgomp,
    and starting the pool sets that runtime's default to the pool size (torch.get_num_threads() would then
    read 2 after a torch.set_num_threads(1))."""
    import numba.np.ufunc.parallel as numba_parallel

    threads = torch.get_num_threads()
    numba_parallel._launch_threads()
    torch.set_num_threads(threads)


def run_kernel(kernel, *arrays):
    """Call a parallel kernel on torch's thread count; tensors go in as zero-copy numpy views."""
    import numba

    with _lock:
        _start_numba_threads()
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(*(a.numpy() if isinstance(a, torch.Tensor) else a for a in arrays))


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 copy or view, cut from autograd (the Function does the gradients)."""
    return t.detach().to(torch.float32).contiguous()


def _steps_major(B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """B, C: (b, G, N, L) -> BC (b, G, L, 2, N) contiguous float32: at every step B's states, then C's."""
    return torch.stack([B.detach(), C.detach()], dim=2).to(torch.float32).permute(0, 1, 4, 2, 3).contiguous()


class NumbaScan(torch.autograd.Function):
    """y, last = NumbaScan.apply(u, delta, A, B, C, skip, bias, softplus).

    u, delta: (b, D, L); A: (D, N); B, C: (b, G, N, L); skip, bias: (D,) or None; y (b, D, L) includes the skip
    term; last (b, D, N). delta is the raw input: bias and softplus are applied inside the kernels."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, skip, bias, softplus):
        y, last, starts, arrays = scan_forward(u, delta, A, B, C, skip, bias, softplus, keep_starts=True)
        ctx.save_for_backward(*arrays, starts)
        ctx.softplus = softplus
        ctx.has = (skip is not None, bias is not None)
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, gy, g_last):
        u, delta, A, BC, skip, bias, starts = ctx.saved_tensors
        kernels = compiled_kernels()
        b, D, L = u.shape
        G, N = BC.shape[1], A.shape[1]
        gy = torch.zeros_like(u) if gy is None else as_float32(gy)
        g_last = torch.zeros(b, D, N) if g_last is None else as_float32(g_last)
        # P blocks of channels per group: enough tasks for every thread; B's and C's gradients get one partial
        # sum per block (summed below), so no two tasks write the same element.
        P = max(1, min(D // G, -(-torch.get_num_threads() // (b * G))))
        g_u, g_delta = torch.empty_like(u), torch.empty_like(u)
        g_A, g_skip, g_bias = torch.empty(b, D, N), torch.empty(b, D), torch.empty(b, D)
        g_BC = torch.zeros(P, b, G, L, 2, N)
        run_kernel(kernels.scan_backward, u, delta, bias, A, BC, skip, ctx.softplus, starts, gy, g_last,
             g_u, g_delta, g_A, g_skip, g_bias, g_BC)
        g_BC = g_BC.sum(0) if P > 1 else g_BC[0]  # (b, G, L, 2, N)
        g_B, g_C = g_BC.permute(0, 1, 3, 4, 2).unbind(2)  # (b, G, N, L) views
        has_skip, has_bias = ctx.has
        return (g_u, g_delta, g_A.sum(0), g_B, g_C,
                g_skip.sum(0) if has_skip else None, g_bias.sum(0) if has_bias else None, None)


def scan_forward(u, delta, A, B, C, skip, bias, softplus, keep_starts: bool):
    """Run the forward kernel. Returns y (b, D, L), last (b, D, N), the chunk start states (b, D, nc, N) or None,
    and the float32 arrays the kernel read (u, delta, A, BC, skip, bias), which the backward reuses."""
    kernels = compiled_kernels()
    b, D, L = u.shape
    N = A.shape[1]
    u, delta, A = as_float32(u), as_float32(delta), as_float32(A)
    BC = _steps_major(B, C)  # (b, G, L, 2, N)
    skip = torch.zeros(D) if skip is None else as_float32(skip)
    bias = torch.zeros(D) if bias is None else as_float32(bias)
    y, last = torch.empty(b, D, L), torch.empty(b, D, N)
    nc = -(-L // kernels.CHUNK)
    starts = torch.empty(b, D, nc, N) if keep_starts else torch.empty(0, 0, 0, 0)
    run_kernel(kernels.scan_forward, u, delta, bias, A * float(kernels.LOG2E), BC, skip, bool(softplus), y, last,
               starts)
    return y, last, starts if keep_starts else None, (u, delta, A, BC, skip, bias)


def check_inputs(u: torch.Tensor, *others: torch.Tensor | None) -> None:
    if u.device.type != "cpu":
        raise ValueError(f"the 'numba' scan backend runs on CPU tensors only; use backend='torch' on {u.device.type}")
    if any(t is not None and t.dtype == torch.float64 for t in (u, *others)):
        raise ValueError("the 'numba' scan backend computes in float32; use backend='torch' or 'ref' for float64")


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L); D, delta_bias: (dim,)."""
    if graph_capture_active():  # exporters and torch.compile cannot record a numba call
        return selective_scan_export(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                     delta_softplus=delta_softplus, return_last_state=return_last_state)
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    inputs = (u, delta, A, B, C, D, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        y, last = NumbaScan.apply(*inputs, bool(delta_softplus))
    else:
        y, last, _, _ = scan_forward(*inputs, delta_softplus, keep_starts=False)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    out = y.to(dtype_in)
    return (out, last) if return_last_state else out
