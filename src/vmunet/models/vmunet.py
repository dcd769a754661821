"""VM-UNet: a VSS-block encoder/decoder with additive skips (module tree = official state_dict keys)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vmunet.models.blocks import FinalPatchExpand2D, PatchExpand2D
from vmunet.models.encoder import (SIZE_MULTIPLE, SegmentationNet, VSSEncoder, check_stages, init_vss_weights,
                                   logits_to_probabilities, make_blocks, nearest_valid_sizes, split_by_depth)
from vmunet.ops import check_backend_name

__all__ = ["SIZE_MULTIPLE", "VMUNet", "VSSM", "logits_to_probabilities", "nearest_valid_sizes"]


class VSSLayerUp(nn.Module):
    """Decoder stage: patch expanding (except the first stage), then VSS blocks."""

    def __init__(self, dim: int, drop_paths: Sequence[float], d_state: int, upsample: bool, scan_backend: str):
        super().__init__()
        self.blocks = make_blocks(dim, drop_paths, d_state, scan_backend)
        self.upsample = PatchExpand2D(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class VSSM(VSSEncoder):
    """The network inside the official VMUNet wrapper (its ``vmunet`` attribute): the VSS encoder, a VSS decoder
    with additive skips and the final 4x expansion. (B, 3, H, W) -> logits."""

    def __init__(self, in_chans: int, num_classes: int, depths: Sequence[int], depths_decoder: Sequence[int],
                 dims: Sequence[int], d_state: int, drop_path_rate: float, scan_backend: str):
        super().__init__(in_chans, depths, dims, d_state, drop_path_rate, scan_backend, init_weights=False)
        dims_decoder = list(dims)[::-1]
        # The decoder's linear drop-path schedule is reversed (deepest blocks drop most).
        dec_rates = split_by_depth(torch.linspace(0, drop_path_rate, sum(depths_decoder)).tolist()[::-1],
                                   depths_decoder)
        n = len(dims)
        self.layers_up = nn.ModuleList(
            VSSLayerUp(dims_decoder[i], dec_rates[i], d_state, upsample=i > 0, scan_backend=scan_backend)
            for i in range(n))
        self.final_up = FinalPatchExpand2D(dims_decoder[-1], scale=4)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // 4, num_classes, kernel_size=1)
        self.apply(init_vss_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, x = self.stage_inputs(x)  # the input of each encoder stage; the last stage's output
        for i, layer_up in enumerate(self.layers_up):
            # Decoder stage i > 0 adds the input of encoder stage n - i before upsampling.
            x = layer_up(x if i == 0 else x + skips[-i])
        x = self.final_up(x).permute(0, 3, 1, 2)  # (B, C0/4, H, W)
        return self.final_conv(x)  # (B, num_classes, H, W)


class VMUNet(SegmentationNet):
    """VM-UNet (arXiv 2402.02491). ``model(x)`` maps (B, input_channels, H, W) to float32 logits
    (B, num_classes, H, W); H and W must be multiples of 32 (any sizes with ``pad_to=32``). Use
    ``probabilities`` for sigmoid/softmax.

    state_dict keys equal the official ones (prefix ``vmunet.``), so official checkpoints load strictly.
    """

    def __init__(self, num_classes: int = 1, input_channels: int = 3, depths: Sequence[int] = (2, 2, 2, 2),
                 depths_decoder: Sequence[int] = (2, 2, 2, 1), dims: Sequence[int] = (96, 192, 384, 768),
                 d_state: int = 16, drop_path_rate: float = 0.2, scan_backend: str = "auto",
                 pad_to: int | None = None):
        super().__init__()
        if len(depths_decoder) != 4:
            raise ValueError(f"VM-UNet has 4 stages: dims, depths and depths_decoder need 4 entries each "
                             f"(got {list(dims)}, {list(depths)}, {list(depths_decoder)})")
        check_stages(dims, depths, "VM-UNet")
        if dims[0] % 4:
            raise ValueError(f"dims[0] must be a multiple of 4 for the final 4x4 expansion; got {dims[0]}")
        if num_classes < 1 or input_channels < 1:
            raise ValueError(f"num_classes and input_channels must be >= 1 (got {num_classes}, {input_channels})")
        self.num_classes = num_classes
        self.input_channels = input_channels
        self.config = dict(num_classes=num_classes, input_channels=input_channels, depths=list(depths),
                           depths_decoder=list(depths_decoder), dims=list(dims), d_state=d_state,
                           drop_path_rate=drop_path_rate)
        self.set_padding(pad_to)
        # A one-channel image is repeated to RGB (see ``to_rgb``), so the stem stays 3-channel.
        in_chans = 3 if input_channels == 1 else input_channels
        self.vmunet = VSSM(in_chans, num_classes, depths, depths_decoder, dims, d_state, drop_path_rate,
                           check_backend_name(scan_backend))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x, size = self.pad_input(x)  # (B, C, H, W) -> (B, C, H', W'): only with pad_to
        return self.as_logits(self.crop_output(self.vmunet(self.to_rgb(x)), size))
