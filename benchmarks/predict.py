"""Inference throughput on the CPU: PyTorch vs onnxruntime, same model, same random images, same run.

    python benchmarks/predict.py [--model vmunet] [--image-size 256] [--batch 1 4] [--repeats 3] [--channels-last]

The model is the paper's (one class, random weights: speed does not depend on the values). The ONNX graph is
exported in the run (``vmunet.export.export_onnx``) and checked against PyTorch before timing.
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from vmunet import create_model
from vmunet.export import export_onnx


def images_per_second(run, x, repeats: int) -> float:
    run(x)  # warm-up: allocator, scratch buffers, first-call overheads
    start = time.perf_counter()
    for _ in range(repeats):
        run(x)
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vmunet")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="also time PyTorch with channels-last input")
    args = parser.parse_args()

    import onnxruntime

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=1).eval()
    size = args.image_size
    threads = torch.get_num_threads()
    print(f"{args.model}, {size}x{size}, CPU, {threads} threads (torch), onnxruntime {onnxruntime.__version__}")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, path, image_size=size)
        print(f"  export: {time.perf_counter() - start:.1f} s, {path.stat().st_size / 2 ** 20:.0f} MiB")
        start = time.perf_counter()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        print(f"  onnxruntime session: {time.perf_counter() - start:.1f} s")

        def run_onnx(x):
            return session.run(["logits"], {"image": x.numpy()})[0]

        def run_torch(x):
            with torch.inference_mode():
                return model(x)

        x = torch.randn(1, 3, size, size)
        difference = np.abs(run_onnx(x) - run_torch(x).numpy()).max()
        print(f"  max |onnx - torch| logit: {difference:.1e}")
        for batch in args.batch:
            x = torch.randn(batch, 3, size, size)
            rates = {"pytorch": images_per_second(run_torch, x, args.repeats)}
            if args.channels_last:
                x_cl = x.contiguous(memory_format=torch.channels_last)
                model.to(memory_format=torch.channels_last)
                rates["pytorch channels-last"] = images_per_second(run_torch, x_cl, args.repeats)
                model.to(memory_format=torch.contiguous_format)
            rates["onnxruntime"] = images_per_second(run_onnx, x, args.repeats)
            print(f"  batch {batch}: " + ", ".join(f"{name} {rate:.2f} images/s" for name, rate in rates.items()))


if __name__ == "__main__":
    main()
