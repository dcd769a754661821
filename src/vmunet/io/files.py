"""Files written whole or not at all (checkpoints, tables, arrays; the format writers in ``images``, ``nifti``,
``sitk`` and ``dicom`` build on it), and outputs that must not replace a user's files.

Every writer goes through ``atomic_write_bytes`` (a temporary file in the same folder, fsync, rename), so a
crash or a full disk never leaves a torn file where a finished one is expected; the file gets the permissions a
plain ``open()`` would (0o666 less the umask), and a failed write names the destination and keeps its old file.
Where a user names the output (``predict --out``, ``export --out``, ``evaluate --out``, ``cv --out``),
``check_output_folder`` / ``check_output_file``, ``refuse_overwriting`` and ``refuse_existing_outputs`` run before
any work: an output never replaces an input, nor an existing file without ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _RecordingHandle:
    """A file handle that remembers the OSError of a failed write: torch.save reports it as a RuntimeError."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name):
        return getattr(self.handle, name)


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename: a crash never leaves a torn file.

    A failure (a full disk, a read-only folder) raises one OSError naming ``path``, not the temporary file,
    and says that the previous file, if any, is untouched.
    """
    path = Path(path)
    existed = path.is_file()
    tmp, recorder = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            recorder = _RecordingHandle(handle)
            write(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; a plain open() would not
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = recorder.error if recorder is not None and recorder.error is not None else error
        if isinstance(cause, OSError) or isinstance(error, RuntimeError) and "write" in str(error):
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause).splitlines()[0]
            kept = f"the previous {path.name} is kept" if existed else f"no {path.name} was written"
            failure = OSError(f"{path}: cannot write ({reason}); {kept}")
            failure.errno = getattr(cause, "errno", None)
            raise failure from None
        raise


def check_output_folder(folder: str | Path, flag: str = "--out") -> Path:
    """Fail before any work if ``folder`` cannot hold outputs: an existing file (or a file where a folder of its
    path should be), or not writable (a probe in it, or in the nearest folder above it that exists). Makes
    nothing: the folder is created by the first output written into it, so a command that fails before its
    first output leaves no empty folder behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: {flag} must be a folder, and this is a file")
    existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), Path("."))
    if not existing.is_dir():
        raise ValueError(f"{folder}: cannot make the {flag} folder: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == folder else f" (checked in {existing}, the nearest folder of it that exists)"
        raise ValueError(f"{folder}: the {flag} folder is not writable ({error.strerror or error}){where}") from None
    return folder


def refuse_existing_outputs(out_dir: str | Path, outputs, overwrite: bool = False, flag: str = "--out") -> None:
    """Raise before anything is written if any of ``outputs`` already exists (a file of the user's, the ground
    truth of a dataset, an earlier result), listing a few, unless ``overwrite`` says to replace them."""
    if overwrite:
        return
    out_dir = Path(out_dir)
    existing = [Path(p) for p in dict.fromkeys(outputs) if os.path.lexists(p)]
    if existing:
        def shown(path: Path) -> str:
            return str(path.relative_to(out_dir)) if path.is_relative_to(out_dir) else str(path)

        names = ", ".join(shown(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3
                                                           else "")
        raise ValueError(f"{out_dir}: {len(existing)} output file(s) already exist ({names}); pass --overwrite to "
                         f"replace them, or choose another {flag}")


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Fail before any work if ``path`` cannot be written: a folder, or its folder not writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: {flag} is a folder; give a file name, e.g. {path / 'model.onnx'}")
    blocker = next((folder for folder in path.parents if folder.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{path}: cannot write the {flag} file: {blocker} is a file, not a folder")
    check_output_folder(path.parent, f"{flag} file's")
    return path


def _identity(path: Path):
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def refuse_overwriting(outputs, protected, flag: str = "--out") -> None:
    """Raise before anything is written if an output resolves (symlinks, ``.``, ``..``, hard links) to a
    protected file (an input, a checkpoint)."""
    by_path = {Path(p).resolve(): Path(p) for p in protected}
    by_inode = {_identity(p): p for p in by_path.values() if _identity(p) is not None}
    for output in outputs:
        output = Path(output)
        source = by_path.get(output.resolve()) or by_inode.get(_identity(output) or object())
        if source is not None:
            raise ValueError(f"{output}: would overwrite the input {source}; choose a {flag} outside the "
                             "input folders")


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode()))


def publish_together(out_dir: str | Path, writers: dict) -> None:
    """Write a group of files that belong together (``{name: write(path)}``) into ``out_dir``: all of them, or
    none (each previous file, if any, kept as it was).

    Each ``write`` gets a path in a staging folder of its own inside ``out_dir`` (so two writers into one folder
    never share a temporary name); the files are then moved into place one by one. Should a move fail, the files
    already moved are put back: the previous file restored from a hard link (a copy where links are not
    supported) taken before the move, or the new file removed where there was none.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    published: list[tuple[Path, Path | None]] = []  # (destination, its previous file's keepsake or None)
    try:
        for name, write in writers.items():
            write(staging / name)
            os.chmod(staging / name, 0o666 & ~current_umask())
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        for index, name in enumerate(writers):
            destination = out_dir / name
            previous = None
            if destination.is_file():
                previous = staging / f".previous-{index}"
                _keep(destination, previous)
            os.replace(staging / name, destination)
            published.append((destination, previous))
    except BaseException as error:
        for destination, previous in reversed(published):
            if previous is not None:
                os.replace(previous, destination)
            else:
                destination.unlink(missing_ok=True)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            failure = OSError(f"{out_dir}: cannot write {', '.join(writers)} ({reason}); none of them was changed")
            failure.errno = error.errno
            raise failure from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _keep(path: Path, keepsake: Path) -> None:
    """A second name for ``path``'s current content that survives ``path`` being replaced."""
    try:
        os.link(path, keepsake)
    except OSError:  # a file system without hard links
        shutil.copy2(path, keepsake)


