"""The "torch" backend's hand-written backward: partial gradients, the last state, extreme steps, and what
its autograd keeps (never a (B, D, L, N) tensor)."""

import pytest
import torch

from test_scan import make_inputs
from vmunet.ops import selective_scan_ref, selective_scan_torch
from vmunet.ops.scan_chunked import MIN_CHUNKS, balanced_chunk_length, flushing_denormals
from vmunet.ops.workspace import cached_bytes, release_workspace, scan_workspace

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def grads_of(fn, x, wanted, weight, with_last=False):
    x = {k: v.detach().requires_grad_(k in wanted) for k, v in x.items()}
    out = fn(**x, delta_softplus=True, return_last_state=with_last)
    loss = (out[0] * weight[0]).sum() + (out[1] * weight[1]).sum() if with_last else (out * weight[0]).sum()
    return dict(zip(wanted, torch.autograd.grad(loss, [x[k] for k in wanted])))


@pytest.mark.parametrize("wanted", [("u",), ("delta_bias",), ("A", "C"), ("B", "D", "z"), ("delta", "B")])
def test_gradients_when_only_some_inputs_require_grad(wanted):
    x = make_inputs(2, 8, 4, 100, with_z=True, with_bias=True, seed=3)
    weight = (torch.randn(2, 8, 100, dtype=torch.float64),)
    expected = grads_of(selective_scan_ref, x, wanted, weight)
    got = grads_of(selective_scan_torch, x, wanted, weight)
    for name in wanted:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_gradients_through_the_last_state():
    x = make_inputs(2, 8, 2, 37, with_bias=True, seed=5)
    weight = (torch.randn(2, 8, 37, dtype=torch.float64), torch.randn(2, 8, 16, dtype=torch.float64))
    expected = grads_of(selective_scan_ref, x, NAMES[:6] + ("delta_bias",), weight, with_last=True)
    got = grads_of(selective_scan_torch, x, NAMES[:6] + ("delta_bias",), weight, with_last=True)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_long_sequence_with_extreme_steps_matches_reference_with_gradients():
    """Steps from 1e-4 to 1e3 (delta * |A| up to thousands) over L = 3000: finite and equal to the loop."""
    x = make_inputs(1, 4, 1, 3000, seed=7)
    order = torch.randperm(3000, generator=torch.Generator().manual_seed(0))
    scale = torch.logspace(-4, 3, 3000, dtype=torch.float64)[order]
    x["delta"] = (x["delta"].detach().abs() * scale).requires_grad_()
    weight = (torch.randn(1, 4, 3000, dtype=torch.float64),)
    wanted = ("u", "delta", "A", "B", "C")
    x_nosoft = {k: v for k, v in x.items()}
    got = grads_of(lambda **kw: selective_scan_torch(**{**kw, "delta_softplus": False}), x_nosoft, wanted, weight)
    expected = grads_of(lambda **kw: selective_scan_ref(**{**kw, "delta_softplus": False}), x_nosoft, wanted, weight)
    for name in wanted:
        assert torch.isfinite(got[name]).all(), name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-8, atol=1e-8, msg=lambda m: f"{name}: {m}")


def test_float32_long_sequence_stays_finite_with_huge_steps():
    x = {k: v.detach().float() for k, v in make_inputs(1, 8, 4, 4096, with_bias=True, seed=1).items()}
    x["delta"] = x["delta"] * 50
    x = {k: v.requires_grad_() for k, v in x.items()}
    out = selective_scan_torch(**x, delta_softplus=True)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(v.grad).all() for v in x.values())


@pytest.mark.parametrize("groups", [1, 4])
def test_autograd_keeps_no_tensor_of_hidden_states(groups):
    """Every tensor saved for backward is O(batch * dim * L), not O(batch * dim * L * N)."""
    batch, dim, L, N = 2, 64, 1024, 16  # inputs are at most batch * dim * L; hidden states 16x that
    x = {k: v.detach().float().requires_grad_() for k, v in make_inputs(batch, dim, groups, L, N=N).items()}
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = selective_scan_torch(**x, delta_softplus=True)
    assert sizes and max(sizes) <= batch * dim * L
    out.sum().backward()  # and the backward still runs from what was kept
    assert all(v.grad is not None for v in x.values())


def test_inference_builds_no_graph_and_matches_training_forward():
    release_workspace()  # buffers first made in inference mode must still serve training afterwards
    x = {k: v.detach().float() for k, v in make_inputs(2, 8, 4, 300, with_z=True, with_bias=True).items()}
    with torch.inference_mode():
        out_inference = selective_scan_torch(**x, delta_softplus=True)
    assert not out_inference.requires_grad
    x_grad = {k: v.clone().requires_grad_() for k, v in x.items()}
    out_train = selective_scan_torch(**x_grad, delta_softplus=True)
    assert out_train.grad_fn is not None
    torch.testing.assert_close(out_inference, out_train.detach(), rtol=0, atol=0)
    out_train.sum().backward()


def test_traced_scan_uses_plain_ops_and_matches():
    x = {k: v.detach().float() for k, v in make_inputs(1, 8, 4, 64, with_bias=True).items()}

    def scan(u, delta, A, B, C, D, delta_bias):
        return selective_scan_torch(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=True)

    args = tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))
    traced = torch.jit.trace(scan, args, check_trace=False)
    assert "ChunkedScan" not in str(traced.graph)
    torch.testing.assert_close(traced(*args), scan(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 7, 15, 16, 50, 64, 255, 256, 1000, 1024, 4096, 16384])
