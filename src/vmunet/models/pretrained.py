"""Start VM-UNet from a VMamba ImageNet checkpoint with the official loading rule, made safe.

Rule (as the official code): checkpoint keys load by name into the encoder; then encoder stage i is
also copied into decoder stage 3 - i (``layers.i.`` -> ``layers_up.(3-i).``) wherever the renamed key
exists. Unlike the official code we load on the CPU whatever device saved the file, check every shape
(a mismatch is skipped and reported, never a crash halfway) and report what was loaded.
A trained vmunet checkpoint (keys ``vmunet.*``) given instead loads by name into encoder and decoder (a
fine-tuning start), with the same shape checks, and the report says so.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger(__name__)

_ENCODER_STAGE = re.compile(r"^layers\.(\d+)\.")


@dataclass
class LoadReport:
    """loaded: model keys overwritten; skipped: checkpoint key -> why unused; missing: model keys kept."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    source: str = "VMamba"  # or a sentence saying it was a vmunet checkpoint

    def summary(self) -> str:
        origin = "" if self.source == "VMamba" else f" from {self.source}"
        return (f"pretrained weights{origin}: {len(self.loaded)} model tensors loaded, {len(self.missing)} kept at "
                f"their initialisation, {len(self.skipped)} checkpoint tensors unused")


def read_vmamba_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of a VMamba checkpoint, on the CPU. Raises ValueError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: pretrained checkpoint not found")
    if not allow_pickle and not zipfile.is_zipfile(path):  # torch.save has written zip archives since 1.6
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (not a torch.save archive)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        if allow_pickle:
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
        raise ValueError(f"{path}: holds Python objects besides tensors; if you trust its source, load it with "
                         "allow_pickle=True (CLI: --trust-checkpoint)") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a VMamba checkpoint {{'model': state_dict}} of tensors")
    return state


def map_vmamba_keys(checkpoint: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor], num_stages: int = 4):
    """Apply the loading rule. Returns ({model key: tensor}, {checkpoint key: reason it is unused})."""
    chosen: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    mismatched: dict[str, str] = {}

    def offer(source: str, target: str, value: torch.Tensor) -> None:
        if target not in model_state:
            return
        if model_state[target].shape != value.shape:
            mismatched[source] = (f"shape {tuple(value.shape)} != model {target} {tuple(model_state[target].shape)}")
            return
        chosen[target] = value
        used.add(source)

    for key, value in checkpoint.items():  # encoder (and stem) by name
        offer(key, key, value)
    for key, value in checkpoint.items():  # encoder stage i -> decoder stage (num_stages - 1 - i)
        match = _ENCODER_STAGE.match(key)
        if match:
            stage = int(match.group(1))
            offer(key, f"layers_up.{num_stages - 1 - stage}.{key[match.end():]}", value)
    unused = {key: mismatched.get(key, "no matching model key") for key in checkpoint if key not in used}
    return chosen, unused


VMUNET_PREFIX = "vmunet."  # every key of a VMUNet's state_dict (official names)


def map_vmunet_keys(checkpoint: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]):
    """A trained VM-UNet's weights as a start: by name (prefix removed), shape-checked (a head for another
    number of classes is skipped). Returns ({model key: tensor}, {checkpoint key: reason it is unused})."""
    chosen, unused = {}, {}
    for key, value in checkpoint.items():
        target = key[len(VMUNET_PREFIX):]
        if target not in model_state:
            unused[key] = "no matching model key"
        elif model_state[target].shape != value.shape:
            unused[key] = f"shape {tuple(value.shape)} != model {target} {tuple(model_state[target].shape)}"
        else:
            chosen[target] = value
    return chosen, unused


def load_pretrained_vmamba(model: nn.Module, checkpoint: str | os.PathLike | dict[str, torch.Tensor],
                           allow_pickle: bool = False) -> LoadReport:
    """Load VMamba ImageNet weights into a VMUNet (or its inner VSSM) in place; returns a LoadReport."""
    network = getattr(model, "vmunet", model)
    prefix = "vmunet." if network is not model else ""
    state = checkpoint if isinstance(checkpoint, dict) else read_vmamba_checkpoint(checkpoint, allow_pickle)
    own = network.state_dict()
    source = "the given state dict" if isinstance(checkpoint, dict) else os.fspath(checkpoint)
    trained = bool(state) and all(key.startswith(VMUNET_PREFIX) for key in state)
    if trained:  # a vmunet checkpoint (a trained VM-UNet): every tensor by name, encoder and decoder
        chosen, unused = map_vmunet_keys(state, own)
    else:
        chosen, unused = map_vmamba_keys(state, own)
    if not chosen:
        what = ("a vmunet checkpoint of another model size" if trained
                else "no tensor matches the model (is this a VMamba checkpoint of the same size?)")
        raise ValueError(f"{source}: {what}")
    with torch.no_grad():
        for key, value in chosen.items():
            own[key].copy_(value)
    report = LoadReport(loaded=sorted(prefix + k for k in chosen), skipped=unused,
                        missing=sorted(prefix + k for k in own if k not in chosen),
                        source="a vmunet checkpoint, by name; --resume in its run folder continues that run "
                               "instead" if trained else "VMamba")
    logger.info(report.summary())
    return report
