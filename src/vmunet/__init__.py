"""vmunet: VM-UNet (Vision Mamba UNet) for medical image segmentation, on any machine."""

from vmunet.models import VMUNet, create_model, load_pretrained_vmamba, logits_to_probabilities

__version__ = "0.1.0"

__all__ = ["VMUNet", "__version__", "create_model", "load_pretrained_vmamba", "logits_to_probabilities"]
