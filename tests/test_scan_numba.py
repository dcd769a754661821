"""The "numba" backend (fused CPU kernels, float32) against the float64 sequential reference: outputs and the
gradients of every input, the dispatcher's choices, threads, caching and autograd memory."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from builders import HANG_LIMIT_S, UTF8_TEXT

import vmunet.ops as ops
from vmunet.ops import scan_numba, selective_scan, selective_scan_ref

pytestmark = pytest.mark.skipif(not scan_numba.is_available(), reason="numba is not installed (pip install numba)")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, groups, length, N=16, with_z=False, with_bias=True, with_D=True, bias_shift=0.0,
                A_range=(0.1, 2.1), seed=0):
    """float64 leaves; A spread over -A_range."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).requires_grad_()

    low, high = A_range
    x = dict(
        u=rand(batch, dim, length),
        delta=rand(batch, dim, length, scale=0.5),
        A=(-(torch.rand(dim, N, generator=g, dtype=torch.float64) * (high - low) + low)).requires_grad_(),
        B=rand(batch, groups, N, length),
        C=rand(batch, groups, N, length),
    )
    if with_D:
        x["D"] = rand(dim)
    if with_z:
        x["z"] = rand(batch, dim, length)
    if with_bias:
        x["delta_bias"] = rand(dim, scale=0.5, shift=bias_shift)
    return x


def as_float32(x):
    return {k: v.detach().float().requires_grad_() for k, v in x.items()}


def assert_relative(got, expected, tol, what):
    """max |got - expected| <= tol * max |expected| (float32 against float64)."""
    scale = expected.abs().max().item()
    err = (got.double() - expected).abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.2e} vs max |value| {scale:.2e}"


def check_against_reference(x, tol=1e-5, softplus=True, last_state=True):
    out_ref, last_ref = selective_scan_ref(**x, delta_softplus=softplus, return_last_state=True)
    x32 = as_float32(x)
    out, last = selective_scan(**x32, delta_softplus=softplus, return_last_state=True, backend="numba")
    assert out.dtype == torch.float32 and out.shape == out_ref.shape and last.shape == last_ref.shape
    assert_relative(out, out_ref, tol, "output")
    assert_relative(last, last_ref, tol, "last state")

    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out_ref.shape, generator=g, dtype=torch.float64)
    w_last = torch.randn(last_ref.shape, generator=g, dtype=torch.float64) if last_state else None
    names = [k for k in NAMES if k in x]

    def loss(o, s):
        total = (o.double() * w_out).sum()
        return total + (s.double() * w_last).sum() if last_state else total

    grads_ref = torch.autograd.grad(loss(out_ref, last_ref), [x[k] for k in names])
    grads = torch.autograd.grad(loss(out, last), [x32[k] for k in names])
    for name, got, expected in zip(names, grads, grads_ref):
        assert got.shape == expected.shape, name
        assert_relative(got, expected, tol, f"grad of {name}")


@pytest.mark.parametrize("batch,dim,groups,length,N", [
    (2, 8, 1, 1, 16),      # L = 1
    (3, 8, 2, 37, 16),     # odd L, shorter than one chunk
    (2, 8, 4, 131, 8),     # several chunks plus a remainder
    (1, 4, 4, 64, 1),      # N = 1, exactly one chunk
    (2, 12, 2, 200, 16),   # three channels per group block
])
def test_outputs_and_all_gradients_match_float64_reference(batch, dim, groups, length, N):
    check_against_reference(make_inputs(batch, dim, groups, length, N=N, seed=length + N))


@pytest.mark.parametrize("with_z,with_bias,with_D,softplus", [
    (True, True, True, True), (False, False, False, False), (False, True, False, True), (True, False, True, False)])
def test_every_optional_input(with_z, with_bias, with_D, softplus):
    x = make_inputs(2, 8, 2, 70, with_z=with_z, with_bias=with_bias, with_D=with_D)
    if not softplus:  # delta is the step itself: keep it positive, as a model's would be
        x["delta"] = x["delta"].detach().abs().requires_grad_()
    check_against_reference(x, softplus=softplus)


