"""SS2D's fused four-direction scan on the "numba" backend (ops/ss2d_numba.py), and on the "triton" backend
under Triton's interpreter (ops/ss2d_triton.py), against the float64 reference: the plain path (four permuted
copies, their projections, the sequential reference scan, the merge), outputs and the gradients of the input and
of every SS2D scan parameter; the model's logits against the "torch" backend."""

import pytest
import torch

from vmunet import create_model
from vmunet.models.ss2d import SS2D
from vmunet.ops import scan_numba, scan_triton, use_backend
from vmunet.ops.ss2d_numba import positions
from vmunet.ops.ss2d_scan import ss2d_scan, ss2d_scan_plain

pytestmark = pytest.mark.skipif(not scan_numba.is_available(), reason="numba is not installed (pip install numba)")

PARAMS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")


def scan_parameters(d_model, d_state, seed):
    """An SS2D's scan parameters, float64, spread wider than the initialisation so every term matters."""
    torch.manual_seed(seed)
    m = SS2D(d_model, d_state=d_state)
    with torch.no_grad():
        m.x_proj_weight.normal_(0, 0.3)
        m.dt_projs_weight.normal_(0, 0.5)
        m.dt_projs_bias.normal_(0, 0.5)
        m.A_logs.add_(torch.randn_like(m.A_logs) * 0.3)
        m.Ds.normal_()
    return m.d_inner, {name: getattr(m, name).detach().double().requires_grad_() for name in PARAMS}


def assert_relative(got, expected, tol, what):
    scale = expected.abs().max().item()
    err = (got.double() - expected).abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.2e} vs max |value| {scale:.2e}"


