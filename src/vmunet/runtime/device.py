"""Devices, mixed precision, seeding and progress bars: shared by training, evaluation and prediction."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


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


def progress_bar(iterable, total: int, description: str, enabled: bool):
    """tqdm with ETA when enabled (rank 0, a terminal user), the bare iterable otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)
