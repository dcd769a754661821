"""Training: ``train(config, run_dir)`` fits VM-UNet and writes a self-describing run folder.

Runs are resumable: every epoch ends with an atomic ``last.pt`` (model, optimizer, scheduler, epoch); each
epoch reseeds every generator from (seed, epoch) and the data pipeline draws its augmentation from (seed, epoch,
index), so a killed run resumed with ``resume=True`` finishes with the same weights and history as an
uninterrupted one (on the CPU). No RNG state is saved: the epoch's reseeding would overwrite a restored one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import vmunet
from vmunet.evaluation import metrics
from vmunet.config import TrainConfig, config_from_dict
from vmunet.data.transforms import recipe_interpolation
from vmunet.ops import resolve_backend
from vmunet.io.limits import voxel_limit
from vmunet.ops.workspace import scan_workspace
from vmunet.data.splits import prepare_training_data
from vmunet.data.subsets import TrainingData, case_names
from vmunet.models import create_model, load_pretrained_vmamba
from vmunet.runtime.device import (autocast, deterministic_algorithms, is_nondeterministic_op, is_out_of_memory,
                                   needs_grad_scaler, progress_bar, seed_everything)
from vmunet.runtime.distributed import (DistInfo, EpochSampler, all_finite, barrier, check_replicas_in_sync,
                                        init_distributed, mean_over_ranks, shutdown_distributed)
from vmunet.runtime.run_folder import (LOCK_FILE, SPLIT_FILE, RunFolderLock, RunInfo, checkpoint_dir,
                                       load_checkpoint, load_weights, read_config_dict, read_split, save_checkpoint,
                                       write_config, write_run_info, write_split)
from vmunet.io.files import write_text_atomic
from vmunet.data import SegmentationDataset
from vmunet.data.fingerprints import case_fingerprints
from vmunet.data.transforms import eval_transform, train_transform

logger = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; nothing is saved for that epoch (the last good checkpoint, if any, is kept)."""


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int | None
    best_score: float | None


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Spared weight decay (what the official code meant to do): every bias, the SS2D's 2-D ``dt_projs_bias``
    (one bias row per scan direction) included, norm weights (all 1-D parameters), D (``Ds``) and A
    (``A_logs``). Decayed: the conv and linear weights, ``x_proj_weight`` and ``dt_projs_weight``."""
    return param.ndim <= 1 or name.endswith(("bias", "A_logs", "Ds"))


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.paper_weight_decay:
        return [{"params": [p for _, p in params], "weight_decay": config.weight_decay}]
    return [{"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": config.weight_decay},
            {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0}]


def check_writable(run_dir: Path) -> None:
    """Fail before training if the run folder cannot be written (read-only, disk full).

    The probe file has a name of its own per call (``mkstemp``): ranks that probe at the same time (a torchrun
    ``--resume``) never delete each other's probe.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=run_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"\0" * 65536)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            os.unlink(probe)
    except OSError as error:
        raise ValueError(f"{run_dir}: run folder is not writable ({error.strerror or error})") from None


def read_history(run_dir: Path, upto_epoch: int) -> list[dict]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= upto_epoch]


def write_history(run_dir: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / "history.csv", buffer.getvalue())


