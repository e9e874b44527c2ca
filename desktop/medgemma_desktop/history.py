"""Chat history in SQLite: chats, their messages, app settings and per-model settings.

One database file (by default `medgemma_models.store.history_path()`) may be open in several
windows or processes at once: WAL lets readers and one writer work side by side, every write
takes the lock up front (`BEGIN IMMEDIATE`) and waits for it (`busy_timeout`), so nobody sees
half a change. Deleting a chat overwrites its text in the file (`secure_delete`) and empties
the write-ahead log, so the words are gone from disk, not just hidden.

A `History` object may be shared between threads (the chat worker saves a streaming answer
while the window reads): one lock serialises its use of the connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgemma_models.errors import StoreError
from medgemma_models.store import history_path

if TYPE_CHECKING:
    from medgemma_models.gguf_info import ModelInfo

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0
ROLES = ("user", "model")


@dataclass(frozen=True)
class ChatSummary:
    """A chat as the sidebar lists it; `model_name` is the model it last used."""

    id: int
    title: str
    created_at: float
    updated_at: float
    model_name: str | None


@dataclass(frozen=True)
class Message:
    """One turn. `text` is the answer only; the model's reasoning is kept apart in `reasoning`.

    `complete` is False while an answer streams and when it was stopped or cut off by a crash.
    `meta` holds what produced it: model (name, file, sha256, quantization), settings, stats.
    """

    id: int
    chat_id: int
    role: str
    text: str
    reasoning: str
    created_at: float
    updated_at: float
    complete: bool
    meta: dict


def model_record(info: ModelInfo, sha256: str | None = None) -> dict[str, Any]:
    """The model description stored with a chat and shown in exports."""
    return {
        "name": info.name or info.path.stem,
        "file": str(info.path),
        "sha256": sha256,
        "architecture": info.architecture,
        "size_label": info.size_label,
        "quantization": info.file_type,
        "bits_per_weight": info.bits_per_weight,
        "context_length": info.context_length,
    }


# The schema as an ordered list of steps, each applied once and recorded by name in the
# `migrations` table (simonw/llm style): a database from an older version is brought up to
# date on open, and a step is never run twice.
def _m001_initial(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE chats (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            model TEXT NOT NULL DEFAULT '{}',
            settings TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute(
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('user', 'model')),
            text TEXT NOT NULL,
            reasoning TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            complete INTEGER NOT NULL DEFAULT 1,
            meta TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX messages_by_chat ON messages (chat_id, id)")
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE model_settings (
            model_key TEXT PRIMARY KEY,
            settings TEXT NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("m001_initial", _m001_initial),
]


def _casefold(value: str | None) -> str | None:
    # SQLite's own lower() and LIKE fold ASCII only; chats are written in many languages.
    return value.casefold() if value is not None else None


def _loads(value: str | None) -> dict:
    return json.loads(value) if value else {}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class History:
    """The chat history database; see the module docstring for the guarantees."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else history_path()
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we open transactions ourselves, always as BEGIN IMMEDIATE.
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the chat history {self.path}: {exc}") from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")
            # FULL: a committed message survives a power cut too, not only a killed process;
            # the streaming writer commits about once a second, so the fsync costs nothing noticeable.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.create_function("casefold", 1, _casefold, deterministic=True)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path} is not a usable chat history: {exc}") from exc

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction that holds the write lock from its first statement to its commit."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._db.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            # Read inside the write lock: a second process opening at the same time waits,
            # then sees the steps the first one applied.
            done = {row[0] for row in db.execute("SELECT name FROM migrations")}
            for name, step in MIGRATIONS:
                if name not in done:
                    log.info("chat history %s: applying %s", self.path, name)
                    step(db)
                    db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))

    def applied_migrations(self) -> list[str]:
        """Names of the schema steps recorded in this database, in the order applied."""
        return [row["name"] for row in self._query("SELECT name FROM migrations ORDER BY rowid")]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- chats ----------------------------------------------------------------------------

    def create_chat(self, title: str = "New chat", model: dict | None = None, settings: dict | None = None) -> int:
        """A new empty chat; `model` is a `model_record`, `settings` the generation settings."""
        now = time.time()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO chats (title, created_at, updated_at, model, settings) VALUES (?, ?, ?, ?, ?)",
                (title, now, now, _dumps(model or {}), _dumps(settings or {})),
            )
            return int(cursor.lastrowid)

    def chats(self, search: str = "") -> list[ChatSummary]:
        """Chats, most recently changed first; `search` matches title or message text, any case."""
        sql = "SELECT id, title, created_at, updated_at, model FROM chats"
        params: tuple = ()
        if search.strip():
            needle = search.strip().casefold()
            sql += (
                " WHERE instr(casefold(title), ?) > 0 OR EXISTS"
                " (SELECT 1 FROM messages m WHERE m.chat_id = chats.id AND instr(casefold(m.text), ?) > 0)"
            )
            params = (needle, needle)
        sql += " ORDER BY updated_at DESC, id DESC"
        return [self._summary(row) for row in self._query(sql, params)]

    @staticmethod
    def _summary(row: sqlite3.Row) -> ChatSummary:
        return ChatSummary(
            id=row["id"],
            title=row["title"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            model_name=_loads(row["model"]).get("name"),
        )

    def chat(self, chat_id: int) -> ChatSummary:
        rows = self._query("SELECT id, title, created_at, updated_at, model FROM chats WHERE id = ?", (chat_id,))
        if not rows:
            raise StoreError(f"chat {chat_id} does not exist (was it deleted in another window?)")
        return self._summary(rows[0])

    def _chat_column(self, chat_id: int, column: str) -> dict:
        rows = self._query(f"SELECT {column} FROM chats WHERE id = ?", (chat_id,))
        if not rows:
            raise StoreError(f"chat {chat_id} does not exist (was it deleted in another window?)")
        return _loads(rows[0][column])

    def _set_chat_column(self, chat_id: int, column: str, value: str) -> None:
        with self._write() as db:
            cursor = db.execute(f"UPDATE chats SET {column} = ?, updated_at = ? WHERE id = ?", (value, time.time(), chat_id))
            if cursor.rowcount == 0:
                raise StoreError(f"chat {chat_id} does not exist (was it deleted in another window?)")

    def chat_model(self, chat_id: int) -> dict:
        """The `model_record` of the model the chat last used ({} if none)."""
        return self._chat_column(chat_id, "model")

    def set_chat_model(self, chat_id: int, model: dict) -> None:
        self._set_chat_column(chat_id, "model", _dumps(model))

    def chat_settings(self, chat_id: int) -> dict:
        return self._chat_column(chat_id, "settings")

    def set_chat_settings(self, chat_id: int, settings: dict) -> None:
        self._set_chat_column(chat_id, "settings", _dumps(settings))

    def rename_chat(self, chat_id: int, title: str) -> None:
        self._set_chat_column(chat_id, "title", title)

    def delete_chat(self, chat_id: int) -> None:
        """Delete the chat and its messages, and overwrite their text in the database file."""
        with self._write() as db:
            db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))
        self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database and empty it.

        secure_delete zeroes deleted text in the pages it rewrites, but older copies of those
        pages stay in the -wal file until a checkpoint; TRUNCATE also cuts the log to 0 bytes.
        If another connection is in the middle of a read, the log cannot be reset yet: that
        waits up to the busy timeout and is otherwise done by the next checkpoint.
        """
        with self._lock:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("chat history %s: the log could not be emptied now (another reader)", self.path)

    # -- messages -------------------------------------------------------------------------

    def add_message(
        self,
        chat_id: int,
        role: str,
        text: str,
        reasoning: str = "",
        meta: dict | None = None,
        complete: bool = True,
    ) -> int:
        """Append a message to a chat; it is committed when this returns."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use 'user' or 'model'")
        now = time.time()
        with self._write() as db:
            try:
                cursor = db.execute(
                    "INSERT INTO messages (chat_id, role, text, reasoning, created_at, updated_at, complete, meta)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (chat_id, role, text, reasoning, now, now, int(complete), _dumps(meta or {})),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"chat {chat_id} does not exist (was it deleted in another window?)") from exc
            db.execute("UPDATE chats SET updated_at = ? WHERE id = ?", (now, chat_id))
            return int(cursor.lastrowid)

    def update_message(
        self, message_id: int, text: str, reasoning: str, meta: dict | None = None, complete: bool = False
    ) -> None:
        """Replace a message's text and reasoning (and meta, unless None); committed on return."""
        now = time.time()
        with self._write() as db:
            if meta is None:
                cursor = db.execute(
                    "UPDATE messages SET text = ?, reasoning = ?, complete = ?, updated_at = ? WHERE id = ?",
                    (text, reasoning, int(complete), now, message_id),
                )
            else:
                cursor = db.execute(
                    "UPDATE messages SET text = ?, reasoning = ?, complete = ?, updated_at = ?, meta = ? WHERE id = ?",
                    (text, reasoning, int(complete), now, _dumps(meta), message_id),
                )
            if cursor.rowcount == 0:
                raise StoreError(f"message {message_id} does not exist (was its chat deleted?)")
            db.execute(
                "UPDATE chats SET updated_at = ? WHERE id = (SELECT chat_id FROM messages WHERE id = ?)",
                (now, message_id),
            )

    _MESSAGE_COLUMNS = "id, chat_id, role, text, reasoning, created_at, updated_at, complete, meta"

    @staticmethod
    def _message(row: sqlite3.Row) -> Message:
        return Message(
            id=row["id"],
            chat_id=row["chat_id"],
            role=row["role"],
            text=row["text"],
            reasoning=row["reasoning"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            complete=bool(row["complete"]),
            meta=_loads(row["meta"]),
        )

    def messages(self, chat_id: int) -> list[Message]:
        """The chat's messages, oldest first."""
        rows = self._query(f"SELECT {self._MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? ORDER BY id", (chat_id,))
        return [self._message(row) for row in rows]

    def message(self, message_id: int) -> Message:
        rows = self._query(f"SELECT {self._MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise StoreError(f"message {message_id} does not exist (was its chat deleted?)")
        return self._message(rows[0])

    def delete_messages_from(self, message_id: int) -> None:
        """Delete this message and every later one in its chat (regenerate, edit and resend)."""
        with self._write() as db:
            db.execute(
                "DELETE FROM messages WHERE chat_id = (SELECT chat_id FROM messages WHERE id = ?) AND id >= ?",
                (message_id, message_id),
            )

    # -- settings -------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        """An app setting (any JSON value), or `default` when it was never set."""
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def set_setting(self, key: str, value: Any) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, _dumps(value)),
            )

    def model_settings(self, model_key: str) -> dict | None:
        """The working settings remembered for a model file (keyed by path or sha256), if any."""
        rows = self._query("SELECT settings FROM model_settings WHERE model_key = ?", (model_key,))
        return _loads(rows[0]["settings"]) if rows else None

    def set_model_settings(self, model_key: str, settings: dict) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO model_settings (model_key, settings, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (model_key) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                (model_key, _dumps(settings), time.time()),
            )


class StreamingMessageWriter:
    """Saves a streaming answer as it grows: at most `interval` seconds of text can be lost.

    Feed it the pieces the reasoning splitter yields; it keeps the whole text and writes it
    to the message when `interval` has passed since the last write (checked on each piece,
    so between pieces nothing is written: call `flush()` from a timer if the source can
    stall for long). `finish()` writes the final state, also after a stop.
    """

    def __init__(
        self,
        history: History,
        message_id: int,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.history = history
        self.message_id = message_id
        self.interval = interval
        self.clock = clock
        self.text = ""
        self.reasoning = ""
        self.writes = 0
        self._dirty = False
        self._last_write = clock()

    def append(self, answer: str = "", reasoning: str = "") -> None:
        """Add answer and/or reasoning text; saves when `interval` has passed since the last save."""
        if not answer and not reasoning:
            return
        self.text += answer
        self.reasoning += reasoning
        self._dirty = True
        if self.clock() - self._last_write >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Save now what has not been saved yet (the message stays incomplete)."""
        if self._dirty:
            self._save(meta=None, complete=False)

    def finish(self, meta: dict | None = None, complete: bool = True) -> None:
        """The final save: `complete=False` marks an answer that was stopped or failed."""
        self._save(meta=meta, complete=complete)

    def _save(self, meta: dict | None, complete: bool) -> None:
        self.history.update_message(self.message_id, self.text, self.reasoning, meta=meta, complete=complete)
        self._last_write = self.clock()
        self._dirty = False
        self.writes += 1
