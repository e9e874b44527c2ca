"""`History`: chats, their messages, app settings and per-model settings in one database
(the package docstring says what it guarantees)."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medgemma_models.errors import StoreError
from medgemma_models.store import history_path

from .database import (
    BUSY_TIMEOUT_S,
    CORRUPTION,
    WRITE_PROBLEMS,
    HistoryCorruptError,
    HistoryWriteError,
    make_files_private,
    primary_code,
)
from .migrations import MIGRATIONS
from .records import ROLES, ChatSummary, Message, ModelRecord

log = logging.getLogger(__name__)


def _casefold(value: str | None) -> str | None:
    # SQLite's own lower() and LIKE fold ASCII only; chats are written in many languages.
    return value.casefold() if value is not None else None


def _loads(value: str | None) -> dict:
    return json.loads(value) if value else {}


def _columns(row: sqlite3.Row, *names: str) -> dict[str, Any]:
    """Columns whose stored values a dataclass field takes as they are."""
    return {name: row[name] for name in names}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class History:
    """The chat history database; see the module docstring for the guarantees."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else history_path()
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            make_files_private(self.path)
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
            self._check_integrity()
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if primary_code(exc) in CORRUPTION:
                raise HistoryCorruptError(self.path, str(exc)) from exc
            raise StoreError(f"{self.path} is not a usable chat history: {exc}") from exc
        except StoreError:
            self._db.close()
            raise

    def _check_integrity(self) -> None:
        # quick_check reads every page (not the index contents): a damaged file is found at
        # start-up, where the user can be offered a fresh history, not in the middle of a chat.
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            first = " ".join(problems[0].split())  # its report spans several lines; the message is one
            raise HistoryCorruptError(self.path, f"the file is damaged ({first[:160]})")

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction that holds the write lock from its first statement to its commit."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._write_error(exc) from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                # A failed COMMIT (disk full) leaves the transaction open: without this ROLLBACK
                # every later write would fail with "cannot start a transaction within a transaction".
                # SQLite may have rolled back already (it does on SQLITE_FULL in some cases).
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._write_error(exc) from exc
                raise

    def _write_error(self, exc: sqlite3.Error) -> HistoryWriteError:
        problem = WRITE_PROBLEMS.get(primary_code(exc), str(exc))
        return HistoryWriteError(f"could not save to the chat history {self.path}: {problem}")

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                return cursor.fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"could not read the chat history {self.path}: {exc}") from exc

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

    def pragma(self, name: str) -> Any:
        """A setting of this connection (`foreign_keys`, `busy_timeout`, …) or a check (`integrity_check`)."""
        if not name.replace("_", "").isalpha():
            raise ValueError(f"not a pragma name: {name!r}")
        return self._query(f"PRAGMA {name}")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- chats ----------------------------------------------------------------------------

    def create_chat(self, title: str = "New chat", model: ModelRecord | None = None, settings: dict | None = None) -> int:
        """A new empty chat; `model` is the model answering, `settings` the generation settings."""
        now = time.time()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO chats (title, created_at, updated_at, model, settings) VALUES (?, ?, ?, ?, ?)",
                (title, now, now, _dumps(model.to_dict() if model else {}), _dumps(settings or {})),
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
        return ChatSummary(**_columns(row, "id", "title", "created_at", "updated_at"),
                           model_name=ModelRecord.from_dict(_loads(row["model"])).name)

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

    def chat_model(self, chat_id: int) -> ModelRecord:
        """The model the chat last used (`ModelRecord()` if none)."""
        return ModelRecord.from_dict(self._chat_column(chat_id, "model"))

    def set_chat_model(self, chat_id: int, model: ModelRecord) -> None:
        self._set_chat_column(chat_id, "model", _dumps(model.to_dict()))

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
            try:
                busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise self._write_error(exc) from exc
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
        return Message(**_columns(row, "id", "chat_id", "role", "text", "reasoning", "created_at", "updated_at"),
                       complete=bool(row["complete"]), meta=_loads(row["meta"]))

    def messages(self, chat_id: int) -> list[Message]:
        """The chat's messages, oldest first."""
        rows = self._query(f"SELECT {self._MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? ORDER BY id", (chat_id,))
        return [self._message(row) for row in rows]

    def message(self, message_id: int) -> Message:
        rows = self._query(f"SELECT {self._MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise StoreError(f"message {message_id} does not exist (was its chat deleted?)")
        return self._message(rows[0])

    def image_in_use(self, sha256: str) -> bool:
        """Whether any message still has the image (its sha256 is in a message's meta)."""
        rows = self._query("SELECT meta FROM messages WHERE instr(meta, ?) > 0", (sha256,))
        return any(sha256 in Message(0, 0, "user", "", "", 0, 0, True, _loads(row["meta"])).image_ids for row in rows)

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
