"""Run folders: a self-describing directory per training run, and its checkpoint I/O (atomic writes).

    RUN_DIR/config.yaml          the resolved TrainConfig
    RUN_DIR/run.json             what inference needs: model config, label names, normalisation, image size
    RUN_DIR/checkpoints/last.pt  state_dict (official key names) + optimizer, scheduler, epoch, RNG, version
    RUN_DIR/checkpoints/best.pt  the same at the best validation score
    RUN_DIR/history.csv          one row per epoch
    RUN_DIR/split.json           {"train": [case ids], "val": [case ids], "fingerprints": {case id: digest of
                                 its files}}: the cases that trained and selected, and their contents
    RUN_DIR/tensorboard/         TensorBoard event files
    RUN_DIR/eval/                summary.json and per_case.csv written by ``evaluate``
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from vmunet.config import read_json, read_text, read_yaml
from vmunet.models import VMUNet, create_model
from vmunet.io.files import atomic_write_bytes, write_text_atomic


@dataclass
class RunInfo:
    """The contents of run.json."""

    model_preset: str
    model_config: dict  # VMUNet keyword arguments
    label_names: list[str]
    normalization: str
    image_size: int
    dataset: str  # isic | synapse | nifti | demo: 2D images or volumes
    version: str
    interpolation: str = "bilinear"  # how training resized images; evaluate and predict resize the same way
    label_colours: list[list[int]] | None = None  # RGB per class of a colour-mask dataset (predict's PNGs, overlays)
    # The selective-scan backend training ran on ("auto" resolved on its device), as of its last (re)start.
    # A record only: evaluate and predict choose their own (--scan-backend).
    scan_backend: str | None = None

    @property
    def num_classes(self) -> int:
        return int(self.model_config["num_classes"])

    @property
    def input_channels(self) -> int:
        return int(self.model_config["input_channels"])

    @property
    def is_volumetric(self) -> bool:
        return self.dataset in ("synapse", "nifti", "demo")


LOCK_FILE = ".lock"


class RunFolderLock:
    """An exclusive OS lock on RUN_DIR/.lock, held while a training runs in the folder.

    ``fcntl.flock`` on POSIX (``msvcrt.locking`` on Windows): the operating system drops it when the process
    ends, however it ends, so a SIGKILLed run never leaves its folder locked. The file itself stays (removing a
    lock file while others may open it would let two runs hold two different files).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.handle = None

    def acquire(self) -> RunFolderLock:
        handle = open(self.path, "a+")
        try:
            if os.name == "nt":
                import msvcrt

                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise ValueError(f"{self.path.parent}: another training is running in this run folder"
                             + (f" (process {holder})" if holder else "")
                             + "; wait for it to end, or choose another --run-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the descriptor releases the lock
            self.handle = None


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    atomic_write_bytes(Path(path), lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict:
    """Read a checkpoint on the CPU with ``weights_only=True`` unless the caller trusts the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or not a torch.save file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: holds Python objects besides tensors; if you trust its source, pass "
                         "--trust-checkpoint (allow_pickle=True)") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a dict checkpoint")
    return payload


def state_dict_of(payload: dict) -> dict:
    """The model weights of one of our checkpoints, an official VM-UNet checkpoint or a bare state_dict."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(payload.get(key), dict):
            return payload[key]
    return payload


def load_weights(model: VMUNet, state: dict, source: str) -> None:
    """Strict load with an error that lists the first mismatched keys (another architecture, say)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                   if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {name} (first: {', '.join(keys[:3])})")
        raise ValueError(f"{source}: checkpoint does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def write_run_info(run_dir: str | Path, info: RunInfo) -> None:
    write_text_atomic(Path(run_dir) / "run.json", json.dumps(info.__dict__, indent=2) + "\n")


def read_run_info(run_dir: str | Path) -> RunInfo:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a vmunet run folder (run.json missing)")
    try:
        return RunInfo(**json.loads(read_text(path, "JSON")))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path}: unreadable run description ({error})") from None


def write_config(run_dir: str | Path, config_dict: dict) -> None:
    write_text_atomic(Path(run_dir) / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))


def read_config_dict(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a vmunet run folder (config.yaml missing)")
    return read_yaml(read_text(path), str(path))


SPLIT_FILE = "split.json"


def write_split(run_dir: str | Path, train: list[str], val: list[str],
                fingerprints: dict[str, str] | None = None) -> None:
    """split.json; ``fingerprints`` ({case id: digest of its files' bytes}, ``vmunet.data.fingerprints``) let
    ``vmunet cv`` find a case whose files changed under the same name."""
    split = {"train": train, "val": val, **({"fingerprints": fingerprints} if fingerprints is not None else {})}
    write_text_atomic(Path(run_dir) / SPLIT_FILE, json.dumps(split, indent=1) + "\n")


def read_fingerprints(run_dir: str | Path) -> dict[str, str] | None:
    """The content fingerprints split.json recorded at training time; None for a run trained before they were."""
    path = Path(run_dir) / SPLIT_FILE
    fingerprints = read_json(path).get("fingerprints") if path.is_file() else None
    if fingerprints is not None and not (isinstance(fingerprints, dict) and
                                         all(isinstance(v, str) for v in fingerprints.values())):
        raise ValueError(f"{path}: 'fingerprints' must map case ids to digests")
    return fingerprints


def read_split(run_dir: str | Path) -> dict[str, list[str]]:
    """split.json as {"train": [...], "val": [...]}; a missing or malformed file is an error naming it."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split recorded (the run was trained before split.json existed)")
    split = read_json(path)
    if not (isinstance(split, dict) and all(isinstance(split.get(key), list) and
                                            all(isinstance(c, str) for c in split[key]) for key in ("train", "val"))):
        raise ValueError(f"{path}: expected {{\"train\": [case ids], \"val\": [case ids]}}")
    return {"train": split["train"], "val": split["val"]}


def run_folder_files(run_dir: str | Path) -> list[Path]:
    """The files that make a run folder (never an output of predict or export)."""
    run_dir = Path(run_dir)
    return [run_dir / "config.yaml", run_dir / "run.json", run_dir / "history.csv", run_dir / SPLIT_FILE,
            *sorted(checkpoint_dir(run_dir).glob("*.pt"))]


def resolve_checkpoint(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """'best' | 'last' | a path. 'best' falls back to nothing: a run without best.pt says so."""
    if checkpoint in ("best", "last"):
        return checkpoint_dir(run_dir) / f"{checkpoint}.pt"
    return Path(checkpoint)


def load_model_from_run(run_dir: str | Path, checkpoint: str = "best", allow_pickle: bool = False,
                        scan_backend: str = "auto") -> tuple[VMUNet, RunInfo, dict]:
    """The trained model (eval mode, CPU), the run's RunInfo and the checkpoint payload."""
    info = read_run_info(run_dir)
    model = create_model(info.model_preset, **{**info.model_config, "scan_backend": scan_backend})
    path = resolve_checkpoint(run_dir, checkpoint)
    payload = load_checkpoint(path, allow_pickle=allow_pickle)
    load_weights(model, state_dict_of(payload), str(path))
    return model.eval(), info, payload
