"""A trained run as a MONAI bundle, and the code that bundle runs.

    vmunet export --format monai-bundle --run-dir RUN --out BUNDLE
    python -m monai.bundle run --config_file BUNDLE/configs/inference.json --dataset_dir IN --output_dir OUT

    BUNDLE/configs/metadata.json   MONAI's metadata (network_data_format: channels, classes) and, under "vmunet",
                                   the run's run.json (preprocessing: normalisation, network size, interpolation)
    BUNDLE/configs/inference.json  "network_def" builds the network with vmunet.create_model; "predictor" applies
                                   it with the run's preprocessing; "run" predicts every file of dataset_dir
    BUNDLE/models/model.pt         the weights (a plain state_dict, official key names)

The bundle predicts as ``vmunet predict`` does, with the same code (``vmunet.inference.Predictor``: each image
or slice normalised and resized to the network size, probabilities resized back, threshold or argmax), so its
labels equal ``vmunet predict``'s for the same run and inputs. Images (PNG, JPEG, ...) -> OUT/STEM.png, NIfTI
volumes -> OUT/STEM.nii[.gz] with the input's affine. MONAI's ConfigParser builds everything, so "network_def"
also serves MONAI pipelines of your own (add ``"pad_to": 32`` there for sliding-window inference at any size).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from vmunet.io.cases import read_nifti_volume
from vmunet.io.images import read_image_file
from vmunet.io.paths import input_kind, list_folder, output_stem
from vmunet.inference import Predictor
from vmunet.runtime.run_folder import RunInfo, load_model_from_run, load_weights, run_folder_files
from vmunet.io.files import check_output_folder, refuse_overwriting, write_text_atomic
from vmunet.io.images import index_png, mask_png, write_png
from vmunet.io.nifti import write_nifti
from vmunet import __version__
from vmunet.overlay import class_colours

WEIGHTS = "models/model.pt"
METADATA = "configs/metadata.json"
INFERENCE = "configs/inference.json"
METADATA_SCHEMA = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                   "meta_schema_20220324.json")


def require_monai() -> None:
    try:
        import monai  # noqa: F401 (only checks that the extra is there)
    except ImportError as error:
        raise ImportError(f"MONAI bundles need MONAI ({error}): pip install 'vmunet[monai]'") from error


def metadata(info: RunInfo, checkpoint_epoch: int | None) -> dict:
    """MONAI's metadata.json fields, and the run description vmunet needs under "vmunet"."""
    import monai

    classes = info.num_classes
    names = list(info.label_names)
    # one class: a binary mask (0 background, 1 the class); several: class ids, 0 the background
    channel_def = {"0": "background", "1": names[0]} if classes == 1 else {str(i): n for i, n in enumerate(names)}
    return {
        "schema": METADATA_SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by vmunet {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"vmunet": __version__},
        "name": f"VM-UNet ({info.model_preset}) {info.dataset} segmentation",
        "task": "2D segmentation (volumes slice by slice)" if info.is_volumetric else "2D segmentation",
        "description": "VM-UNet (Vision Mamba UNet) trained with vmunet; preprocessing as in its training "
                       f"(normalisation {info.normalization!r}, resized to {info.image_size} x {info.image_size})"
                       + ("" if checkpoint_epoch is None else f"; checkpoint of epoch {checkpoint_epoch}"),
        "authors": "vmunet",
        "copyright": "see the training data's licence",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": info.dataset,
                                 "num_channels": info.input_channels, "spatial_shape": [info.image_size] * 2,
                                 "dtype": "float32", "value_range": [], "is_patch_data": False,
                                 "channel_def": {str(i): f"channel {i}" for i in range(info.input_channels)}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": [info.image_size] * 2, "dtype": "uint8",
                                 "value_range": [0, max(1, classes - 1)], "is_patch_data": False,
                                 "channel_def": channel_def}},
        },
        "vmunet": dict(info.__dict__),
    }


def inference_config(info: RunInfo) -> dict:
    """configs/inference.json: MONAI's usual keys (bundle_root, dataset_dir, output_dir, device, network_def,
    network, run); ``--dataset_dir``/``--output_dir``/``--bundle_root`` on the command line override them."""
    return {
        "imports": ["$import vmunet", "$import vmunet.integrations.monai_bundle"],
        "bundle_root": ".",  # replaced by the bundle's folder at export; --bundle_root DIR after moving it
        "dataset_dir": "/workspace/data",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "vmunet.create_model", "name": info.model_preset, **info.model_config},
        "network": "$@network_def.to(@device)",
        "predictor": {"_target_": "vmunet.integrations.monai_bundle.BundlePredictor", "network": "@network",
                      "weights": f"$@bundle_root + '/{WEIGHTS}'", "metadata_file": f"$@bundle_root + '/{METADATA}'",
                      "device": "@device"},
        "run": ["$@predictor.predict_folder(@dataset_dir, @output_dir)"],
    }


