"""Chat history in SQLite: chats, their messages, app settings and per-model settings.

One database file (by default `medgemma_models.store.history_path()`) may be open in several
windows or processes at once: WAL lets readers and one writer work side by side, every write
takes the lock up front (`BEGIN IMMEDIATE`) and waits for it (`busy_timeout`), so nobody sees
half a change. Deleting a chat overwrites its text in the file (`secure_delete`) and empties
the write-ahead log, so the words are gone from disk, not just hidden.

A `History` object may be shared between threads (the chat worker saves a streaming answer
while the window reads): one lock serialises its use of the connection.

When saving fails (a full disk, another program holding the lock past a short wait, a read-only
or failing disk) the transaction is rolled back, so later writes work once the cause is gone,
and the caller gets one `HistoryWriteError`. A damaged file is found when it is opened
(`PRAGMA quick_check`): `HistoryCorruptError`, and `move_aside()` puts it out of the way so a
fresh history can start. The database, its -wal and -shm are readable by their owner only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgemma_models.errors import StoreError
from medgemma_models.files import PRIVATE_FILE_MODE, make_private
from medgemma_models.store import history_path

if TYPE_CHECKING:
    from medgemma_models.gguf_info import ModelInfo

log = logging.getLogger(__name__)

# Short, because writes run where the user waits: a write that cannot get the lock in this
# time fails, and the streaming writer keeps its text and tries again at its next save.
BUSY_TIMEOUT_S = 2.0
ROLES = ("user", "model")
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
_WRITE_PROBLEMS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_BUSY: "another program is holding the file (is the app open twice?)",
    sqlite3.SQLITE_LOCKED: "another program is holding the file (is the app open twice?)",
    sqlite3.SQLITE_READONLY: "the file is read-only",
    sqlite3.SQLITE_IOERR: "the disk reported an error",
    sqlite3.SQLITE_CORRUPT: "the file is damaged",
}
_CORRUPTION = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if code is not None else None  # extended codes carry the primary one in the low byte


def side_files(path: Path) -> list[Path]:
    """The -wal and -shm paths of a database file."""
    return [path.with_name(path.name + suffix) for suffix in SIDE_SUFFIXES]


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

    @property
    def image_ids(self) -> tuple[str, ...]:
        """The sha256 of each image of the message (`meta["images"]`, written by `images.parts`)."""
        images = self.meta.get("images")
        if not isinstance(images, list):
            return ()
        return tuple(i["sha256"] for i in images if isinstance(i, dict) and isinstance(i.get("sha256"), str))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class ModelRecord:
    """The model a chat used, stored with the chat and with each answer, and shown in exports.

    `from_dict` reads what a database holds: a value of the wrong type (an older version's, or
    a damaged one) reads as not recorded, it does not stop the chat from opening or exporting.
    """

    name: str | None = None
    file: str | None = None
    sha256: str | None = None
    architecture: str | None = None
    size_label: str | None = None
    quantization: str | None = None
    bits_per_weight: float | None = None
    context_length: int | None = None
    adapters: tuple[dict[str, Any], ...] = ()  # name, file, scale, sha256 of each adapter applied

    @classmethod
    def of(cls, info: ModelInfo, sha256: str | None = None, title: str | None = None,
           adapters: Sequence[dict[str, Any]] = ()) -> ModelRecord:
        """The record of a loaded model; `title` names a base with adapters (the file's own name otherwise)."""
        return cls(
            name=(title if adapters else None) or info.name or info.path.stem,
            file=str(info.path),
            sha256=sha256,
            architecture=info.architecture,
            size_label=info.size_label,
            quantization=info.file_type,
            bits_per_weight=info.bits_per_weight,
            context_length=info.context_length,
            adapters=tuple(adapters),
        )

    @classmethod
    def from_dict(cls, data: Any) -> ModelRecord:
        if not isinstance(data, dict):
            return cls()
        adapters = data.get("adapters")
        return cls(
            name=_text(data.get("name")),
            file=_text(data.get("file")),
            sha256=_text(data.get("sha256")),
            architecture=_text(data.get("architecture")),
            size_label=_text(data.get("size_label")),
            quantization=_text(data.get("quantization")) or _text(data.get("file_type")),  # file_type: first version's key
            bits_per_weight=_number(data.get("bits_per_weight")),
            context_length=_count(data.get("context_length")),
            adapters=tuple(a for a in adapters if isinstance(a, dict)) if isinstance(adapters, list) else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form: {} for no model; `adapters` only when there are some."""
        if self == ModelRecord():
            return {}
        data = dataclasses.asdict(self)
        data["adapters"] = list(self.adapters)
        if not self.adapters:
            del data["adapters"]
        return data


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
            self._make_files_private()
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
            if _primary_code(exc) in _CORRUPTION:
                raise HistoryCorruptError(self.path, str(exc)) from exc
            raise StoreError(f"{self.path} is not a usable chat history: {exc}") from exc
        except StoreError:
            self._db.close()
            raise

    def _make_files_private(self) -> None:
        """Create the database file 0600 before SQLite opens it; SQLite gives -wal and -shm its mode."""
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
        for path in (self.path, *side_files(self.path)):
            if path.exists():  # files of an older version, made under the usual umask
                make_private(path)

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
        problem = _WRITE_PROBLEMS.get(_primary_code(exc), str(exc))
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


class StreamingMessageWriter:
    """Saves a streaming answer as it grows: at most `interval` seconds of text can be lost.

    Feed it the pieces the reasoning splitter yields; it keeps the whole text and writes it
    to the message when `interval` has passed since the last write (checked on each piece,
    so between pieces nothing is written: call `flush()` from a timer if the source can
    stall for long). `finish()` writes the final state, also after a stop.

    A save that fails (full disk, locked file) loses nothing: the text stays here, `pending`
    stays True (the window shows "saving…") and the next `flush()`, or the next piece after
    `interval`, tries again, with the final state too once `finish()` was called. The first
    failure of a run raises `HistoryWriteError`, so the window tells the user once; the
    failures after it are quiet (`error` holds the latest) until a save succeeds.
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
        self.error: HistoryWriteError | None = None
        self._dirty = False
        self._final: tuple[dict | None, bool] | None = None  # (meta, complete) once finish() was called
        self._last_write = clock()

    @property
    def pending(self) -> bool:
        """Whether text (or the final state) is waiting to be saved."""
        return self._dirty

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
        """Save now what has not been saved yet (the message stays incomplete until `finish`)."""
        if self._dirty:
            self._save()

    def finish(self, meta: dict | None = None, complete: bool = True) -> None:
        """The final save: `complete=False` marks an answer that was stopped or failed."""
        self._final = (meta, complete)
        self._dirty = True
        self._save()

    def _save(self) -> None:
        meta, complete = self._final if self._final is not None else (None, False)
        try:
            self.history.update_message(self.message_id, self.text, self.reasoning, meta=meta, complete=complete)
        except HistoryWriteError as exc:
            self._last_write = self.clock()  # the next attempt waits `interval`, not the next piece
            first_failure = self.error is None
            self.error = exc
            if first_failure:
                raise
            return
        self._last_write = self.clock()
        self._dirty = False
        self.error = None
        self.writes += 1
