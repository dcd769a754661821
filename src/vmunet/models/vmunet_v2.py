"""VM-UNetV2 (arXiv 2403.09157): the VM-UNet encoder with a Semantics and Detail Infusion (SDI) decoder.

Module tree = the official ``VMUNetV2`` (repository nobodyplayer1/VM-UNetV2, commit b65f04c), so state_dict
keys and shapes are the official ones: the SDI/decoder part unprefixed, the encoder under ``vmunet.``.

Data flow, for an input (B, 3, H, W), features channels-first (B, C, h, w):
    encoder stage inputs f1..f4 at H/4, H/8, H/16, H/32 (dims[0..3] channels)
    f_i <- Translayer_i(SA_i(CA_i(f_i)))                      mid_channel channels each
    g_i = prod_j conv_ij(resize(f_j, size of f_i))             SDI at level i (four 3x3 convs, element-wise product)
    y3 = deconv2(g4) + g3; y2 = deconv3(y3) + g2; y1 = deconv4(y2) + g1      (ConvTranspose 4/2/1)
    logits = up4(seg_outs.3(y1)) [+ deconv6(up4(seg_outs.2(y2))) with deep supervision]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmunet.models.encoder import SegmentationNet, VSSEncoder, check_stages
from vmunet.ops import check_backend_name

LEVELS = 4
WIDTH_FACTORS = (2, 4, 8, 16)  # encoder dims = mid_channel x these


class ChannelAttention(nn.Module):
    """(B, C, h, w) -> (B, C, 1, 1) weights: sigmoid(fc2(relu(fc1(avgpool x))) + fc2(relu(fc1(maxpool x))))."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        peak = self.fc2(F.relu(self.fc1(x.amax(dim=(2, 3), keepdim=True))))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """(B, C, h, w) -> (B, 1, h, w) weights: sigmoid(conv7x7([channel mean, channel max]))."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, h, w)
        return torch.sigmoid(self.conv1(pooled))


