"""Pieces shared by training, evaluation and prediction: devices, autocast, seeding, batched inference."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from vmunet.data.transforms import resize_to
from vmunet.models import logits_to_probabilities


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


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, out_size: tuple[int, int] | None = None,
                          batch_size: int = 8, device: torch.device | None = None, amp: bool = False,
                          tta: bool = False) -> torch.Tensor:
    """(N, C, S, S) network-size inputs -> (N, K, H, W) float32 probabilities on the CPU.

    ``out_size`` resizes the probabilities (bilinear) back to the original image size, so that metrics
    and masks are computed at the image's resolution, not the network's. ``tta`` averages the flips
    (not part of the paper protocol).
    """
    device = device or next(model.parameters()).device
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device)
        with autocast(device, amp):
            probs = logits_to_probabilities(model(batch).float())
            if tta:
                for dims in ((3,), (2,), (2, 3)):
                    probs = probs + logits_to_probabilities(model(batch.flip(dims)).float()).flip(dims)
                probs = probs / 4
        if out_size is not None:
            probs = resize_to(probs, out_size)  # the same resize as `vmunet predict`
        outputs.append(probs.float().cpu())
    return torch.cat(outputs)


def probabilities_to_labels(probs: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) -> (N, H, W) int64: threshold 0.5 for one class, argmax otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] >= 0.5).long()
    return probs.argmax(1)


def progress_bar(iterable, total: int, description: str, enabled: bool):
    """tqdm with ETA when enabled (rank 0, a terminal user), the bare iterable otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)
