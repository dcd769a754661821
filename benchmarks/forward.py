"""Forward-pass time of a VM-UNet preset on one random image, per scan backend.

    python benchmarks/forward.py [--model vmunet] [--image-size 256] [--batch 1] [--backends torch]
"""

import argparse
import time

import torch

from vmunet import create_model


def time_forward(model, x, repeats):
    with torch.no_grad():
        model(x)  # warm-up: allocator, first-call overheads
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vmunet")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["torch"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=1).eval()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    print(f"{args.model} {args.batch}x3x{args.image_size}x{args.image_size}, {torch.get_num_threads()} threads")
    for backend in args.backends:
        model.set_scan_backend(backend)
        seconds = time_forward(model, x, args.repeats)
        print(f"  {backend:>9}: {seconds:.3f} s per batch, {seconds / args.batch:.3f} s per image")


if __name__ == "__main__":
    main()
