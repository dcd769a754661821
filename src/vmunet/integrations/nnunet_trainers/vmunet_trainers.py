"""The module nnU-Net's trainer search imports from ``vmunet nnunet trainer-dir`` (via ``nnUNet_extTrainer``).

It only re-exports the trainers: nnU-Net imports every module of that folder as a top-level module and forgets
them afterwards, so the classes themselves live in ``vmunet.integrations.nnunet``, imported once under their own
name.
"""

from vmunet.integrations.nnunet import nnUNetTrainerVMUNet, nnUNetTrainerVMUNetTiny, nnUNetTrainerVMUNetV2

__all__ = ["nnUNetTrainerVMUNet", "nnUNetTrainerVMUNetTiny", "nnUNetTrainerVMUNetV2"]