def export_monai_bundle(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best",
                        allow_pickle: bool = False) -> Path:
    """Write the bundle folder ``out_dir`` (new or empty; built beside it and renamed, so no partial bundle)."""
    require_monai()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: --out must be a new or empty folder for the bundle")
    refuse_overwriting([out_dir / WEIGHTS], run_folder_files(run_dir))
    model, info, payload = load_model_from_run(run_dir, checkpoint, allow_pickle=allow_pickle)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (building / "configs").mkdir()
        (building / "models").mkdir()
        torch.save(model.state_dict(), building / WEIGHTS)
        write_text_atomic(building / METADATA, json.dumps(metadata(info, payload.get("epoch")), indent=2) + "\n")
        config = inference_config(info)
        config["bundle_root"] = str(out_dir.resolve())
        write_text_atomic(building / INFERENCE, json.dumps(config, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir


def read_bundle_run_info(metadata_file: str | Path) -> RunInfo:
    path = Path(metadata_file)
    try:
        return RunInfo(**json.loads(path.read_text(encoding="utf-8"))["vmunet"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a vmunet bundle's metadata ({type(error).__name__}: {error})") from None


class BundlePredictor:
    """The bundle's "predictor": the network MONAI built, its weights and the run's preprocessing, applied to a
    folder as ``vmunet predict`` applies a run."""

    def __init__(self, network: torch.nn.Module, weights: str | Path, metadata_file: str | Path,
                 device: str | torch.device = "cpu", batch_size: int = 8):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: the bundle's weights are not there (a bundle that was moved needs "
                                    "--bundle_root NEW_FOLDER)")
        info = read_bundle_run_info(metadata_file)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        load_weights(network, state, str(weights))
        self.predictor = Predictor(network, info, device=torch.device(device), batch_size=batch_size)
        self.info = info

    def output_file(self, path: Path, out_dir: Path) -> Path:
        if input_kind(path) == "image":
            return out_dir / f"{output_stem(path)}.png"
        return out_dir / (output_stem(path) + (".nii.gz" if path.name.lower().endswith(".gz") else ".nii"))

    def predict_folder(self, dataset_dir: str | Path, output_dir: str | Path) -> list[Path]:
        """Every image and NIfTI file of ``dataset_dir`` -> a label file of the same stem in ``output_dir``."""
        dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
        if not dataset_dir.is_dir():
            raise FileNotFoundError(f"{dataset_dir}: dataset_dir is not a folder")
        files = [p for p in list_folder(dataset_dir) if input_kind(p) in ("image", "nifti")]
        if not files:
            raise ValueError(f"{dataset_dir}: no image or NIfTI files to predict")
        outputs = [self.output_file(p, output_dir) for p in files]
        check_output_folder(output_dir, "--output_dir")
        refuse_overwriting(outputs, files, "--output_dir")
        for path, output in zip(files, outputs):
            if input_kind(path) == "image":
                self.write_image_labels(read_image_file(path), output)
            else:
                volume, reference = read_nifti_volume(path)  # (D, H, W) = (Z, X, Y) slices, as vmunet predict
                labels = self.predictor.predict_volume(volume).labels  # (D, H, W)
                dtype = np.uint8 if labels.max(initial=0) < 256 else np.int16
                write_nifti(output, np.ascontiguousarray(np.moveaxis(labels, 0, -1), dtype), reference,
                            intent="label")
        return outputs

    def write_image_labels(self, image: np.ndarray, output: Path) -> None:
        """PNG labels as ``vmunet predict`` writes them: palette class ids for a colour-mask ('folders') run,
        else 0/255 (one class) or grey class ids."""
        labels = self.predictor.predict_image(image).labels  # (H, W)
        classes = self.info.num_classes
        if self.info.dataset == "folders" and classes <= 256:
            write_png(output, index_png(labels, class_colours(classes, self.info.label_colours)))
        else:
            write_png(output, mask_png(labels, classes))
