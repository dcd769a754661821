"""Synapse ``.npy.h5`` test volumes (h5py): the ``image`` dataset of one file, its header checked first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmunet.io.checks import check_finite
from vmunet.io.limits import check_h5_dataset


def read_h5_volume(path: Path, self_contained: bool = False) -> np.ndarray:
    """The ``image`` dataset (D, H, W) of a Synapse ``.npy.h5`` test volume.

    A single-file twin of ``vmunet.data.synapse.SynapseVolumes`` (which needs the dataset's list files);
    the label, if present, is not read. Its shape is checked against the voxel limit first, and with
    ``self_contained`` (uploads) its storage (``vmunet.io.limits``).
    """
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading .h5 volumes needs h5py: pip install h5py") from exc
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read HDF5 file: empty file (0 bytes)")
    check_h5_dataset(path, "image", self_contained=self_contained)
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise ValueError(f"{path}: HDF5 file has no dataset 'image' (found: {', '.join(sorted(f)) or 'none'})")
            volume = np.asarray(f["image"][()], dtype=np.float32)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read HDF5 file: {exc}") from exc
    if volume.ndim != 3:
        raise ValueError(f"{path}: image has shape {volume.shape}, expected (D, H, W)")
    check_finite(volume, path)
    return volume