def test_stress_input_large_steps_and_extreme_decays_within_1e5_relative():
    """bias + 3 (steps ~3), A from -1e-3 (memory over the whole sequence) to -60 (decay underflows to 0)."""
    x = make_inputs(2, 16, 4, 300, bias_shift=3.0, A_range=(1e-3, 60.0), with_z=True, seed=7)
    check_against_reference(x, tol=1e-5)


def test_gradient_through_the_last_state_only():
    x = make_inputs(1, 4, 1, 90)
    x32 = as_float32(x)
    _, last_ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    _, last = selective_scan(**x32, delta_softplus=True, return_last_state=True, backend="numba")
    for name in ("u", "delta", "A", "B", "delta_bias"):
        (g_ref,) = torch.autograd.grad(last_ref.sum(), [x[name]], retain_graph=True)
        (g,) = torch.autograd.grad(last.sum(), [x32[name]], retain_graph=True)
        assert_relative(g, g_ref, 1e-5, name)


def test_non_contiguous_inputs():
    x = {k: v.detach() for k, v in make_inputs(2, 8, 2, 50).items()}
    expected = selective_scan_ref(**x, delta_softplus=True)
    # the same values behind transposed storage
    t = {k: v.float().transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() > 1 else v.float()
         for k, v in x.items()}
    assert not t["u"].is_contiguous() and not t["B"].is_contiguous()
    got = selective_scan(**t, delta_softplus=True, backend="numba")
    assert_relative(got, expected, 1e-5, "output")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_computed_in_float32(dtype):
    x = {k: v.detach().to(dtype) for k, v in make_inputs(1, 8, 2, 40).items()}
    got = selective_scan(**x, delta_softplus=True, backend="numba")
    expected = selective_scan(**x, delta_softplus=True, backend="torch")
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-2, atol=1e-2)


def test_float64_is_refused_and_auto_keeps_it_on_torch():
    x = {k: v.detach() for k, v in make_inputs(1, 4, 1, 5).items()}
    with pytest.raises(ValueError, match="computes in float32.*'torch' or 'ref'"):
        selective_scan(**x, backend="numba")
    assert ops.resolve_backend("auto", "cpu", torch.float64) == "torch"
    assert ops.resolve_backend("auto", "cpu", torch.float32) == "numba"


def test_auto_picks_numba_on_cpu_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(ops, "_logged_auto_choices", set())
    calls = []
    monkeypatch.setitem(ops.BACKENDS, "numba", lambda *a, **k: calls.append("numba") or selective_scan_ref(*a, **k))
    x = {k: v.detach().float() for k, v in make_inputs(1, 4, 1, 3).items()}
    with caplog.at_level("INFO", logger="vmunet.ops"):
        selective_scan(**x)
        selective_scan(**x)
    assert calls == ["numba", "numba"]
    assert [r.getMessage() for r in caplog.records] == ["selective scan backend 'auto' chose 'numba' for cpu tensors"]


def test_without_numba_auto_falls_back_with_a_hint_and_explicit_request_says_how_to_install(monkeypatch, caplog):
    monkeypatch.setattr(scan_numba, "load_kernels", lambda: (None, "ModuleNotFoundError: No module named 'numba'"))
    monkeypatch.setattr(ops, "_logged_auto_choices", set())
    x = {k: v.detach().float() for k, v in make_inputs(1, 4, 1, 3).items()}
    with caplog.at_level("INFO", logger="vmunet.ops"):
        selective_scan(**x)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "chose 'torch'" in message and "pip install 'vmunet[fast]'" in message
    assert "numba" not in ops.available_backends("cpu")
    with pytest.raises(ImportError, match=r"needs numba: pip install 'vmunet\[fast\]'"):
        selective_scan(**x, backend="numba")


