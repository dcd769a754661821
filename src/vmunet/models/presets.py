"""Named model presets behind one constructor: ``create_model(name, **overrides)``."""

from __future__ import annotations

import inspect

from torch import nn

from vmunet.models.vmunet import VMUNet
from vmunet.models.vmunet_v2 import VMUNetV2

PRESETS: dict[str, dict] = {
    # The paper's model; num_classes and input_channels are given per dataset.
    "vmunet": dict(dims=(96, 192, 384, 768), depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1), d_state=16,
                   drop_path_rate=0.2),
    # The official VMUNet class's default depths (users need it for the paper's ISIC18 figure, VM-UNet #47).
    "vmunet-deep": dict(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), depths_decoder=(2, 9, 2, 2), d_state=16,
                        drop_path_rate=0.2),
    # Twice the tiny widths: CPU training of small tasks (the demo).
    "vmunet-small": dict(dims=(32, 64, 128, 256), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=16,
                         drop_path_rate=0.1),
    # For fast tests and CPU demos.
    "vmunet-tiny": dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=16,
                        drop_path_rate=0.1),
    # VM-UNetV2 as its paper and official ISIC config: SDI decoder, deep supervision.
    "vmunet-v2": dict(mid_channel=48, dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), d_state=16,
                      deep_supervision=True, drop_path_rate=0.2),
    # The size of the official-code fixture tests/fixtures/v2_tiny_binary.pt: fast tests and CPU runs.
    "vmunet-v2-tiny": dict(mid_channel=8, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), d_state=16,
                           deep_supervision=True, drop_path_rate=0.1),
}

# The class each preset builds (VMUNet unless named here).
PRESET_CLASSES: dict[str, type[nn.Module]] = {"vmunet-v2": VMUNetV2, "vmunet-v2-tiny": VMUNetV2}


def model_class(name: str) -> type[nn.Module]:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESET_CLASSES.get(name, VMUNet)


def create_model(name: str = "vmunet", **overrides) -> VMUNet | VMUNetV2:
    """Build a preset, e.g. ``create_model("vmunet", num_classes=9, input_channels=1)``."""
    cls = model_class(name)
    unknown = set(overrides) - set(inspect.signature(cls).parameters)
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(sorted(unknown))} for preset {name!r}")
    return cls(**{**PRESETS[name], **overrides})
