"""VM-UNet inside other frameworks, each behind its extra: nnU-Net v2 trainers (``nnunet``, ``nnunet_launcher``;
the ``nnunet`` extra) and MONAI bundles (``monai_bundle``; the ``monai`` extra). Nothing here is imported by the
rest of vmunet unless a user asks for it."""