def test_chunk_length_keeps_chunks_wide_and_steps_few(length):
    """The two properties the loops need: chunks no longer than L / MIN_CHUNKS (rounded up), so the chunk index,
    the vectorised inner dim, stays wide; and T never past ~sqrt(L), so the 2T + nc Python steps stay ~3 sqrt(L)."""
    T = balanced_chunk_length(length)
    nc = -(-length // T)
    assert 1 <= T and nc * T >= length
    assert T <= max(1, -(-length // MIN_CHUNKS)) and T * T <= length + 2 * T


@pytest.mark.parametrize("user_setting", [True, False])
def test_the_scan_keeps_the_callers_flush_to_zero_setting(monkeypatch, user_setting):
    import vmunet.ops.scan_chunked as chunked

    inside = []
    original = chunked._forward
    monkeypatch.setattr(chunked, "_forward", lambda *a: inside.append(flushing_denormals()) or original(*a))
    torch.set_flush_denormal(user_setting)
    try:
        assert flushing_denormals() == user_setting
        x = {k: v.detach().float() for k, v in make_inputs(1, 4, 1, 20).items()}
        selective_scan_torch(**x)
        assert inside == [True]  # flushed while the loops run
        assert flushing_denormals() == user_setting
    finally:
        torch.set_flush_denormal(False)


def test_workflows_free_the_scan_buffers_when_they_end():
    x = {k: v.detach().float() for k, v in make_inputs(2, 8, 2, 300).items()}

    @scan_workspace()
    def work():
        selective_scan_torch(**x)
        assert cached_bytes() > 0

    work()
    assert cached_bytes() == 0
    import vmunet.evaluate
    import vmunet.predict
    import vmunet.train
    for workflow in (vmunet.train.train, vmunet.predict.predict_paths, vmunet.evaluate.evaluate_cases):
        assert hasattr(workflow, "__wrapped__"), f"{workflow.__name__} does not free the scan buffers"


@pytest.mark.parametrize("per_block", [1, 2])
def test_batch_blocks_give_the_whole_batch_result(monkeypatch, per_block):
    """CPU batch blocks (one element, or two with an uneven last block) change nothing but speed."""
    import vmunet.ops.scan_chunked as chunked

    x = make_inputs(3, 8, 2, 50, with_bias=True, seed=7)
    wanted = NAMES[:6] + ("delta_bias",)
    weight = (torch.randn(3, 8, 50, dtype=torch.float64), torch.randn(3, 8, 16, dtype=torch.float64))
    expected = grads_of(selective_scan_ref, x, wanted, weight, with_last=True)
    nc = -(-50 // balanced_chunk_length(50))
    monkeypatch.setattr(chunked, "STEP_ELEMENTS", per_block * 8 * 16 * nc)
    assert chunked._batch_block(x["u"], 8 * 16 * nc) == per_block
    got = grads_of(selective_scan_torch, x, wanted, weight, with_last=True)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_gpu_batch_blocks_keep_each_scratch_buffer_within_the_budget():
    """On GPUs a block holds as many batch elements as keep a (T, n, D, N, nc) buffer within GPU_BUFFER_BYTES:
    at the paper model's stages and batch 32 that is 5, 10, 21 and 32 (not the whole batch, ~6 GB per buffer at
    stage 1); the CPU's rule is unchanged."""
    from vmunet.ops.scan_chunked import GPU_BUFFER_BYTES, batch_block

    blocks = []
    for L, D in ((4096, 768), (1024, 1536), (256, 3072), (64, 6144)):  # stages 1-4 at 256x256, N 16
        T = balanced_chunk_length(L)
        per_step = D * 16 * -(-L // T)
        block = batch_block(32, per_step, T, "cuda", 4)
        buffer = per_step * T * 4
        assert block * buffer <= GPU_BUFFER_BYTES and (block == 32 or (block + 1) * buffer > GPU_BUFFER_BYTES)
        blocks.append(block)
    assert blocks == [5, 10, 21, 32]
    assert batch_block(3, 10 ** 12, 64, "cuda", 4) == 1  # a buffer over budget for one element: still one
    assert batch_block(32, 786432, 64, "cpu", 4) == 1 and batch_block(32, 1 << 16, 8, "cpu", 4) == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stage1_batch32_training_scan_stays_within_a_few_buffers():
    """The paper model's stage-1 scan, batch 32, forward + backward on CUDA: the scan's own memory stays under
    8 GiB (its inputs, outputs and gradients ~5 GB, scratch ~2 GiB); whole-batch scratch was ~6.4 GB per buffer,
    two of them at once in the backward alone."""
    b, D, G, L, N = 32, 768, 4, 4096, 16
    x = {k: v.detach().float().cuda().requires_grad_() for k, v in make_inputs(1, D, G, 1, N=N).items()}
    x["u"] = torch.randn(b, D, L, device="cuda", requires_grad=True)
    x["delta"] = torch.randn(b, D, L, device="cuda", requires_grad=True)
    x["B"] = torch.randn(b, G, N, L, device="cuda", requires_grad=True)
    x["C"] = torch.randn(b, G, N, L, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    selective_scan_torch(**x, delta_softplus=True).sum().backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 8 * 2 ** 30
