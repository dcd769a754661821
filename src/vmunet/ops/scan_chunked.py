"""Forward and backward loops of the two-level chunked selective scan, and its autograd Function.

Inputs come in the scan's own layout, dt, du: (b, D, L) with D = G * H channels in G groups, dt = delta
after bias and softplus, du = delta * u; A: (D, N); B, C: (b, G, N, L). Inside, each batch block is copied
into scratch buffers in chunk layout: the sequence zero-padded to nc chunks of T steps, stored (n, K, T, nc)
with the chunk index contiguous, so that step t of every chunk is one vectorised op over (G, H, N, nc).
(This layout is a batch of small 2D transposes, which PyTorch copies ~3x faster than the (T, ..., nc)
order; the per-step results are written T-major and turned back the same way.)

Recurrence, per channel and state:  h_t = a_t h_{t-1} + du_t B_t,  a_t = exp(dt_t A),  y_t = <C_t, h_t>.

Forward, ~2T + nc Python steps instead of L:
1. inside every chunk, the recurrence from a zero state -> each chunk's local end state;
2. across chunks, S_{c+1} = P_c S_c + local end_c, with P_c = exp(A * sum of dt over chunk c);
3. inside every chunk again, the recurrence from the true start state S_c, contracting with C on the way.

Backward recomputes what it needs from the inputs and the chunk start states S (the only tensor kept
besides the inputs; (b, G, H, N, nc), T times smaller than the hidden states):
1. the forward states h_{t-1} of every step and the decays a_t, into scratch buffers;
2. the adjoint lambda_t = gy_t C_t + a_{t+1} lambda_{t+1} inside every chunk from a zero end;
3. across chunks (reversed), the adjoint carried into each chunk from the next one;
4. the adjoint again with its true carry, collecting every gradient on the way.

Exponentials: a = exp2(dt * A * log2(e)) (exp2 is ~3x faster than exp on CPUs) and every exponent is
dt * A or A * (sum of dt) with dt >= 0 and A < 0 in a model: never the exponential of a large positive
number, so long sequences and huge steps underflow to 0 instead of overflowing. Nothing divides by a decay.

On the CPU the batch goes in blocks of ~0.5 M state elements per step (one element of the paper model's stage
1, the whole batch of a small model) so that the per-step working set stays in cache while Python's per-op
cost stays amortised; on other devices in blocks whose biggest scratch buffers stay within 1 GiB each (bigger
kernels matter more there, but the whole batch of a big model would need several ~6 GB buffers at once).
"""

from __future__ import annotations

import contextlib
import math

import torch

from vmunet.ops.workspace import scratch

LOG2E = 1.4426950408889634


MIN_CHUNKS = 16  # chunk index = the contiguous inner dim of every step's op: at 8 they run ~5x slower than at 32


