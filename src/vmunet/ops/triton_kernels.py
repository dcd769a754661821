"""Triton kernels of the selective scan (imports triton only; scan_triton.py launches them).

One program per (batch element, block of BLOCK_D channels of one group); the block's states live in registers
as a [BLOCK_D, N_P2] tile (N padded to a power of two, the padding masked to zero) and the loop over time is
sequential, the state carried from step to step. Every input is read in its own dtype and computed in float32.
Layouts (contiguous):

    u, delta, z, out, gout: (b, D, L)    A: (D, N)    B, C: (b, G, N, L)    skip (the D term), bias: (D,)
    starts: (b, D, nc, N) float32, the state entering each CHUNK-step chunk    last: (b, D, N) float32

Per channel d of group g = d // (D / G) and state n, with dt = softplus(delta + bias) (or delta + bias):
    h_t = exp2(dt_t A_n log2 e) h_{t-1} + dt_t u_t B_t,   y_t = <C_t, h_t> + skip u_t,   out = y silu(z)

The backward walks the chunks from the last: it recomputes a chunk's states from its saved start state into a
per-program scratch (CHUNK x BLOCK_D x N_P2 floats), then sweeps the chunk in reverse carrying the adjoint
lam = dLoss/dh. Gradients shared by the channels of a group (B, C) are summed over the block in registers and
written as one partial sum per block; A, skip and bias as one per batch element: the caller adds those up, so
no two programs write the same element and the result does not depend on scheduling (no atomics).

Loops run forward with a positive step and the reversed index is computed (t = t1 - 1 - k): the form that every
Triton version compiles. No @triton.jit helper functions, our own or triton.language's (tl.sum, tl.zeros,
tl.sigmoid and tl.cdiv are such): triton decides when it is imported whether its own helpers are compiled or
interpreted, so a process that imported triton before TRITON_INTERPRET=1 was set could not call them in the
interpreter (the tests' case); and the interpreter re-patches triton.language on every such call (~3x slower).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: the only kind of global a kernel may read
# tl.sum's own combine function, for tl.reduce: the compiler emits the same reduction as tl.sum, and the
# interpreter recognises it and runs np.sum (see the module docstring for why not tl.sum itself).
_SUM = tl.standard._sum_combine


@triton.jit
def scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, skip_ptr, bias_ptr, z_ptr,
    out_ptr, last_ptr, starts_ptr,
    D, L, G, N,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr, CHUNK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr,
    KEEP_STARTS: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)  # 64-bit offsets: b * D * L passes 2^31 at large batches
    d0 = tl.program_id(1) * BLOCK_D
    d = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,): every block lies inside one group (BLOCK_D divides D / G)
    n = tl.arange(0, N_P2)
    n_ok = n < N
    g = d0 // (D // G)
    nc = (L + CHUNK - 1) // CHUNK

    A2 = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0).to(tl.float32) * LOG2E
    skip = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_SKIP:
        skip = tl.load(skip_ptr + d).to(tl.float32)
    bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    row = (i * D + d) * L  # (BLOCK_D,) offsets of the channels' rows in (b, D, L)
    bc = ((i * G + g) * N + n) * L  # (N_P2,) offsets of the group's state rows in (b, G, N, L)
    state = (i * D + d)[:, None] * N + n[None, :]  # (BLOCK_D, N_P2) offsets in (b, D, N)
    h = tl.full((BLOCK_D, N_P2), 0.0, tl.float32)
    for c in range(0, nc):
        if KEEP_STARTS:
            tl.store(starts_ptr + ((i * D + d)[:, None] * nc + c) * N + n[None, :], h, mask=n_ok[None, :])
        t0 = c * CHUNK
        for t in range(t0, tl.minimum(t0 + CHUNK, L)):
            dt = tl.load(delta_ptr + row + t).to(tl.float32) + bias
            if SOFTPLUS:  # max(x, 0) + log1p(exp(-|x|)), the log1p corrected for the rounding of 1 + e
                e = tl.exp(-tl.abs(dt))
                w = 1.0 + e
                dt = tl.maximum(dt, 0.0) + tl.log(w) - ((w - 1.0) - e) / w
            u_t = tl.load(u_ptr + row + t).to(tl.float32)
            B_t = tl.load(B_ptr + bc + t, mask=n_ok, other=0.0).to(tl.float32)
            C_t = tl.load(C_ptr + bc + t, mask=n_ok, other=0.0).to(tl.float32)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u_t)[:, None] * B_t[None, :]
            y = tl.reduce(h * C_t[None, :], 1, _SUM) + skip * u_t
            if HAS_Z:
                z_t = tl.load(z_ptr + row + t).to(tl.float32)
                y = y * z_t / (1.0 + tl.exp(-z_t))  # y silu(z)
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty))
    tl.store(last_ptr + state, h, mask=n_ok[None, :])


@triton.jit
def scan_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, skip_ptr, bias_ptr, z_ptr, starts_ptr, gout_ptr, glast_ptr,
    gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gskip_ptr, gbias_ptr, gB_ptr, gC_ptr, scratch_ptr,
    D, L, G, N,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr, CHUNK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr,
):
    """Writes gu, gdelta, gz (b, D, L); gA (b, D, N), gskip and gbias (b, D) per batch element; gB, gC
    (P, b, G, N, L) per block of channels (P blocks per group). scratch: (b, D / BLOCK_D, CHUNK, BLOCK_D, N_P2)."""
    i = tl.program_id(0).to(tl.int64)  # 64-bit offsets: b * D * L passes 2^31 at large batches
    j = tl.program_id(1)
    d0 = j * BLOCK_D
    d = d0 + tl.arange(0, BLOCK_D)
    n = tl.arange(0, N_P2)
    n_ok = n < N
    H = D // G
    g = d0 // H
    p = (d0 % H) // BLOCK_D
    b = tl.num_programs(0)
    nc = (L + CHUNK - 1) // CHUNK

    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0).to(tl.float32)
    A2 = A * LOG2E
    skip = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_SKIP:
        skip = tl.load(skip_ptr + d).to(tl.float32)
    bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    row = (i * D + d) * L
    bc = ((i * G + g) * N + n) * L
    part = (((p * b + i) * G + g) * N + n) * L  # (N_P2,) offsets in the partial sums (P, b, G, N, L)
    state = (i * D + d)[:, None] * N + n[None, :]
    tile = tl.arange(0, BLOCK_D)[:, None] * N_P2 + n[None, :]  # (BLOCK_D, N_P2) offsets in one scratch step
    scratch = scratch_ptr + (i * tl.num_programs(1) + j) * (CHUNK * BLOCK_D * N_P2)

    lam = tl.load(glast_ptr + state, mask=n_ok[None, :], other=0.0).to(tl.float32)
    acc_A = tl.full((BLOCK_D, N_P2), 0.0, tl.float32)
    acc_skip = tl.full((BLOCK_D,), 0.0, tl.float32)
    acc_bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    for cc in range(0, nc):
        c = nc - 1 - cc
        t0 = c * CHUNK
        steps = tl.minimum(CHUNK, L - t0)
        # 1. the chunk's states h_{t-1}, recomputed from its saved start state
        h = tl.load(starts_ptr + ((i * D + d)[:, None] * nc + c) * N + n[None, :], mask=n_ok[None, :], other=0.0)
        for k in range(0, steps):
            t = t0 + k
            tl.store(scratch + k * (BLOCK_D * N_P2) + tile, h)
            dt = tl.load(delta_ptr + row + t).to(tl.float32) + bias
            if SOFTPLUS:
                e = tl.exp(-tl.abs(dt))
                w = 1.0 + e
                dt = tl.maximum(dt, 0.0) + tl.log(w) - ((w - 1.0) - e) / w
            u_t = tl.load(u_ptr + row + t).to(tl.float32)
            B_t = tl.load(B_ptr + bc + t, mask=n_ok, other=0.0).to(tl.float32)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u_t)[:, None] * B_t[None, :]
        # the scratch written above is read below, maybe by other threads of the program: a CTA barrier makes
        # their global-memory writes visible (here and at the end of the chunk, before the next overwrites it)
        tl.debug_barrier()
        # 2. reverse sweep: lam = dLoss/dh_t, carried to step t - 1 as a_t lam
        for kk in range(0, steps):
            k = steps - 1 - kk
            t = t0 + k
            h_prev = tl.load(scratch + k * (BLOCK_D * N_P2) + tile)
            x = tl.load(delta_ptr + row + t).to(tl.float32) + bias
            dt = x
            slope = tl.full((BLOCK_D,), 1.0, tl.float32)  # d(dt)/dx: sigmoid(x) under softplus
            if SOFTPLUS:
                e = tl.exp(-tl.abs(x))
                w = 1.0 + e
                dt = tl.maximum(x, 0.0) + tl.log(w) - ((w - 1.0) - e) / w
                slope = tl.where(x >= 0, 1.0, e) / w
            u_t = tl.load(u_ptr + row + t).to(tl.float32)
            B_t = tl.load(B_ptr + bc + t, mask=n_ok, other=0.0).to(tl.float32)
            C_t = tl.load(C_ptr + bc + t, mask=n_ok, other=0.0).to(tl.float32)
            gy = tl.load(gout_ptr + row + t).to(tl.float32)
            a = tl.exp2(dt[:, None] * A2)
            du = dt * u_t
            h_t = a * h_prev + du[:, None] * B_t[None, :]
            if HAS_Z:
                z_t = tl.load(z_ptr + row + t).to(tl.float32)
                sig = 1.0 / (1.0 + tl.exp(-z_t))
                y = tl.reduce(h_t * C_t[None, :], 1, _SUM) + skip * u_t
                tl.store(gz_ptr + row + t, gy * y * sig * (1.0 + z_t * (1.0 - sig)))
                gy = gy * z_t * sig
            tl.store(gC_ptr + part + t, tl.reduce(gy[:, None] * h_t, 0, _SUM), mask=n_ok)
            lam = lam + gy[:, None] * C_t[None, :]
            tl.store(gB_ptr + part + t, tl.reduce(lam * du[:, None], 0, _SUM), mask=n_ok)
            sum_du = tl.reduce(lam * B_t[None, :], 1, _SUM)  # dLoss/d(du_t)
            q = lam * a * h_prev  # dLoss/d(dt_t A)
            acc_A += q * dt[:, None]
            sum_dt = tl.reduce(q * A, 1, _SUM)  # dLoss/d(dt_t) through the decay
            lam = lam * a
            tl.store(gu_ptr + row + t, sum_du * dt + gy * skip)
            acc_skip += gy * u_t
            g_x = (sum_dt + sum_du * u_t) * slope
            tl.store(gdelta_ptr + row + t, g_x)
            acc_bias += g_x
        tl.debug_barrier()
    tl.store(gA_ptr + state, acc_A, mask=n_ok[None, :])
    tl.store(gskip_ptr + i * D + d, acc_skip)
    tl.store(gbias_ptr + i * D + d, acc_bias)


# ---- SS2D's four directions fused (issue 28), the design of numba_kernels.ss2d_forward/ss2d_backward ----------
# One program per (batch element, block of BLOCK_D channels) runs the four directions of its channels, walking x
# (b, D, L) by the positions table pos (4, L); dtl (b, 4, R, L) and BC (b, 4, L, 2N) are in each direction's step
# order; Wdt (4, D, R), bias and skip (4, D), A (4, D, N). y (b, D, L) is zero on entry and each direction adds
# its output in the official merge order (row, reversed row, column, reversed column); a program alone writes its
# channels' rows.


@triton.jit
def ss2d_forward_kernel(
    x_ptr, dtl_ptr, BC_ptr, Wdt_ptr, bias_ptr, A_ptr, skip_ptr, pos_ptr, y_ptr, starts_ptr,
    D, L, N, R,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr, R_P2: tl.constexpr, CHUNK: tl.constexpr, KEEP_STARTS: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, N_P2)
    n_ok = n < N
    rr = tl.arange(0, R_P2)
    r_ok = rr < R
    nc = (L + CHUNK - 1) // CHUNK
    row = (i * D + d) * L  # (BLOCK_D,) offsets of the channels' rows in x and y
    for o in range(0, 4):
        k = 2 * (o % 2) + o // 2  # the merge order 0, 2, 1, 3
        A2 = tl.load(A_ptr + (k * D + d)[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0) * LOG2E
        skip = tl.load(skip_ptr + k * D + d)
        bias = tl.load(bias_ptr + k * D + d)
        Wdt = tl.load(Wdt_ptr + (k * D + d)[:, None] * R + rr[None, :], mask=r_ok[None, :], other=0.0)
        low_row = ((i * 4 + k) * R + rr) * L  # (R_P2,) offsets in dtl
        bc_row = (i * 4 + k) * L * 2 * N
        h = tl.full((BLOCK_D, N_P2), 0.0, tl.float32)
        for c in range(0, nc):
            if KEEP_STARTS:
                tl.store(starts_ptr + (((i * 4 + k) * D + d)[:, None] * nc + c) * N + n[None, :], h,
                         mask=n_ok[None, :])
            t0 = c * CHUNK
            for t in range(t0, tl.minimum(t0 + CHUNK, L)):
                p = tl.load(pos_ptr + k * L + t)
                low = tl.load(dtl_ptr + low_row + t, mask=r_ok, other=0.0)
                x = tl.reduce(Wdt * low[None, :], 1, _SUM) + bias
                e = tl.exp(-tl.abs(x))
                w = 1.0 + e
                dt = tl.maximum(x, 0.0) + tl.log(w) - ((w - 1.0) - e) / w
                u_t = tl.load(x_ptr + row + p)
                B_t = tl.load(BC_ptr + bc_row + t * 2 * N + n, mask=n_ok, other=0.0)
                C_t = tl.load(BC_ptr + bc_row + t * 2 * N + N + n, mask=n_ok, other=0.0)
                h = tl.exp2(dt[:, None] * A2) * h + (dt * u_t)[:, None] * B_t[None, :]
                y = tl.reduce(h * C_t[None, :], 1, _SUM) + skip * u_t
                tl.store(y_ptr + row + p, tl.load(y_ptr + row + p) + y)
        tl.debug_barrier()


@triton.jit
def ss2d_backward_kernel(
    x_ptr, dtl_ptr, BC_ptr, Wdt_ptr, bias_ptr, A_ptr, skip_ptr, pos_ptr, starts_ptr, gy_ptr,
    gx_ptr, gdtl_ptr, gBC_ptr, gWdt_ptr, gbias_ptr, gA_ptr, gskip_ptr, scratch_ptr,
    D, L, N, R,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr, R_P2: tl.constexpr, CHUNK: tl.constexpr,
):
    """gx (b, D, L) zero on entry; per block j of channels, summed by the caller: gdtl (P, b, 4, R, L) and
    gBC (P, b, 4, L, 2N); per batch element: gWdt (b, 4, D, R), gbias and gskip (b, 4, D), gA (b, 4, D, N).
    scratch: (b, P, CHUNK, BLOCK_D, N_P2)."""
    i = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = tl.num_programs(0)
    d = j * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, N_P2)
    n_ok = n < N
    rr = tl.arange(0, R_P2)
    r_ok = rr < R
    nc = (L + CHUNK - 1) // CHUNK
    row = (i * D + d) * L
    tile = tl.arange(0, BLOCK_D)[:, None] * N_P2 + n[None, :]
    scratch = scratch_ptr + (i * tl.num_programs(1) + j) * (CHUNK * BLOCK_D * N_P2)
    for k in range(0, 4):
        A = tl.load(A_ptr + (k * D + d)[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0)
        A2 = A * LOG2E
        skip = tl.load(skip_ptr + k * D + d)
        bias = tl.load(bias_ptr + k * D + d)
        Wdt = tl.load(Wdt_ptr + (k * D + d)[:, None] * R + rr[None, :], mask=r_ok[None, :], other=0.0)
        low_row = ((i * 4 + k) * R + rr) * L
        bc_row = (i * 4 + k) * L * 2 * N
        part_low = (((j * b + i) * 4 + k) * R + rr) * L  # (R_P2,) offsets in gdtl
        part_bc = ((j * b + i) * 4 + k) * L * 2 * N
        lam = tl.full((BLOCK_D, N_P2), 0.0, tl.float32)
        acc_A = tl.full((BLOCK_D, N_P2), 0.0, tl.float32)
        acc_W = tl.full((BLOCK_D, R_P2), 0.0, tl.float32)
        acc_skip = tl.full((BLOCK_D,), 0.0, tl.float32)
        acc_bias = tl.full((BLOCK_D,), 0.0, tl.float32)
        for cc in range(0, nc):
            c = nc - 1 - cc
            t0 = c * CHUNK
            steps = tl.minimum(CHUNK, L - t0)
            h = tl.load(starts_ptr + (((i * 4 + k) * D + d)[:, None] * nc + c) * N + n[None, :], mask=n_ok[None, :],
                        other=0.0)
            for s in range(0, steps):  # the chunk's states h_{t-1}, recomputed from its start state
                t = t0 + s
                tl.store(scratch + s * (BLOCK_D * N_P2) + tile, h)
                p = tl.load(pos_ptr + k * L + t)
                low = tl.load(dtl_ptr + low_row + t, mask=r_ok, other=0.0)
                x = tl.reduce(Wdt * low[None, :], 1, _SUM) + bias
                e = tl.exp(-tl.abs(x))
                w = 1.0 + e
                dt = tl.maximum(x, 0.0) + tl.log(w) - ((w - 1.0) - e) / w
                u_t = tl.load(x_ptr + row + p)
                B_t = tl.load(BC_ptr + bc_row + t * 2 * N + n, mask=n_ok, other=0.0)
                h = tl.exp2(dt[:, None] * A2) * h + (dt * u_t)[:, None] * B_t[None, :]
            tl.debug_barrier()
            for ss in range(0, steps):  # reverse sweep, lam = dLoss/dh_t
                s = steps - 1 - ss
                t = t0 + s
                h_prev = tl.load(scratch + s * (BLOCK_D * N_P2) + tile)
                p = tl.load(pos_ptr + k * L + t)
                low = tl.load(dtl_ptr + low_row + t, mask=r_ok, other=0.0)
                x = tl.reduce(Wdt * low[None, :], 1, _SUM) + bias
                e = tl.exp(-tl.abs(x))
                w = 1.0 + e
                dt = tl.maximum(x, 0.0) + tl.log(w) - ((w - 1.0) - e) / w
                slope = tl.where(x >= 0, 1.0, e) / w  # sigmoid(x)
                u_t = tl.load(x_ptr + row + p)
                B_t = tl.load(BC_ptr + bc_row + t * 2 * N + n, mask=n_ok, other=0.0)
                C_t = tl.load(BC_ptr + bc_row + t * 2 * N + N + n, mask=n_ok, other=0.0)
                gy = tl.load(gy_ptr + row + p)
                a = tl.exp2(dt[:, None] * A2)
                du = dt * u_t
                h_t = a * h_prev + du[:, None] * B_t[None, :]
                tl.store(gBC_ptr + part_bc + t * 2 * N + N + n, tl.reduce(gy[:, None] * h_t, 0, _SUM), mask=n_ok)
                lam = lam + gy[:, None] * C_t[None, :]
                tl.store(gBC_ptr + part_bc + t * 2 * N + n, tl.reduce(lam * du[:, None], 0, _SUM), mask=n_ok)
                sum_du = tl.reduce(lam * B_t[None, :], 1, _SUM)
                q = lam * a * h_prev
                acc_A += q * dt[:, None]
                sum_dt = tl.reduce(q * A, 1, _SUM)
                lam = lam * a
                tl.store(gx_ptr + row + p, tl.load(gx_ptr + row + p) + sum_du * dt + gy * skip)
                acc_skip += gy * u_t
                g_pre = (sum_dt + sum_du * u_t) * slope
                acc_bias += g_pre
                acc_W += g_pre[:, None] * low[None, :]
                tl.store(gdtl_ptr + part_low + t, tl.reduce(g_pre[:, None] * Wdt, 0, _SUM), mask=r_ok)
            tl.debug_barrier()
        out = (i * 4 + k) * D + d
        tl.store(gA_ptr + out[:, None] * N + n[None, :], acc_A, mask=n_ok[None, :])
        tl.store(gWdt_ptr + out[:, None] * R + rr[None, :], acc_W, mask=r_ok[None, :])
        tl.store(gskip_ptr + out, acc_skip)
        tl.store(gbias_ptr + out, acc_bias)
