"""The "triton" backend against the float64 sequential reference: outputs, last state and the gradient of every
input, run on the CPU in Triton's interpreter (TRITON_INTERPRET=1); its kernels compiled for NVIDIA GPUs without
one; the dispatcher's rules (opt-in, clear errors); and, marked gpu, the same checks at real sizes on CUDA.

The interpreter flag is read when triton.jit decorates a kernel, and scan_triton loads one copy of the kernels per
mode, choosing by TRITON_INTERPRET at each call: so setting it per test (monkeypatch) is enough and leaves every
other test file as it was.
"""

import pytest
import torch

import vmunet.ops as ops
from vmunet.ops import scan_triton, selective_scan, selective_scan_ref
from vmunet.ops.scan_triton import selective_scan_triton

pytestmark = pytest.mark.skipif(not scan_triton.is_available(),
                                reason="triton is not installed (pip install triton; Linux only)")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture
def interpreter(monkeypatch):
    import triton

    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 7):
        pytest.skip(f"triton {triton.__version__}'s interpreter cannot run loops with tensor bounds under numpy 2 "
                    "(3.7 and later can)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_inputs(batch, dim, groups, length, N=16, with_z=True, with_bias=True, with_D=True, seed=0,
                device="cpu"):
    """float64 leaves, spread as in test_scan_numba.py (A in -[0.1, 2.1])."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    x = dict(u=rand(batch, dim, length), delta=rand(batch, dim, length, scale=0.5),
             A=-(torch.rand(dim, N, generator=g, dtype=torch.float64) * 2 + 0.1),
             B=rand(batch, groups, N, length), C=rand(batch, groups, N, length))
    if with_D:
        x["D"] = rand(dim)
    if with_z:
        x["z"] = rand(batch, dim, length)
    if with_bias:
        x["delta_bias"] = rand(dim, scale=0.5)
    return {k: v.to(device).requires_grad_() for k, v in x.items()}


def cast(x, dtype):
    return {k: v.detach().to(dtype).requires_grad_() for k, v in x.items()}


def assert_relative(got, expected, tol, what):
    """max |got - expected| <= tol * max |expected| (float32 against float64)."""
    scale = expected.abs().max().item()
    err = (got.double() - expected).abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.2e} vs max |value| {scale:.2e}"


def check_against_reference(x, tol=1e-5, softplus=True, chunk=16, run=None):
    """Output, last state and the gradients of every input of a weighted sum of both, float32 vs float64."""
    run = run or (lambda **kw: selective_scan_triton(**kw, chunk=chunk))
    out_ref, last_ref = selective_scan_ref(**x, delta_softplus=softplus, return_last_state=True)
    x32 = cast(x, torch.float32)
    out, last = run(**x32, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == torch.float32 and out.shape == out_ref.shape and last.shape == last_ref.shape
    assert_relative(out, out_ref, tol, "output")
    assert_relative(last, last_ref, tol, "last state")

    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out_ref.shape, generator=g, dtype=torch.float64).to(out_ref.device)
    w_last = torch.randn(last_ref.shape, generator=g, dtype=torch.float64).to(out_ref.device)
    names = [k for k in NAMES if k in x]
    grads_ref = torch.autograd.grad((out_ref * w_out).sum() + (last_ref * w_last).sum(), [x[k] for k in names])
    grads = torch.autograd.grad((out.double() * w_out).sum() + (last.double() * w_last).sum(),
                                [x32[k] for k in names])
    for name, got, expected in zip(names, grads, grads_ref):
        assert got.shape == expected.shape and got.dtype == torch.float32, name
        assert_relative(got, expected, tol, f"grad of {name}")


@pytest.mark.parametrize("batch,dim,groups,length,N,chunk", [
    (2, 8, 2, 37, 16, 16),   # L not a multiple of the chunk: 2 full chunks and a remainder; batch 2
    (1, 8, 1, 37, 16, 16),   # one group: a block of 8 channels
    (1, 12, 2, 21, 3, 8),    # 6 channels per group -> blocks of 2, three partial sums per group; N padded to 4
    (1, 4, 4, 1, 16, 16),    # L = 1, one channel per group
    (1, 4, 1, 70, 8, 64),    # the default chunk: one full chunk and a remainder
])
def test_outputs_last_state_and_all_gradients_match_float64_reference(interpreter, batch, dim, groups, length, N,
                                                                      chunk):
    check_against_reference(make_inputs(batch, dim, groups, length, N=N, seed=length + N), chunk=chunk)


@pytest.mark.parametrize("with_z,with_bias,with_D,softplus", [
    (False, False, False, False), (False, True, False, True), (True, False, True, False)])
def test_every_optional_input(interpreter, with_z, with_bias, with_D, softplus):
    x = make_inputs(1, 4, 2, 20, with_z=with_z, with_bias=with_bias, with_D=with_D)
    if not softplus:  # delta is the step itself: keep it positive, as a model's would be
        x["delta"] = x["delta"].detach().abs().requires_grad_()
    check_against_reference(x, softplus=softplus, chunk=8)


def test_through_the_dispatcher(interpreter):
    check_against_reference(make_inputs(1, 4, 2, 9), run=lambda **kw: selective_scan(**kw, backend="triton"))


def test_gradient_through_the_last_state_only(interpreter):
    x = make_inputs(1, 4, 1, 25, with_z=False)
    x32 = cast(x, torch.float32)
    _, last_ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    _, last = selective_scan_triton(**x32, delta_softplus=True, return_last_state=True, chunk=8)
    names = ["u", "delta", "A", "B", "delta_bias"]  # C and D do not reach the state
    for name, got, expected in zip(names, torch.autograd.grad(last.sum(), [x32[k] for k in names]),
                                   torch.autograd.grad(last_ref.sum(), [x[k] for k in names])):
        assert_relative(got, expected, 1e-5, name)


def test_non_contiguous_inputs_and_their_gradients(interpreter):
    x = make_inputs(2, 4, 2, 19)
    out_ref = selective_scan_ref(**x, delta_softplus=True)
    # the same float32 values behind transposed storage
    t = {k: v.detach().float().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_() if v.dim() > 1
         else v.detach().float().requires_grad_() for k, v in x.items()}
    assert not t["u"].is_contiguous() and not t["B"].is_contiguous() and not t["A"].is_contiguous()
    out = selective_scan_triton(**t, delta_softplus=True, chunk=8)
    assert_relative(out, out_ref, 1e-5, "output")
    names = list(x)
    for name, got, expected in zip(names, torch.autograd.grad(out.sum(), [t[k] for k in names]),
                                   torch.autograd.grad(out_ref.sum(), [x[k] for k in names])):
        assert_relative(got, expected, 1e-5, f"grad of {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_computed_in_float32(interpreter, dtype):
    """Read in their own dtype, computed in float32, returned in u's dtype: the torch backend (which casts up
    first) gives the same to within the rounding of the output, and the gradients come back in each input's dtype."""
    x = cast(make_inputs(1, 4, 2, 24), dtype)
    out = selective_scan_triton(**x, delta_softplus=True, chunk=8)
    x_torch = cast(x, dtype)
    expected = selective_scan(**x_torch, delta_softplus=True, backend="torch")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=1e-2)
    names = list(x)
    grads = torch.autograd.grad(out.float().sum(), [x[k] for k in names])
    grads_torch = torch.autograd.grad(expected.float().sum(), [x_torch[k] for k in names])
    for name, got, want in zip(names, grads, grads_torch):
        assert got.dtype == dtype, name
        assert_relative(got.float(), want.double(), 2e-2, f"grad of {name}")


