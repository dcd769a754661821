"""SS2D's scan: the four directional selective scans of a (b, d, H, W) input, merged to (b, d, H*W).

Two paths with one result: on the "numba" and "triton" backends the fused kernels (ss2d_numba.py, ss2d_triton.py)
walk the four directions of the unpermuted input; every other backend (and graph capture for export or
torch.compile) runs the plain path: four permuted copies (cross_scan), their projections, one selective_scan over
4d channels, cross_merge.
"""

from __future__ import annotations

import torch

from vmunet.ops import resolve_backend, selective_scan
from vmunet.ops.cross_scan import DIRECTIONS, cross_merge, cross_scan
from vmunet.ops.scan_export import graph_capture_active

__all__ = ["DIRECTIONS", "ss2d_scan", "ss2d_scan_plain"]


def ss2d_scan(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend="auto"):
    """x (b, d, H, W); x_proj_weight (4, r + 2N, d); dt_projs_weight (4, d, r); dt_projs_bias (4, d);
    A_logs (4d, N); Ds (4d,) -> (b, d, H*W), float32 (float64 stays float64)."""
    name = resolve_backend(backend, x.device.type, x.dtype)
    if name == "numba" and x.device.type == "cpu" and x.dtype != torch.float64 and not graph_capture_active():
        from vmunet.ops.ss2d_numba import ss2d_scan_numba

        return ss2d_scan_numba(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    if name == "triton" and x.dtype != torch.float64 and not graph_capture_active():
        from vmunet.ops.ss2d_triton import ss2d_scan_triton

        return ss2d_scan_triton(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    return ss2d_scan_plain(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, name)


def ss2d_scan_plain(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, backend="auto"):
    """The official computation: four direction copies, projected and scanned as 4d channels, then merged."""
    B, d, H, W = x.shape
    L = H * W
    r, n = dt_projs_weight.shape[2], A_logs.shape[1]
    xs = cross_scan(x)  # (B, K, d, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight)  # (B, K, r + 2N, L)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight)  # (B, K, d, L)
    # The scan runs in float32 whatever the autocast dtype, as the official code (float64 stays float64).
    f = torch.promote_types(x.dtype, torch.float32)
    ys = selective_scan(
        xs.to(f).reshape(B, -1, L),  # (B, K*d, L)
        dts.to(f).reshape(B, -1, L),  # (B, K*d, L)
        -torch.exp(A_logs.to(f)),  # (K*d, N)
        Bs.to(f),  # (B, K, N, L)
        Cs.to(f),  # (B, K, N, L)
        D=Ds.to(f),
        delta_bias=dt_projs_bias.to(f).view(-1),
        delta_softplus=True,
        backend=backend,
    ).view(B, DIRECTIONS, d, L)
    return cross_merge(ys, H, W)  # (B, d, L)
