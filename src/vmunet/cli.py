"""Command line: argument parsing only; every command calls an importable function."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def cmd_forward(args: argparse.Namespace) -> int:
    """One forward pass on a random image: checks the install and shows the speed of this machine."""
    import torch

    from vmunet import create_model

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    x = torch.randn(1, 3, args.image_size, args.image_size)
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(x)
    print(f"{args.model}: input {tuple(x.shape)} -> logits {tuple(logits.shape)} in "
          f"{time.perf_counter() - start:.2f} s on {torch.get_num_threads()} CPU threads")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmunet", description="VM-UNet for medical image segmentation")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (e.g. the scan backend chosen)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    forward = sub.add_parser("forward", help="run one forward pass on a random image and time it")
    forward.add_argument("--model", default="vmunet", help="model preset: vmunet or vmunet-tiny (default vmunet)")
    forward.add_argument("--image-size", type=int, default=256, help="image side, a multiple of 32 (default 256)")
    forward.add_argument("--num-classes", type=int, default=1, help="output classes (default 1)")
    forward.set_defaults(func=cmd_forward)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        if args.debug:
            raise
        print(f"vmunet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
