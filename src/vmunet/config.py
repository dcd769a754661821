"""Typed training configuration: YAML presets (``vmunet/configs``), files and ``key=value`` overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

DATASETS = ("isic", "synapse", "nifti", "folders", "polyp", "demo")
AUGMENTATIONS = ("isic", "synapse", "none")
NORMALIZATIONS = ("minmax255", "none", "zscore")


@dataclass
class TrainConfig:
    """Everything a run needs; saved resolved as ``config.yaml`` in the run folder."""

    dataset: str = "isic"  # reader: isic | synapse | nifti | folders | polyp | demo
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
    # K-fold cross-validation: the training cases are dealt into ``folds`` folds (seeded by ``seed``), fold
    # ``fold`` selects the best checkpoint and the others train. None: ``val_fraction`` as above.
    folds: int | None = None
    fold: int | None = None
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
    # The papers' lambda: weights of the two loss terms, BCE (one class) or CE (several), then Dice.
    loss_weights: tuple[float, float] = (1.0, 1.0)
    # Deterministic algorithms and cuDNN settings (vmunet.runtime.device.deterministic_algorithms).
    deterministic: bool = False
    # Normalised surface Dice tolerance: mm when the case has a spacing, pixels/voxels otherwise.
    nsd_tolerance_mm: float = 1.0
    # Refuse a training file whose header claims more pixels/voxels than this, before decoding it
    # (vmunet.io.limits; null: its default, as vmunet predict --max-voxels).
    max_voxels: int | None = None

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
            (self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})"),
            (self.accumulate >= 1, f"accumulate must be >= 1 (got {self.accumulate})"),
            (0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1) (got {self.val_fraction})"),
            (self.num_classes is None or self.num_classes >= 1, f"num_classes must be >= 1 (got {self.num_classes})"),
            # 0 would "train" without a single optimizer step and still write checkpoints.
            (self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
             f"max_steps_per_epoch must be >= 1 or null (got {self.max_steps_per_epoch})"),
            (self.val_interval >= 1, f"val_interval must be >= 1 (got {self.val_interval})"),
            (self.lr > 0, f"lr must be > 0 (got {self.lr})"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})"),
            (self.eta_min >= 0, f"eta_min must be >= 0 (got {self.eta_min})"),
            (self.t_max >= 1, f"t_max must be >= 1 (got {self.t_max})"),
            (all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1) (got {list(self.betas)})"),
            (self.num_workers >= 0, f"num_workers must be >= 0 (got {self.num_workers})"),
            (self.dist_timeout_minutes > 0, f"dist_timeout_minutes must be > 0 (got {self.dist_timeout_minutes})"),
            (all(w >= 0 for w in self.loss_weights) and any(w > 0 for w in self.loss_weights),
             f"loss_weights must be two numbers >= 0, not both 0 (BCE or CE, then Dice; got "
             f"{list(self.loss_weights)})"),
            (self.nsd_tolerance_mm >= 0, f"nsd_tolerance_mm must be >= 0 (got {self.nsd_tolerance_mm})"),
            (self.max_voxels is None or self.max_voxels >= 1,
             f"max_voxels must be >= 1 or null (got {self.max_voxels})"),
            *fold_checks(self),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"config: {message}")
        return self

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def fold_checks(config: TrainConfig) -> list[tuple[bool, str]]:
    """folds K >= 2 needs fold k in 0..K-1, and the other way round; folds select on the training cases, so
    they exclude the paper's selection on the reported split."""
    if config.folds is None:
        return [(config.fold is None, f"fold {config.fold} needs folds (--folds K --fold k)")]
    return [(config.folds >= 2, f"folds must be >= 2 (got {config.folds})"),
            (config.fold is not None, f"folds {config.folds} needs fold (--fold k, k in 0..{config.folds - 1})"),
            (config.fold is None or 0 <= config.fold < config.folds,
             f"fold must be in 0..{config.folds - 1} for folds {config.folds} (got {config.fold})"),
            (not config.paper_selection, "folds and paper_selection exclude each other (folds select on the "
                                         "training cases, the paper on the split it reports)")]


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)
_MISSING = object()


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
        setattr(config, key, coerce(key, value, source))
    return config