def balanced_chunk_length(length: int) -> int:
    """T ~ sqrt(L) balances the 2T in-chunk steps against the nc = L / T cross-chunk steps; T shrinks when
    that would leave fewer than 16 chunks, so that the inner dim stays wide enough to vectorise."""
    return max(1, min(math.isqrt(max(length - 1, 0)) + 1, -(-length // MIN_CHUNKS)))


def _to_chunks(x: torch.Tensor, T: int, out: torch.Tensor) -> torch.Tensor:
    """(n, K, L) -> out (n, K, T, nc): out[..., t, c] = x[..., c * T + t], zero past L."""
    n, K, L = x.shape
    nc = out.shape[-1]
    full, rest = divmod(L, T)
    rows_out, rows_in = out.view(n * K, T, nc), x.reshape(n * K, L)
    if full:
        rows_out[:, :, :full].copy_(rows_in[:, :full * T].view(n * K, full, T).transpose(1, 2))
    if rest:
        rows_out[:, :rest, full].copy_(rows_in[:, full * T:])
        rows_out[:, rest:, full].zero_()
    return out


def _from_steps(x: torch.Tensor, out: torch.Tensor, slot: str) -> torch.Tensor:
    """(T, n, K, nc) written step by step -> out (n, K, L), dropping the padding."""
    T, n, K, nc = x.shape
    L = out.shape[-1]
    mid = scratch(slot, (n * K, T, nc), x)
    mid.view(n, K, T, nc).copy_(x.permute(1, 2, 0, 3))  # runs of nc: a cheap copy
    rows_out = out.reshape(n * K, L)
    full, rest = divmod(L, T)
    if full:
        rows_out[:, :full * T].view(n * K, full, T).copy_(mid[:, :, :full].transpose(1, 2))
    if rest:
        rows_out[:, full * T:].copy_(mid[:, :rest, full])
    return out


def flushing_denormals() -> bool:
    """Whether this thread flushes denormal float32 results to zero. PyTorch has a setter and no getter, so
    ask the CPU: 2^-100 * 2^-30 is denormal in float32 (the smallest normal is 2^-126)."""
    return (torch.tensor(2.0 ** -100) * 2.0 ** -30).item() == 0.0


@contextlib.contextmanager
def _flush_denormals(x: torch.Tensor):
    """Decays of long chunks underflow through denormal numbers, which CPUs process up to ~10x slower
    (a paper-model forward measured 7 s per stage-1 scan instead of 1 s). Flush them to zero while the
    loops run, then put back the caller's own setting."""
    if x.device.type != "cpu" or flushing_denormals():
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


STEP_ELEMENTS = 1 << 19  # per-step op size the CPU batch blocks aim for (see batch_block)
GPU_BUFFER_BYTES = 1 << 30  # the largest scratch buffer of one batch block on other devices (see batch_block)


def batch_block(batch: int, per_step: int, steps: int, device_type: str, element_size: int) -> int:
    """Batch elements processed together; per_step: elements of one step's op per batch element (D N nc),
    steps: the T steps of a chunk, whose decays and states the biggest scratch buffers hold (T, n, D, N, nc).

    On the CPU, just enough that each step's ops cover ~0.5 M elements: one element of the paper model's stage 1
    (786 k) keeps its working set in the L3 cache, while the small models' steps (~100 k per element) would
    otherwise pay Python's per-op cost once per element (a whole batch at once measured 25 % faster on a
    vmunet-tiny training step). Elsewhere (GPUs) as many as keep each of those buffers within GPU_BUFFER_BYTES:
    the whole batch made every buffer (B, D, L, N)-sized, ~6 GB each for the paper model at batch 32, several at
    once in the backward; blocks of 5 at its stage 1 still give each step's op ~4 M elements."""
    if device_type == "cpu":
        return max(1, min(batch, STEP_ELEMENTS // max(per_step, 1)))
    return max(1, min(batch, GPU_BUFFER_BYTES // max(per_step * steps * element_size, 1)))


def _batch_block(x: torch.Tensor, per_element: int, steps: int = 1) -> int:
    return batch_block(x.shape[0], per_element, steps, x.device.type, x.element_size())


def _chunk_decay(dt_c: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """P = exp(A * sum of dt over each chunk): dt_c (n, G, H, T, nc) -> (nc, n, G, H, N), chunk-major."""
    total = dt_c.sum(3).movedim(-1, 0).unsqueeze(-1)  # (nc, n, G, H, 1)
    decay = scratch("chunk_decay", (*total.shape[:-1], A2.shape[2]), dt_c)
    return torch.mul(total, A2.squeeze(-1), out=decay).exp2_()


def _carry(local: torch.Tensor, decay: torch.Tensor, first: torch.Tensor | None, reverse: bool,
           out: torch.Tensor) -> torch.Tensor:
    """The cross-chunk recurrence carry_{c+1} = decay_c * carry_c + local_c (from the right if reverse).

    local: (n, G, H, N, nc); decay: (nc, n, G, H, N) from _chunk_decay; first: (n, G, H, N) or None (zero).
    Writes the carry *into* each chunk to out (n, G, H, N, nc) and returns the carry out of the whole
    sequence (n, G, H, N).
    """
    nc = decay.shape[0]
    local_c = scratch("carry_local", decay.shape, local)  # (nc, n, G, H, N): contiguous steps
    local_c.copy_(local.movedim(-1, 0))
    carry = scratch("carry_steps", decay.shape, local)
    order = range(nc - 1, -1, -1) if reverse else range(nc)
    local_s, decay_s, carry_s = local_c.unbind(0), decay.unbind(0), carry.unbind(0)
    previous = None
    for c in order:
        if previous is None and first is None:
            carry_s[c].zero_()
        elif previous is None:
            carry_s[c].copy_(first)
        else:
            torch.addcmul(local_s[previous], decay_s[previous], carry_s[previous], out=carry_s[c])
        previous = c
    out.copy_(carry.movedim(0, -1))
    return torch.addcmul(local_s[previous], decay_s[previous], carry_s[previous])


class _Block:
    """One batch block's inputs copied into chunk layout, and the per-step views of them."""

    def __init__(self, dt, du, B, C, rows, T, nc):
        n, G = dt[rows].shape[0], B.shape[1]
        N = B.shape[2]
        H = dt.shape[1] // G
        self.dt = _to_chunks(dt[rows], T, scratch("dt", (n, G, H, T, nc), dt).view(n, G * H, T, nc)).view(
            n, G, H, T, nc)
        self.du = _to_chunks(du[rows], T, scratch("du", (n, G, H, T, nc), dt).view(n, G * H, T, nc)).view(
            n, G, H, T, nc)
        self.B = _to_chunks(B[rows].flatten(1, 2), T, scratch("B", (n, G, N, T, nc), dt).view(n, G * N, T, nc)).view(
            n, G, N, T, nc)
        self.C = _to_chunks(C[rows].flatten(1, 2), T, scratch("C", (n, G, N, T, nc), dt).view(n, G * N, T, nc)).view(
            n, G, N, T, nc)
        self.shape = (n, G, H, N, nc)
        # Per-step views, made once (one unbind call instead of T select + unsqueeze calls in every loop).
        self.dt_t, self.du_t = self.channel_steps(self.dt), self.channel_steps(self.du)
        self.B_t, self.C_t = self.state_steps(self.B), self.state_steps(self.C)

    @staticmethod
    def channel_steps(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(n, G, H, T, nc) -> T views (n, G, H, 1, nc), broadcast over the state dim."""
        return x.unsqueeze(4).unbind(3)

    @staticmethod
    def state_steps(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(n, G, N, T, nc) -> T views (n, G, 1, N, nc), broadcast over the channel dim."""
        return x.unsqueeze(2).unbind(4)


def _blocks(dt, du, B, C, T, nc):
    step = _batch_block(dt, dt.shape[1] * B.shape[2] * nc, T)
    for i in range(0, dt.shape[0], step):
        rows = slice(i, i + step)
        yield rows, _Block(dt, du, B, C, rows, T, nc)


def chunked_forward(dt, du, A, B, C, keep_starts: bool):
    """Returns y (b, D, L), the chunk start states (b, G, H, N, nc) or None, the last state (b, D, N)."""
    with _flush_denormals(dt):
        return _forward(dt, du, A, B, C, keep_starts)


def _forward(dt, du, A, B, C, keep_starts: bool):
    b, D, L = dt.shape
    G, N = B.shape[1], A.shape[1]
    T = balanced_chunk_length(L)
    nc = max(1, -(-L // T))
    A2 = (A * LOG2E).view(G, D // G, N, 1)  # (G, H, N, 1)
    y = dt.new_empty(b, D, L)
    starts = dt.new_empty(b, G, D // G, N, nc) if keep_starts else None
    last = dt.new_empty(b, G, D // G, N)
    for rows, blk in _blocks(dt, du, B, C, T, nc):
        n = blk.shape[0]
        decay = scratch("decay", (T, *blk.shape), dt)  # a_t of every step, computed once
        h = scratch("state", blk.shape, dt)
        prod = scratch("product", blk.shape, dt)
        y_steps = scratch("y", (T, n, G, D // G, nc), dt)
        start = starts[rows] if keep_starts else scratch("starts", blk.shape, dt)

        decay_t, y_t = decay.unbind(0), y_steps.unbind(0)

        # 1. local recurrence from zero; only the chunk-end states are kept
        for t in range(T):
            torch.mul(blk.dt_t[t], A2, out=decay_t[t]).exp2_()
            if t == 0:
                torch.mul(blk.du_t[t], blk.B_t[t], out=h)
            else:
                h.mul_(decay_t[t]).addcmul_(blk.du_t[t], blk.B_t[t])

        # 2. chunk start states
        last[rows] = _carry(h, _chunk_decay(blk.dt, A2), None, reverse=False, out=start)

        # 3. the recurrence from the true start states, contracted with C
        for t in range(T):
            torch.mul(start if t == 0 else h, decay_t[t], out=h).addcmul_(blk.du_t[t], blk.B_t[t])
            torch.sum(torch.mul(h, blk.C_t[t], out=prod), 3, out=y_t[t])
        _from_steps(y_steps.flatten(2, 3), y[rows], "y_rows")
    return y, starts, last.flatten(1, 2)


def chunked_backward(gy, g_last, dt, du, A, B, C, starts, needs):
    """Gradients (dt, du, A, B, C), each None unless its entry of ``needs`` is true.

    gy: (b, D, L) gradient of y; g_last: (b, D, N) gradient of the last state, or None. The dt gradient
    is only the part through the decays a_t; du's part is the caller's (du = dt * u).
    """
    with _flush_denormals(dt):
        return _backward(gy, g_last, dt, du, A, B, C, starts, needs)


def _backward(gy, g_last, dt, du, A, B, C, starts, needs):
    need_dt, need_du, need_A, need_B, need_C = needs[:5]
    b, D, L = dt.shape
    G, N = B.shape[1], A.shape[1]
    H = D // G
    T = balanced_chunk_length(L)
    nc = max(1, -(-L // T))
    A2 = (A * LOG2E).view(G, H, N, 1)
    A1 = A.view(G, H, N, 1)
    g_dt = torch.empty_like(dt, memory_format=torch.contiguous_format) if need_dt else None
    g_du = torch.empty_like(du, memory_format=torch.contiguous_format) if need_du else None
    g_B = torch.empty_like(B, memory_format=torch.contiguous_format) if need_B else None
    g_C = torch.empty_like(C, memory_format=torch.contiguous_format) if need_C else None
    g_A = torch.zeros(G, H, N, dtype=A.dtype, device=A.device) if need_A else None
    need_states = need_dt or need_A or need_C
    for rows, blk in _blocks(dt, du, B, C, T, nc):
        n = blk.shape[0]
        gy_c = _to_chunks(gy[rows], T, scratch("gy", (n, G, H, T, nc), dt).view(n, D, T, nc)).view(n, G, H, T, nc)
        decay = scratch("decay", (T, *blk.shape), dt)
        # states[t] = h_{t-1}, states[T] = h_{T-1}
        states = scratch("states", (T + 1, *blk.shape), dt) if need_states else None
        adj = scratch("adjoint", blk.shape, dt)
        prod = scratch("product", blk.shape, dt)
        carry_in = scratch("carry", blk.shape, dt)
        steps = {name: scratch(f"grad_{name}", (T, n, G, size, nc), dt)
                 for name, size, needed in (("dt", H, need_dt), ("du", H, need_du), ("B", N, need_B), ("C", N, need_C))
                 if needed}
        if need_A:
            acc_A = scratch("grad_A", blk.shape, dt).zero_()

        decay_t = decay.unbind(0)
        states_t = states.unbind(0) if need_states else None
        gy_t = _Block.channel_steps(gy_c)
        grad_t = {name: buffer.unbind(0) for name, buffer in steps.items()}

        # 1. decays and forward states, from the saved chunk start states; C's gradient while h_t is in cache
        if need_states:
            states_t[0].copy_(starts[rows])
        for t in range(T):
            torch.mul(blk.dt_t[t], A2, out=decay_t[t]).exp2_()
            if need_states:
                torch.mul(states_t[t], decay_t[t], out=states_t[t + 1]).addcmul_(blk.du_t[t], blk.B_t[t])
            if need_C:
                torch.sum(torch.mul(states_t[t + 1], gy_t[t], out=prod), 2, out=grad_t["C"][t])

        # 2. local adjoint from a zero end; leaves a_{t0} lambda_{t0} of every chunk
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                torch.mul(gy_t[t], blk.C_t[t], out=adj)
            else:
                adj.addcmul_(gy_t[t], blk.C_t[t])
            adj.mul_(decay_t[t])

        # 3. carry into every chunk from its right; into the last one, the last state's gradient
        first = None if g_last is None else g_last[rows].reshape(n, G, H, N)
        _carry(adj, _chunk_decay(blk.dt, A2), first, reverse=True, out=carry_in)

        # 4. the adjoint with its true carry, and the other gradients on the way
        adj.copy_(carry_in)
        for t in range(T - 1, -1, -1):
            adj.addcmul_(gy_t[t], blk.C_t[t])  # lambda_t = dL/dh_t
            if need_B:
                torch.sum(torch.mul(adj, blk.du_t[t], out=prod), 2, out=grad_t["B"][t])
            if need_du:
                torch.sum(torch.mul(adj, blk.B_t[t], out=prod), 3, out=grad_t["du"][t])
            adj.mul_(decay_t[t])  # lambda_t a_t, carried to step t - 1
            if need_dt or need_A:
                torch.mul(adj, states_t[t], out=prod)  # lambda_t a_t h_{t-1} = dL/d(dt_t A)
                if need_A:
                    acc_A.addcmul_(prod, blk.dt_t[t])
                if need_dt:
                    torch.sum(prod.mul_(A1), 3, out=grad_t["dt"][t])

        for name, grad in (("dt", g_dt), ("du", g_du), ("B", g_B), ("C", g_C)):
            if grad is not None:
                _from_steps(steps[name].flatten(2, 3), grad[rows].view(n, -1, L), "grad_rows")
        if need_A:
            g_A += acc_A.sum((0, 4))
    return g_dt, g_du, None if g_A is None else g_A.view(D, N), g_B, g_C


class ChunkedScan(torch.autograd.Function):
    """y, last = ChunkedScan.apply(dt, du, A, B, C): y (b, D, L), last (b, D, N). Keeps only its inputs and
    the chunk start states for backward, never a (b, D, L, N) tensor."""

    @staticmethod
    def forward(ctx, dt, du, A, B, C):
        y, starts, last = chunked_forward(dt, du, A, B, C, keep_starts=True)
        ctx.save_for_backward(dt, du, A, B, C, starts)
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, gy, g_last):
        dt, du, A, B, C, starts = ctx.saved_tensors
        if gy is None:
            gy = torch.zeros_like(dt)
        return chunked_backward(gy.contiguous(), g_last, dt, du, A, B, C, starts, ctx.needs_input_grad)
