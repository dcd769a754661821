"""The "triton" backend: fused GPU kernels (triton_kernels.py) behind an autograd Function. Opt-in: "auto" does
not pick it until a benchmark on a real GPU has shown it faster than "torch" (benchmarks/RESULTS.md).

triton is optional (Linux only; the CUDA builds of torch ship it) and imported on first use. The kernels run on
CUDA tensors, or on any tensors under Triton's interpreter (TRITON_INTERPRET=1), which is how the tests check
them on a CPU. Inputs are read in their own dtype (float16 and bfloat16 included) and computed in float32; the
output comes back in u's dtype, as with the other backends; float64 is refused ("torch" and "ref" compute in
float64). What is fused: bias + softplus of delta, delta * u, the recurrence, the contraction with C, the D
skip and the z gate, and in the backward all their gradients. Autograd keeps the (contiguous) inputs and the
state entering every CHUNK-step chunk, (b, D, L / CHUNK, N): never a (b, D, L, N) tensor.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
from pathlib import Path

import torch

from vmunet.ops.scan_export import graph_capture_active, selective_scan_export

INSTALL_HINT = "pip install 'vmunet[triton]' (or pip install triton; Linux only, and CUDA builds of torch ship it)"
CHUNK = 64  # steps between saved states; the backward's scratch holds one chunk's states per program
MAX_BLOCK_D = 32  # channels per program: a [32, 16] float32 state tile is 4 registers per thread at 4 warps
_KERNELS_FILE = Path(__file__).with_name("triton_kernels.py")
_lock = threading.Lock()


def interpreting() -> bool:
    """Whether Triton's interpreter is asked for (TRITON_INTERPRET=1): kernels then run on CPU tensors too."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=1)
def _import_triton() -> str | None:
    """None when triton imports, else why not."""
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def is_available() -> bool:
    return _import_triton() is None


def _require_triton() -> None:
    reason = _import_triton()
    if reason is not None:
        raise ImportError(f"the 'triton' scan backend needs triton: {INSTALL_HINT} (import failed with {reason})")