def test_autograd_keeps_no_per_state_tensor(interpreter):
    """Saved for backward: the inputs and the chunk start states (b, D, L / chunk, N), never (b, D, L, N)."""
    b, D, G, L, N, chunk = 1, 4, 2, 32, 16, 8
    x = cast(make_inputs(b, D, G, L, N=N, with_z=False), torch.float32)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_triton(**x, delta_softplus=True, chunk=chunk).sum().backward()
    inputs = 2 * b * D * L + 2 * b * G * N * L + D * N + 2 * D  # u, delta, B, C, A, D, delta_bias
    assert sizes and max(sizes) < b * D * L * N
    assert sum(sizes) <= inputs + b * D * N * L // chunk


def test_auto_never_picks_triton_and_cuda_lists_it(monkeypatch):
    from vmunet.ops import scan_mamba_ssm

    monkeypatch.setattr(scan_mamba_ssm, "load_kernel", lambda: (None, "ImportError: No module named 'mamba_ssm'"))
    assert "triton" in ops.available_backends("cuda")
    assert "triton" not in ops.available_backends("cpu")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert ops.resolve_backend("auto", "cuda", dtype) == "torch"
    assert ops.resolve_backend("triton", "cuda") == "triton"


def test_cpu_tensors_without_the_interpreter_are_refused_with_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = cast(make_inputs(1, 4, 1, 5), torch.float32)
    with pytest.raises(ValueError, match=r"runs on CUDA GPUs, not on cpu tensors \(set TRITON_INTERPRET=1.*'torch'"):
        selective_scan(**x, backend="triton")


def test_float64_and_bad_groups_are_refused(interpreter):
    x = {k: v.detach() for k, v in make_inputs(1, 4, 1, 5).items()}
    with pytest.raises(ValueError, match="computes in float32.*'torch' or 'ref'"):
        selective_scan(**x, backend="triton")
    x = cast(make_inputs(1, 6, 4, 5), torch.float32)
    with pytest.raises(ValueError, match="groups dividing dim 6"):
        selective_scan(**x, backend="triton")


