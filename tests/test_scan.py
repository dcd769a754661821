"""Every selective-scan backend against the sequential reference, outputs and gradients, in float64."""

import pytest
import torch

from vmunet.ops import available_backends, selective_scan, selective_scan_ref, use_backend
from vmunet.ops.scan_ref import selective_scan_ref as direct_ref

FAST_BACKENDS = [b for b in available_backends("cpu") if b != "ref"]
FLOAT64_BACKENDS = [b for b in FAST_BACKENDS if b != "numba"]  # numba computes in float32 (test_scan_numba.py)


def make_inputs(batch, dim, groups, length, N=16, with_z=False, with_bias=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    inputs = dict(
        u=rand(batch, dim, length),
        delta=rand(batch, dim, length, scale=0.5),
        A=(-torch.rand(dim, N, generator=g, dtype=dtype) * 2 - 0.1).requires_grad_(),
        B=rand(batch, groups, N, length),
        C=rand(batch, groups, N, length),
        D=rand(dim),
    )
    if with_z:
        inputs["z"] = rand(batch, dim, length)
    if with_bias:
        inputs["delta_bias"] = rand(dim, scale=0.5)
    return inputs


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """PAPER.md's formula written per scalar, for tiny sizes: pins down the reference itself."""
    batch, dim, length = u.shape
    groups, N = B.shape[1], A.shape[1]
    out = torch.zeros(batch, dim, length, dtype=u.dtype)
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // groups)
            h = [0.0] * N
            for t in range(length):
                dt = delta[b, d, t] + (delta_bias[d] if delta_bias is not None else 0)
                if delta_softplus:
                    dt = torch.nn.functional.softplus(dt)
                y = 0.0
                for n in range(N):
                    h[n] = torch.exp(dt * A[d, n]) * h[n] + dt * B[b, g, n, t] * u[b, d, t]
                    y = y + C[b, g, n, t] * h[n]
                if D is not None:
                    y = y + D[d] * u[b, d, t]
                if z is not None:
                    y = y * z[b, d, t] * torch.sigmoid(z[b, d, t])
                out[b, d, t] = y
    return out


@pytest.mark.parametrize("with_z,with_bias,groups", [(False, False, 1), (True, True, 2)])
def test_reference_matches_the_formula(with_z, with_bias, groups):
    x = make_inputs(1, 4, groups, 5, N=3, with_z=with_z, with_bias=with_bias)
    with torch.no_grad():
        expected = naive_scan(**x, delta_softplus=True)
        got = direct_ref(**x, delta_softplus=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("length", [1, 7, 33, 1024])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("with_z,with_bias", [(False, False), (True, True), (False, True)])
def test_backend_matches_reference_in_float64(backend, length, groups, with_z, with_bias):
    x = make_inputs(2, 8, groups, length, with_z=with_z, with_bias=with_bias, seed=length + groups)
    out_ref, last_ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="ref")
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(last, last_ref, rtol=1e-9, atol=1e-9)

    names = [k for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias") if k in x]
    weight = torch.randn_like(out_ref)
    grads_ref = torch.autograd.grad((out_ref * weight).sum(), [x[k] for k in names])
    grads = torch.autograd.grad((out * weight).sum(), [x[k] for k in names])
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-8, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_float32_close_to_float64_reference(backend):
    x = make_inputs(1, 16, 4, 300, with_bias=True)
    expected = selective_scan_ref(**x, delta_softplus=True)
    x32 = {k: v.detach().float() for k, v in x.items()}
    got = selective_scan(**x32, delta_softplus=True, backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_extreme_steps_stay_finite(backend):
    """Huge steps (delta * |A| in the thousands) and long sequences must not overflow to inf/NaN."""
    x = make_inputs(1, 4, 1, 2000, with_bias=False)
    x = {k: v.detach() for k, v in x.items()}
    x["delta"] = x["delta"].abs() * 1000
    expected = selective_scan_ref(**x)
    if backend == "numba":  # float32: within 1e-5 of the largest output (values reach ~1e3 here)
        out = selective_scan(**{k: v.float() for k, v in x.items()}, backend=backend)
        assert torch.isfinite(out).all()
        assert (out.double() - expected).abs().max() <= 1e-5 * expected.abs().max()
        return
    out = selective_scan(**x, backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_unknown_backend_names_the_choices():
    x = make_inputs(1, 4, 1, 3)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fast'.*choose one of auto, ref, torch"):
        selective_scan(**x, backend="fast")
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        with use_backend("cuda"):
            pass


def test_missing_mamba_ssm_says_how_to_install(monkeypatch):
    from vmunet.ops import scan_mamba_ssm

    monkeypatch.setattr(scan_mamba_ssm, "load_kernel", lambda: (None, "ImportError: No module named 'mamba_ssm'"))
    x = make_inputs(1, 4, 1, 3)
    with pytest.raises(ImportError, match="pip install"):
        selective_scan(**x, backend="mamba_ssm")
    assert "mamba_ssm" not in available_backends("cuda")


def test_auto_uses_context_backend_and_logs_its_choice_once(monkeypatch, caplog):
    import vmunet.ops as ops

    calls = []
    monkeypatch.setitem(ops.BACKENDS, "ref", lambda *a, **k: calls.append("ref") or direct_ref(*a, **k))
    x = {k: v.detach() for k, v in make_inputs(1, 4, 1, 3).items()}
    with use_backend("ref"):
        selective_scan(**x)
    assert calls == ["ref"]
    monkeypatch.setattr(ops, "_logged_auto_choices", set())
    with caplog.at_level("INFO", logger="vmunet.ops"):
        selective_scan(**x)  # float64: stays on "torch" whatever else is installed
        selective_scan(**x)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("selective scan backend 'auto' chose 'torch' for cpu tensors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", available_backends("cuda")[1:])
def test_backend_on_cuda_matches_reference(backend):
    x = make_inputs(2, 16, 4, 1024, with_z=True, with_bias=True)
    out_ref = selective_scan_ref(**x, delta_softplus=True)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    grads_ref = torch.autograd.grad(out_ref.sum(), [x[k] for k in names])
    xc = {k: v.detach().float().cuda().requires_grad_() for k, v in x.items()}
    out = selective_scan(**xc, delta_softplus=True, backend=backend)
    torch.testing.assert_close(out.double().cpu(), out_ref, rtol=2e-3, atol=2e-3)
    grads = torch.autograd.grad(out.sum(), [xc[k] for k in names])
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g.double().cpu(), g_ref, rtol=5e-3, atol=5e-3, msg=lambda m: f"{name}: {m}")