def _describe(kind, key: str) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        return f"a list of {len(args)} numbers, e.g. {list(getattr(TrainConfig(), key))}"
    if origin is list:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def coerce(key: str, value, source: str):
    """Check a value against the field's declared type, so that epochs=ten, betas=0.9 or num_classes=abc fail
    here with one line, not deep in training. Numbers for a float field and for a string field are converted
    (YAML reads 5e-4, without a dot, as a string; a folder may be called 2024)."""
    kind = HINTS[key]
    options = typing.get_args(kind) if typing.get_origin(kind) in (types.UnionType, typing.Union) else ()
    if options:
        if value is None:
            return None
        kind = next(option for option in options if option is not type(None))
    origin = typing.get_origin(kind)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    converted = _MISSING
    if origin is tuple and isinstance(value, (list, tuple)) and len(value) == len(typing.get_args(kind)) \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        converted = tuple(float(v) for v in value)
    elif origin is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        converted = list(value)
    elif kind is bool and isinstance(value, bool):
        converted = value
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        converted = value
    elif kind is float and (number or isinstance(value, str)):
        with contextlib.suppress(ValueError):
            converted = float(value)
    elif kind is str and (isinstance(value, str) or number):
        converted = str(value)
    if converted is _MISSING:
        raise ValueError(f"{source}: {key} must be {_describe(kind, key)} (got {value!r})")
    return converted


def build_config(preset: str | None = None, config_file: str | Path | None = None,
                 overrides: dict | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Preset, then YAML file, then explicit overrides (CLI flags), then --set items; validated."""
    return resolve_config(preset, config_file, overrides, sets)[0]


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict | None = None, sets: list[str] | None = None) -> tuple[TrainConfig, dict]:
    """``build_config``'s validated config and {key: (final value, True if only the preset set it)} for every
    key that was given: what a ``--resume`` compares with the saved run."""
    config = TrainConfig()
    sources = []
    if preset:
        sources.append((load_preset(preset), f"preset {preset}"))
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        sources.append((read_yaml(read_text(path), str(path)), str(path)))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    set_values = dict(parse_override(item) for item in sets or [])
    check_flags_agree_with_sets(flags, set_values)
    sources.append((flags, "command line"))
    sources.append((set_values, "--set"))
    given = {}
    for values, source in sources:
        apply_values(config, values, source)
        given.update(dict.fromkeys(values, source.startswith("preset ")))
    return config.validate(), {key: (getattr(config, key), by_preset) for key, by_preset in given.items()}


def check_flags_agree_with_sets(flags: dict, set_values: dict) -> None:
    """A key given both by its flag (``--scan-backend numba``) and by ``--set key=value`` must say the same:
    the two are one level of the precedence (preset < --config file < command line), so a conflict is an error,
    never a silent winner."""
    for key in sorted(set(flags) & set(set_values) & set(FIELDS)):
        flag_value = coerce(key, flags[key], "command line")
        set_value = coerce(key, set_values[key], "--set")
        if flag_value != set_value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"--set {key}={set_values[key]} conflicts with {flag} {flags[key]}; give {key} once")


def read_text(path: str | Path, kind: str = "YAML") -> str:
    """A text file's contents; an undecodable file is an error naming it (and the format to save it in)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {error.start}: {error.reason}); save it as "
                         f"UTF-8 {kind}") from None


def read_json(path: str | Path):
    """A JSON file's value; undecodable bytes, invalid JSON or a key given twice in one object (Python would keep
    the last without a word) are an error naming the file."""

    def unique_keys(pairs: list[tuple[str, object]]) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"{path}: key {key!r} appears twice in one object; give each key once")
            seen[key] = value
        return seen

    try:
        return json.loads(read_text(path, "JSON"), object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def config_from_dict(values: dict) -> TrainConfig:
    return apply_values(TrainConfig(), values, "run config").validate()
