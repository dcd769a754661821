"""Export a trained VM-UNet for deployment: ONNX (onnxruntime), TorchScript, or a torch.export program (.pt2).

    export_onnx(run_dir_or_model, "model.onnx", image_size=(256, 256))

Every format records the selective scan as plain tensor ops (``vmunet.ops.scan_export``): no custom ops, no
Python. The graph takes (batch, input_channels, H, W) float32 images, normalised as in training (the run's
``normalization``; stored in the ONNX metadata), and returns (batch, num_classes, H, W) logits; the batch is
dynamic, H and W are fixed at export (the scan loops are unrolled for that sequence length).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from vmunet.models import VMUNet, VMUNetV2
from vmunet.runtime.run_folder import RunInfo, load_model_from_run, run_folder_files
from vmunet.io.files import atomic_write_bytes, check_output_file, refuse_existing_outputs, refuse_overwriting
from vmunet import __version__

FORMATS = ("onnx", "torchscript", "pt2", "monai-bundle")
DEFAULT_OPSET = 17  # LayerNormalization as one node; onnxruntime >= 1.12 runs it


@contextlib.contextmanager
def export_scan(model: VMUNet):
    """The model with every scan on the "torch" backend, which records the plain-ops scan of
    ops/scan_export.py when traced (no custom ops, no cumprod), whatever backend it was trained with."""
    model.set_scan_backend("torch")
    yield model


def image_size_pair(image_size: int | Sequence[int] | None, info: RunInfo | None) -> tuple[int, int]:
    if image_size is None:
        if info is None:
            raise ValueError("image_size is required when exporting a model object (no run folder to read it from)")
        image_size = info.image_size
    if isinstance(image_size, int):
        return image_size, image_size
    if len(image_size) != 2:
        raise ValueError(f"image_size must be one side or (height, width); got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def prepare_model(model_or_run_dir: VMUNet | str | Path, checkpoint: str = "best",
                  allow_pickle: bool = False) -> tuple[VMUNet, RunInfo | None]:
    """A CPU eval-mode copy (the caller's model is left as it is) and the run description if there is one."""
    if isinstance(model_or_run_dir, (VMUNet, VMUNetV2)):
        return copy.deepcopy(model_or_run_dir).cpu().eval(), None
    if isinstance(model_or_run_dir, torch.nn.Module):
        raise ValueError(f"export needs a VMUNet, a VMUNetV2 or a run folder; got {type(model_or_run_dir).__name__}")
    model, info, _ = load_model_from_run(model_or_run_dir, checkpoint=checkpoint, allow_pickle=allow_pickle)
    return model, info


def example_input(model: VMUNet, size: tuple[int, int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A random (batch, input_channels, H, W) image; checks H and W with the model's own message."""
    x = torch.randn(batch, model.input_channels, *size, generator=torch.Generator().manual_seed(seed))
    model.check_input(x)
    return x


def onnx_metadata(model: VMUNet, info: RunInfo | None, size: tuple[int, int]) -> dict[str, str]:
    """What a deployment needs besides the graph, stored as ONNX metadata_props."""
    meta = {
        "vmunet_version": __version__,
        "image_size": json.dumps(list(size)),
        "input_channels": str(model.input_channels),
        "num_classes": str(model.num_classes),
        "output": "logits; probabilities = sigmoid (one class) or softmax over axis 1",
        "model_config": json.dumps(model.config),
    }
    if info is not None:
        meta.update(normalization=info.normalization, label_names=json.dumps(info.label_names),
                    model_preset=info.model_preset, dataset=info.dataset)
    return meta


def export_onnx(model_or_run_dir: VMUNet | str | Path, out_path: str | Path,
                image_size: int | Sequence[int] | None = None, checkpoint: str = "best", opset: int | None = None,
                allow_pickle: bool = False) -> Path:
    """Write an ONNX graph (input "image", output "logits", dynamic batch) with the TorchScript exporter
    (``dynamo=False``), which unrolls the scan's Python loops into plain ops; ``opset`` defaults to 17.
    """
    import onnx

    model, info = prepare_model(model_or_run_dir, checkpoint, allow_pickle)
    size = image_size_pair(image_size, info)
    x = example_input(model, size)
    buffer = io.BytesIO()
    with export_scan(model), torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about Python ints from shapes are expected: H and W are fixed by design.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=opset or DEFAULT_OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in onnx_metadata(model, info, size).items():
        graph.metadata_props.add(key=key, value=value)
    out_path = Path(out_path)
    atomic_write_bytes(out_path, lambda handle: handle.write(graph.SerializeToString()))
    return out_path


def export_torchscript(model_or_run_dir: VMUNet | str | Path, out_path: str | Path,
                       image_size: int | Sequence[int] | None = None, checkpoint: str = "best",
                       allow_pickle: bool = False) -> Path:
    """``torch.jit.trace`` of the model; load with ``torch.jit.load`` (no vmunet needed)."""
    model, info = prepare_model(model_or_run_dir, checkpoint, allow_pickle)
    x = example_input(model, image_size_pair(image_size, info))
    with export_scan(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        out_path = Path(out_path)
        atomic_write_bytes(out_path, lambda handle: torch.jit.save(traced, handle))  # deprecated in torch 2.10+
    return out_path


def export_pt2(model_or_run_dir: VMUNet | str | Path, out_path: str | Path,
               image_size: int | Sequence[int] | None = None, checkpoint: str = "best",
               allow_pickle: bool = False) -> Path:
    """A ``torch.export`` program with a dynamic batch; load with ``torch.export.load(path).module()``."""
    model, info = prepare_model(model_or_run_dir, checkpoint, allow_pickle)
    x = example_input(model, image_size_pair(image_size, info), batch=2)
    with export_scan(model), torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    out_path = Path(out_path)
    atomic_write_bytes(out_path, lambda handle: torch.export.save(program, handle))
    return out_path


def check_destination(out_path: str | Path, model_or_run_dir, overwrite: bool = False) -> None:
    """Before any export work: ``out_path`` is a writable file name that is not one of the run's own files, nor
    an existing file unless ``overwrite``."""
    check_output_file(out_path)
    if not isinstance(model_or_run_dir, torch.nn.Module):
        refuse_overwriting([out_path], run_folder_files(model_or_run_dir))
    refuse_existing_outputs(Path(out_path).parent, [out_path], overwrite)


def export_model(model_or_run_dir: VMUNet | str | Path, out_path: str | Path, format: str = "onnx",
                 image_size: int | Sequence[int] | None = None, checkpoint: str = "best", opset: int | None = None,
                 allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """Dispatch on ``format``: "onnx", "torchscript", "pt2" or "monai-bundle" (``out_path`` a folder). An existing
    ``out_path`` file is replaced only with ``overwrite``; a bundle's folder must be new or empty either way."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "monai-bundle":
        return export_bundle(model_or_run_dir, out_path, image_size, checkpoint, opset, allow_pickle)
    check_destination(out_path, model_or_run_dir, overwrite)
    common = dict(image_size=image_size, checkpoint=checkpoint, allow_pickle=allow_pickle)
    if format == "onnx":
        return export_onnx(model_or_run_dir, out_path, opset=opset, **common)
    if opset is not None:
        raise ValueError("opset applies to --format onnx only")
    exporter = export_torchscript if format == "torchscript" else export_pt2
    return exporter(model_or_run_dir, out_path, **common)


def export_bundle(run_dir, out_dir, image_size, checkpoint: str, opset: int | None, allow_pickle: bool) -> Path:
    """A MONAI bundle of a run folder (``vmunet.integrations.monai_bundle``; the ``monai`` extra)."""
    if isinstance(run_dir, torch.nn.Module):
        raise ValueError("--format monai-bundle exports a run folder (its preprocessing goes into the bundle)")
    if image_size is not None or opset is not None:
        raise ValueError("--image-size and --opset do not apply to --format monai-bundle (it predicts at the "
                         "run's own size)")
    from vmunet.integrations.monai_bundle import export_monai_bundle

    return export_monai_bundle(run_dir, out_dir, checkpoint=checkpoint, allow_pickle=allow_pickle)


def onnx_max_difference(model: VMUNet, onnx_path: str | Path, batch: int = 2, seed: int = 1) -> float:
    """Largest |logit difference| between onnxruntime (CPU) and PyTorch on a random input of the graph's size."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    size = tuple(json.loads(meta["image_size"]))
    model = copy.deepcopy(model).cpu().eval()
    x = example_input(model, size, batch=batch, seed=seed)
    with torch.no_grad():
        expected = model(x)
    got = session.run(["logits"], {"image": x.numpy()})[0]
    return float((torch.from_numpy(got) - expected).abs().max())


def exported_max_difference(model: VMUNet, path: str | Path, format: str, batch: int = 2, seed: int = 1,
                            image_size: int | Sequence[int] | None = None) -> float:
    """The same check for any format: the exported artefact against the PyTorch model."""
    if format == "onnx":
        return onnx_max_difference(model, path, batch=batch, seed=seed)
    model = copy.deepcopy(model).cpu().eval()
    x = example_input(model, image_size_pair(image_size, None), batch=batch, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load
        loaded = torch.jit.load(str(path)) if format == "torchscript" else torch.export.load(str(path)).module()
    with torch.no_grad():
        return float((loaded(x) - model(x)).abs().max())
