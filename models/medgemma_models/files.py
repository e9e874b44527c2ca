"""Atomic output: write to NAME.partial beside the target, fsync, rename; and the free-space check before."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import OutputError

PARTIAL_SUFFIX = ".partial"
# Chats and the files made from them are medical data: only their owner may read them.
PRIVATE_FILE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700


def partial_path(path: Path, per_process: bool = False) -> Path:
    """NAME.partial, or NAME.<pid>.partial when several processes may write NAME at once."""
    return path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}" if per_process else path.name + PARTIAL_SUFFIX)


def create_partial(path: Path, per_process: bool = False) -> Path:
    """Create NAME.partial as a new empty file of our own, and return its path.

    Whatever has that name already (a stale partial, or a symlink planted to make us overwrite its
    target) is unlinked, never followed, and the file is created exclusively. Writers that open it
    by name later write into this file as long as no one else may rename files in the folder (a
    private folder, or a sticky one such as /tmp).
    """
    temporary = partial_path(path, per_process)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE_MODE)
    os.close(fd)
    return temporary


def make_private(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """Give `path` exactly `mode` on POSIX, whatever the umask; a no-op when it has it already.

    On Windows the permission bits mean nothing: files inherit the ACL of their folder, and the
    user's own profile folders (where the app keeps its data) are private to that user.
    """
    if os.name == "posix" and os.stat(path).st_mode & 0o777 != mode:
        os.chmod(path, mode)


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
def atomic_output(path: Path, force: bool = False, per_process: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path`, on any failure it is removed.

    Readers never see a half-written file, and an interrupted run (Ctrl-C, a full disk)
    leaves nothing behind. `per_process`: a temporary name of this process's own, for a file
    several processes may write at the same time (each renames a whole copy; the last one stays).
    """
    path = Path(path)
    check_writable(path, force)
    temporary = partial_path(path, per_process)
    try:
        create_partial(path, per_process)
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        make_private(temporary)  # exact 0600 whatever the umask, and whoever created the file
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


@contextlib.contextmanager
def atomic_folder(path: Path, force: bool = False) -> Iterator[Path]:
    """`atomic_output` for a folder: yield NAME.partial/, new and empty; on success each file in it
    reaches the disk and it takes the place of `path` (with force, the old folder is moved aside
    first and removed last); on any failure it is removed."""
    path = Path(path)
    check_writable(path, force)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder")
    temporary = partial_path(path)
    replaced = path.with_name(path.name + ".replaced")
    shutil.rmtree(temporary, ignore_errors=True)  # left by a killed run
    try:
        temporary.mkdir()
        yield temporary
        for file in temporary.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as written:
                    os.fsync(written.fileno())
        if path.exists():
            if not force:
                raise OutputError(f"{path} already exists (pass --force to replace it)")
            shutil.rmtree(replaced, ignore_errors=True)
            path.rename(replaced)
        temporary.rename(path)
        _fsync_folder(path.parent)
        shutil.rmtree(replaced, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise OutputError(f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def check_free_space(sizes: Mapping[Path, int]) -> None:
    """Refuse before any work when the files about to be written (path -> expected bytes) do not
    fit on their disks; files on one file system are added up."""
    needed: dict[int, tuple[Path, int]] = {}
    for path, size in sizes.items():
        folder = Path(path).parent
        device = os.stat(folder).st_dev
        first, total = needed.get(device, (folder, 0))
        needed[device] = (first, total + size)
    for folder, total in needed.values():
        free = shutil.disk_usage(folder).free
        if total > free:
            raise OutputError(f"not enough disk space in {folder}: the output needs about {format_bytes(total)}, "
                              f"and {format_bytes(free)} is free")


def format_bytes(n: int) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as file managers show sizes)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


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
