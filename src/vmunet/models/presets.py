"""Named model presets behind one constructor: ``create_model(name, **overrides)``."""

from __future__ import annotations

import inspect

from vmunet.models.vmunet import VMUNet

PRESETS: dict[str, dict] = {
    # The paper's model; num_classes and input_channels are given per dataset.
    "vmunet": dict(dims=(96, 192, 384, 768), depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1), d_state=16,
                   drop_path_rate=0.2),
    # Twice the tiny widths: CPU training of small tasks (the demo).
    "vmunet-small": dict(dims=(32, 64, 128, 256), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=16,
                         drop_path_rate=0.1),
    # For fast tests and CPU demos.
    "vmunet-tiny": dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=16,
                        drop_path_rate=0.1),
}


def create_model(name: str = "vmunet", **overrides) -> VMUNet:
    """Build a preset, e.g. ``create_model("vmunet", num_classes=9, input_channels=1)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    unknown = set(overrides) - set(inspect.signature(VMUNet).parameters)
    if unknown:
        raise ValueError(f"unknown model option(s) {', '.join(sorted(unknown))} for preset {name!r}")
    return VMUNet(**{**PRESETS[name], **overrides})