class ConvBN(nn.Module):
    """1x1 conv without bias, then BatchNorm (the official ``BasicConv2d``, whose ReLU is never applied)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size): adaptive average pooling when larger, bilinear (align_corners=True) when
    smaller, as the official SDI. Height and width each go to their own target (the official code reads only the
    width, so it runs on square inputs only; on those the two agree)."""
    size = (int(size[0]), int(size[1]))
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == size:
        return x
    if w > size[1]:
        if h % size[0] or w % size[1]:
            return F.adaptive_avg_pool2d(x, size)
        # The levels differ by powers of 2, so this is the same pooling with a fixed window (exportable to ONNX).
        return F.avg_pool2d(x, kernel_size=(h // size[0], w // size[1]))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class SDI(nn.Module):
    """Semantics and Detail Infusion at one level: every feature brought to the anchor's size, through its own
    3x3 conv (with bias), and the four results multiplied element-wise."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in range(LEVELS))

    def forward(self, features: Sequence[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
        size = anchor.shape[-2:]
        out = self.convs[0](resize_to(features[0], size))
        for conv, feature in zip(self.convs[1:], features[1:]):
            out = out * conv(resize_to(feature, size))
        return out


def up4(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def deconv(channels: int) -> nn.ConvTranspose2d:
    """x2 upsampling: ConvTranspose2d kernel 4, stride 2, padding 1, no bias."""
    return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1, bias=False)


class VMUNetV2(SegmentationNet):
    """VM-UNetV2. ``model(x)`` maps (B, input_channels, H, W) to float32 logits (B, num_classes, H, W); H and W
    multiples of 32 (any sizes with ``pad_to=32``), not necessarily equal. ``dims`` must be ``mid_channel`` x
    (2, 4, 8, 16).

    Like the official forward, the output is ``up4(seg_outs.3(y1))``, plus ``deconv6(up4(seg_outs.2(y2)))`` with
    ``deep_supervision`` (the default; a fusion of two heads into one output, trained with the one loss of the
    official training). It returns logits (the official forward applies a sigmoid for one class).

    Parameters kept for checkpoint compatibility but not computed (they cannot change the output):
    ``vmunet.layers.3`` (the last encoder stage: the official code runs it and throws its output away, 8.9 M of
    the paper model's 22.77 M parameters), ``seg_outs.0``, ``seg_outs.1`` and ``deconv5``, and without deep
    supervision also ``seg_outs.2`` and ``deconv6``. They are created with ``requires_grad=False``
    (``unused_parameter_names()``), so optimizers leave them alone and DistributedDataParallel does not wait for
    their gradients.

    ``deconv6`` is the official ConvTranspose2d(1, 1, 3) (weight (1, 1, 3, 3), bias (1,)) for one class and
    whenever ``deep_supervision`` is off, whatever ``num_classes``: every official checkpoint loads strictly,
    including the multi-class ones (the official code requires deep supervision off for more than one class).
    Deep supervision with ``num_classes > 1`` is an extension that the official forward cannot run: ``deconv6``
    upsamples each class map with its own 3x3 kernel (groups = num_classes, weight (K, 1, 3, 3), bias (K,)). A
    model built that way cannot load an official multi-class checkpoint (its deconv6 is (1, 1, 3, 3)); build it
    with ``deep_supervision=False`` to load one.

    ``load_pretrained_vmamba(model, path)`` applies the official V2 rule: VMamba encoder keys by name into
    ``vmunet.*``, nothing else (VM-UNet's copy of encoder stage i into decoder stage 3 - i finds no VSS decoder).
    """

    def __init__(self, num_classes: int = 1, input_channels: int = 3, mid_channel: int = 48,
                 dims: Sequence[int] = (96, 192, 384, 768), depths: Sequence[int] = (2, 2, 9, 2), d_state: int = 16,
                 deep_supervision: bool = True, drop_path_rate: float = 0.2, scan_backend: str = "auto",
                 pad_to: int | None = None):
        super().__init__()
        check_stages(dims, depths, "VM-UNetV2")
        expected = [mid_channel * f for f in WIDTH_FACTORS]
        if list(dims) != expected:
            raise ValueError(f"VM-UNetV2's SDI decoder needs dims = mid_channel x (2, 4, 8, 16): mid_channel "
                             f"{mid_channel} gives {expected}, but dims are {list(dims)}")
        if mid_channel < 8:
            raise ValueError(f"mid_channel must be >= 8 (channel attention reduces 2 x mid_channel by 16); "
                             f"got {mid_channel}")
        if num_classes < 1 or input_channels < 1:
            raise ValueError(f"num_classes and input_channels must be >= 1 (got {num_classes}, {input_channels})")
        self.num_classes = num_classes
        self.input_channels = input_channels
        self.deep_supervision = bool(deep_supervision)
        self.config = dict(num_classes=num_classes, input_channels=input_channels, mid_channel=mid_channel,
                           dims=list(dims), depths=list(depths), d_state=d_state,
                           deep_supervision=self.deep_supervision, drop_path_rate=drop_path_rate)
        self.set_padding(pad_to)
        # Registered in the official order (state_dict order). Level i = 1..4 has dims[i-1] channels.
        for i, channels in enumerate(dims, start=1):
            setattr(self, f"ca_{i}", ChannelAttention(channels))
            setattr(self, f"sa_{i}", SpatialAttention())
        for i, channels in enumerate(dims, start=1):
            setattr(self, f"Translayer_{i}", ConvBN(channels, mid_channel))
        for i in range(1, LEVELS + 1):
            setattr(self, f"sdi_{i}", SDI(mid_channel))
        self.seg_outs = nn.ModuleList(nn.Conv2d(mid_channel, num_classes, kernel_size=1) for _ in range(LEVELS))
        self.deconv2, self.deconv3, self.deconv4, self.deconv5 = (deconv(mid_channel) for _ in range(4))
        # The official deconv6 is (1, 1, 3) whatever num_classes: kept so that every official checkpoint loads.
        # Only deep supervision with several classes (which the official code cannot run) needs the grouped one.
        deconv6_channels = num_classes if self.deep_supervision else 1
        self.deconv6 = nn.ConvTranspose2d(deconv6_channels, deconv6_channels, kernel_size=3, stride=2, padding=1,
                                          output_padding=1, groups=deconv6_channels)
        in_chans = 3 if input_channels == 1 else input_channels  # a grey image is repeated to RGB (``to_rgb``)
        self.vmunet = VSSEncoder(in_chans, depths, dims, d_state, drop_path_rate, check_backend_name(scan_backend))
        unused = self.unused_parameter_names()
        for name, param in self.named_parameters():
            if name in unused:
                param.requires_grad_(False)

    def unused_parameter_names(self) -> set[str]:
        """The parameters that the forward never computes with (kept so that official checkpoints load)."""
        prefixes = ["vmunet.layers.3.", "seg_outs.0.", "seg_outs.1.", "deconv5."]
        if not self.deep_supervision:
            prefixes += ["seg_outs.2.", "deconv6."]
        return {name for name, _ in self.named_parameters() if name.startswith(tuple(prefixes))}

    def level_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, mid_channel, H/4, W/4), ... (B, mid_channel, H/32, W/32)]: the encoder stage
        inputs after channel attention, spatial attention and Translayer."""
        stage_inputs, _ = self.vmunet.stage_inputs(x, last_stage=False)
        features = []
        for i, f in enumerate(stage_inputs, start=1):
            f = f.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
            f = getattr(self, f"ca_{i}")(f) * f
            f = getattr(self, f"sa_{i}")(f) * f
            features.append(getattr(self, f"Translayer_{i}")(f))
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x, size = self.pad_input(x)  # (B, C, H, W) -> (B, C, H', W'): only with pad_to
        features = self.level_features(self.to_rgb(x))
        g1, g2, g3, g4 = (getattr(self, f"sdi_{i}")(features, features[i - 1]) for i in range(1, LEVELS + 1))
        y3 = self.deconv2(g4) + g3  # (B, mid, H/16, W/16)
        y2 = self.deconv3(y3) + g2  # (B, mid, H/8, W/8)
        y1 = self.deconv4(y2) + g1  # (B, mid, H/4, W/4)
        logits = up4(self.seg_outs[3](y1))  # (B, K, H, W)
        if self.deep_supervision:
            logits = logits + self.deconv6(up4(self.seg_outs[2](y2)))  # (B, K, H/2, W/2) -> (B, K, H, W)
        return self.as_logits(self.crop_output(logits, size))
