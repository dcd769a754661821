"""VM-UNet and VM-UNetV2 model code. Imports torch and vmunet.ops only (no data, training or metrics)."""

from vmunet.models.presets import PRESETS, create_model
from vmunet.models.pretrained import LoadReport, load_pretrained_vmamba
from vmunet.models.vmunet import VMUNet, logits_to_probabilities
from vmunet.models.vmunet_v2 import VMUNetV2

__all__ = ["PRESETS", "LoadReport", "VMUNet", "VMUNetV2", "create_model", "load_pretrained_vmamba",
           "logits_to_probabilities"]
