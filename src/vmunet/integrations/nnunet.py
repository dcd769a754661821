"""nnU-Net v2 trainers that train VM-UNet with nnU-Net's own data pipeline, without a fork of nnU-Net.

    export nnUNet_extTrainer=$(vmunet nnunet trainer-dir)
    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerVMUNet      # or vmunet nnunet train DATASET 2d FOLD -tr ...

Only the network changes: nnU-Net's preprocessing, patch sampling, augmentation, loss (Dice + CE), SGD schedule,
folds, sliding-window prediction, postprocessing and ensembling are nnU-Net's. Differences from nnU-Net's U-Net:
- 2D configurations only (VM-UNet is a 2D network); a 3D configuration is refused in ``__init__``.
- No deep supervision: VM-UNet has one output (VM-UNetV2's two heads are fused into one, as in its paper), so the
  trainer turns it off and ``set_deep_supervision_enabled`` does nothing (nnU-Net's reaches into
  ``network.decoder``).
- nnU-Net plans patch sizes divisible by 2^pools per axis, not always by 32: the network is built with
  ``pad_to=32`` (zero-padding to a multiple of 32 and cropping back inside its forward), so nnU-Net's predictor
  runs unchanged on any patch.

Subclass them as nnU-Net's own variants (a folder of yours in ``nnUNet_extTrainer``), e.g. set ``num_epochs`` in
``__init__``, or ``vmamba_checkpoint`` (a VMamba ImageNet checkpoint loaded into the encoder before training,
as ``vmunet train --pretrained``).
"""

from __future__ import annotations

import torch
from torch import nn

try:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
except ImportError as error:
    raise ImportError(f"vmunet.integrations.nnunet needs nnU-Net v2 ({error}): pip install 'vmunet[nnunet]' "
                      "with your torch kept (see the README's 'With nnU-Net')") from error

from vmunet.models import create_model, load_pretrained_vmamba

PAD_TO = 32  # patch 4 x three 2x downsamplings


def two_d_configurations(plans_manager: PlansManager) -> list[str]:
    """The plans' configurations whose patches are 2D (usually just "2d")."""
    return [name for name in plans_manager.plans["configurations"]
            if len(plans_manager.get_configuration(name).patch_size) == 2]


def check_two_d(plans_manager: PlansManager, configuration_manager: ConfigurationManager, trainer: str,
                configuration: str | None = None) -> None:
    """A clear error for a 3D configuration, naming the ones that work."""
    if len(configuration_manager.patch_size) == 2:
        return
    options = two_d_configurations(plans_manager)
    hint = f"use {' or '.join(repr(n) for n in options)}" if options else "plan a 2D configuration ('-c 2d')"
    which = "the configuration" if configuration is None else f"configuration {configuration!r}"
    raise ValueError(f"{trainer} trains 2D networks only; {which} has 3D patches "
                     f"{list(configuration_manager.patch_size)}: {hint}")


class nnUNetTrainerVMUNet(nnUNetTrainer):  # nnU-Net's naming: -tr takes the class name
    """The paper's VM-UNet (preset "vmunet") in nnU-Net. Subclasses choose another preset with ``vmunet_preset``."""

    vmunet_preset = "vmunet"
    vmamba_checkpoint: str | None = None  # a VMamba ImageNet checkpoint for the encoder (and decoder), or None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        check_two_d(self.plans_manager, self.configuration_manager, type(self).__name__, configuration)
        self.enable_deep_supervision = False  # read by initialize(), the loss and the data loaders

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's hook (also called by its predictor, on the class). A classmethod, so that a subclass's
        ``vmunet_preset`` applies; the deep supervision flag is ignored (one output)."""
        check_two_d(plans_manager, configuration_manager, cls.__name__)
        # num_output_channels: nnU-Net's segmentation heads (labels incl. background, or regions), trained on logits
        return create_model(cls.vmunet_preset, num_classes=num_output_channels, input_channels=num_input_channels,
                            pad_to=PAD_TO)

    def initialize(self):
        was_initialized = self.was_initialized
        super().initialize()
        if self.vmamba_checkpoint and not was_initialized:
            network = self.network.module if self.is_ddp else self.network
            network = getattr(network, "_orig_mod", network)  # under torch.compile
            report = load_pretrained_vmamba(network, self.vmamba_checkpoint)
            self.print_to_log_file(f"VMamba weights from {self.vmamba_checkpoint}: {report.summary()}")

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Nothing to switch: VM-UNet has one output (nnU-Net's version edits ``network.decoder``)."""


class nnUNetTrainerVMUNetV2(nnUNetTrainerVMUNet):
    """VM-UNetV2 (preset "vmunet-v2": SDI decoder, its two heads fused into the one output)."""

    vmunet_preset = "vmunet-v2"


class nnUNetTrainerVMUNetTiny(nnUNetTrainerVMUNet):
    """The "vmunet-tiny" network (0.6 M parameters): tests and laptops, not results."""

    vmunet_preset = "vmunet-tiny"
