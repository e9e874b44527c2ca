"""The history's database file: how it is opened (private, WAL, checked), what a failed write
means in the user's words, and how a damaged file is moved aside."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from medgemma_models.errors import StoreError
from medgemma_models.files import PRIVATE_FILE_MODE, make_private

# Short, because writes run where the user waits: a write that cannot get the lock in this
# time fails, and the streaming writer keeps its text and tries again at its next save.
BUSY_TIMEOUT_S = 2.0
# The files SQLite keeps beside the database in WAL mode; they hold chat text too.
SIDE_SUFFIXES = ("-wal", "-shm")


class HistoryWriteError(StoreError):
    """A change to the chat history could not be saved; nothing of it was written."""


class HistoryCorruptError(StoreError):
    """The chat history file is damaged; `move_aside(path)` sets it aside for a fresh start."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path} is not a usable chat history: {detail}")
        self.path = path


# Why a write failed, in the user's words, by SQLite's primary result code.
WRITE_PROBLEMS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_BUSY: "another program is holding the file (is the app open twice?)",
    sqlite3.SQLITE_LOCKED: "another program is holding the file (is the app open twice?)",
    sqlite3.SQLITE_READONLY: "the file is read-only",
    sqlite3.SQLITE_IOERR: "the disk reported an error",
    sqlite3.SQLITE_CORRUPT: "the file is damaged",
}
CORRUPTION = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if code is not None else None  # extended codes carry the primary one in the low byte


def side_files(path: Path) -> list[Path]:
    """The -wal and -shm paths of a database file."""
    return [path.with_name(path.name + suffix) for suffix in SIDE_SUFFIXES]


def make_files_private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it; SQLite gives -wal and -shm its mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
    for file in (path, *side_files(path)):
        if file.exists():  # files of an older version, made under the usual umask
            make_private(file)


def move_aside(path: Path) -> Path:
    """Rename a damaged history (with its -wal and -shm) to `history.corrupt-<time>.sqlite3`.

    The next `History(path)` then starts a fresh, empty history; the old file stays for rescue.
    Returns the new name of the database file.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.corrupt-{stamp}{path.suffix}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.stem}.corrupt-{stamp}-{counter}{path.suffix}")
    try:
        # The log first: a -wal left beside a new database would be replayed into it.
        for side, side_target in zip(side_files(path), side_files(target)):
            if side.exists():
                os.replace(side, side_target)
        os.replace(path, target)
    except OSError as exc:
        raise StoreError(f"could not move the damaged chat history {path} aside: {exc.strerror or exc}") from exc
    return target
