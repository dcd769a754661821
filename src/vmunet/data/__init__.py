"""Datasets (ISIC folders, Synapse npz/h5, nnU-Net NIfTI) and the paired transforms of the paper's recipes.

2D sample: ``{"image": float32 (H, W, C), "label": int64 (H, W), "case_id": str}``.
Volume: ``{"image": float32 (D, H, W), "label": int64 (D, H, W) or None, "case_id": str,
"spacing": (sz, sx, sy) or None, "affine": (4, 4) or None}``: the spacing per axis of the arrays, (D, H, W) = stored
(z, x, y), as the readers return it and the metrics (HD95, NSD) take it.
"""

from vmunet.io.checks import check_labels, check_same_shape
from vmunet.data.dataset import SegmentationDataset
from vmunet.data.isic import IsicFolder, available_splits
from vmunet.data.nifti import NiftiSlices, NiftiVolumes, read_label_names
from vmunet.data.synapse import CLASS_NAMES as SYNAPSE_CLASS_NAMES
from vmunet.data.synapse import SynapseSlices, SynapseVolumes
from vmunet.data.transforms import (
    NORMALIZATIONS,
    RECIPES,
    PairedTransform,
    eval_transform,
    normalize,
    resize_labels_to,
    resize_to,
    train_transform,
)

__all__ = [
    "NORMALIZATIONS", "RECIPES", "SYNAPSE_CLASS_NAMES", "IsicFolder", "NiftiSlices", "NiftiVolumes",
    "PairedTransform", "SegmentationDataset", "SynapseSlices", "SynapseVolumes", "available_splits",
    "check_labels", "check_same_shape", "eval_transform", "normalize", "read_label_names", "resize_labels_to",
    "resize_to", "train_transform",
]