@contextlib.contextmanager
def _interpret_flag(interpret: bool):
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@functools.lru_cache(maxsize=2)
def load_kernels(interpret: bool):
    """The kernels module, compiled (interpret False) or interpreted. triton.jit reads TRITON_INTERPRET when it
    decorates a function, so each mode gets its own copy of triton_kernels.py, executed with the flag set for it:
    a process can run both (the CPU tests under the interpreter, the GPU tests compiled), whatever the flag was
    when triton was imported (the kernels call none of triton's own jit helpers, whose mode is fixed then)."""
    _require_triton()
    name = f"vmunet.ops._triton_kernels_{'interpreted' if interpret else 'compiled'}"
    spec = importlib.util.spec_from_file_location(name, _KERNELS_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the importlib recipe: tools that look a kernel's module up by name find it
    with _lock, _interpret_flag(interpret):
        spec.loader.exec_module(module)
    return module


def channel_block(channels_per_group: int, cap: int = MAX_BLOCK_D) -> int:
    """Channels per program: the largest power of two that divides a group's channels (so that no block spans two
    groups and B and C are loaded once per step for the whole block), at most ``cap``."""
    return min(cap, channels_per_group & -channels_per_group)


def _launch_config(D: int, G: int, N: int) -> dict:
    block = channel_block(D // G)
    n_p2 = next_power_of_2(N)
    return dict(BLOCK_D=block, N_P2=n_p2, num_warps=max(1, min(8, block * n_p2 // 128)))


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _flags(skip, bias, z, softplus) -> dict:
    return dict(SOFTPLUS=bool(softplus), HAS_SKIP=skip is not None, HAS_BIAS=bias is not None, HAS_Z=z is not None)


def _pointers(u, *optional):
    """The optional inputs, u standing in for those that are None (the kernel never reads it: its HAS_ flag is off)."""
    return tuple(u if t is None else t for t in optional)


def scan_forward(u, delta, A, B, C, skip, z, bias, softplus, chunk, keep_starts):
    """out (b, D, L) in u's dtype, last (b, D, N) float32, starts (b, D, nc, N) float32 or None. Contiguous inputs."""
    kernels = load_kernels(interpreting())
    b, D, L = u.shape
    G, N = B.shape[1], A.shape[1]
    config = _launch_config(D, G, N)
    out = torch.empty_like(u)
    last = u.new_empty(b, D, N, dtype=torch.float32)
    nc = max(1, -(-L // chunk))
    starts = u.new_empty(b, D, nc, N, dtype=torch.float32) if keep_starts else last  # last: an unused pointer
    kernels.scan_forward_kernel[(b, D // config["BLOCK_D"])](
        u, delta, A, B, C, *_pointers(u, skip, bias, z), out, last, starts, D, L, G, N,
        CHUNK=chunk, KEEP_STARTS=keep_starts, **config, **_flags(skip, bias, z, softplus))
    return out, last, starts if keep_starts else None


class TritonScan(torch.autograd.Function):
    """out, last = TritonScan.apply(u, delta, A, B, C, skip, z, bias, softplus, chunk), contiguous inputs.

    u, delta, z: (b, D, L); A: (D, N); B, C: (b, G, N, L); skip, bias: (D,); skip, z, bias may be None. out
    (b, D, L) includes the skip term and the z gate; last (b, D, N). delta is the raw input: bias and softplus
    are applied inside the kernels."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, skip, z, bias, softplus, chunk):
        out, last, starts = scan_forward(u, delta, A, B, C, skip, z, bias, softplus, chunk, keep_starts=True)
        ctx.save_for_backward(u, delta, A, B, C, skip, z, bias, starts)
        ctx.softplus, ctx.chunk = softplus, chunk
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, g_out, g_last):
        u, delta, A, B, C, skip, z, bias, starts = ctx.saved_tensors
        kernels = load_kernels(interpreting())
        b, D, L = u.shape
        G, N = B.shape[1], A.shape[1]
        config = _launch_config(D, G, N)
        block, n_p2 = config["BLOCK_D"], config["N_P2"]
        blocks_per_group = D // G // block
        f32 = dict(dtype=torch.float32, device=u.device)
        g_out = torch.zeros(b, D, L, **f32) if g_out is None else g_out.contiguous()
        g_last = torch.zeros(b, D, N, **f32) if g_last is None else g_last.contiguous()
        g_u, g_delta = torch.empty(b, D, L, **f32), torch.empty(b, D, L, **f32)
        g_z = torch.empty(b, D, L, **f32) if z is not None else g_u  # g_u: an unused pointer
        g_A, g_skip, g_bias = torch.empty(b, D, N, **f32), torch.empty(b, D, **f32), torch.empty(b, D, **f32)
        g_B = torch.empty(blocks_per_group, b, G, N, L, **f32)  # one partial sum per block of a group's channels
        g_C = torch.empty(blocks_per_group, b, G, N, L, **f32)
        scratch = torch.empty(b, D // block, ctx.chunk, block, n_p2, **f32)
        kernels.scan_backward_kernel[(b, D // block)](
            u, delta, A, B, C, *_pointers(u, skip, bias, z), starts, g_out, g_last,
            g_u, g_delta, g_z, g_A, g_skip, g_bias, g_B, g_C, scratch, D, L, G, N,
            CHUNK=ctx.chunk, **config, **_flags(skip, bias, z, ctx.softplus))
        return (g_u.to(u.dtype), g_delta.to(delta.dtype), g_A.sum(0).to(A.dtype), g_B.sum(0).to(B.dtype),
                g_C.sum(0).to(C.dtype), None if skip is None else g_skip.sum(0).to(skip.dtype),
                None if z is None else g_z.to(z.dtype), None if bias is None else g_bias.sum(0).to(bias.dtype),
                None, None)


def check_inputs(u: torch.Tensor, *others: torch.Tensor | None) -> None:
    if not u.is_cuda and not interpreting():
        raise ValueError(f"the 'triton' scan backend runs on CUDA GPUs, not on {u.device.type} tensors (set "
                         "TRITON_INTERPRET=1 to run its kernels in Triton's interpreter, for testing); use "
                         "backend='torch' or 'numba' there")
    if any(t is not None and t.dtype == torch.float64 for t in (u, *others)):
        raise ValueError("the 'triton' scan backend computes in float32; use backend='torch' or 'ref' for float64")
    groups = others[2].shape[1] if others[2].dim() == 4 else 0
    if groups < 1 or u.shape[1] % groups:
        raise ValueError(f"the 'triton' scan backend needs B of shape (batch, groups, N, L) with groups dividing "
                         f"dim {u.shape[1]}; got B of shape {tuple(others[2].shape)}")
    if any(t is not None and t.device != u.device for t in others):
        raise ValueError(f"the 'triton' scan backend needs every input on one device ({u.device})")


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, chunk=CHUNK):
    """u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L); D, delta_bias: (dim,).
    ``chunk``: steps between the states saved for the backward."""
    if graph_capture_active():  # exporters and torch.compile cannot record a Triton launch through this wrapper
        return selective_scan_export(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                     delta_softplus=delta_softplus, return_last_state=return_last_state)
    _require_triton()
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    inputs = tuple(None if t is None else t.contiguous() for t in (u, delta, A, B, C, D, z, delta_bias))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        out, last = TritonScan.apply(*inputs, bool(delta_softplus), int(chunk))
    else:
        out, last, _ = scan_forward(*inputs, bool(delta_softplus), int(chunk), keep_starts=False)
    return (out, last) if return_last_state else out
