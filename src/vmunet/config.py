"""Typed training configuration: YAML presets (``vmunet/configs``), files and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

DATASETS = ("isic", "synapse", "nifti", "demo")
AUGMENTATIONS = ("isic", "synapse", "none")
NORMALIZATIONS = ("minmax255", "none", "zscore")


@dataclass
class TrainConfig:
    """Everything a run needs; saved resolved as ``config.yaml`` in the run folder."""

    dataset: str = "isic"  # reader: isic | synapse | nifti | demo
    data: str | None = None  # dataset folder
    model: str = "vmunet"  # model preset: vmunet | vmunet-tiny
    num_classes: int | None = None  # None: from the dataset (nifti: dataset.json)
    input_channels: int | None = None
    label_names: list[str] | None = None
    image_size: int = 256  # network input side, a multiple of 32
    augmentation: str = "isic"  # isic | synapse | none
    normalization: str = "minmax255"  # minmax255 | none | zscore
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    t_max: int = 50  # CosineAnnealingLR period in epochs (stepped per epoch)
    eta_min: float = 1e-5
    # Selection never looks at the test split: hold out this fraction of the training cases instead,
    # unless the dataset has its own validation split.
    val_fraction: float = 0.1
    # Paper behaviour, for exact comparison: choose the best checkpoint on the split the paper evaluates on.
    paper_selection: bool = False
    # Paper behaviour: weight decay on every parameter (the official code meant to spare A_logs and Ds).
    paper_weight_decay: bool = False
    pretrained: str | None = None  # VMamba ImageNet checkpoint
    seed: int = 42
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16/fp16 autocast (CUDA; bf16 on CPU)
    scan_backend: str = "auto"
    val_interval: int = 1  # validate every N epochs (and at the last one)
    max_steps_per_epoch: int | None = None  # cap, for smoke tests and demos
    accumulate: int = 1  # gradient accumulation steps
    drop_path_rate: float | None = None  # None: the model preset's (paper: 0.2)
    dist_timeout_minutes: float = 30.0  # a dead rank fails the job after this long instead of hanging
    detect_anomaly: bool = False

    def validate(self) -> TrainConfig:
        checks = [
            (self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)} (got {self.dataset!r})"),
            (self.augmentation in AUGMENTATIONS,
             f"augmentation must be one of {', '.join(AUGMENTATIONS)} (got {self.augmentation!r})"),
            (self.normalization in NORMALIZATIONS,
             f"normalization must be one of {', '.join(NORMALIZATIONS)} (got {self.normalization!r})"),
            (self.image_size > 0 and self.image_size % 32 == 0,
             f"image_size must be a positive multiple of 32 (got {self.image_size}; try "
             f"{max(32, self.image_size // 32 * 32)})"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.accumulate >= 1,
             "epochs, batch_size and accumulate must be >= 1"),
            (0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1) (got {self.val_fraction})"),
            (self.num_classes is None or self.num_classes >= 1, f"num_classes must be >= 1 (got {self.num_classes})"),
            # 0 would "train" without a single optimizer step and still write checkpoints.
            (self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
             f"max_steps_per_epoch must be >= 1 or null (got {self.max_steps_per_epoch})"),
            (self.val_interval >= 1, f"val_interval must be >= 1 (got {self.val_interval})"),
            (self.lr > 0 and self.weight_decay >= 0 and self.eta_min >= 0 and self.t_max >= 1,
             "lr must be > 0, weight_decay and eta_min >= 0, t_max >= 1"),
            (self.num_workers >= 0, f"num_workers must be >= 0 (got {self.num_workers})"),
            (self.dist_timeout_minutes > 0, f"dist_timeout_minutes must be > 0 (got {self.dist_timeout_minutes})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"config: {message}")
        return self

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("vmunet.configs").iterdir() if p.name.endswith(".yaml"))


def read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of config keys")
    return data


def load_preset(name: str) -> dict:
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return read_yaml(resources.files("vmunet.configs").joinpath(f"{name}.yaml").read_text(), f"preset {name}")


def parse_override(item: str) -> tuple[str, object]:
    """'key=value' with a YAML value: numbers, true/false, null, [lists]."""
    if "=" not in item:
        raise ValueError(f"--set expects key=value (got {item!r})")
    key, value = item.split("=", 1)
    return key.strip(), read_yaml(f"v: {value}", f"--set {item}")["v"]


def apply_values(config: TrainConfig, values: dict, source: str) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(FIELDS)}")
    for key, value in values.items():
        if key == "betas" and value is not None:
            value = tuple(float(v) for v in value)
        setattr(config, key, coerce(key, value, source))
    return config


def coerce(key: str, value, source: str):
    """Check simple types so that a typo like epochs=ten fails here, not deep in training."""
    default = getattr(TrainConfig(), key)
    if value is None or default is None or isinstance(default, (tuple, list)):
        return value
    kind = type(default)
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML reads 5e-4 (no dot) as a string
            return float(value)
        except ValueError:
            raise ValueError(f"{source}: {key} must be a number (got {value!r})") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{source}: {key} must be {kind.__name__} (got {value!r})")
    return value


def build_config(preset: str | None = None, config_file: str | Path | None = None,
                 overrides: dict | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Preset, then YAML file, then explicit overrides (CLI flags), then --set items; validated."""
    config = TrainConfig()
    if preset:
        apply_values(config, load_preset(preset), f"preset {preset}")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        apply_values(config, read_yaml(path.read_text(), str(path)), str(path))
    apply_values(config, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
    apply_values(config, dict(parse_override(item) for item in sets or []), "--set")
    return config.validate()


def config_from_dict(values: dict) -> TrainConfig:
    return apply_values(TrainConfig(), values, "run config").validate()
