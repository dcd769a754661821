"""Fused selective-scan kernels for the CPU, compiled at run time by numba (imports numpy and numba only).

One task per (batch element, channel) in the forward, one per (batch element, group, block of channels) in the
backward, spread over threads by ``prange``; inside a task the loop over time is sequential and the loop over the
N states of a channel is the vectorised inner loop (N = 16 is one AVX-512 register). Layouts, float32 throughout:

    u, delta, y, gy: (b, D, L)    A2 = A * log2(e): (D, N)    BC: (b, G, L, 2, N), B and C of a step side by side
    bias, skip: (D,)              starts: (b, D, nc, N), the state entering every CHUNK-step chunk

Recurrence per channel d (group g) and state n, with dt = softplus(delta + bias):
    h_t = a_t h_{t-1} + dt_t u_t B_t,   a_t = exp(dt_t A) = exp2(dt_t A2),   y_t = <C_t, h_t> + skip u_t

numba >= 0.62 has no vector math library, so ``math.exp`` in a loop is a scalar libm call that stops
vectorisation: exp2 and log1p are written here as polynomials on plain float32 arithmetic. All helpers live in
this file because numba's cache does not notice edits to functions inlined from another module.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

F32 = np.float32
CHUNK = 64  # steps between saved states: the backward recomputes one chunk (CHUNK x N floats, in L1) at a time
LOG2E = F32(1.4426950408889634)
# Near-minimax fit of (2^f - 1) / f on [-1/2, 1/2], so that p(f) = 1 + f q(f) has p(0) = 1 exactly and
# 1 - a stays accurate for tiny steps (relative error 1.8e-7 over the range).
EXP2_C1, EXP2_C2, EXP2_C3, EXP2_C4, EXP2_C5 = (F32(0.6931469), F32(0.24022238), F32(0.05550892),
                                               F32(0.0096717), F32(0.00132191))
# Every kernel runs with these LLVM fast-math flags: reassociation lets the sums over states vectorise; no
# 'nnan'/'ninf', so the clamps in _exp2 keep their meaning.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def _compiled(fn):
    """njit(parallel=True) with an on-disk cache: numba tries NUMBA_CACHE_DIR, the package's __pycache__, then
    the user's cache folder; where none is writable it raises, and the kernel is then compiled in every process."""
    try:
        return njit(parallel=True, fastmath=FASTMATH, cache=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(parallel=True, fastmath=FASTMATH)(fn)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as a float32 (a bitcast, which vectorises; no memory round trip)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always", fastmath=FASTMATH)
def _exp2(x):
    """2^x for float32 x: round-to-nearest range reduction, a degree-5 polynomial, 2^k from the exponent bits.
    Below -127 the result is 0 (no denormals), above 127 it grows to inf."""
    x = min(max(x, F32(-127.0)), F32(127.0))
    k = np.rint(x)
    f = x - k  # in [-1/2, 1/2]
    p = F32(1.0) + f * (EXP2_C1 + f * (EXP2_C2 + f * (EXP2_C3 + f * (EXP2_C4 + f * EXP2_C5))))
    return p * _float32_from_bits(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


@njit(inline="always", fastmath=FASTMATH)
def _log1p_unit(e):
    """log(1 + e) for e in [0, 1]: 2 atanh(s) with s = e / (2 + e) in [0, 1/3], as its series to s^11
    (truncation error below 1e-7)."""
    s = e / (F32(2.0) + e)
    s2 = s * s
    return F32(2.0) * s * (F32(1.0) + s2 * (F32(1.0 / 3) + s2 * (F32(1.0 / 5) + s2 * (
        F32(1.0 / 7) + s2 * (F32(1.0 / 9) + s2 * F32(1.0 / 11))))))


@njit(inline="always", fastmath=FASTMATH)
def _softplus_parts(x):
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)), and that log1p term (for the sigmoid)."""
    tail = _log1p_unit(_exp2(-abs(x) * LOG2E))
    return max(x, F32(0.0)) + tail, tail


@njit(inline="always", fastmath=FASTMATH)
def _steps(delta, bias, softplus, need_slope, t0, t1, dt_out, sig_out):
    """dt = softplus(delta + bias) for steps t0..t1 of one channel into dt_out[0 .. t1 - t0], and with need_slope
    its derivative sigmoid(delta + bias) = exp(min(x, 0) - tail) into sig_out: independent steps, so these loops
    vectorise (the branches stay outside them, and a slice indexed from 0 needs no negative-index check)."""
    x_in = delta[t0:t1]
    if softplus and need_slope:
        for s in range(t1 - t0):
            x = x_in[s] + bias
            dt, tail = _softplus_parts(x)
            dt_out[s] = dt
            sig_out[s] = _exp2((min(x, F32(0.0)) - tail) * LOG2E)
    elif softplus:
        for s in range(t1 - t0):
            dt_out[s] = _softplus_parts(x_in[s] + bias)[0]
    else:
        for s in range(t1 - t0):
            dt_out[s] = x_in[s] + bias
        if need_slope:  # the forward passes one buffer as both outputs
            for s in range(t1 - t0):
                sig_out[s] = F32(1.0)


@njit(inline="always", fastmath=FASTMATH)
def _forward_channel(i, d, N, u, delta, bias, A2, BC, skip, softplus, y, last, starts):
    """One channel's recurrence over the whole sequence (N is a literal in the specialised kernel)."""
    L = u.shape[2]
    g = d // (u.shape[1] // BC.shape[1])
    keep = starts.shape[0] > 0
    h = np.zeros(N, F32)
    dt_buf = np.empty(CHUNK, F32)
    for c in range((L + CHUNK - 1) // CHUNK):
        t0 = c * CHUNK
        t1 = min(t0 + CHUNK, L)
        if keep:
            for n in range(N):
                starts[i, d, c, n] = h[n]
        _steps(delta[i, d], bias[d], softplus, False, t0, t1, dt_buf, dt_buf)
        for t in range(t0, t1):
            dt = dt_buf[t - t0]
            du = dt * u[i, d, t]
            acc = F32(0.0)
            for n in range(N):  # indices, not per-step views: a view costs two reference-count calls
                state = _exp2(dt * A2[d, n]) * h[n] + du * BC[i, g, t, 0, n]
                h[n] = state
                acc += state * BC[i, g, t, 1, n]
            y[i, d, t] = acc + skip[d] * u[i, d, t]
    for n in range(N):
        last[i, d, n] = h[n]


@_compiled
def scan_forward(u, delta, bias, A2, BC, skip, softplus, y, last, starts):
    """Writes y (b, D, L) and the last states (b, D, N); the chunk start states too when starts has b rows
    (pass an empty (0, 0, 0, 0) array for inference). BC: (b, G, L, 2, N), B then C at every step."""
    b, D = u.shape[0], u.shape[1]
    N = A2.shape[1]
    if N == 16:  # the models' d_state: a constant trip count lets LLVM drop the remainder loop
        for task in prange(b * D):
            _forward_channel(task // D, task % D, 16, u, delta, bias, A2, BC, skip, softplus, y, last, starts)
    else:
        for task in prange(b * D):
            _forward_channel(task // D, task % D, N, u, delta, bias, A2, BC, skip, softplus, y, last, starts)


@njit(inline="always", fastmath=FASTMATH)
def _backward_block(p, i, g, N, u, delta, bias, A, BC, skip, softplus, starts, gy, g_last,
                    g_u, g_delta, g_A, g_skip, g_bias, g_BC):
    """The gradients of block p of group g's channels, batch element i."""
    L = u.shape[2]
    H = u.shape[1] // BC.shape[1]
    P = g_BC.shape[0]
    per_block = (H + P - 1) // P
    lam = np.empty(N, F32)
    h = np.empty(N, F32)
    A2 = np.empty(N, F32)
    acc_A = np.empty(N, F32)
    ah = np.empty((CHUNK, N), F32)  # a_t h_{t-1} of every step of the chunk
    decays = np.empty((CHUNK, N), F32)
    lams = np.empty((CHUNK, N), F32)  # dL/dh_t of every step of the chunk
    dt_buf = np.empty(CHUNK, F32)
    sig_buf = np.empty(CHUNK, F32)
    for d in range(g * H + p * per_block, g * H + min(H, (p + 1) * per_block)):
        for n in range(N):
            A2[n] = A[d, n] * LOG2E
            lam[n] = g_last[i, d, n]
            acc_A[n] = F32(0.0)
        acc_skip = F32(0.0)
        acc_bias = F32(0.0)
        for c in range((L + CHUNK - 1) // CHUNK - 1, -1, -1):
            t0 = c * CHUNK
            t1 = min(t0 + CHUNK, L)
            _steps(delta[i, d], bias[d], softplus, True, t0, t1, dt_buf, sig_buf)
            # recompute the chunk's states and decays from its saved start state
            for n in range(N):
                h[n] = starts[i, d, c, n]
            for t in range(t0, t1):
                dt = dt_buf[t - t0]
                du = dt * u[i, d, t]
                for n in range(N):
                    a = _exp2(dt * A2[n])
                    decayed = a * h[n]
                    ah[t - t0, n] = decayed
                    decays[t - t0, n] = a
                    h[n] = decayed + du * BC[i, g, t, 0, n]
            # reverse sweep, first the sequential part: lam = dL/dh_t, carried to step t - 1 as a_t lam
            for t in range(t1 - 1, t0 - 1, -1):
                s = t - t0
                gy_t = gy[i, d, t]
                for n in range(N):
                    lam_n = lam[n] + gy_t * BC[i, g, t, 1, n]
                    lams[s, n] = lam_n
                    lam[n] = lam_n * decays[s, n]
            # then the gradients of every step, independent of each other: apart from the chain, this heavier loop
            # vectorises over the states (the backward took 1.3x as long with both in one loop)
            for s in range(t1 - t0):
                t = t0 + s
                dt = dt_buf[s]
                u_t = u[i, d, t]
                du = dt * u_t
                gy_t = gy[i, d, t]
                sum_du = F32(0.0)  # dL/d(du_t)
                sum_dt = F32(0.0)  # dL/d(dt_t) through the decays
                for n in range(N):
                    decayed, lam_n = ah[s, n], lams[s, n]
                    B_n = BC[i, g, t, 0, n]
                    g_BC[p, i, g, t, 1, n] += gy_t * (decayed + du * B_n)
                    g_BC[p, i, g, t, 0, n] += lam_n * du
                    sum_du += lam_n * B_n
                    q = lam_n * decayed  # dL/d(dt_t A)
                    acc_A[n] += q * dt
                    sum_dt += q * A[d, n]
                g_u[i, d, t] = sum_du * dt + gy_t * skip[d]
                acc_skip += gy_t * u_t
                g_x = (sum_dt + sum_du * u_t) * sig_buf[s]
                g_delta[i, d, t] = g_x
                acc_bias += g_x
        for n in range(N):
            g_A[i, d, n] = acc_A[n]
        g_skip[i, d] = acc_skip
        g_bias[i, d] = acc_bias


@_compiled
def scan_backward(u, delta, bias, A, BC, skip, softplus, starts, gy, g_last, g_u, g_delta, g_A, g_skip, g_bias, g_BC):
    """Gradients of scan_forward, from its inputs and chunk start states; A is the natural-log A (D, N).

    gy: (b, D, L); g_last: (b, D, N). Written: g_u, g_delta (b, D, L); per batch element, summed over it by the
    caller: g_A (b, D, N), g_skip and g_bias (b, D); per block of channels, summed over blocks by the caller:
    g_BC (P, b, G, L, 2, N), zero on entry. P blocks of channels per group, so P * b * G tasks run in parallel
    and no two write the same element.
    """
    b, G, N = u.shape[0], BC.shape[1], A.shape[1]
    tasks = g_BC.shape[0] * b * G
    if N == 16:
        for task in prange(tasks):
            _backward_block(task // (b * G), task % (b * G) // G, task % G, 16, u, delta, bias, A, BC, skip,
                            softplus, starts, gy, g_last, g_u, g_delta, g_A, g_skip, g_bias, g_BC)
    else:
        for task in prange(tasks):
            _backward_block(task // (b * G), task % (b * G) // G, task % G, N, u, delta, bias, A, BC, skip,
                            softplus, starts, gy, g_last, g_u, g_delta, g_A, g_skip, g_bias, g_BC)


# ---- SS2D's four directions fused (issue 28) ------------------------------------------------------------------
# One call scans all four directions of an SS2D layer, walking the unpermuted input by index arithmetic:
#
#     x, y, gy: (b, D, L), positions in row-major (h, w) order     pos: (4, L) int64, direction k's step t is at
#     dtl: (b, 4, r, L), the low-rank dt of direction k, step t    position pos[k, t] (rows, columns, both
#     BC: (b, 4, L, 2N), B then C of direction k at step t          reversed)
#     Wdt: (4, D, r)   bias, skip: (4, D)   A2 = A * log2(e): (4, D, N)   starts: (b, 4, D, nc, N)
#
# The projections are small (4 (r + 2N) floats a position, against D) and every channel reads them, so the caller
# puts them in each direction's step order: read at a stride of W positions, a column direction missed the cache at
# every step (the kernel took 2.4x as long), and the low-rank dt as (r, L) rows makes dt_proj a vector loop over
# steps (1.7x as long as a loop over r per step). dt = softplus(Wdt[k, d] . dtl[k, :, t] + bias[k, d]) is computed
# here, never stored as (b, 4, D, L). A task owns one channel of one batch element and runs its four directions,
# so it alone writes y[i, d, :]; the directions are added in the official merge order (row, reversed row, column,
# reversed column). x, y, gy and g_x may have any strides: a task copies its channel's rows into buffers once
# (so SS2D's channels-last tensors need no transposed copies around the kernel) and works in those.


@njit(inline="always", fastmath=FASTMATH)
def _direction(o):
    """The o-th direction in the merge order: 0, 2, 1, 3."""
    return 2 * (o % 2) + o // 2


@njit(inline="always", fastmath=FASTMATH)
def _ss2d_steps(i, k, d, t0, t1, u_row, dtl, Wdt, bias, pos, need_slope, dt_out, sig_out, u_out):
    """Steps t0..t1 of direction k, channel d: dt (and with need_slope sigmoid of its pre-activation) and u."""
    r = Wdt.shape[2]
    for s in range(t1 - t0):
        dt_out[s] = bias[k, d]
        u_out[s] = u_row[pos[k, t0 + s]]  # a gather from the channel's row (in L1): scalar
    for j in range(r):  # the low-rank dt_proj, a contiguous loop over steps
        w = Wdt[k, d, j]
        low = dtl[i, k, j, t0:t1]
        for s in range(t1 - t0):
            dt_out[s] += w * low[s]
    if need_slope:  # independent steps: these loops vectorise
        for s in range(t1 - t0):
            pre = dt_out[s]
            dt, tail = _softplus_parts(pre)
            dt_out[s] = dt
            sig_out[s] = _exp2((min(pre, F32(0.0)) - tail) * LOG2E)
    else:
        for s in range(t1 - t0):
            dt_out[s] = _softplus_parts(dt_out[s])[0]


@njit(inline="always", fastmath=FASTMATH)
def _ss2d_forward_channel(i, d, N, x, dtl, BC, Wdt, bias, A2, skip, pos, y, starts):
    L = x.shape[2]
    keep = starts.shape[0] > 0
    h = np.empty(N, F32)
    a2 = np.empty(N, F32)
    dt_buf = np.empty(CHUNK, F32)
    u_buf = np.empty(CHUNK, F32)
    u_row = np.empty(L, F32)  # the channel's input and output rows in (h, w) order, whatever x's and y's layout
    y_row = np.empty(L, F32)
    for p in range(L):
        u_row[p] = x[i, d, p]
    for o in range(4):
        k = _direction(o)
        for n in range(N):
            h[n] = F32(0.0)
            a2[n] = A2[k, d, n]
        sk = skip[k, d]
        for c in range((L + CHUNK - 1) // CHUNK):
            t0 = c * CHUNK
            t1 = min(t0 + CHUNK, L)
            if keep:
                for n in range(N):
                    starts[i, k, d, c, n] = h[n]
            _ss2d_steps(i, k, d, t0, t1, u_row, dtl, Wdt, bias, pos, False, dt_buf, dt_buf, u_buf)
            for s in range(t1 - t0):
                t = t0 + s
                p = pos[k, t]
                dt = dt_buf[s]
                u_t = u_buf[s]
                du = dt * u_t
                acc = F32(0.0)
                for n in range(N):
                    state = _exp2(dt * a2[n]) * h[n] + du * BC[i, k, t, n]
                    h[n] = state
                    acc += state * BC[i, k, t, N + n]
                if o == 0:
                    y_row[p] = acc + sk * u_t
                else:
                    y_row[p] += acc + sk * u_t
    for p in range(L):
        y[i, d, p] = y_row[p]


@_compiled
def ss2d_forward(x, dtl, BC, Wdt, bias, A2, skip, pos, y, starts):
    """Writes y (b, D, L), the sum of the four directions' outputs (skip terms included), in row-major order; the
    chunk start states of every direction too when starts has b rows (an empty (0, 0, 0, 0, 0) array otherwise)."""
    b, D = x.shape[0], x.shape[1]
    N = A2.shape[2]
    if N == 16:
        for task in prange(b * D):
            _ss2d_forward_channel(task // D, task % D, 16, x, dtl, BC, Wdt, bias, A2, skip, pos, y, starts)
    else:
        for task in prange(b * D):
            _ss2d_forward_channel(task // D, task % D, N, x, dtl, BC, Wdt, bias, A2, skip, pos, y, starts)


@njit(inline="always", fastmath=FASTMATH)
def _ss2d_backward_block(blk, i, N, x, dtl, BC, Wdt, bias, A, skip, pos, starts, gy,
                         g_x, g_dtl, g_BC, g_Wdt, g_bias, g_A, g_skip):
    """The gradients of block blk of channels, batch element i, all four directions."""
    D, L = x.shape[1], x.shape[2]
    r = Wdt.shape[2]
    P = g_BC.shape[0]
    per_block = (D + P - 1) // P
    lam = np.empty(N, F32)
    h = np.empty(N, F32)
    a_nat = np.empty(N, F32)
    a2 = np.empty(N, F32)
    acc_A = np.empty(N, F32)
    acc_W = np.empty(r, F32)
    ah = np.empty((CHUNK, N), F32)  # a_t h_{t-1} of every step of the chunk
    decays = np.empty((CHUNK, N), F32)
    lams = np.empty((CHUNK, N), F32)  # dL/dh_t of every step of the chunk
    dt_buf = np.empty(CHUNK, F32)
    sig_buf = np.empty(CHUNK, F32)
    u_buf = np.empty(CHUNK, F32)
    gy_buf = np.empty(CHUNK, F32)
    pre_buf = np.empty(CHUNK, F32)  # dL/d(dt's pre-activation) of every step of the chunk
    u_row = np.empty(L, F32)  # the channel's rows in (h, w) order, whatever the arrays' layout
    gy_row = np.empty(L, F32)
    gx_row = np.empty(L, F32)
    for d in range(blk * per_block, min(D, (blk + 1) * per_block)):
        for p in range(L):
            u_row[p] = x[i, d, p]
            gy_row[p] = gy[i, d, p]
            gx_row[p] = F32(0.0)
        for k in range(4):
            for n in range(N):
                a_nat[n] = A[k, d, n]
                a2[n] = A[k, d, n] * LOG2E
                lam[n] = F32(0.0)
                acc_A[n] = F32(0.0)
            for j in range(r):
                acc_W[j] = F32(0.0)
            sk = skip[k, d]
            acc_skip = F32(0.0)
            acc_bias = F32(0.0)
            for c in range((L + CHUNK - 1) // CHUNK - 1, -1, -1):
                t0 = c * CHUNK
                t1 = min(t0 + CHUNK, L)
                _ss2d_steps(i, k, d, t0, t1, u_row, dtl, Wdt, bias, pos, True, dt_buf, sig_buf, u_buf)
                for n in range(N):
                    h[n] = starts[i, k, d, c, n]
                for s in range(t1 - t0):  # recompute the chunk's states and decays from its start state
                    t = t0 + s
                    gy_buf[s] = gy_row[pos[k, t]]
                    dt = dt_buf[s]
                    du = dt * u_buf[s]
                    for n in range(N):
                        a = _exp2(dt * a2[n])
                        decayed = a * h[n]
                        ah[s, n] = decayed
                        decays[s, n] = a
                        h[n] = decayed + du * BC[i, k, t, n]
                for s in range(t1 - t0 - 1, -1, -1):  # the sequential part: lam = dL/dh_t
                    t = t0 + s
                    gy_t = gy_buf[s]
                    for n in range(N):
                        lam_n = lam[n] + gy_t * BC[i, k, t, N + n]
                        lams[s, n] = lam_n
                        lam[n] = lam_n * decays[s, n]
                for s in range(t1 - t0):  # the gradients of every step, independent of each other
                    t = t0 + s
                    p = pos[k, t]
                    dt = dt_buf[s]
                    u_t = u_buf[s]
                    du = dt * u_t
                    gy_t = gy_buf[s]
                    sum_du = F32(0.0)  # dL/d(du_t)
                    sum_dt = F32(0.0)  # dL/d(dt_t) through the decays
                    for n in range(N):
                        decayed, lam_n = ah[s, n], lams[s, n]
                        B_n = BC[i, k, t, n]
                        g_BC[blk, i, k, t, N + n] += gy_t * (decayed + du * B_n)
                        g_BC[blk, i, k, t, n] += lam_n * du
                        sum_du += lam_n * B_n
                        q = lam_n * decayed  # dL/d(dt_t A)
                        acc_A[n] += q * dt
                        sum_dt += q * a_nat[n]
                    gx_row[p] += sum_du * dt + gy_t * sk
                    acc_skip += gy_t * u_t
                    g_pre = (sum_dt + sum_du * u_t) * sig_buf[s]
                    pre_buf[s] = g_pre
                    acc_bias += g_pre
                for j in range(r):  # the low-rank dt_proj's gradients: contiguous loops over steps
                    w = Wdt[k, d, j]
                    low = dtl[i, k, j, t0:t1]
                    g_low = g_dtl[blk, i, k, j, t0:t1]
                    acc = F32(0.0)
                    for s in range(t1 - t0):
                        g_low[s] += pre_buf[s] * w
                        acc += pre_buf[s] * low[s]
                    acc_W[j] += acc
            for n in range(N):
                g_A[i, k, d, n] = acc_A[n]
            for j in range(r):
                g_Wdt[i, k, d, j] = acc_W[j]
            g_skip[i, k, d] = acc_skip
            g_bias[i, k, d] = acc_bias
        for p in range(L):
            g_x[i, d, p] = gx_row[p]


@_compiled
def ss2d_backward(x, dtl, BC, Wdt, bias, A, skip, pos, starts, gy, g_x, g_dtl, g_BC, g_Wdt, g_bias, g_A, g_skip):
    """Gradients of ss2d_forward from its inputs and chunk start states; A is the natural-log A (4, D, N).

    Written: g_x (b, D, L), the gradient through u only (the caller's projection adds its own); per batch element,
    summed over it by the caller: g_Wdt (b, 4, D, r), g_bias and g_skip (b, 4, D), g_A (b, 4, D, N); per block of
    channels, summed over blocks by the caller: g_dtl (P, b, 4, r, L) and g_BC (P, b, 4, L, 2N), zero on entry.
    P * b tasks, and no two write the same element."""
    b, N = x.shape[0], A.shape[2]
    tasks = g_BC.shape[0] * b
    if N == 16:
        for task in prange(tasks):
            _ss2d_backward_block(task // b, task % b, 16, x, dtl, BC, Wdt, bias, A, skip, pos, starts,
                                 gy, g_x, g_dtl, g_BC, g_Wdt, g_bias, g_A, g_skip)
    else:
        for task in prange(tasks):
            _ss2d_backward_block(task // b, task % b, N, x, dtl, BC, Wdt, bias, A, skip, pos, starts,
                                 gy, g_x, g_dtl, g_BC, g_Wdt, g_bias, g_A, g_skip)
