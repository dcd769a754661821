"""VM-UNet: a VSS-block encoder/decoder with additive skips (module tree = official state_dict keys)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmunet.models.blocks import DropPath, FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D
from vmunet.models.ss2d import SS2D
from vmunet.ops import check_backend_name

SIZE_MULTIPLE = 32  # patch 4 x three 2x downsamplings


class VSSBlock(nn.Module):
    """(B, H, W, C) -> same: x + DropPath(SS2D(LayerNorm(x)))."""

    def __init__(self, dim: int, drop_path: float, d_state: int, scan_backend: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)  # eps 1e-5: the official VSSLayer passes nn.LayerNorm
        self.self_attention = SS2D(d_model=dim, d_state=d_state, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def make_blocks(dim: int, drop_paths: Sequence[float], d_state: int, scan_backend: str) -> nn.ModuleList:
    return nn.ModuleList(VSSBlock(dim, p, d_state, scan_backend) for p in drop_paths)


class VSSLayer(nn.Module):
    """Encoder stage: VSS blocks, then patch merging (except the last stage)."""

    def __init__(self, dim: int, drop_paths: Sequence[float], d_state: int, downsample: bool, scan_backend: str):
        super().__init__()
        self.blocks = make_blocks(dim, drop_paths, d_state, scan_backend)
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


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


def split_by_depth(rates: Sequence[float], depths: Sequence[int]) -> list[list[float]]:
    """Cut a flat list of per-block drop-path rates into one list per stage."""
    starts = [sum(depths[:i]) for i in range(len(depths) + 1)]
    return [list(rates[starts[i]:starts[i + 1]]) for i in range(len(depths))]


class VSSM(nn.Module):
    """The network inside the official VMUNet wrapper (its ``vmunet`` attribute). (B, 3, H, W) -> logits."""

    def __init__(self, in_chans: int, num_classes: int, depths: Sequence[int], depths_decoder: Sequence[int],
                 dims: Sequence[int], d_state: int, drop_path_rate: float, scan_backend: str):
        super().__init__()
        dims_decoder = list(dims)[::-1]
        self.patch_embed = PatchEmbed2D(patch_size=4, in_chans=in_chans, embed_dim=dims[0])
        # Linear drop-path schedule over all blocks; the decoder's is reversed (deepest blocks drop most).
        enc_rates = split_by_depth(torch.linspace(0, drop_path_rate, sum(depths)).tolist(), depths)
        dec_rates = split_by_depth(torch.linspace(0, drop_path_rate, sum(depths_decoder)).tolist()[::-1],
                                   depths_decoder)
        n = len(dims)
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], enc_rates[i], d_state, downsample=i < n - 1, scan_backend=scan_backend)
            for i in range(n))
        self.layers_up = nn.ModuleList(
            VSSLayerUp(dims_decoder[i], dec_rates[i], d_state, upsample=i > 0, scan_backend=scan_backend)
            for i in range(n))
        self.final_up = FinalPatchExpand2D(dims_decoder[-1], scale=4)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // 4, num_classes, kernel_size=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, H/4, W/4, C0)
        skips = []
        for layer in self.layers:
            skips.append(x)  # the input of each encoder stage
            x = layer(x)
        for i, layer_up in enumerate(self.layers_up):
            # Decoder stage i > 0 adds the input of encoder stage n - i before upsampling.
            x = layer_up(x if i == 0 else x + skips[-i])
        x = self.final_up(x).permute(0, 3, 1, 2)  # (B, C0/4, H, W)
        return self.final_conv(x)  # (B, num_classes, H, W)


def nearest_valid_sizes(size: int) -> str:
    lower = max(SIZE_MULTIPLE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)
    upper = (size // SIZE_MULTIPLE + 1) * SIZE_MULTIPLE
    return f"{lower}" if lower == upper else f"{lower} or {upper}"


class VMUNet(nn.Module):
    """VM-UNet (arXiv 2402.02491). ``model(x)`` maps (B, input_channels, H, W) to float32 logits
    (B, num_classes, H, W); H and W must be multiples of 32. Use ``probabilities`` for sigmoid/softmax.

    state_dict keys equal the official ones (prefix ``vmunet.``), so official checkpoints load strictly.
    """

    def __init__(self, num_classes: int = 1, input_channels: int = 3, depths: Sequence[int] = (2, 2, 2, 2),
                 depths_decoder: Sequence[int] = (2, 2, 2, 1), dims: Sequence[int] = (96, 192, 384, 768),
                 d_state: int = 16, drop_path_rate: float = 0.2, scan_backend: str = "auto"):
        super().__init__()
        if len(dims) != 4 or len(depths) != 4 or len(depths_decoder) != 4:
            raise ValueError(f"VM-UNet has 4 stages: dims, depths and depths_decoder need 4 entries each "
                             f"(got {list(dims)}, {list(depths)}, {list(depths_decoder)})")
        if any(dims[i + 1] != 2 * dims[i] for i in range(3)):
            raise ValueError(f"dims must double at every stage, like (96, 192, 384, 768); got {list(dims)}")
        if dims[0] % 4:
            raise ValueError(f"dims[0] must be a multiple of 4 for the final 4x4 expansion; got {dims[0]}")
        if num_classes < 1 or input_channels < 1:
            raise ValueError(f"num_classes and input_channels must be >= 1 (got {num_classes}, {input_channels})")
        self.num_classes = num_classes
        self.input_channels = input_channels
        self.config = dict(num_classes=num_classes, input_channels=input_channels, depths=list(depths),
                           depths_decoder=list(depths_decoder), dims=list(dims), d_state=d_state,
                           drop_path_rate=drop_path_rate)
        # A one-channel image is repeated to RGB, as the official wrapper does, so the stem stays 3-channel
        # and RGB (ImageNet) weights apply.
        in_chans = 3 if input_channels == 1 else input_channels
        self.vmunet = VSSM(in_chans, num_classes, depths, depths_decoder, dims, d_state, drop_path_rate,
                           check_backend_name(scan_backend))

    def set_scan_backend(self, name: str) -> None:
        """Choose the selective-scan backend of every SS2D block ("auto", "torch", "ref", "mamba_ssm")."""
        check_backend_name(name)
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = name

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"VMUNet expects a (batch, channels, height, width) tensor; got shape {tuple(x.shape)}")
        if x.shape[1] != self.input_channels:
            raise ValueError(f"VMUNet was built for {self.input_channels} input channel(s) but got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)}); convert the images or set input_channels")
        for name, size in (("height", x.shape[2]), ("width", x.shape[3])):
            if size % SIZE_MULTIPLE or size == 0:
                raise ValueError(f"input {name} {size} is not a multiple of {SIZE_MULTIPLE}; resize or pad to "
                                 f"{nearest_valid_sizes(size)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        logits = self.vmunet(x)
        # At least float32 (bfloat16/float16 logits of autocast come out float32); a float64 model stays float64.
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits_to_probabilities(logits)


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> probabilities: sigmoid for one class, softmax over classes otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else F.softmax(logits, dim=1)
