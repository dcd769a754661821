"""Optional adapter to mamba_ssm's CUDA selective scan kernel (an accelerator, never a requirement)."""

from __future__ import annotations

import functools

INSTALL_HINT = (
    "the 'mamba_ssm' scan backend needs the mamba-ssm package with its CUDA kernels: "
    "pip install 'vmunet[cuda]' (or pip install mamba-ssm; it needs a CUDA toolkit matching your torch), "
    "or use backend='torch', which runs everywhere"
)


@functools.lru_cache(maxsize=1)
def load_kernel():
    """Return (selective_scan_fn, None) when mamba_ssm imports, else (None, reason)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as error:  # OSError: a wheel built against another CUDA/torch
        return None, f"{type(error).__name__}: {error}"
    return selective_scan_fn, None


def is_available() -> bool:
    return load_kernel()[0] is not None


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    kernel, reason = load_kernel()
    if kernel is None:
        raise ImportError(f"{INSTALL_HINT} (import failed with {reason})")
    if not u.is_cuda:
        raise ValueError("the 'mamba_ssm' scan backend runs on CUDA tensors only; use backend='torch' on "
                         f"{u.device.type}")
    return kernel(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                  D, z, delta_bias, delta_softplus, return_last_state)
