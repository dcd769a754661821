"""vmunet: VM-UNet (Vision Mamba UNet) for medical image segmentation, on any machine."""

from vmunet.models import VMUNet, VMUNetV2, create_model, load_pretrained_vmamba, logits_to_probabilities

__version__ = "0.1.0"

__all__ = ["Ensemble", "Predictor", "VMUNet", "VMUNetV2", "__version__", "create_model", "load_predictor",
           "load_pretrained_vmamba", "logits_to_probabilities"]


def __getattr__(name: str):
    # Lazy: inference pulls in the data readers, which `import vmunet` for the model alone does not need.
    if name in ("Predictor", "Ensemble", "load_predictor"):
        from vmunet import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'vmunet' has no attribute {name!r}")