def test_kernels_run_on_torchs_thread_count_and_leave_it_unchanged(monkeypatch):
    import numba

    seen = []
    kernels = scan_numba.load_kernels()[0]
    original = kernels.scan_forward

    def spy(*args):
        seen.append(numba.get_num_threads())
        return original(*args)

    monkeypatch.setattr(kernels, "scan_forward", spy)
    x = {k: v.detach().float() for k, v in make_inputs(1, 8, 2, 20).items()}
    before = torch.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            torch.set_num_threads(threads)
            selective_scan(**x, backend="numba")
            assert seen[-1] == threads
            assert torch.get_num_threads() == threads  # starting numba's pool must not change torch's setting
    finally:
        torch.set_num_threads(before)


def test_concurrent_calls_from_python_threads_are_correct():
    x = {k: v.detach() for k, v in make_inputs(2, 8, 2, 100).items()}
    expected = selective_scan_ref(**x, delta_softplus=True)
    x32 = {k: v.float() for k, v in x.items()}
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(selective_scan(**x32, delta_softplus=True, backend="numba"))
        except Exception as error:  # reported below: a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 15
    for got in results:
        assert_relative(got, expected, 1e-5, "output")


def test_autograd_keeps_no_per_state_tensor():
    """Saved for backward: the inputs and the chunk start states (b, D, L/64, N), never (b, D, L, N)."""
    b, D, G, L, N = 1, 32, 2, 640, 16
    x = {k: v.detach().float().requires_grad_() for k, v in make_inputs(b, D, G, L, N=N).items()}
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(**x, delta_softplus=True, backend="numba").sum().backward()
    inputs = 2 * b * D * L + 2 * b * G * N * L + D * N + 2 * D  # u, delta, B, C, A, D, delta_bias
    assert sizes and max(sizes) <= b * D * L * N / 8
    assert sum(sizes) <= inputs + b * D * L * N // 64


def _run_python(code, env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, **UTF8_TEXT, timeout=HANG_LIMIT_S,
                          env={**os.environ, **env})


SCAN_ONCE = ("import torch; from vmunet.ops import selective_scan; x = torch.randn(1, 4, 9); "
             "B = torch.randn(1, 1, 16, 9); "
             "print(selective_scan(x, x, -torch.ones(4, 16), B, B, backend='numba').shape)")


@pytest.mark.slow
def test_compiled_kernels_are_cached_across_processes(tmp_path):
    done = _run_python(SCAN_ONCE, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.rglob("*.nbi")), "no numba cache index written"


@pytest.mark.slow
def test_an_unwritable_cache_location_does_not_break_the_backend(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # the only cache locator allowed is NUMBA_CACHE_DIR, and it lies under a file: no cache can be written
    env = {"NUMBA_CACHE_DIR": str(blocker / "cache"), "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator"}
    done = _run_python(SCAN_ONCE, env)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([1, 4, 9])" in done.stdout
    assert not Path(blocker / "cache").exists()


def test_cli_scan_backend_option_reaches_the_model(monkeypatch, capsys):
    from vmunet import cli

    used = []
    kernels = scan_numba.load_kernels()[0]  # SS2D's fused kernel: the model's numba path
    original = kernels.ss2d_forward
    monkeypatch.setattr(kernels, "ss2d_forward", lambda *a: used.append("numba") or original(*a))
    args = ["forward", "--model", "vmunet-tiny", "--image-size", "64", "--num-classes", "2"]
    assert cli.main([*args, "--scan-backend", "numba"]) == 0
    assert used and set(used) == {"numba"}
    used.clear()
    assert cli.main([*args, "--scan-backend", "torch"]) == 0
    assert not used


def test_cli_numba_requested_but_missing_is_one_line_with_the_install_command(monkeypatch, capsys):
    from vmunet import cli

    monkeypatch.setattr(scan_numba, "load_kernels", lambda: (None, "ModuleNotFoundError: No module named 'numba'"))
    code = cli.main(["forward", "--model", "vmunet-tiny", "--image-size", "64", "--scan-backend", "numba"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "vmunet forward: error:" in err and "pip install 'vmunet[fast]'" in err
