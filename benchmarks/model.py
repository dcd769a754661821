"""Forward and training-step time per image, the scan's share of it, and peak memory, of the paper models.

    python benchmarks/model.py                                  # paper 256x256 and Synapse 224x224, batches 1 and 8
    python benchmarks/model.py --models paper --batches 1       # quick
    python benchmarks/model.py --models paper --batches 8 --modes train --scans torch before   # memory before/after
    python benchmarks/model.py --models paper demo --batches 1 --scans torch numba       # the numba backend's gain
    python benchmarks/model.py --device cuda --amp bf16 --models paper --batches 32 --scans torch triton   # a GPU

- paper:   create_model("vmunet", num_classes=1), 3x256x256 input, BCE-with-logits loss;
- synapse: create_model("vmunet", num_classes=9, input_channels=1), 1x224x224 input, cross-entropy loss;
- demo:    create_model("vmunet-tiny", num_classes=3, input_channels=1), 1x192x192, cross-entropy (`vmunet demo`'s
           model; run it with --batches 2, the demo's batch).
Scans: "auto" (what the model uses by default: numba on a CPU where installed), "torch" (the pure-PyTorch backend:
hand-written backward), "numba" (fused CPU kernels: SS2D's four directions in one call), "numba-plain" (the numba
scan kernel on SS2D's plain path: four direction copies, their projections, the merge; what "numba" ran before
issue 28), "triton" (fused GPU kernels), "mamba_ssm" (its CUDA kernel, where installed) and "before" (the chunked
scan with plain autograd of benchmarks/scan_torch_autograd.py, which keeps every hidden state for backward). Rows
of one model, batch and mode show their speed-up over the "torch" row ("x torch").

On --device cuda: every step ends with torch.cuda.synchronize(); peak MB is torch.cuda.max_memory_allocated over
the step (model, optimizer state and activations included); the scan share is not measured (launches return
before the GPU is done); --amp bf16 runs forward and loss under torch.autocast(bfloat16) (the scan itself stays
float32, as in the official code).

Each (model, batch, mode, scan) runs in its own subprocess: peak MB is its ru_maxrss growth over the process
after building the model and input, so the figures do not mix. Time is the median of --repeats after a
warm-up; GMAC/s counts the MACs of `vmunet info` (scan included) for the step, and "of matmul" is the median of
its ratios to a 2048^3 float32 matmul timed just before each step, in the same process on the same threads: a
fraction of the machine's matmul rate transfers between machines better than seconds do.
Scan share: time inside SS2D's scan (its projections, dt and the four directions: on numba the fused
kernels) plus the scan kernels' hand-written backward (train), over the whole step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = {  # name: (preset, create_model overrides, input channels, input size)
    "paper": ("vmunet", dict(num_classes=1), 3, 256),
    "synapse": ("vmunet", dict(num_classes=9, input_channels=1), 1, 224),
    "demo": ("vmunet-tiny", dict(num_classes=3, input_channels=1), 1, 192),
}
MATMUL = 2048  # the roofline stand-in: an n^3 float32 matmul, timed beside every step
TRAIN_MACS = 3  # a training step counted as 3 forwards (forward, and the backward's two products per layer)


class ScanClock:
    """Adds up the seconds spent in SS2D's scan (projections, dt and the four directions; the fused kernels on
    numba) in the forward, and in the scan kernels' hand-written backward (train)."""

    def __init__(self, scan: str):
        import vmunet.models.ss2d as ss2d
        import vmunet.ops.scan_chunked as chunked
        import vmunet.ops.scan_numba as scan_numba
        import vmunet.ops.scan_triton as scan_triton
        import vmunet.ops.ss2d_numba as ss2d_numba
        import vmunet.ops.ss2d_scan as ss2d_scan
        from scan_torch_autograd import selective_scan_torch_autograd

        self.seconds = 0.0
        if scan == "before":  # the plain path on the autograd scan
            ss2d_scan.selective_scan = lambda *args, backend=None, **kwargs: selective_scan_torch_autograd(
                *args, **kwargs)
        plain = scan in ("before", "numba-plain")
        scan_any = ss2d_scan.ss2d_scan_plain if plain else ss2d.ss2d_scan
        backend = {"before": "torch", "numba-plain": "numba"}.get(scan, scan)

        def forward(*args, backend=None, **kwargs):  # the model asks for "auto": run the scan being measured
            return scan_any(*args, backend=backend_used, **kwargs)

        backend_used = backend

        ss2d.ss2d_scan = self.timed(forward)
        chunked.chunked_backward = self.timed(chunked.chunked_backward)
        scan_numba.NumbaScan.backward = staticmethod(self.timed(scan_numba.NumbaScan.backward))
        ss2d_numba.FusedSS2DScan.backward = staticmethod(self.timed(ss2d_numba.FusedSS2DScan.backward))
        scan_triton.TritonScan.backward = staticmethod(self.timed(scan_triton.TritonScan.backward))

    def timed(self, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return wrapper


def matmul_seconds(device: str) -> float:
    """Seconds of one 2048^3 float32 matmul (the same threads, the same process)."""
    import torch

    a, b = torch.randn(MATMUL, MATMUL, device=device), torch.randn(MATMUL, MATMUL, device=device)
    torch.mm(a, b)  # warm-up
    start = time.perf_counter()
    torch.mm(a, b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(args):
    import torch
    import torch.nn.functional as F

    from vmunet import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset, overrides, channels, size = MODELS[args.model]
    model = create_model(preset, **overrides).to(args.device)
    clock = ScanClock(args.scan)
    x = torch.randn(args.batch, channels, size, size, device=args.device)
    classes = overrides["num_classes"]
    target = (torch.rand(args.batch, 1, size, size, device=args.device) > 0.5).float() if classes == 1 else \
        torch.randint(0, classes, (args.batch, size, size), device=args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = args.device.startswith("cuda")
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def forward():
        model.eval()
        with torch.no_grad(), autocast:
            model(x)

    def train_step():
        model.train()
        with autocast:
            logits = model(x).float()
            loss = (F.binary_cross_entropy_with_logits(logits, target) if classes == 1
                    else F.cross_entropy(logits, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronized(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return run if cuda else fn

    step = synchronized(forward if args.mode == "forward" else train_step)
    from vmunet.model_info import count_macs

    macs = count_macs(model, x).total * (1 if args.mode == "forward" else TRAIN_MACS)  # per step, batch included
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (and Triton's compilation)
    seconds, shares, fractions, matmul_rates = [], [], [], []
    for _ in range(args.repeats):
        # a matmul beside every step: on a shared machine the load changes between repeats, and the ratio of two
        # neighbouring timings is steadier than either
        mm = matmul_seconds(args.device)
        clock.seconds = 0.0
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        shares.append(clock.seconds / elapsed)
        matmul_rates.append(MATMUL ** 3 / mm)
        fractions.append((macs / elapsed) / (MATMUL ** 3 / mm))
    peak_mb = (torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else
               (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024)
    median = statistics.median
    print(json.dumps(dict(per_image=median(seconds) / args.batch, share=None if cuda else median(shares),
                          gmacs=macs / args.batch / 1e9, gmac_per_s=macs / median(seconds) / 1e9,
                          matmul_gmac_per_s=median(matmul_rates) / 1e9, fraction=median(fractions),
                          peak_mb=peak_mb)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["paper", "synapse"], choices=sorted(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--scans", nargs="+", default=["torch", "auto"],
                        choices=["auto", "torch", "numba", "numba-plain", "triton", "mamba_ssm", "before"])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast dtype (default none)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # model batch mode scan
    args = parser.parse_args()
    if args.worker:
        args.model, batch, args.mode, args.scan = args.worker
        args.batch = int(batch)
        worker(args)
        return

    where = f"{args.threads} threads" if args.device == "cpu" else args.device
    precision = "bfloat16 autocast" if args.amp == "bf16" else "float32"
    print(f"VM-UNet, {precision}, {where}, medians of {args.repeats} after a warm-up; 'of matmul': the model's "
          f"GMAC/s (a training step counted as {TRAIN_MACS} forwards) over a {MATMUL}^3 float32 matmul's, timed "
          "beside each step in the same process")
    print(f"{'model':>8} {'input':>10} {'batch':>5} {'mode':>8} {'scan':>9} {'s/image':>8} {'images/s':>9} "
          f"{'GMAC/s':>7} {'of matmul':>9} {'scan %':>7} {'peak MB':>8} {'x torch':>8}")
    matmul_rates = []
    for name in args.models:
        _, _, channels, size = MODELS[name]
        for batch in args.batches:
            for mode in args.modes:
                base = None
                for scan in args.scans:
                    cmd = [sys.executable, __file__, "--worker", name, str(batch), mode, scan,
                           "--repeats", str(args.repeats), "--threads", str(args.threads),
                           "--device", args.device, "--amp", args.amp]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    row = f"{name:>8} {f'{channels}x{size}x{size}':>10} {batch:>5} {mode:>8} {scan:>9} "
                    if done.returncode != 0:
                        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
                        print(row + f"failed: {lines[-1]}", flush=True)
                        continue
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    share = "-" if r["share"] is None else f"{100 * r['share']:.0f}%"
                    matmul_rates.append(r["matmul_gmac_per_s"])
                    row += (f"{r['per_image']:>8.4f} {1 / r['per_image']:>9.1f} {r['gmac_per_s']:>7.1f} "
                            f"{r['fraction']:>9.2f} {share:>7} {r['peak_mb']:>8.0f}")
                    if scan == "torch":
                        base = r["per_image"]
                    if base is not None:
                        row += f" {base / r['per_image']:>7.2f}x"
                    print(row, flush=True)
    if matmul_rates:
        print(f"matmul {MATMUL}^3: median {statistics.median(matmul_rates):.1f} GMAC/s over the rows "
              f"(min {min(matmul_rates):.1f}, max {max(matmul_rates):.1f})")


if __name__ == "__main__":
    main()
