"""Model cost for ``vmunet info``: parameters by part, multiply-accumulates (MACs) by kind and part, forward time.

MACs are counted for one forward of a (1, C, S, S) input by forward hooks that read the shapes the forward
really runs, so they are exact for that input size. One MAC is one multiplication (with its addition):

- ``nn.Conv2d``: output elements x in_channels/groups x kh x kw; ``nn.ConvTranspose2d``: input elements x
  out_channels/groups x kh x kw; ``nn.Linear``: output elements x in_features. Bias additions are not counted.
- norms (``LayerNorm``, ``BatchNorm``, ``GroupNorm``): 1 MAC per output element for the normalisation
  ((x - mean) / std) and 1 more for the affine scale-and-shift when the norm has one; the mean and variance
  reductions are not counted.
- SS2D's two projection einsums (the official ``x_proj_weight``/``dt_projs_weight``, parameters rather than
  modules, which is why thop misses them), per position: K x (dt_rank + 2N) x d_inner and K x d_inner x dt_rank,
  K = 4 scan directions.
- the selective scan of each SS2D, ``selective_scan_macs``: VMamba's ``flops_selective_scan_ref``
  (MzeroMiko/VMamba, the early ``vmamba.py`` that VM-UNet copies) written out in closed form.
- not counted: activations, element-wise products and sums (SS2D gating, residuals, skips, attention weights,
  SDI products), pooling, interpolation, softmax/sigmoid, the scan's exp and softplus, cross-scan copies.

thop's count (the official 4.11 GMACs of VM-UNet at 256 x 256) hooks only modules, so it sees neither the scan nor
SS2D's einsums, and counts a norm as 2 operations per element, 4 with an affine: ``ModelInfo.thop_macs``
(conv + linear + 2 x norm here) equals thop 0.1.1's ``profile`` of this model exactly (4,111,859,712).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from vmunet.models.presets import create_model
from vmunet.models.ss2d import DIRECTIONS, SS2D
from vmunet.models.vmunet import VMUNet
from vmunet.models.vmunet_v2 import VMUNetV2
from vmunet.ops import resolve_backend
from vmunet.runtime.device import resolve_device

MAC_KINDS = ("conv", "linear", "norm", "ss2d_projections", "selective_scan")
NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d)
SCAN_FORMULA = ("3.5*B*D*L*N + B*D*L per SS2D call (VMamba's flops_selective_scan_ref): B batch, D = 4*d_inner "
                "scan channels, L = H*W, N = d_state")


def selective_scan_macs(batch: int, channels: int, length: int, d_state: int) -> int:
    """MACs of one selective scan with grouped B/C, VMamba's ``flops_selective_scan_ref`` in closed form.

    That function counts MACs as half the FLOPs of each einsum (numpy's count: one FLOP per multiplication and
    per addition), for u, delta of shape (B, D, L), A (D, N), B and C (B, groups, N, L):
      delta (x) A               B*D*L*N products       -> 0.5 B*D*L*N
      delta * B * u             2 products per element -> 1.0 B*D*L*N
      h = deltaA * h + deltaB_u  per step, its own count -> 1.0 B*D*L*N
      y = sum_n C * h           a multiply-add each      -> 1.0 B*D*L*N
      y + D * u                 the skip                 -> 1.0 B*D*L
    so 3.5 B*D*L*N + B*D*L (exp, softplus and the delta bias are not counted; VMamba's own number differs in the
    fourth digit because it parses numpy's flop count printed to 3 significant digits).
    """
    products = batch * channels * length * d_state
    return (7 * products) // 2 + batch * channels * length


def ss2d_macs(module: SS2D, batch: int, height: int, width: int) -> tuple[int, int]:
    """(projection MACs, selective-scan MACs) of one SS2D call on a (batch, height, width, d_model) input."""
    positions = batch * height * width
    d, r, n = module.d_inner, module.dt_rank, module.d_state
    projections = positions * DIRECTIONS * ((r + 2 * n) * d + d * r)
    return projections, selective_scan_macs(batch, DIRECTIONS * d, height * width, n)


def module_macs(module: nn.Module, inputs: tuple, output) -> dict[str, int]:
    """MACs of one call of a leaf layer (or SS2D's own einsums and scan), by kind; {} for anything else."""
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return {"conv": output.numel() * (module.in_channels // module.groups) * kernel}
    if isinstance(module, nn.ConvTranspose2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return {"conv": inputs[0].numel() * (module.out_channels // module.groups) * kernel}
    if isinstance(module, nn.Linear):
        return {"linear": output.numel() * module.in_features}
    if isinstance(module, NORMS):
        affine = getattr(module, "elementwise_affine", getattr(module, "affine", False))
        return {"norm": output.numel() * (2 if affine else 1)}
    if isinstance(module, SS2D):
        batch, height, width, _ = inputs[0].shape  # (B, H, W, d_model)
        projections, scan = ss2d_macs(module, batch, height, width)
        return {"ss2d_projections": projections, "selective_scan": scan}
    return {}


def parameter_parts(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The architecture's parts as state_dict name prefixes, in forward order; every parameter is in one."""
    if isinstance(model, VMUNet):
        # The skips are additive (decoder stage i adds the input of encoder stage 4 - i): no parameters.
        return {"encoder": ("vmunet.patch_embed.", "vmunet.layers."), "decoder": ("vmunet.layers_up.",),
                "head": ("vmunet.final_up.", "vmunet.final_conv.")}
    if isinstance(model, VMUNetV2):
        return {"encoder": ("vmunet.",), "attention": ("ca_", "sa_"), "sdi": ("Translayer_", "sdi_"),
                "decoder": ("deconv2.", "deconv3.", "deconv4.", "deconv5."), "head": ("seg_outs.", "deconv6.")}
    return {"model": ("",)}


def part_of(name: str, parts: dict[str, tuple[str, ...]]) -> str:
    for part, prefixes in parts.items():
        if name.startswith(prefixes):
            return part
    raise ValueError(f"{name} belongs to no part of {list(parts)}")  # a module added without updating the parts


@dataclass
class MacCount:
    """MACs of one forward, by kind and by part (both sum to ``total``)."""

    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MAC_KINDS, 0))
    by_part: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def count_macs(model: nn.Module, x: torch.Tensor) -> MacCount:
    """Run ``model(x)`` once with hooks on every module and add up ``module_macs`` by kind and part."""
    parts = parameter_parts(model)
    count = MacCount(by_part=dict.fromkeys(parts, 0))
    handles = []

    def hook_for(part: str):
        def hook(module, inputs, output):
            for kind, macs in module_macs(module, inputs, output).items():
                count.by_kind[kind] += macs
                count.by_part[part] += macs
        return hook

    for name, module in model.named_modules():
        if module_macs_possible(module):
            handles.append(module.register_forward_hook(hook_for(part_of(name + ".", parts))))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return count


def module_macs_possible(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, SS2D, *NORMS))


@dataclass
class ModelInfo:
    """What ``vmunet info`` prints; ``as_json()`` has ``parameters``, ``gmacs`` (scan included), ``scan_gmacs``."""

    model: str
    architecture: str
    input_shape: list[int]
    num_classes: int
    parameters: int
    parameters_by_part: dict[str, int]
    parameters_not_computed: int  # kept for official checkpoints, never reach the output (VM-UNetV2)
    macs_by_kind: dict[str, int]
    macs_by_part: dict[str, int]
    official_extra_macs: int  # what the official forward also computes and throws away (VM-UNetV2's stage 3)
    scan_backend: str
    device: str
    threads: int
    forward_seconds: list[float]

    @property
    def macs(self) -> int:
        return sum(self.macs_by_kind.values())

    @property
    def thop_macs(self) -> int:
        """thop's rules (0.1.1): modules only, so no scan and no SS2D einsums; a norm costs 2 per element,
        4 with an affine, twice ours."""
        kinds = self.macs_by_kind
        return kinds["conv"] + kinds["linear"] + 2 * kinds["norm"]

    def as_json(self) -> dict:
        kinds = self.macs_by_kind
        return {**asdict(self), "gmacs": self.macs / 1e9, "scan_gmacs": kinds["selective_scan"] / 1e9,
                "gmacs_without_scan": (self.macs - kinds["selective_scan"]) / 1e9,
                "gmacs_conv_linear": (kinds["conv"] + kinds["linear"]) / 1e9,
                "gmacs_thop_rules": self.thop_macs / 1e9,
                "forward_seconds_best": min(self.forward_seconds), "scan_formula": SCAN_FORMULA}


def model_info(name: str, num_classes: int = 1, input_channels: int = 3, image_size: int = 256,
               scan_backend: str = "auto", device: str = "cpu", repeats: int = 3) -> ModelInfo:
    """Build preset ``name``, count its parameters and MACs on a (1, input_channels, S, S) input, and time
    ``repeats`` forwards after a warm-up (the counting forward, which also compiles the numba kernels)."""
    if repeats < 1 or image_size < 1:
        raise ValueError(f"repeats and image_size must be >= 1 (got {repeats}, {image_size})")
    torch.manual_seed(0)
    target = resolve_device(device)
    model = create_model(name, num_classes=num_classes, input_channels=input_channels,
                         scan_backend=scan_backend).eval().to(target)
    x = torch.randn(1, input_channels, image_size, image_size, device=target)
    model.check_input(x)  # a size that is no multiple of 32 is a one-line error before any hook runs
    by_part, not_computed = parameter_counts(model)
    count = count_macs(model, x)
    extra = official_extra_macs(model, x) if isinstance(model, VMUNetV2) else 0
    return ModelInfo(model=name, architecture=type(model).__name__, input_shape=list(x.shape),
                     num_classes=num_classes, parameters=sum(by_part.values()), parameters_by_part=by_part,
                     parameters_not_computed=not_computed, macs_by_kind=count.by_kind, macs_by_part=count.by_part,
                     official_extra_macs=extra,
                     scan_backend=resolve_backend(scan_backend, target.type), device=str(target),
                     threads=torch.get_num_threads(), forward_seconds=time_forward(model, x, repeats))


def parameter_counts(model: nn.Module) -> tuple[dict[str, int], int]:
    """({part: parameters}, parameters never computed): every parameter counted once, in its part."""
    parts = parameter_parts(model)
    by_part = dict.fromkeys(parts, 0)
    for name, param in model.named_parameters():
        by_part[part_of(name, parts)] += param.numel()
    unused = model.unused_parameter_names() if isinstance(model, VMUNetV2) else set()
    return by_part, sum(param.numel() for name, param in model.named_parameters() if name in unused)


def official_extra_macs(model: VMUNetV2, x: torch.Tensor) -> int:
    """MACs of VM-UNetV2's last encoder stage, which the official forward runs and discards (ours skips it)."""
    with torch.inference_mode():
        stage_inputs, _ = model.vmunet.stage_inputs(model.to_rgb(x), last_stage=False)
    return count_macs(model.vmunet.layers[3], stage_inputs[-1]).total  # a plain module: one part


def time_forward(model: nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` forwards (the caller has warmed the model up)."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - start)
    return times


def format_info(info: ModelInfo) -> str:
    """The text ``vmunet info`` prints."""
    def share(value: int, total: int) -> str:
        return f"{100 * value / total:5.1f}%" if total else "    -"

    kinds, macs = info.macs_by_kind, info.macs
    # GMACs for real models; MMACs for the tiny presets, whose GMACs would print as 0.000
    scale, unit = (1e9, "GMACs") if macs >= 1e8 else (1e6, "MMACs")
    lines = [f"{info.model} ({info.architecture}): input {'x'.join(map(str, info.input_shape))}, "
             f"{info.num_classes} class(es)",
             f"parameters: {info.parameters:,}"]
    lines += [f"  {part:<18}{count:>14,}  {share(count, info.parameters)}"
              for part, count in info.parameters_by_part.items()]
    if info.architecture == "VMUNet":
        lines.append("  (skips are additive: no parameters)")
    if info.parameters_not_computed:
        lines.append(f"  of which never computed (kept for official checkpoints): {info.parameters_not_computed:,}")
    lines.append(f"multiply-accumulates: {macs / scale:.3f} {unit}, selective scan included")
    lines += [f"  {kind:<18}{count / scale:>14.3f}  {share(count, macs)}" for kind, count in kinds.items()]
    lines += ["  by part:"] + [f"  {part:<18}{count / scale:>14.3f}  {share(count, macs)}"
                               for part, count in info.macs_by_part.items()]
    lines.append(f"  without the scan {(macs - kinds['selective_scan']) / scale:.3f}; thop's count (modules only, "
                 f"norms at 2x ours: the official 4.11 G of vmunet) {info.thop_macs / scale:.3f}")
    if info.official_extra_macs:
        lines.append(f"  the official forward also runs encoder stage 3 and discards it: "
                     f"+{info.official_extra_macs / scale:.3f} {unit}")
    lines.append(f"  scan: {SCAN_FORMULA}")
    times = info.forward_seconds
    lines.append(f"forward: {min(times):.3f} s best, {statistics.median(times):.3f} s median of {len(times)} after "
                 f"a warm-up; batch 1, scan backend {info.scan_backend}, {info.device}, {info.threads} threads")
    return "\n".join(lines)
