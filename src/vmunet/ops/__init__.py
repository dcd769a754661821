"""Selective scan backends behind one mamba_ssm-compatible function.

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto")

Backends: "ref" (sequential loop, any dtype), "torch" (fast pure PyTorch, any device), "numba" (fused CPU
kernels compiled at run time, float32; the ``fast`` extra), "mamba_ssm" (optional CUDA kernels), "triton" (fused
GPU kernels with nothing to build; opt-in, see _auto_choice). "auto" takes the
backend set by ``use_backend`` if one is active, else the fastest one installed for the tensors at hand:
"numba" for CPU tensors (5-8x "torch" in benchmarks/scan.py; float64 stays on "torch", which computes in
float64), "mamba_ssm" for CUDA tensors when its compiled kernel is there (not only the package), else "torch". It
logs its choice once per device, with the reason and a hint when the faster backend is missing. An explicitly
requested backend that is not installed raises ImportError saying how to install it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

import torch

from vmunet.ops import scan_mamba_ssm, scan_numba, scan_triton
from vmunet.ops.scan_mamba_ssm import selective_scan_mamba_ssm
from vmunet.ops.scan_numba import selective_scan_numba
from vmunet.ops.scan_ref import selective_scan_ref
from vmunet.ops.scan_torch import selective_scan_torch
from vmunet.ops.scan_triton import selective_scan_triton

__all__ = [
    "check_backend_name",
    "BACKENDS",
    "available_backends",
    "resolve_backend",
    "selective_scan",
    "selective_scan_numba",
    "selective_scan_ref",
    "selective_scan_torch",
    "selective_scan_triton",
    "use_backend",
]

logger = logging.getLogger(__name__)

BACKENDS = {
    "ref": selective_scan_ref,
    "torch": selective_scan_torch,
    "numba": selective_scan_numba,
    "mamba_ssm": selective_scan_mamba_ssm,
    "triton": selective_scan_triton,
}
_VALID_NAMES = ("auto", *BACKENDS)
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("vmunet_scan_backend", default=None)
_logged_auto_choices: set[tuple[str, str]] = set()


def check_backend_name(name: str) -> str:
    if name not in _VALID_NAMES:
        raise ValueError(f"unknown selective-scan backend {name!r}; choose one of {', '.join(_VALID_NAMES)}")
    return name


def available_backends(device: str = "cpu") -> list[str]:
    """Backends that can run on this machine for tensors on ``device`` ("cpu" or "cuda")."""
    names = ["ref", "torch"]
    if str(device).startswith("cpu") and scan_numba.is_available():
        names.append("numba")
    if str(device).startswith("cuda") and scan_mamba_ssm.is_available():
        names.append("mamba_ssm")
    if str(device).startswith("cuda") and scan_triton.is_available():
        names.append("triton")
    return names


def _auto_choice(device_type: str, dtype: torch.dtype) -> tuple[str, str]:
    """The backend "auto" takes for tensors of this device and dtype, and a note for the log."""
    if device_type == "cpu":
        if dtype == torch.float64:
            return "torch", " (float64: 'numba' computes in float32)"
        if scan_numba.is_available():
            return "numba", ""
        return "torch", f" (numba is not installed; {scan_numba.INSTALL_HINT} for the ~5x faster 'numba' backend)"
    if device_type == "cuda":
        if scan_mamba_ssm.is_available():
            return "mamba_ssm", ""
        # "triton" stays opt-in until a benchmark on a real GPU (benchmarks/gpu_check.sh, its table in
        # benchmarks/RESULTS.md) shows it faster than "torch" there; then it goes here, after mamba_ssm (issue 16).
        return "torch", (f" (not 'mamba_ssm': {scan_mamba_ssm.unavailable_reason()}; "
                         f"{scan_mamba_ssm.KERNEL_BUILD} gives the faster kernel)")
    return "torch", ""


def resolve_backend(name: str, device_type: str, dtype: torch.dtype = torch.float32) -> str:
    """Turn "auto" into a concrete backend name; check explicit names exist."""
    check_backend_name(name)
    if name != "auto":
        return name
    chosen = _context_backend.get()
    if chosen is None:
        chosen, note = _auto_choice(device_type, dtype)
        if (device_type, chosen) not in _logged_auto_choices:
            _logged_auto_choices.add((device_type, chosen))
            logger.info("selective scan backend 'auto' chose %r for %s tensors%s", chosen, device_type, note)
    return chosen


@contextlib.contextmanager
def use_backend(name: str):
    """Make "auto" mean ``name`` inside the block, e.g. ``with use_backend("ref"): model(x)``."""
    check_backend_name(name)
    token = _context_backend.set(None if name == "auto" else name)
    try:
        yield
    finally:
        _context_backend.reset(token)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, groups, N, L); D, delta_bias: (dim,)."""
    name = resolve_backend(backend, u.device.type, u.dtype)
    return BACKENDS[name](u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_last_state=return_last_state)
