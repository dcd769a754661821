"""What VM-UNet and VM-UNetV2 share: the VSS encoder (the official VSSM's patch embed and four stages) and
the wrapper behaviour around a network (input checks, scan backend choice, float32 logits out).

Module names equal the official ones, so state_dict keys do too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmunet.models.blocks import DropPath, PatchEmbed2D, PatchMerging2D
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


def split_by_depth(rates: Sequence[float], depths: Sequence[int]) -> list[list[float]]:
    """Cut a flat list of per-block drop-path rates into one list per stage."""
    starts = [sum(depths[:i]) for i in range(len(depths) + 1)]
    return [list(rates[starts[i]:starts[i + 1]]) for i in range(len(depths))]


def init_vss_weights(module: nn.Module) -> None:
    """The official VSSM initialisation (applied with ``Module.apply``): Linear trunc-normal std 0.02 and bias 0,
    LayerNorm 1 / 0; convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_stages(dims: Sequence[int], depths: Sequence[int], name: str) -> None:
    if len(dims) != 4 or len(depths) != 4:
        raise ValueError(f"{name} has 4 encoder stages: dims and depths need 4 entries each "
                         f"(got {list(dims)}, {list(depths)})")
    if any(dims[i + 1] != 2 * dims[i] for i in range(3)):
        raise ValueError(f"dims must double at every stage, like (96, 192, 384, 768); got {list(dims)}")
    if any(d < 1 for d in depths):
        raise ValueError(f"every encoder stage needs at least one block; got depths {list(depths)}")


class VSSEncoder(nn.Module):
    """Patch embed (4x4) and four VSS stages with patch merging after the first three: the encoder part of the
    official VSSM (attributes ``patch_embed`` and ``layers``). The drop-path rate rises linearly over its blocks.

    ``init_weights=False`` leaves the Linear/LayerNorm initialisation to a subclass that adds modules and then
    applies ``init_vss_weights`` once over everything, in the official module order (same random draws).
    """

    def __init__(self, in_chans: int, depths: Sequence[int], dims: Sequence[int], d_state: int,
                 drop_path_rate: float, scan_backend: str, init_weights: bool = True):
        super().__init__()
        self.patch_embed = PatchEmbed2D(patch_size=4, in_chans=in_chans, embed_dim=dims[0])
        rates = split_by_depth(torch.linspace(0, drop_path_rate, sum(depths)).tolist(), depths)
        n = len(dims)
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], rates[i], d_state, downsample=i < n - 1, scan_backend=scan_backend)
            for i in range(n))
        if init_weights:
            self.apply(init_vss_weights)

    def stage_inputs(self, x: torch.Tensor, last_stage: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(B, 3, H, W) -> ([input of stage i, (B, H/2^(i+2), W/2^(i+2), dims[i]) for i = 0..3], output of the
        last stage or None). ``last_stage=False`` does not run the last stage (VM-UNetV2 never uses it)."""
        inputs = [self.patch_embed(x)]  # (B, H/4, W/4, C0)
        for layer in self.layers[:-1]:
            inputs.append(layer(inputs[-1]))
        return inputs, (self.layers[-1](inputs[-1]) if last_stage else None)


def nearest_valid_sizes(size: int) -> str:
    lower = max(SIZE_MULTIPLE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)
    upper = (size // SIZE_MULTIPLE + 1) * SIZE_MULTIPLE
    return f"{lower}" if lower == upper else f"{lower} or {upper}"


class SegmentationNet(nn.Module):
    """Behaviour common to VMUNet and VMUNetV2. Subclasses set ``num_classes``, ``input_channels`` and
    ``config`` (their keyword arguments, recorded in run folders) and build ``self.vmunet``."""

    num_classes: int
    input_channels: int
    config: dict
    pad_to: int | None = None  # set by ``set_padding``: any input size, padded inside the forward

    def set_padding(self, pad_to: int | None) -> None:
        """``pad_to=32`` (or a multiple of it): inputs of any height and width are zero-padded at the bottom and
        right to the next multiple of ``pad_to`` and the logits cropped back, so callers that choose their own
        sizes (nnU-Net's patches, MONAI's sliding window) can use the model. No parameter changes (state_dict
        keys stay the official ones); the option is recorded in ``config`` so that a saved model rebuilds alike.
        """
        if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < SIZE_MULTIPLE
                                   or pad_to % SIZE_MULTIPLE):
            raise ValueError(f"pad_to must be a positive multiple of {SIZE_MULTIPLE} (or None); got {pad_to!r}")
        self.pad_to = pad_to
        if pad_to is None:
            self.config.pop("pad_to", None)
        else:
            self.config["pad_to"] = pad_to

    def pad_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> (B, C, H', W') zero-padded to multiples of ``pad_to`` (unchanged without it), and (H, W)
        for ``crop_output``. Zero is the mean of z-scored images (nnU-Net's, MONAI's usual normalisation)."""
        height, width = int(x.shape[2]), int(x.shape[3])
        if self.pad_to is None:
            return x, (height, width)
        extra_h, extra_w = -height % self.pad_to, -width % self.pad_to
        if extra_h or extra_w:
            x = F.pad(x, (0, extra_w, 0, extra_h))
        return x, (height, width)

    @staticmethod
    def crop_output(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, K, H', W') -> (B, K, H, W): the part of the logits that covers the unpadded input."""
        if tuple(logits.shape[2:]) == tuple(size):
            return logits  # nothing was padded: no slice in traced/exported graphs either
        return logits[:, :, :size[0], :size[1]]

    def set_scan_backend(self, name: str) -> None:
        """Choose the selective-scan backend of every SS2D block ("auto", "torch", "ref", "mamba_ssm", ...)."""
        check_backend_name(name)
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = name

    def check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(f"{name} expects a (batch, channels, height, width) tensor; got shape {tuple(x.shape)}")
        # A grey (B, 1, H, W) image also goes to a 3-channel model, as in the official forwards, which repeat any
        # one-channel input to RGB (official configs say input_channels=3 for grey data).
        grey_to_rgb = x.shape[1] == 1 and self.input_channels == 3
        if x.shape[1] != self.input_channels and not grey_to_rgb:
            raise ValueError(f"{name} was built for {self.input_channels} input channel(s) but got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)}); convert the images or set input_channels")
        for side, size in (("height", x.shape[2]), ("width", x.shape[3])):
            if size == 0 or (self.pad_to is None and size % SIZE_MULTIPLE):
                raise ValueError(f"input {side} {size} is not a multiple of {SIZE_MULTIPLE}; resize or pad to "
                                 f"{nearest_valid_sizes(size)} (or build the model with pad_to=32)")

    @staticmethod
    def to_rgb(x: torch.Tensor) -> torch.Tensor:
        """A one-channel image repeated to three channels, as the official wrappers do (the stem stays 3-channel
        and RGB ImageNet weights apply)."""
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    @staticmethod
    def as_logits(logits: torch.Tensor) -> torch.Tensor:
        # At least float32 (bfloat16/float16 logits of autocast come out float32); a float64 model stays float64.
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits_to_probabilities(logits)


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits -> probabilities: sigmoid for one class, softmax over classes otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else F.softmax(logits, dim=1)
