"""Scratch buffers the chunked scan reuses from call to call.

On the CPU a fresh buffer of hundreds of MB is paid for again in page faults at every call (the
allocator hands large blocks back to the OS): writing exponentials into a reused buffer measured about
3x faster than into a fresh one. So each thread keeps one flat buffer per (slot, device, dtype) and hands
out views of it. CUDA tensors come from PyTorch's caching allocator, which already reuses memory, so they are
never cached here. The buffers only grow while a piece of work runs (~0.5 GB per thread after a paper-model
step); every workflow (train, evaluate, predict, the demo) runs inside ``scan_workspace()``, which frees them at
its end.
"""

from __future__ import annotations

import contextlib
import threading

import torch

_local = threading.local()


def scratch(slot: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` (dtype and device of ``like``) that stays valid until the next
    ``scratch`` call with the same slot in this thread."""
    if like.device.type != "cpu":
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (slot, like.dtype)
    numel = 1
    for size in shape:
        numel *= size
    # Made outside inference mode: an inference tensor could not be written in place after the block ends.
    with torch.inference_mode(False):
        flat = buffers.get(key)
        if flat is None or flat.numel() < numel:
            flat = buffers[key] = torch.empty(numel, dtype=like.dtype)
        return flat[:numel].view(shape)


@contextlib.contextmanager
def scan_workspace():
    """Free this thread's scan buffers when the block (or the decorated function) ends, however it ends."""
    try:
        yield
    finally:
        release_workspace()


def release_workspace() -> None:
    """Free this thread's cached scan buffers (they are rebuilt on the next call)."""
    _local.__dict__.pop("buffers", None)


def cached_bytes() -> int:
    """Bytes held by this thread's cached scan buffers."""
    buffers = _local.__dict__.get("buffers", {})
    return sum(b.numel() * b.element_size() for b in buffers.values())
