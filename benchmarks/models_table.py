"""The README's model table: parameters, multiply-accumulates (scan included) and CPU seconds per image forward.

    python benchmarks/models_table.py [--image-size 256] [--repeats 5] [--models vmunet vmunet-deep vmunet-v2]

Each row is ``vmunet info --model NAME`` (``vmunet.model_info``): MACs of one (1, 3, S, S) forward with one
class, counted by forward hooks on the shapes the forward runs (convolutions, linear layers, norms, SS2D's
projection einsums, and the selective scan as VMamba's ``flops_selective_scan_ref``, 3.5*B*D*L*N + B*D*L per SS2D
call); thop's count (modules only) beside them. The time is the fastest of ``--repeats`` forwards (the least
disturbed by other processes) after one warm-up forward (which compiles the numba kernels), batch 1, default scan
backend ("auto"), on this machine's torch threads.
"""

import argparse

import torch

from vmunet.model_info import model_info


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["vmunet", "vmunet-deep", "vmunet-v2"])
    args = parser.parse_args()
    print(f"1x3x{args.image_size}x{args.image_size}, one class, {torch.get_num_threads()} torch threads, "
          f"scan backend auto, fastest of {args.repeats}")
    print("| model (preset) | parameters | GMACs (scan included) | of which the selective scan | thop's count "
          "| CPU s / image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        info = model_info(name, image_size=args.image_size, repeats=args.repeats)
        params = f"{info.parameters:,}"
        if info.parameters_not_computed:
            params += f" ({info.parameters - info.parameters_not_computed:,} computed)"
        macs = f"{info.macs / 1e9:.2f}"
        if info.official_extra_macs:
            macs += f" (official forward, stage 3 run: {(info.macs + info.official_extra_macs) / 1e9:.2f})"
        print(f"| {name} | {params} | {macs} | {info.macs_by_kind['selective_scan'] / 1e9:.2f} "
              f"| {info.thop_macs / 1e9:.2f} | {min(info.forward_seconds):.2f} |", flush=True)


if __name__ == "__main__":
    main()
