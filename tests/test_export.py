"""Exported graphs (ONNX in onnxruntime, TorchScript, torch.export) agree with PyTorch on the tiny preset."""

import argparse
import os

import numpy as np
import pytest
import torch

from test_predict import make_run
from vmunet.cli import add_export_arguments, cmd_export
from vmunet.export import (export_model, export_onnx, export_scan, exported_max_difference, onnx_max_difference,
                           prepare_model)
from vmunet.models import create_model
from vmunet.ops import selective_scan
from vmunet.ops.scan_export import dividing_chunk_length, selective_scan_export

SIZE = (32, 64)  # non-square, so that rows and columns cannot be confused; small for speed


@pytest.mark.parametrize("length", [0, 1, 7, 49, 96, 256])
def test_export_scan_matches_reference(length):
    g = torch.Generator().manual_seed(length)
    u, delta, z = (torch.randn(2, 8, length, generator=g, dtype=torch.float64) for _ in range(3))
    A = -torch.rand(8, 4, generator=g, dtype=torch.float64) - 0.1
    B, C = (torch.randn(2, 2, 4, length, generator=g, dtype=torch.float64) for _ in range(2))
    kwargs = dict(D=torch.randn(8, generator=g, dtype=torch.float64), z=z, delta_softplus=True,
                  return_last_state=True)
    out_ref, last_ref = selective_scan(u, delta, A, B, C, backend="ref", **kwargs)
    out, last = selective_scan_export(u, delta, A, B, C, **kwargs)
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(last, last_ref, rtol=1e-9, atol=1e-9)



@pytest.mark.parametrize("length", [1, 2, 7, 12, 49, 96, 97, 256, 1024])
def test_chunk_length_divides_l_nearest_above_its_square_root(length):
    T = dividing_chunk_length(length)
    assert length % T == 0 and T * T >= length
    assert not [t for t in range(1, T) if length % t == 0 and t * t >= length]  # the nearest such divisor


def test_chunk_length_of_an_empty_scan_is_an_error_not_a_division_by_zero():
    with pytest.raises(ValueError, match="length 0"):
        dividing_chunk_length(0)

def test_onnx_matches_pytorch_in_onnxruntime(tmp_path):
    import onnx

    run_dir = make_run(tmp_path, num_classes=3, input_channels=1, normalization="zscore", dataset="nifti")
    path = export_onnx(run_dir, tmp_path / "model.onnx", image_size=SIZE)
    graph = onnx.load(str(path))
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # standard ops only: no custom ops
    assert "Exp" in {node.op_type for node in graph.graph.node}  # the scan is in the graph
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["normalization"] == "zscore" and meta["input_channels"] == "1" and meta["num_classes"] == "3"

    from vmunet.runtime.run_folder import load_model_from_run

    model, _, _ = load_model_from_run(run_dir)
    assert onnx_max_difference(model, path, batch=3) < 1e-4  # the batch axis is dynamic
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_leaves_the_model_and_backends_alone(tmp_path):
    import vmunet.ops as ops

    model = create_model("vmunet-tiny", num_classes=1, scan_backend="ref").train()
    copy, _ = prepare_model(model)
    assert copy is not model and not copy.training and model.training
    saved = dict(ops.BACKENDS)
    with export_scan(copy):
        assert all(m.scan_backend == "torch" for m in copy.modules() if hasattr(m, "scan_backend"))
    assert ops.BACKENDS == saved
    assert all(m.scan_backend == "ref" for m in model.modules() if hasattr(m, "scan_backend"))
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, tmp_path / "m.onnx", image_size=(40, 64))
    with pytest.raises(ValueError, match="format"):
        export_model(model, tmp_path / "m.x", format="tflite", image_size=SIZE)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VMUNET_SLOW_TESTS"), reason="about 30 s; set VMUNET_SLOW_TESTS=1")
def test_pt2_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = create_model("vmunet-tiny", num_classes=2).eval()
    path = export_model(model, tmp_path / "model.pt2", format="pt2", image_size=SIZE)
    assert exported_max_difference(model, path, "pt2", batch=3, image_size=SIZE) < 1e-4


def test_cli_export_torchscript(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args(["--run-dir", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                              "--image-size", *map(str, SIZE)])
    assert cmd_export(args) == 0
    out = capsys.readouterr().out
    assert "m.pt" in out and "difference" in out
    difference = float(out.rsplit(":", 1)[1])  # the CLI compares the traced module with PyTorch
    assert np.isfinite(difference) and difference < 1e-4
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert loaded(torch.randn(2, 3, *SIZE)).shape == (2, 1, *SIZE)  # dynamic batch
