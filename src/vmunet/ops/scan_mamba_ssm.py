"""Optional adapter to mamba_ssm's CUDA selective scan kernel (an accelerator, never a requirement).

The kernel is the compiled extension module ``selective_scan_cuda`` that mamba-ssm's build installs beside the
package. Since mamba-ssm's PR #977 (July 2026) a plain ``pip install mamba-ssm`` no longer builds it: the package
imports, ``selective_scan_fn`` exists, and its first call raises. So "available" here means that the compiled
module imports, not only the package.
"""

from __future__ import annotations

import functools

KERNEL_BUILD = "MAMBA_KEEP_CUDA_BUILD=TRUE pip install mamba-ssm --no-build-isolation"
INSTALL_HINT = (
    f"the 'mamba_ssm' scan backend needs the mamba-ssm package with its compiled CUDA kernel: {KERNEL_BUILD} "
    "(a CUDA toolkit matching your torch; a plain pip install mamba-ssm no longer builds the kernel), "
    "or use backend='torch', which runs everywhere"
)


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


@functools.lru_cache(maxsize=1)
def load_kernel():
    """Return (selective_scan_fn, None) when mamba_ssm and its compiled kernel import, else (None, reason)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as error:  # OSError: a wheel built against another CUDA/torch
        return None, f"mamba_ssm does not import ({one_line(error)})"
    try:
        import selective_scan_cuda  # noqa: F401  (the compiled kernel that selective_scan_fn calls)
    except (ImportError, OSError) as error:
        return None, f"mamba_ssm imports but its compiled kernel selective_scan_cuda does not ({one_line(error)})"
    return selective_scan_fn, None


def is_available() -> bool:
    """True when the compiled kernel is there (the package alone cannot scan)."""
    return load_kernel()[0] is not None


def unavailable_reason() -> str | None:
    return load_kernel()[1]


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    kernel, reason = load_kernel()
    if kernel is None:
        raise ImportError(f"{INSTALL_HINT} ({reason})")
    if not u.is_cuda:
        raise ValueError("the 'mamba_ssm' scan backend runs on CUDA tensors only; use backend='torch' on "
                         f"{u.device.type}")
    return kernel(u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                  D, z, delta_bias, delta_softplus, return_last_state)
