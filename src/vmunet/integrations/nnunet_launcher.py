"""``vmunet nnunet COMMAND ARGS``: nnU-Net v2's own entry points (``nnUNetv2_COMMAND``) with the trainer search
starting at our trainers and the folders of ``nnUNet_extTrainer``.

Why: nnU-Net looks for a ``-tr`` class by importing every module of its own trainer folder first and only then
the ``nnUNet_extTrainer`` folders. Some of its own trainers import timm, which imports torchvision; where
torchvision cannot be imported (a CPU torch without its matching torchvision, say) every ``-tr`` but the default
fails before our folder is reached. The launcher searches our folder and ``nnUNet_extTrainer`` first and falls
back to nnU-Net's search for nnU-Net's own trainers. Everything else (arguments, outputs) is nnU-Net's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib import import_module
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

TRAINER_DIR = Path(__file__).resolve().parent / "nnunet_trainers"
ENTRY_PREFIX = "nnUNetv2_"


def trainer_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` (it holds one module re-exporting our trainers)."""
    return TRAINER_DIR


def require_nnunet() -> None:
    try:
        import_module("nnunetv2")
    except ImportError as error:
        raise ImportError(f"vmunet nnunet needs nnU-Net v2 ({error}): pip install 'vmunet[nnunet]' with your torch "
                          "kept (see the README's 'With nnU-Net')") from error


def entry_points() -> dict[str, str]:
    """nnU-Net's console scripts by command: {"train": "nnunetv2.run.run_training:run_training_entry", ...}."""
    require_nnunet()
    try:
        scripts = distribution("nnunetv2").entry_points
    except PackageNotFoundError as error:
        raise ImportError("nnunetv2 is importable but not installed as a package (no entry points); "
                          "pip install 'vmunet[nnunet]'") from error
    return {ep.name[len(ENTRY_PREFIX):]: ep.value for ep in scripts
            if ep.group == "console_scripts" and ep.name.startswith(ENTRY_PREFIX)}


def trainer_search_path() -> list[str]:
    """Our trainer folder, then the ``nnUNet_extTrainer`` folders in their order."""
    extra = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    return [str(TRAINER_DIR), *(p for p in extra if Path(p).resolve() != TRAINER_DIR)]


def find_trainer_class(trainer_name: str, fallback=None):
    """The ``-tr`` class from our folder or ``nnUNet_extTrainer`` (searched as nnU-Net searches those), else
    from nnU-Net's own search (``fallback``, nnU-Net's function by default)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities import find_objects
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    for folder in trainer_search_path():
        if not Path(folder).is_dir():
            continue
        found = recursive_find_python_class(folder, trainer_name, None, base_folder=folder,
                                            cleanup_imports_from_base_folder=True)
        if found is not None:
            if not (isinstance(found, type) and issubclass(found, nnUNetTrainer)):
                raise ValueError(f"{folder}: {trainer_name} is not a subclass of nnU-Net's nnUNetTrainer")
            return found
    return (fallback or find_objects.recursive_find_trainer_class_by_name)(trainer_name)


def search_our_trainers_first() -> None:
    """Point nnU-Net's trainer lookup (its function and the modules that imported it by name) at
    ``find_trainer_class``, keeping nnU-Net's own function as the fallback."""
    from nnunetv2.utilities import find_objects

    original = find_objects.recursive_find_trainer_class_by_name
    if getattr(original, "vmunet_search", False):
        return

    def lookup(trainer_name: str):
        return find_trainer_class(trainer_name, fallback=original)

    lookup.vmunet_search = True
    for module in [find_objects, *(m for name, m in list(sys.modules.items()) if name.startswith("nnunetv2."))]:
        if getattr(module, "recursive_find_trainer_class_by_name", None) is original:
            module.recursive_find_trainer_class_by_name = lookup


def run_nnunet(command: str, args: Sequence[str]) -> int:
    """Run ``nnUNetv2_<command> ARGS`` in this process with our trainer search; returns its exit status."""
    commands = entry_points()
    if command not in commands:
        raise ValueError(f"unknown nnU-Net command {command!r}; choose one of {', '.join(sorted(commands))} "
                         f"(or trainer-dir)")
    module_name, _, function_name = commands[command].partition(":")
    search_our_trainers_first()  # before the entry module imports the function by name
    entry = getattr(import_module(module_name), function_name)
    saved_argv = sys.argv
    sys.argv = [f"{ENTRY_PREFIX}{command}", *args]  # nnU-Net's entry points parse sys.argv
    try:
        result = entry()
    except SystemExit as exit_:  # argparse's --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
    return result if isinstance(result, int) else 0