class SummaryWriterOrNone:
    """TensorBoard event files when tensorboard is installed; silently nothing is not an option: log it."""

    def __init__(self, log_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed (pip install 'vmunet[tensorboard]'): no event files")
            else:
                self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict, step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                if value is not None and value == value:
                    self.writer.add_scalar(key, float(value), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CorruptThenAugment:
    """A picklable transform (DataLoader workers): corruption of the raw image, then the recipe."""

    def __init__(self, corrupt, augment):
        self.corrupt, self.augment = corrupt, augment

    def __call__(self, image, label, rng):
        return self.augment(self.corrupt(image, rng), label, rng)


def build_datasets(config: TrainConfig, data: TrainingData):
    augment = train_transform(config.augmentation, config.image_size, config.normalization)
    if data.corrupt is not None:
        augment = CorruptThenAugment(data.corrupt, augment)
    train_set = SegmentationDataset(data.train, augment, seed=config.seed)
    val_transform = eval_transform(config.image_size, config.normalization,
                                   interpolation=recipe_interpolation(config.augmentation))
    val_set = SegmentationDataset(data.val, val_transform, seed=config.seed) if len(data.val) else None
    return train_set, val_set


# What a --resume may change: where the data is, how long the run goes, and how this machine runs it. Everything
# else (batch size, image size, lr, augmentation, ...) would make the resumed run another run.
RESUME_CHANGEABLE = ("epochs", "data", "device", "num_workers", "detect_anomaly", "dist_timeout_minutes",
                     "deterministic", "scan_backend")
PATH_KEYS = ("data", "pretrained")


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with its folders and files absolute, so that a run folder works from any directory."""
    paths = {key: str(Path(getattr(config, key)).expanduser().resolve()) for key in PATH_KEYS if getattr(config, key)}
    return dataclasses.replace(config, **paths)


def _same(key: str, a, b) -> bool:
    if key in PATH_KEYS and a and b:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def resume_config(config: TrainConfig, run_dir: Path, changes: dict | None = None) -> TrainConfig:
    """The saved config of the run in ``run_dir``, with the safe changes applied (``RESUME_CHANGEABLE``).

    ``changes`` is {key: (value, given only by a preset)} as ``vmunet.config.resolve_config`` returns it (the
    command line: only what was typed); None compares every set field of ``config`` (the Python API). A value
    that differs from the saved one is applied when it is safe to change, refused otherwise; a preset is only
    compared, never applied (its epochs would replace the run's own).
    """
    last = checkpoint_dir(run_dir) / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"{last}: nothing to resume (no last checkpoint in the run folder)")
    saved = config_from_dict(read_config_dict(run_dir))
    if changes is None:
        changes = {key: (value, False) for key, value in dataclasses.asdict(config).items() if value is not None}
    refused, applied = [], {}
    for key, (value, by_preset) in changes.items():
        if _same(key, value, getattr(saved, key)):
            continue
        if key not in RESUME_CHANGEABLE:
            refused.append(f"{key} {getattr(saved, key)!r} -> {value!r}")
        elif not by_preset:
            applied[key] = value
    if refused:
        raise ValueError(f"{run_dir}: --resume continues the run as saved, and these settings differ from it: "
                         f"{'; '.join(refused)}; drop them (only {', '.join(RESUME_CHANGEABLE)} may change), "
                         "or start a new run in another --run-dir")
    return with_absolute_paths(dataclasses.replace(saved, **applied)).validate()


def refuse_existing_run(run_dir: Path) -> None:
    """A fresh start writes config.yaml, run.json, history.csv and split.json, so it refuses a folder that holds
    any of them: run.json or a checkpoint make the folder a run (``--resume`` continues it); any other one is
    a file this training did not write (a hand-written config.yaml, say), which it must never replace."""
    checkpoints = sorted(checkpoint_dir(run_dir).glob("*.pt")) if checkpoint_dir(run_dir).is_dir() else []
    if (checkpoint_dir(run_dir) / "last.pt").is_file():
        raise ValueError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --run-dir")
    if (run_dir / "run.json").exists() or checkpoints:
        held = ", ".join(p.name for p in [run_dir / "run.json", *checkpoints] if p.exists())
        raise ValueError(f"{run_dir}: already holds a run ({held}) that --resume cannot continue (no "
                         "checkpoints/last.pt); choose another --run-dir, or remove the folder if nothing in it is "
                         "yours to keep")
    foreign = [run_dir / name for name in StartCleanup.MADE if (run_dir / name).exists()]
    if foreign:
        raise ValueError(f"{foreign[0]}: already in the run folder, and a new training writes its own "
                         f"{foreign[0].name} there; move the file elsewhere (a --config from outside the run folder) "
                         "or choose another --run-dir")


def record_split(run_dir: Path, config: TrainConfig, data: TrainingData, resume: bool) -> None:
    """Write split.json (the case ids that train and that select, and the fingerprints of their files' contents);
    a resumed run must see the same cases."""
    if config.dataset == "demo":  # one volume built in memory: its slices are not cases
        return
    train_ids, val_ids = case_names(data.train), case_names(data.val)
    if resume and (run_dir / SPLIT_FILE).is_file():
        saved = read_split(run_dir)
        if saved != {"train": train_ids, "val": val_ids}:
            changed = sorted(set(saved["train"] + saved["val"]) ^ set(train_ids + val_ids))
            raise ValueError(f"{run_dir / SPLIT_FILE}: the data's training cases differ from the split this run "
                             f"trained on ({', '.join(changed[:3]) or 'the same cases, other folds'}); resume with "
                             "the data it trained on")
        return

    fingerprints = {**(case_fingerprints(data.train) or {}), **(case_fingerprints(data.val) or {})}
    write_split(run_dir, train_ids, val_ids, fingerprints or None)


def check_first_samples(data: TrainingData) -> None:
    """Read the first training and selection sample before the run folder is made: a wrong mask format or
    label range fails here, leaving nothing behind (a bad file further on is found when it is read)."""
    for samples in (data.train, data.val):
        if len(samples):
            samples[0]


class StartCleanup:
    """What a fresh start creates in the run folder, removed if it fails before its first checkpoint: only what
    was not there before it began (a file or TensorBoard event file of someone else's stays)."""

    MADE = ("config.yaml", "run.json", "history.csv", SPLIT_FILE)

    def __init__(self, run_dir: Path, lock_existed: bool):
        self.run_dir = run_dir
        self.created_folder = not run_dir.exists()
        self.existing = {name for name in self.MADE if (run_dir / name).exists()} | ({LOCK_FILE} if lock_existed
                                                                                     else set())
        board = run_dir / "tensorboard"
        self.created_board = not board.exists()
        self.board_before = set(board.iterdir()) if board.is_dir() else set()
        self.created_checkpoints = not checkpoint_dir(run_dir).exists()

    def remove_folder_if_empty(self) -> None:
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    def __call__(self) -> None:
        if (checkpoint_dir(self.run_dir) / "last.pt").is_file():
            return
        for name in self.MADE:
            if name not in self.existing:
                with contextlib.suppress(OSError):
                    (self.run_dir / name).unlink()
        board = self.run_dir / "tensorboard"
        if self.created_board:
            shutil.rmtree(board, ignore_errors=True)
        elif board.is_dir():  # this start's event files only
            for entry in set(board.iterdir()) - self.board_before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()
        if self.created_checkpoints:
            with contextlib.suppress(OSError):
                checkpoint_dir(self.run_dir).rmdir()  # only if empty
        if LOCK_FILE not in self.existing:
            with contextlib.suppress(OSError):
                (self.run_dir / LOCK_FILE).unlink()  # still held: another start waits on nothing
        self.remove_folder_if_empty()


@scan_workspace()  # frees the CPU scan's scratch buffers when training ends
def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, data: TrainingData | None = None,
          progress: bool = True, echo=print, changes: dict | None = None) -> TrainResult:
    """Train and return the history; ``data`` overrides the folder readers (used by the demo).

    Under torchrun every rank calls this; only rank 0 writes the run folder, and holds its lock for the whole
    run (a second training in the folder, ``--resume`` included, fails at once). ``resume`` continues the saved
    run; ``changes`` (see ``resume_config``) says which settings were given, None: every set field of ``config``.
    """
    run_dir = Path(run_dir)
    dist_info, device = init_distributed(config.device, config.dist_timeout_minutes)
    lock = RunFolderLock(run_dir)
    try:
        with voxel_limit(config.max_voxels):  # every file read in this run is checked against it
            return _train(config, run_dir, resume, data, progress and dist_info.is_main,
                          echo if dist_info.is_main else (lambda *a, **k: None), dist_info, device, changes, lock)
    finally:
        lock.release()
        shutdown_distributed()


def _start(config, run_dir, resume, data, changes, lock: RunFolderLock, echo):
    """Rank 0: lock the folder, resolve the config, check the data, then make the folder (fresh runs). A fresh
    start that fails here leaves the folder as it found it."""
    cleanup = None
    lock_existed = (run_dir / LOCK_FILE).exists()
    try:
        if run_dir.is_dir():
            lock.acquire()
        if not resume:  # what the folder held before this start, seen under its lock
            cleanup = StartCleanup(run_dir, lock_existed)
        config = resume_config(config, run_dir, changes) if resume else with_absolute_paths(config)
        if not resume:
            refuse_existing_run(run_dir)
        data = data or prepare_training_data(config)
        check_first_samples(data)
        check_writable(run_dir)
        if lock.handle is None:
            lock.acquire()
            if not resume:
                refuse_existing_run(run_dir)  # another start may have finished in between
    except BaseException:
        if cleanup is not None and lock.handle is not None:
            cleanup()
        elif cleanup is not None:  # not holding the lock: another start may be writing; undo only our mkdir
            cleanup.remove_folder_if_empty()
        lock.release()
        raise
    return config, data, cleanup


def _train(config, run_dir, resume, data, progress, echo, dist_info: DistInfo, device, changes,
           lock: RunFolderLock) -> TrainResult:
    cleanup = None
    if dist_info.is_main:
        config, data, cleanup = _start(config, run_dir, resume, data, changes, lock, echo)
    barrier(dist_info)
    if not dist_info.is_main:
        if resume:
            config = resume_config(config, run_dir, changes)  # every rank resumes from the same saved config
        data = data or prepare_training_data(config)
    try:
        try:
            with deterministic_algorithms(config.deterministic):
                return _fit(config, run_dir, resume, data, progress, echo, dist_info, device)
        except NonFiniteLossError as error:
            last = checkpoint_dir(run_dir) / "last.pt"
            kept = (f"{last} of epoch {load_checkpoint(last).get('epoch')} is kept" if last.is_file()
                    else "no checkpoint had been written")
            raise NonFiniteLossError(f"{error}; stopped without saving ({kept}); try a lower lr, no --amp, or "
                                     "--detect-anomaly to find the operation") from None
        except Exception as error:
            if is_nondeterministic_op(error):
                raise ValueError(f"--deterministic: {str(error).splitlines()[0]} (train on the CPU, or without "
                                 "--deterministic)") from None
            if not is_out_of_memory(error):
                raise
            raise MemoryError(f"out of memory on {device} training {config.model} at image_size "
                              f"{config.image_size}, batch {config.batch_size} per process: try a smaller "
                              "--image-size or --batch-size" + (" or --amp" if not config.amp else "")) from None
    except BaseException:
        if cleanup is not None:
            cleanup()  # a fresh start that failed before its first checkpoint leaves nothing behind
        raise


def _fit(config, run_dir, resume, data, progress, echo, dist_info: DistInfo, device) -> TrainResult:
    seed_everything(config.seed)  # the initial weights, identical on every rank
    model = create_model(config.model, num_classes=data.num_classes, input_channels=data.input_channels,
                         scan_backend=config.scan_backend,
                         **({} if config.drop_path_rate is None else {"drop_path_rate": config.drop_path_rate}))
    if config.pretrained and not resume:
        echo(load_pretrained_vmamba(model, config.pretrained).summary())
    model.to(device)
    # What "auto" (or use_backend) means here; run.json records it, config.yaml keeps what was asked for.
    scan_backend = resolve_backend(config.scan_backend, device.type)
    if config.deterministic and device.type == "cuda" and scan_backend == "mamba_ssm":
        # Its backward kernel accumulates dA with atomic adds, which PyTorch's deterministic switch cannot see.
        echo("warning: --deterministic: the mamba_ssm scan's CUDA backward adds gradients atomically, so runs can "
             "still differ; --scan-backend torch repeats exactly (or fails on an op it cannot make deterministic)")
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.t_max, eta_min=config.eta_min)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device, config.amp) else None
    from vmunet.losses import build_loss

    loss_fn = build_loss(data.num_classes, config.loss_weights)

    start_epoch, best_score, best_epoch = 0, -math.inf, None
    if resume:  # every rank loads the same checkpoint
        payload = load_checkpoint(checkpoint_dir(run_dir) / "last.pt")
        load_weights(model, payload["model"], "last.pt")
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        start_epoch, best_epoch = int(payload["epoch"]), payload.get("best_epoch")
        best_score = payload.get("best_score", -math.inf)
        echo(f"resuming {run_dir} after epoch {start_epoch}")
    history = read_history(run_dir, start_epoch) if dist_info.is_main else []

    if dist_info.is_main:
        record_split(run_dir, config, data, resume)
        write_config(run_dir, {**config.to_dict(), "num_classes": data.num_classes,
                               "input_channels": data.input_channels, "label_names": data.label_names})
        write_run_info(run_dir, RunInfo(model_preset=config.model, model_config=dict(model.config),
                                        label_names=data.label_names, normalization=config.normalization,
                                        image_size=config.image_size, dataset=config.dataset,
                                        version=vmunet.__version__,
                                        interpolation=recipe_interpolation(config.augmentation),
                                        label_colours=data.label_colours, scan_backend=scan_backend))
    train_set, val_set = build_datasets(config, data)
    sampler = EpochSampler(len(train_set), config.seed, dist_info.rank, dist_info.world_size)
    network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else model
    global_batch = config.batch_size * dist_info.world_size * config.accumulate
    echo(f"training on {len(data.train)} samples, selecting on {len(data.val)} ({data.val_source}); "
         f"batch {config.batch_size} per process x {dist_info.world_size} process(es) x accumulate "
         f"{config.accumulate} = global batch {global_batch}; device {device}, scan backend {scan_backend}")
    if val_set is None:
        echo(f"warning: no samples to select the best checkpoint on ({len(data.train)} training samples; holding "
             "out needs val_fraction > 0 and at least 2 training cases): best.pt is the epoch with the lowest "
             "training loss")
    board = SummaryWriterOrNone(run_dir / "tensorboard", enabled=dist_info.is_main)
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            train_loss = train_one_epoch(network, train_set, sampler, loss_fn, optimizer, scaler, config, device,
                                         epoch, progress, dist_info)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            check_replicas_in_sync(model, dist_info, device)
            if not dist_info.is_main:
                barrier(dist_info)  # rank 0 validates and writes the checkpoints meanwhile
                continue
            val_loss, val_dice = math.nan, math.nan
            last_epoch = epoch + 1 == config.epochs
            validated = val_set is not None and ((epoch + 1) % config.val_interval == 0 or last_epoch)
            if validated:
                val_loss, val_dice = validate(model, val_set, loss_fn, config, device, data.num_classes, progress)
            row = {"epoch": epoch + 1, "train_loss": f"{train_loss:.6f}", "val_loss": f"{val_loss:.6f}",
                   "val_dice": f"{val_dice:.6f}", "lr": f"{lr:.8g}",
                   "seconds": f"{time.perf_counter() - started:.2f}"}
            history.append(row)
            # Without a selection set (warned above) the lowest training loss chooses. An undefined Dice (no
            # class in the selection set, predicted or true) ranks below every defined one.
            score = -train_loss if val_set is None else (
                (-math.inf if math.isnan(val_dice) else val_dice) if validated else None)
            improved = score is not None and (best_epoch is None or score > best_score)
            if improved:
                best_score, best_epoch = score, epoch + 1
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                       "epoch": epoch + 1, "best_score": best_score, "best_epoch": best_epoch,
                       "version": vmunet.__version__, "model_config": dict(model.config)}
            save_checkpoint(checkpoint_dir(run_dir) / "last.pt", payload)
            if improved:
                save_checkpoint(checkpoint_dir(run_dir) / "best.pt", payload)
            write_history(run_dir, history)
            board.scalars({"loss/train": train_loss, "loss/val": val_loss, "dice/val": val_dice, "lr": lr},
                          epoch + 1)
            scores = (f"val loss {val_loss:.4f}, val dice {val_dice:.4f}" if val_set is not None
                      else "no selection set")
            echo(f"epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f}, {scores}, lr {lr:.2e}, "
                 f"{float(row['seconds']):.1f} s" + (" *best*" if improved else ""))
            barrier(dist_info)
    finally:
        board.close()
    return TrainResult(run_dir, history, best_epoch, None if best_epoch is None else best_score)


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """A DataLoader's own generator. Without one, every iterator draws its worker base seed from the global
    RNG, so the drop-path masks depended on how the loader was iterated (wrapping it in a progress bar draws
    differently: the demo scored 0.839 with --no-progress and 0.852 with bars, same seed)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)


def step_sizes(samples: int, batch_size: int, steps: int) -> list[int]:
    """Samples in each of an epoch's first ``steps`` batches (the last batch of an epoch may be short)."""
    return [min(batch_size, samples - i * batch_size) for i in range(steps)]


def group_samples(sizes: list[int], step: int, accumulate: int) -> int:
    """Samples in the accumulation group of ``step``: groups are steps [0, N), [N, 2N), ..., the last one cut
    short by the end of the epoch (or ``max_steps_per_epoch``)."""
    start = step - step % accumulate
    return sum(sizes[start:start + accumulate])


def train_one_epoch(network, dataset, sampler: EpochSampler, loss_fn, optimizer, scaler, config: TrainConfig,
                    device, epoch: int, progress: bool, dist_info: DistInfo) -> float:
    """One pass over the epoch's samples; returns the mean training loss over all ranks."""
    seed_everything(config.seed + 7919 * dist_info.rank, epoch)  # drop-path masks differ per rank
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", generator=loader_generator(config.seed, epoch))
    steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
    sizes = step_sizes(len(sampler), config.batch_size, steps)
    network.train()
    optimizer.zero_grad(set_to_none=True)
    total, count = 0.0, 0
    bar = progress_bar(loader, steps, f"epoch {epoch + 1}/{config.epochs}", progress)
    with torch.autograd.set_detect_anomaly(config.detect_anomaly):
        for step, (images, labels) in enumerate(bar):
            if step >= steps:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, config.amp):
                logits = network(images)
            loss = loss_fn(logits.float(), labels)
            if not all_finite(loss, dist_info):
                raise NonFiniteLossError(f"loss is not finite at epoch {epoch + 1}, step {step + 1}")
            update = (step + 1) % config.accumulate == 0 or step + 1 == steps
            # Gradients are only all-reduced on the micro-step that updates.
            sync = network.no_sync() if dist_info.enabled and not update else contextlib.nullcontext()
            with sync:
                # Each micro-batch's mean loss weighted by its share of the group's samples: the group's update
                # is that of one batch of all its samples, also for a short last group or a short last batch.
                backward_loss = loss * (images.shape[0] / group_samples(sizes, step, config.accumulate))
                (scaler.scale(backward_loss) if scaler else backward_loss).backward()
            if update:
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            total += loss.item() * images.shape[0]
            count += images.shape[0]
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / count:.4f}")
    return mean_over_ranks(total, count, dist_info, device)


