"""Files written whole or not at all: checkpoints, tables, label maps (PNG, NIfTI), arrays.

Every writer goes through ``atomic_write_bytes`` (a temporary file in the same folder, fsync, rename), so a
crash or a full disk never leaves a torn file where a finished one is expected.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename: a crash never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode()))



def mask_png(labels: np.ndarray, num_classes: int):
    """(H, W) class ids -> PIL image: 0/255 for one class, the ids themselves for several."""
    from PIL import Image

    if num_classes == 1:
        return Image.fromarray((labels > 0).astype(np.uint8) * 255)
    if num_classes <= 256:
        return Image.fromarray(labels.astype(np.uint8))
    return Image.fromarray(labels.astype(np.uint16))


def write_png(path: Path, picture) -> None:
    atomic_write_bytes(path, lambda handle: picture.save(handle, format="PNG"))


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda handle: np.save(handle, array))


def write_nifti(path: Path, data: np.ndarray, reference, intent: str | None = None, compresslevel: int = 6) -> None:
    """Write ``data`` (stored axis order) with ``reference``'s affine and header (None: identity affine)."""
    import nibabel as nib

    if reference is None:
        image = nib.Nifti1Image(data, np.eye(4))
    else:
        image = type(reference)(data, reference.affine, header=reference.header.copy())
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)  # the input's intensity scaling must not rescale labels
    image.header["cal_min"], image.header["cal_max"] = float(data.min(initial=0)), float(data.max(initial=0))
    if intent is not None:
        image.header.set_intent(intent)
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=compresslevel, mtime=0)
    atomic_write_bytes(path, lambda handle: handle.write(payload))