def test_missing_triton_is_an_import_error_naming_the_install(monkeypatch):
    monkeypatch.setattr(scan_triton, "_import_triton", lambda: "ModuleNotFoundError: No module named 'triton'")
    x = cast(make_inputs(1, 4, 1, 5), torch.float32)
    with pytest.raises(ImportError, match=r"needs triton: pip install 'vmunet\[triton\]' \(or pip install triton; "
                                          r"Linux only"):
        selective_scan(**x, backend="triton")
    assert "triton" not in ops.available_backends("cuda")


def test_cli_triton_on_cpu_is_one_line(monkeypatch, capsys):
    from vmunet import cli

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code = cli.main(["forward", "--model", "vmunet-tiny", "--image-size", "32", "--scan-backend", "triton"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "vmunet forward: error:" in err and "runs on CUDA GPUs" in err


def test_channel_block_divides_the_groups_channels():
    assert scan_triton.channel_block(192) == 32  # the paper model's stage 1: 768 channels in 4 groups
    assert [scan_triton.channel_block(h) for h in (1, 2, 6, 12, 48, 1536)] == [1, 2, 2, 4, 16, 32]
    for h in range(1, 200):
        block = scan_triton.channel_block(h)
        assert h % block == 0 and block & (block - 1) == 0 and block <= scan_triton.MAX_BLOCK_D


def test_kernels_compile_for_nvidia_gpus_without_one(monkeypatch):
    """The compiled path (not the interpreter) down to a cubin, for A100 (sm_80) or H100/H200 (sm_90): catches
    what only the compiler rejects (globals, types, loop forms). Needs no GPU, only triton's own ptxas."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    if type(tl.standard.sum).__name__ != "JITFunction":
        pytest.skip("triton was imported under TRITON_INTERPRET=1: its own functions are interpreted, so nothing "
                    "compiles in this process")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default there
    kernels = scan_triton.load_kernels(False)
    assert type(kernels.scan_forward_kernel).__name__ == "JITFunction"
    assert type(scan_triton.load_kernels(True).scan_forward_kernel).__name__ == "InterpretedFunction"
    sizes = {name: "i32" for name in ("D", "L", "G", "N")}
    flags = dict(BLOCK_D=32, N_P2=16, CHUNK=64, SOFTPLUS=True, HAS_SKIP=True, HAS_BIAS=True, HAS_Z=True)
    half = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr")
    forward = ["u_ptr", "delta_ptr", "A_ptr", "B_ptr", "C_ptr", "skip_ptr", "bias_ptr", "z_ptr", "out_ptr",
               "last_ptr", "starts_ptr"]
    backward = ["u_ptr", "delta_ptr", "A_ptr", "B_ptr", "C_ptr", "skip_ptr", "bias_ptr", "z_ptr", "starts_ptr",
                "gout_ptr", "glast_ptr", "gu_ptr", "gdelta_ptr", "gz_ptr", "gA_ptr", "gskip_ptr", "gbias_ptr",
                "gB_ptr", "gC_ptr", "scratch_ptr"]
    bare = dict(BLOCK_D=2, N_P2=4, CHUNK=16, SOFTPLUS=False, HAS_SKIP=False, HAS_BIAS=False, HAS_Z=False)
    cases = [(kernels.scan_forward_kernel, forward, "*bf16", {**flags, "KEEP_STARTS": True}, 90),
             (kernels.scan_forward_kernel, forward, "*fp32", {**bare, "KEEP_STARTS": False}, 80),
             (kernels.scan_backward_kernel, backward, "*fp16", flags, 90),
             (kernels.scan_backward_kernel, backward, "*fp32", bare, 80)]
    for fn, pointers, half_type, constants, arch in cases:
        signature = {name: half_type if name in half else "*fp32" for name in pointers}
        signature.update(sizes)
        signature.update({name: "constexpr" for name in constants})
        compiled = triton_compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", arch, 32))
        assert compiled.asm["cubin"], fn
        assert ".local" not in compiled.asm["ptx"], f"{fn}: registers spill to local memory"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("length,dim", [(4096, 768), (64, 6144)])  # the paper model's stages 1 and 4
def test_cuda_real_sizes_match_float64_reference(monkeypatch, backend, length, dim):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the compiled kernels
    x = make_inputs(2, dim, 4, length, seed=3, device="cuda")
    check_against_reference(x, tol=1e-4, run=lambda **kw: selective_scan(**kw, backend=backend))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_triton_matches_torch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = cast(make_inputs(4, 768, 4, 4096, seed=4, device="cuda"), torch.bfloat16)
    out = selective_scan(**x, delta_softplus=True, backend="triton")
    expected = selective_scan(**x, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    assert_relative(out.float(), expected.double(), 2e-2, "output")
