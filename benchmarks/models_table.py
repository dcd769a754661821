"""The README's model table: parameters, multiply-accumulates (scan included) and CPU seconds per image forward.

    python benchmarks/models_table.py [--image-size 256] [--repeats 5] [--models vmunet vmunet-deep vmunet-v2]

MACs of one (1, 3, S, S) forward with one class, counted from the shapes the forward really runs (forward hooks):
Conv2d out_elements * in/groups * kh * kw; ConvTranspose2d in_elements * out/groups * kh * kw; Linear
out_elements * in_features; per SS2D block its two projection einsums (4 directions x (dt_rank + 2N) x d_inner and
4 x d_inner x dt_rank, per position) and the selective scan as VMamba and mamba_ssm count it
(state-spaces/mamba#110): 9 * L * D * N + L * D for D = 4 * d_inner channels (the four directions), sequence
length L = h * w and N = d_state (the recurrence h = exp(delta A) h + delta B u and the readout y = C h, about
9 operations per channel, position and state). Not counted: norms, activations, pooling, interpolation,
element-wise products and sums. The time is the fastest of ``--repeats`` forwards (the least disturbed by other
processes) after one warm-up forward (which compiles the numba kernels), batch 1, default scan backend ("auto"),
on this machine's torch threads.
"""

import argparse
import time

import torch
from torch import nn

from vmunet import VMUNetV2, create_model
from vmunet.models.ss2d import DIRECTIONS, SS2D


def scan_macs(module: SS2D, h: int, w: int) -> tuple[int, int]:
    """(projection MACs, scan MACs) of one SS2D call on an h x w map, batch 1."""
    L, d, r, n = h * w, module.d_inner, module.dt_rank, module.d_state
    projections = DIRECTIONS * (r + 2 * n) * d * L + DIRECTIONS * d * r * L
    D = DIRECTIONS * d
    return projections, 9 * L * D * n + L * D


class MacCounter:
    """Forward hooks that add up MACs by kind while installed (``with MacCounter(model) as counter``)."""

    def __init__(self, model: nn.Module):
        self.model, self.handles = model, []
        self.macs = {"conv/linear": 0, "ss2d projections": 0, "selective scan": 0}

    def hook(self, module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            self.macs["conv/linear"] += output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            self.macs["conv/linear"] += inputs[0].numel() * module.out_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            self.macs["conv/linear"] += output.numel() * module.in_features
        elif isinstance(module, SS2D):
            _, h, w, _ = inputs[0].shape
            projections, scan = scan_macs(module, h, w)
            self.macs["ss2d projections"] += projections
            self.macs["selective scan"] += scan

    def __enter__(self):
        self.handles = [m.register_forward_hook(self.hook) for m in self.model.modules()]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    @property
    def total(self) -> int:
        return sum(self.macs.values())


def measure(name: str, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1).eval()
    x = torch.randn(1, 3, size, size)
    row = {"model": name, "params": sum(p.numel() for p in model.parameters())}
    with torch.inference_mode():
        with MacCounter(model) as counter:
            model(x)  # also the warm-up
        row.update(macs=counter.total, scan=counter.macs["selective scan"])
        if isinstance(model, VMUNetV2):  # the official forward also runs stage 3 and throws its output away
            row["trained"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            stage_inputs, _ = model.vmunet.stage_inputs(x, last_stage=False)
            with MacCounter(model.vmunet.layers[3]) as stage3:
                model.vmunet.layers[3](stage_inputs[-1])
            row["official_extra"] = stage3.total
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    row["seconds"] = min(times)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["vmunet", "vmunet-deep", "vmunet-v2"])
    args = parser.parse_args()
    print(f"1x3x{args.image_size}x{args.image_size}, one class, {torch.get_num_threads()} torch threads, "
          f"scan backend auto, fastest of {args.repeats}")
    print("| model (preset) | parameters | GMACs (scan included) | of which the selective scan | CPU s / image |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        row = measure(name, args.image_size, args.repeats)
        params = f"{row['params']:,}"
        if "trained" in row:
            params += f" ({row['trained']:,} computed)"
        macs = f"{row['macs'] / 1e9:.2f}"
        if "official_extra" in row:
            macs += f" (official forward: {(row['macs'] + row['official_extra']) / 1e9:.2f})"
        print(f"| {name} | {params} | {macs} | {row['scan'] / 1e9:.2f} | {row['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