def check_against_reference(batch, d_model, d_state, H, W, backend):
    d, p64 = scan_parameters(d_model, d_state, seed=H * W)
    x = torch.randn(batch, d, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    expected = ss2d_scan_plain(x, *p64.values(), backend="ref")  # (b, d, L)

    x32 = x.detach().float().requires_grad_()
    p32 = {k: v.detach().float().requires_grad_() for k, v in p64.items()}
    got = ss2d_scan(x32, *p32.values(), backend=backend)
    assert got.dtype == torch.float32 and got.shape == (batch, d, H * W)
    assert_relative(got, expected, 1e-5, "output")

    w = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    names = ["x", *PARAMS]
    grads_ref = torch.autograd.grad((expected * w).sum(), [x, *p64.values()])
    grads = torch.autograd.grad((got.double() * w).sum(), [x32, *p32.values()])
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert_relative(g, g_ref, 1e-5, f"grad of {name}")


@pytest.mark.parametrize("batch,d_model,d_state,H,W", [
    (2, 8, 16, 9, 13),   # odd H and W, H != W, batch > 1, L = 117: a chunk and a remainder
    (3, 40, 4, 5, 3),    # dt rank 3, N = 4, L shorter than a chunk
    (1, 8, 16, 16, 9),   # L = 144: three chunks, columns of odd length
    (2, 8, 16, 1, 1),    # L = 1
])
def test_outputs_and_every_gradient_match_float64_reference(batch, d_model, d_state, H, W):
    check_against_reference(batch, d_model, d_state, H, W, "numba")


@pytest.mark.skipif(not scan_triton.is_available(), reason="triton is not installed (pip install triton; Linux only)")
@pytest.mark.parametrize("batch,d_model,d_state,H,W", [
    (2, 8, 16, 11, 7),   # odd H and W, H != W, batch > 1, L = 77: a chunk and a remainder
    (1, 40, 4, 5, 3),    # dt rank 3 (padded to 4), N = 4, 80 channels in blocks of 16
])
def test_triton_under_the_interpreter_matches_float64_reference(monkeypatch, batch, d_model, d_state, H, W):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_against_reference(batch, d_model, d_state, H, W, "triton")


def test_channels_last_input_as_the_model_passes_it():
    """SS2D hands the scan its conv's channels-last output: the kernels read and write that layout directly."""
    d, p64 = scan_parameters(8, 16, seed=5)
    x = torch.randn(2, 7, 9, d, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()  # (b, d, H, W) view
    expected = ss2d_scan_plain(x, *p64.values(), backend="ref")
    x32 = x.detach().float().contiguous(memory_format=torch.channels_last).requires_grad_()
    got = ss2d_scan(x32, *[v.detach().float() for v in p64.values()], backend="numba")
    assert got.transpose(1, 2).is_contiguous()  # (b, L, d) memory: SS2D's LayerNorm reads it without a copy
    assert_relative(got, expected, 1e-5, "output")
    w = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (g_ref,) = torch.autograd.grad((expected * w).sum(), [x])
    (g,) = torch.autograd.grad((got.double() * w).sum(), [x32])
    assert_relative(g, g_ref, 1e-5, "grad of x")


def test_training_after_a_first_call_in_inference_mode():
    """The positions table is cached: one made under inference_mode must not break a later backward."""
    d, p64 = scan_parameters(8, 16, seed=6)
    p32 = [v.detach().float().requires_grad_() for v in p64.values()]
    H, W = 11, 3  # a size no other test uses, so the first call here fills the cache
    with torch.inference_mode():
        ss2d_scan(torch.randn(1, d, H, W), *p32, backend="numba")
    ss2d_scan(torch.randn(1, d, H, W), *p32, backend="numba").sum().backward()
    assert all(p.grad is not None for p in p32)


def test_without_autograd_the_same_output():
    d, p64 = scan_parameters(8, 16, seed=3)
    x = torch.randn(2, d, 7, 5)
    p32 = [v.detach().float() for v in p64.values()]
    with_grad = ss2d_scan(x.requires_grad_(), *p32, backend="numba")
    with torch.no_grad():
        without = ss2d_scan(x, *p32, backend="numba")
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_positions_walk_rows_columns_and_both_reversed():
    grid = torch.arange(12).view(3, 4)  # H = 3, W = 4: the value is the row-major position
    rows, cols, rows_rev, cols_rev = positions(3, 4).tolist()
    assert rows == grid.flatten().tolist()
    assert cols == grid.t().flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert rows_rev == rows[::-1] and cols_rev == cols[::-1]


def test_autograd_keeps_no_per_direction_copy():
    """Saved for backward: x (b, d, L), its projections in step order (b, 4, L, r + 2N), the chunk start states
    (b, 4, d, L/64, N), as large as x for N = 16, the parameters and the table of positions; never a (b, 4, d, L)
    tensor as the plain path's copies."""
    d, p64 = scan_parameters(48, 16, seed=4)  # d = 96, r + 2N = 35
    b, H, W = 1, 16, 16
    L = H * W
    x = torch.randn(b, d, H, W, requires_grad=True)
    p32 = [v.detach().float().requires_grad_() for v in p64.values()]
    saved = {}  # storage address -> bytes: the matmul and the Function keep the same x

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ss2d_scan(x, *p32, backend="numba").sum().backward()
    sizes = sorted(saved.values())
    assert sizes and sizes[-1] < 4 * (b * 4 * d * L), sizes
    floats = 2 * b * d * L + b * 4 * L * 35 + 2 * sum(p.numel() for p in p32)  # parameters: A and exp(A) too
    assert sum(sizes) <= 4 * floats + 8 * 4 * L, (sizes, 4 * floats)


def test_model_calls_the_fused_kernels_on_auto_and_logits_equal_torch_backend(monkeypatch):
    kernels = scan_numba.load_kernels()[0]
    calls = []
    original = kernels.ss2d_forward
    monkeypatch.setattr(kernels, "ss2d_forward", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    model = create_model("vmunet-tiny", num_classes=2).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(), use_backend("numba"):
        fused = model(x)
    assert len(calls) == 8  # one per SS2D layer (vmunet-tiny: 4 encoder + 4 decoder blocks)
    with torch.no_grad(), use_backend("torch"):
        plain = model(x)
    assert_relative(fused, plain.double(), 1e-3, "logits")


def test_graph_capture_runs_the_plain_path():
    """A trace cannot record the numba call: the traced graph must compute, not replay the traced input's output."""
    torch.manual_seed(0)
    m = SS2D(8).eval()
    x_traced, x_new = torch.randn(1, 5, 6, 8), torch.randn(1, 5, 6, 8)
    with torch.no_grad(), use_backend("numba"):
        traced = torch.jit.trace(m, x_traced, check_trace=False)
        expected = m(x_new)
    torch.testing.assert_close(traced(x_new), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not scan_triton.is_available(), reason="triton is not installed (pip install triton; Linux only)")
def test_triton_kernels_compile_for_nvidia_gpus_without_one(monkeypatch):
    """The compiled path (not the interpreter) of the fused SS2D kernels down to a cubin for H100/H200 (sm_90), at
    the paper model's stage-1 sizes (BLOCK_D 32, N 16, dt rank 6 padded to 8): what only the compiler rejects."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    if type(tl.standard.sum).__name__ != "JITFunction":
        pytest.skip("triton was imported under TRITON_INTERPRET=1: nothing compiles in this process")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    kernels = scan_triton.load_kernels(False)
    sizes = {name: "i32" for name in ("D", "L", "N", "R")}
    forward = ["x_ptr", "dtl_ptr", "BC_ptr", "Wdt_ptr", "bias_ptr", "A_ptr", "skip_ptr", "pos_ptr", "y_ptr",
               "starts_ptr"]
    backward = ["x_ptr", "dtl_ptr", "BC_ptr", "Wdt_ptr", "bias_ptr", "A_ptr", "skip_ptr", "pos_ptr", "starts_ptr",
                "gy_ptr", "gx_ptr", "gdtl_ptr", "gBC_ptr", "gWdt_ptr", "gbias_ptr", "gA_ptr", "gskip_ptr",
                "scratch_ptr"]
    tiles = dict(BLOCK_D=32, N_P2=16, R_P2=8, CHUNK=64)
    for fn, pointers, constants in ((kernels.ss2d_forward_kernel, forward, {**tiles, "KEEP_STARTS": True}),
                                    (kernels.ss2d_backward_kernel, backward, tiles)):
        signature = {name: "*i64" if name == "pos_ptr" else "*fp32" for name in pointers}
        signature.update(sizes)
        signature.update({name: "constexpr" for name in constants})
        compiled = triton_compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn
