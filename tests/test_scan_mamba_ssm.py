"""The mamba_ssm backend against stand-ins of the mamba-ssm package on sys.path (no GPU, no mamba-ssm needed).

Today's mamba-ssm (since its PR #977) installs without its compiled kernel: ``selective_scan_interface`` imports,
guards ``import selective_scan_cuda`` and raises on the first call. "Available" must mean the kernel is there.
"""

import sys

import pytest
import torch

import vmunet.ops as ops
from vmunet import create_model
from vmunet.ops import available_backends, resolve_backend, scan_mamba_ssm, selective_scan

INTERFACE = '''
try:
    import selective_scan_cuda
except ImportError:
    selective_scan_cuda = None


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    if selective_scan_cuda is None:
        raise RuntimeError("selective_scan_cuda is not installed. Reinstall with "
                           "MAMBA_KEEP_CUDA_BUILD=TRUE pip install mamba-ssm --no-build-isolation")
    return selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
'''
KERNEL = "def fwd(*args):\n    return 'kernel ran'\n"
STAND_IN_MODULES = ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface", "selective_scan_cuda")


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A function that writes the stand-in package (with or without the compiled kernel) and makes it the one
    that imports; sys.modules, sys.path and the backend's cached probe are restored afterwards."""
    for name in STAND_IN_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(ops, "_logged_auto_choices", set())

    def install(with_kernel: bool) -> None:
        package = tmp_path / "mamba_ssm"
        (package / "ops").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "ops" / "__init__.py").write_text("")
        (package / "ops" / "selective_scan_interface.py").write_text(INTERFACE)
        if with_kernel:
            (tmp_path / "selective_scan_cuda.py").write_text(KERNEL)
        else:  # even where a real kernel is installed, this import now fails as on a kernel-less install
            monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)
        monkeypatch.syspath_prepend(str(tmp_path))
        scan_mamba_ssm.load_kernel.cache_clear()

    yield install
    scan_mamba_ssm.load_kernel.cache_clear()
    for name in STAND_IN_MODULES:
        sys.modules.pop(name, None)


def test_package_without_its_compiled_kernel_is_not_available(stand_in):
    stand_in(with_kernel=False)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # today's package: imports fine

    with pytest.raises(RuntimeError, match="selective_scan_cuda is not installed"):  # ... and fails when called
        selective_scan_fn(*[None] * 5)
    assert not scan_mamba_ssm.is_available()
    assert "selective_scan_cuda" in scan_mamba_ssm.unavailable_reason()
    assert "mamba_ssm" not in available_backends("cuda")


def test_auto_takes_the_next_backend_and_its_log_line_says_why(stand_in, caplog):
    stand_in(with_kernel=False)
    with caplog.at_level("INFO", logger="vmunet.ops"):
        assert resolve_backend("auto", "cuda") == "torch"
        assert resolve_backend("auto", "cuda") == "torch"
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("selective scan backend 'auto' chose 'torch' for cuda tensors (not 'mamba_ssm': ")
    assert "compiled kernel selective_scan_cuda does not" in message
    assert "MAMBA_KEEP_CUDA_BUILD=TRUE pip install mamba-ssm --no-build-isolation" in message
    assert "\n" not in message


def test_explicit_mamba_ssm_without_the_kernel_is_one_line_naming_the_build(stand_in):
    stand_in(with_kernel=False)
    model = create_model("vmunet-tiny", scan_backend="mamba_ssm").eval()
    with pytest.raises(ImportError) as caught, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    message = str(caught.value)
    assert "MAMBA_KEEP_CUDA_BUILD=TRUE pip install mamba-ssm --no-build-isolation" in message
    assert "selective_scan_cuda" in message and "\n" not in message


def test_with_the_compiled_kernel_auto_takes_mamba_ssm(stand_in, monkeypatch):
    stand_in(with_kernel=True)
    assert scan_mamba_ssm.is_available()
    assert resolve_backend("auto", "cuda") == "mamba_ssm"
    assert "mamba_ssm" in available_backends("cuda")
    # The call reaches the kernel (CUDA tensors are faked: the adapter only checks .is_cuda).
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    u = torch.zeros(1, 2, 3)
    assert selective_scan(u, u, torch.zeros(2, 1), u[:, None], u[:, None], backend="mamba_ssm") == "kernel ran"
