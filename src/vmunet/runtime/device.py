"""Devices, mixed precision, seeding and progress bars: shared by training, evaluation and prediction."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA when there is a GPU), 'cpu', 'cuda[:N]' or 'mps'; anything unknown or unavailable here is a
    ValueError that says what is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} requested but Apple's MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported; use {DEVICES}")
    return device


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("not enough memory" in text or "can't allocate memory" in text
                                                or "out of memory" in text)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where supported (CPU, recent GPUs), else fp16 on CUDA; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, amp: bool) -> bool:
    return amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()


def seed_everything(seed: int, epoch: int = 0) -> None:
    """Seed every generator from (seed, epoch): an epoch replays identically, also after a resume."""
    value = (seed * 1_000_003 + epoch) % (2 ** 31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


# cuBLAS's documented setting for reproducible results (CUDA >= 10.2); ":16:8" is the other valid one.
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """While active: ``torch.use_deterministic_algorithms(True)``, ``cudnn.deterministic = True``,
    ``cudnn.benchmark = False`` and ``CUBLAS_WORKSPACE_CONFIG`` (unless already set); the previous state
    afterwards. An op with no deterministic implementation then raises instead of running differently each time.

    cuBLAS reads the variable when PyTorch creates its first handle, so enter this before the first CUDA
    matmul of the process (training does, before building the model). ``enabled=False`` changes nothing.
    """
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace or CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def is_nondeterministic_op(error: BaseException) -> bool:
    """The error PyTorch raises for an op without a deterministic implementation under deterministic mode."""
    return isinstance(error, RuntimeError) and "does not have a deterministic implementation" in str(error)


def progress_bar(iterable, total: int, description: str, enabled: bool):
    """tqdm with ETA when enabled (rank 0, a terminal user), the bare iterable otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)