@torch.no_grad()
def validate(model, dataset, loss_fn, config: TrainConfig, device, num_classes: int, progress: bool):
    """Mean loss and mean foreground Dice pooled over the selection set, at the network size: per class from
    the pixels counted over all images, by evaluate's rule (``metrics.dice_from_counts``: a class absent from both
    the truth and the prediction is left out; NaN when every class is)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers,
                        generator=loader_generator(config.seed, -1))
    classes = max(num_classes, 2)
    tp, fp, fn = (torch.zeros(classes, dtype=torch.float64) for _ in range(3))
    total, count = 0.0, 0
    for images, labels in progress_bar(loader, len(loader), "validation", progress):
        images, labels = images.to(device), labels.to(device)
        with autocast(device, config.amp):
            logits = model(images)
        total += loss_fn(logits.float(), labels).item() * images.shape[0]
        count += images.shape[0]
        pred = (logits[:, 0] >= 0).long() if num_classes == 1 else logits.argmax(1)
        pred, labels = pred.flatten().cpu(), labels.flatten().cpu()
        tp += torch.bincount(labels[pred == labels], minlength=classes)[:classes].double()
        fp += torch.bincount(pred[pred != labels], minlength=classes)[:classes].double()
        fn += torch.bincount(labels[pred != labels], minlength=classes)[:classes].double()
    dice = metrics.dice_from_counts(tp[1:].numpy(), fp[1:].numpy(), fn[1:].numpy())  # (classes - 1,)
    return total / max(count, 1), metrics.nanmean(dice)
