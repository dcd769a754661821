"""Selective scan speed and memory at the paper model's four stage sizes (256x256 input), in one run.

    python benchmarks/scan.py                           # all stages, batches 1 and 8
    python benchmarks/scan.py --stages 1 --batches 1    # quick: stage 1, batch 1
    python benchmarks/scan.py --device cuda --batches 32 --impls torch triton   # on a GPU (benchmarks/gpu_check.sh)

Implementations, each given the same inputs (float32, groups 4, N 16, delta_softplus with a bias, D skip):
- torch:   vmunet's "torch" backend (two-level chunked scan, hand-written backward);
- numba:   vmunet's "numba" backend (fused CPU kernels compiled by numba at run time);
- triton:  vmunet's "triton" backend (fused GPU kernels; --device cuda, or TRITON_INTERPRET=1 on the CPU, slowly);
- mamba_ssm: mamba_ssm's CUDA kernel, where it is installed (--device cuda);
- before:  the chunked scan with plain autograd (benchmarks/scan_torch_autograd.py), with --before;
- pscan:   mamba.py's Blelloch pscan (PyPI mambapy) the way mamba.py uses it: deltaA = exp(delta * A) and
           deltaB * u materialised as (B, L, D, N), pscan, then contraction with C and the D skip;
- ref:     the sequential loop ("ref" backend), timed at a shorter L (--ref-length) and extrapolated
           linearly to the stage's L (marked "~" in the table): its cost per step does not depend on L.

Every (stage, batch, implementation) runs in its own subprocess, so that its peak memory (ru_maxrss
growth over the process's state just before the scan, forward + backward; on CUDA the peak of
torch.cuda.max_memory_allocated over what was allocated before) is its own. On CUDA every timed call ends with
torch.cuda.synchronize(), and the warm-up call includes Triton's compilation (cached on disk for the next
process). Times are the best of --repeats runs after one warm-up. The "x torch" columns are speed-ups over the
torch row (time of torch / time of the row). Before the table, the numba kernels' first call (forward +
backward at a small size) is timed in two new processes sharing an empty numba cache folder: the first compiles,
the second loads the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

STAGES = {1: (4096, 768), 2: (1024, 1536), 3: (256, 3072), 4: (64, 6144)}  # stage: (L, D = 4 directions x d_inner)
GROUPS, N = 4, 16


def make_inputs(batch, dim, length, seed=0, device="cpu"):
    """Inputs distributed as in the paper model at initialisation."""
    import torch

    if device != "cpu":
        return {k: v.to(device) for k, v in make_inputs(batch, dim, length, seed).items()}

    g = torch.Generator().manual_seed(seed)
    dt_init = torch.exp(torch.rand(dim, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                        + torch.log(torch.tensor(1e-3)))
    return dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=torch.randn(batch, dim, length, generator=g) * 0.5,
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, GROUPS, N, length, generator=g),
        C=torch.randn(batch, GROUPS, N, length, generator=g),
        D=torch.ones(dim),
        delta_bias=dt_init + torch.log(-torch.expm1(-dt_init)),
    )


def scan_pscan(u, delta, A, B, C, D, delta_bias):
    """The same selective scan through mamba.py's pscan on materialised (B, L, D, N) tensors."""
    import torch
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    b, dim, L = u.shape
    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (b, L, D)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)  # (b, L, D, N)
    du = (dt * u.transpose(1, 2)).view(b, L, GROUPS, dim // GROUPS, 1)  # (b, L, G, H, 1)
    BX = (du * B.permute(0, 3, 1, 2).unsqueeze(3)).view(b, L, dim, N)  # (b, L, D, N)
    hs = pscan(deltaA, BX).view(b, L, GROUPS, dim // GROUPS, N)  # (b, L, G, H, N)
    y = torch.einsum("blghn,blgn->blgh", hs, C.permute(0, 3, 1, 2)).reshape(b, L, dim)  # (b, L, D)
    return y.transpose(1, 2) + D[:, None] * u


def implementation(name):
    from scan_torch_autograd import selective_scan_torch_autograd

    from vmunet.ops import selective_scan, selective_scan_numba, selective_scan_ref, selective_scan_torch
    from vmunet.ops.scan_triton import selective_scan_triton

    def mamba_style(fn):
        return lambda u, delta, A, B, C, D, delta_bias: fn(u, delta, A, B, C, D=D, delta_bias=delta_bias,
                                                           delta_softplus=True)

    return {"torch": mamba_style(selective_scan_torch), "before": mamba_style(selective_scan_torch_autograd),
            "numba": mamba_style(selective_scan_numba), "ref": mamba_style(selective_scan_ref),
            "triton": mamba_style(selective_scan_triton),
            "mamba_ssm": mamba_style(lambda *a, **k: selective_scan(*a, **k, backend="mamba_ssm")),
            "pscan": scan_pscan}[name]


def synchronized(fn, device):
    """fn, followed by waiting for the GPU where there is one (kernel launches return before the work ends)."""
    import torch

    if device == "cpu":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()
    return run


def best_time(fn, repeats, budget_s):
    fn()  # warm-up: first-touch page faults, allocator, caches, Triton's compilation
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker(args):
    """Time one implementation at one size; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    L, dim = STAGES[args.stage]
    length = min(L, args.ref_length) if args.impl == "ref" else L
    inputs = make_inputs(args.batch, dim, length, device=args.device)
    fn = implementation(args.impl)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}

    def forward():
        with torch.no_grad():
            fn(**inputs)

    def forward_backward():
        fn(**leaves).sum().backward()
        for v in leaves.values():
            v.grad = None

    forward, forward_backward = synchronized(forward, args.device), synchronized(forward_backward, args.device)
    if args.device == "cpu":
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fb = best_time(forward_backward, args.repeats, args.budget)
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    else:
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
        fb = best_time(forward_backward, args.repeats, args.budget)
        peak_mb = (torch.cuda.max_memory_allocated() - allocated) / 2 ** 20
    fwd = best_time(forward, args.repeats, args.budget)
    scale = L / length
    print(json.dumps(dict(fwd=fwd * scale, fb=fb * scale, peak_mb=peak_mb, extrapolated=scale != 1)))


def check_agreement(threads, impls, device="cpu"):
    """Every implementation computes what the torch backend does (a small size, float32): max |difference|."""
    import torch

    torch.set_num_threads(threads)
    x = make_inputs(1, 64, 256, device=device)
    result = {}
    with torch.no_grad():
        base = implementation("torch")(**x)
        for impl in impls:
            if impl == "torch":
                continue
            try:
                result[impl] = f"{(implementation(impl)(**x) - base).abs().max().item():.1e}"
            except (ImportError, ValueError) as error:  # not installed, or not for this device: its rows say why
                result[impl] = f"n/a ({type(error).__name__})"
    return result


def first_call(threads):
    """Seconds of the numba backend's first forward + backward in a new process (compilation or cache load)."""
    import torch

    torch.set_num_threads(threads)
    x = {k: v.requires_grad_() for k, v in make_inputs(1, 64, 256).items()}
    start = time.perf_counter()
    implementation("numba")(**x).sum().backward()
    print(json.dumps(dict(seconds=time.perf_counter() - start)))


def run_worker(impl, stage, batch, args, env=None):
    cmd = [sys.executable, __file__, "--worker", impl, "--stages", str(stage), "--batches", str(batch),
           "--repeats", str(args.repeats), "--budget", str(args.budget), "--threads", str(args.threads),
           "--ref-length", str(args.ref_length), "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return dict(error=done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], choices=sorted(STAGES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--impls", nargs="+", default=["torch", "numba", "pscan", "ref"],
                        choices=["torch", "numba", "triton", "mamba_ssm", "before", "pscan", "ref"])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--before", action="store_true", help="also time the previous torch backend")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0, help="stop repeating after this many seconds")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--ref-length", type=int, default=128, help="L at which the sequential loop is timed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "first-call":
        first_call(args.threads)
        return
    if args.worker:
        args.impl, args.stage, args.batch = args.worker, args.stages[0], args.batches[0]
        worker(args)
        return

    impls = list(dict.fromkeys(args.impls + (["before"] if args.before else [])))
    agreement = ", ".join(f"{impl} {diff}" for impl, diff in
                          check_agreement(args.threads, impls, args.device).items())
    where = f"{args.threads} threads" if args.device == "cpu" else args.device
    print(f"selective scan, float32, groups {GROUPS}, N {N}, {where}, best of {args.repeats}; "
          f"max |difference from torch| at a small size: {agreement}")
    env = None
    if "numba" in impls:  # a fresh cache folder: the first process compiles, the next ones load the cache
        env = {**os.environ, "NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="vmunet-numba-cache-")}
        cmd = [sys.executable, __file__, "--worker", "first-call", "--threads", str(args.threads)]
        seconds = [json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                              .stdout.strip().splitlines()[-1])["seconds"] for _ in range(2)]
        print(f"numba first forward + backward in a new process: {seconds[0]:.1f} s compiling (empty cache), "
              f"{seconds[1]:.2f} s from the cache")
    print(f"ref: timed at L = {args.ref_length} and scaled to the stage's L (~); "
          + ("peak MB: ru_maxrss growth during forward+backward" if args.device == "cpu" else
             "peak MB: CUDA memory allocated during forward+backward beyond the inputs"))
    head = f"{'stage':>5} {'L':>5} {'D':>5} {'batch':>5} {'impl':>7} {'fwd ms':>10} {'fwd+bwd ms':>11} {'peak MB':>8}"
    if "torch" in impls:
        head += f" {'fwd: x torch':>13} {'f+b: x torch':>13}"
    if "pscan" in impls:
        head += f" {'fwd: x pscan':>13} {'f+b: x pscan':>13}"
    print(head)
    for stage in args.stages:
        L, dim = STAGES[stage]
        for batch in args.batches:
            results = {impl: run_worker(impl, stage, batch, args, env) for impl in impls}
            base, pscan = results.get("torch", {}), results.get("pscan", {})
            for impl, r in results.items():
                row = f"{stage:>5} {L:>5} {dim:>5} {batch:>5} {impl:>7} "
                if "error" in r:
                    print(row + f"failed: {r['error']}")
                    continue
                mark = "~" if r["extrapolated"] else " "
                row += f"{mark}{r['fwd'] * 1e3:>9.1f} {mark}{r['fb'] * 1e3:>10.1f} {r['peak_mb']:>8.0f}"
                for ref in (base, pscan):
                    if "fwd" in ref:
                        row += f" {ref['fwd'] / r['fwd']:>12.1f}x {ref['fb'] / r['fb']:>12.1f}x"
                print(row, flush=True)


if __name__ == "__main__":
    main()
