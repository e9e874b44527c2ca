"""The chat history when things go wrong, on real SQLite files: a full disk, a locked file, a
failed COMMIT, a damaged database at start-up, and files other users could read."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from medgemma_desktop.history import (
    History,
    HistoryCorruptError,
    HistoryWriteError,
    StreamingMessageWriter,
    move_aside,
    side_files,
)
from medgemma_models.errors import MedGemmaError, StoreError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "history.sqlite3"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> Iterator[tuple[History, sqlite3.Connection]]:
    """A history and the very SQLite connection it opened, to set that connection's size limit.

    `max_page_count` belongs to a connection, not to the file, so the test needs the history's own.
    """
    connections: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def connect(*args, **kwargs) -> sqlite3.Connection:
        connection = real_connect(*args, **kwargs)
        connections.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", connect)
    history = History(db_path)
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    (connection,) = connections
    yield history, connection
    history.close()


def fill_the_disk(connection: sqlite3.Connection) -> None:
    """Let the database grow no more: the next page it needs fails with SQLITE_FULL, as on a full disk."""
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")


def free_the_disk(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA max_page_count = 1073741823")


BIG = "symptoms " * 2000  # about 18 kB: needs new pages


def test_disk_full_is_one_typed_error_and_later_writes_work(opened) -> None:
    history, connection = opened
    chat = history.create_chat("full disk")
    fill_the_disk(connection)
    with pytest.raises(HistoryWriteError, match="the disk is full") as caught:
        history.add_message(chat, "user", BIG)
    assert isinstance(caught.value, MedGemmaError) and "\n" not in str(caught.value)
    assert str(history.path) in str(caught.value)
    assert history.messages(chat) == []  # nothing half-written
    free_the_disk(connection)
    history.add_message(chat, "user", BIG)
    history.set_setting("after", 1)
    assert [m.text for m in history.messages(chat)] == [BIG]


def test_a_failed_commit_is_rolled_back(db_path: Path) -> None:
    # A check SQLite makes only at COMMIT: a deferred foreign key, broken by a trigger on one text.
    with History(db_path) as history:
        chat = history.create_chat("commit")
    with sqlite3.connect(db_path) as other:
        other.execute("CREATE TABLE guard (chat INTEGER REFERENCES chats(id) DEFERRABLE INITIALLY DEFERRED)")
        other.execute(
            "CREATE TRIGGER poison AFTER INSERT ON messages WHEN NEW.text = 'poison'"
            " BEGIN INSERT INTO guard VALUES (-1); END"
        )
    other.close()
    with History(db_path) as history:
        with pytest.raises(HistoryWriteError, match="could not save to the chat history"):
            history.add_message(chat, "user", "poison")
        # Without the rollback this fails with "cannot start a transaction within a transaction".
        history.add_message(chat, "user", "fine")
        history.rename_chat(chat, "still writable")
        assert [m.text for m in history.messages(chat)] == ["fine"]
        assert history.chat(chat).title == "still writable"


def test_a_locked_file_fails_after_a_short_wait_and_works_once_released(db_path: Path) -> None:
    with History(db_path) as history:
        chat = history.create_chat("busy")
        holder = sqlite3.connect(db_path, timeout=0, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another program holding the write lock
        try:
            with pytest.raises(HistoryWriteError, match="another program is holding the file"):
                history.add_message(chat, "user", "while locked")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        history.add_message(chat, "user", "after")
        assert [m.text for m in history.messages(chat)] == ["after"]


def test_streaming_writer_keeps_the_text_and_retries(opened) -> None:
    history, connection = opened
    chat = history.create_chat()
    answer = history.add_message(chat, "model", "", complete=False)
    now = [0.0]
    writer = StreamingMessageWriter(history, answer, interval=1.0, clock=lambda: now[0])
    writer.append("start ")
    writer.flush()
    assert not writer.pending
    fill_the_disk(connection)

    writer.append(BIG)
    with pytest.raises(HistoryWriteError, match="the disk is full"):  # the first failure is told once
        writer.flush()
    assert writer.pending and writer.error is not None
    now[0] += 1.0
    writer.append("more ")  # fails again, quietly, when its interval comes
    writer.flush()
    writer.finish({"finish_reason": "stop"}, complete=True)  # the final state waits too
    assert writer.pending
    stored = history.message(answer)
    assert stored.text == "start " and not stored.complete

    free_the_disk(connection)
    writer.flush()
    assert not writer.pending and writer.error is None
    stored = history.message(answer)
    assert stored.text == "start " + BIG + "more "
    assert stored.complete and stored.meta == {"finish_reason": "stop"}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "overwritten page"])
def test_a_damaged_file_at_start_up_is_a_typed_error_and_can_be_moved_aside(db_path: Path, damage: str) -> None:
    with History(db_path) as history:
        chat = history.create_chat("before the damage")
        for i in range(100):
            history.add_message(chat, "user", f"message {i} " * 40)
        history.checkpoint()
    data = db_path.read_bytes()
    assert len(data) > 64 * 1024
    if damage == "garbage":
        db_path.write_bytes(b"\x13\x37 not a database " * 500)
    elif damage == "truncated":
        db_path.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        db_path.write_bytes(data[:middle] + b"\xff" * 4096 + data[middle + 4096:])
    damaged = db_path.read_bytes()

    with pytest.raises(HistoryCorruptError, match="is not a usable chat history") as caught:
        History(db_path)
    assert isinstance(caught.value, StoreError) and "\n" not in str(caught.value)
    assert caught.value.path == db_path

    for side in side_files(db_path):  # as a crash would leave them
        side.write_bytes(b"left over")

    moved = move_aside(caught.value.path)
    assert moved.parent == db_path.parent
    assert moved.name.startswith("history.corrupt-") and moved.name.endswith(".sqlite3")
    assert moved.read_bytes() == damaged  # kept for rescue, not deleted
    assert [p.read_bytes() for p in side_files(moved)] == [b"left over", b"left over"]
    assert not db_path.exists() and not any(p.exists() for p in side_files(db_path))
    with History(db_path) as fresh:
        assert fresh.chats() == []
        fresh.create_chat("a fresh start")
    assert move_aside(db_path) != moved  # a second damaged file does not overwrite the first


def test_history_files_are_private_whatever_the_umask(db_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        with History(db_path) as history:
            history.add_message(history.create_chat("private"), "user", "a medical question")
            files = [db_path, *side_files(db_path)]
            assert all(p.exists() for p in files)  # WAL mode: the log and the shared memory file
            assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    finally:
        os.umask(old_umask)


def test_files_of_an_older_version_are_made_private(db_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        with sqlite3.connect(db_path) as made_before:
            made_before.execute("PRAGMA journal_mode = WAL")
            made_before.execute("CREATE TABLE t (x)")
            db_path.chmod(0o644)
            assert side_files(db_path)[0].exists()
            for side in side_files(db_path):
                side.chmod(0o644)
            with History(db_path):
                modes = {stat.S_IMODE(p.stat().st_mode) for p in (db_path, *side_files(db_path))}
            assert modes == {0o600}
        made_before.close()
    finally:
        os.umask(old_umask)
