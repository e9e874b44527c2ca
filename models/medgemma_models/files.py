"""Atomic file output: write to NAME.partial beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def check_writable(path: Path, force: bool = False) -> None:
    """Fail early, before any heavy work, when `path` cannot be written."""
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists (pass --force to replace it)")


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path`, on any failure it is removed.

    Readers never see a half-written file, and an interrupted run (Ctrl-C, a full disk)
    leaves nothing behind.
    """
    path = Path(path)
    check_writable(path, force)
    temporary = partial_path(path)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        if path.exists() and not force:
            raise OutputError(f"{path} already exists (pass --force to replace it)")
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut can undo it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
