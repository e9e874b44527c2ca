"""One collection of documents: the files and folders the user added, and their index in its own SQLite file.

The index is SQLite's FTS5 with the `porter unicode61` tokenizer (so "diabetic" finds "Diabetes",
and case and accents do not matter) ranked by `bm25()`, with `snippet()` marking the matched
terms. Keyword search first, because exact terms matter in medicine: a drug name, a dose, a code.
A vector index could sit beside it later as another table keyed by the same chunk ids.

Indexing is incremental and survives being killed: each file is replaced in one transaction
(its old passages out, its new ones in, its size, mtime and sha256 recorded), so a crash loses at
most the file being read, and the next run skips every file already committed whose size and
mtime (or, when those changed, sha256) are unchanged. Files gone from disk are removed first.

Privacy is the chat history's: the file is 0600 in a 0700 folder, `secure_delete` zeroes what
is deleted, and after a deletion the FTS index is merged (`optimize`: its older segments still
hold the deleted words otherwise) and the write-ahead log emptied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medgemma_models.errors import StoreError
from medgemma_models.files import PRIVATE_FILE_MODE, make_private, sha256_file

from .chunking import CountTokens, chunk_pages
from .readers import PERMISSION_DENIED, SUFFIXES, IndexingCancelled, Unreadable, check_size, read_pages

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 5.0
SNIPPET_TOKENS = 16
MARK_OPEN, MARK_CLOSE = "**", "**"  # plain text that reads as emphasis, and as bold in a Markdown export
# Words too common to say anything about which passage answers a question.
STOPWORDS = frozenset("""
a about after all also an and any are as at be been before being but by can could did do does doing
for from had has have how i if in into is it its may me might my no not of on or our should so such
than that the their them then there these they this those to was we were what when where which who
whom why will with would you your please tell give explain describe much many
""".split())
_QUERY_WORD = re.compile(r"\w+", re.UNICODE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (path TEXT PRIMARY KEY, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    pages INTEGER NOT NULL,
    skipped TEXT,
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    page INTEGER NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_text USING fts5 (text, tokenize = 'porter unicode61');
"""


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


@dataclass(frozen=True)
class IndexProgress:
    """Where an indexing run is: files looked at of all found, pages read so far, the file being read."""

    files_done: int
    files_total: int
    pages_done: int
    current: str


@dataclass
class IndexReport:
    indexed: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    pages: int = 0
    chunks: int = 0
    cancelled: bool = False


@dataclass(frozen=True)
class Hit:
    """A passage found by a search; `score` is bm25's, turned positive (higher is better)."""

    collection: str
    source: str
    page: int
    start: int
    end: int
    text: str
    snippet: str
    score: float
    chunk_id: int


def match_query(question: str) -> str | None:
    """The FTS5 query for a question in plain words: any of its telling words (None when it has none).

    Each word is quoted, so nothing the user types is FTS5 syntax; `bm25` ranks passages with more
    and rarer matching words first, so OR loses nothing over AND and still finds a lone drug name.
    """
    words = []
    for word in _QUERY_WORD.findall(question.lower()):
        if word not in STOPWORDS and (len(word) > 1 or word.isdigit()) and word not in words:
            words.append(word)
    return " OR ".join(f'"{word}"' for word in words) or None


class Collection:
    """A named collection's index database; safe to share between threads (one lock per connection)."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
            make_private(self.path)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the document index {self.path}: {exc}") from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA secure_delete = ON")
            # NORMAL: in WAL mode a killed process loses nothing committed; only a power cut may
            # lose the last files, which the next run indexes again.
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._write() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                if name is not None:
                    db.execute("INSERT OR IGNORE INTO info (key, value) VALUES ('name', ?)", (name,))
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"{self.path} is not a usable document index: {exc}") from exc
        rows = self._query("SELECT value FROM info WHERE key = 'name'")
        self.name = rows[0][0] if rows else self.path.stem

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"could not read the document index {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what is in it --------------------------------------------------------------------

    def add(self, path: Path) -> None:
        """Add a file or folder (indexed by the next `index`)."""
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO sources (path, added_at) VALUES (?, ?)",
                       (str(Path(path).absolute()), time.time()))

    def remove_source(self, path: Path) -> None:
        """Take a file or folder out; its passages go with the next `index`."""
        with self._write() as db:
            db.execute("DELETE FROM sources WHERE path = ?", (str(Path(path).absolute()),))

    def sources(self) -> list[Path]:
        return [Path(row[0]) for row in self._query("SELECT path FROM sources ORDER BY added_at, path")]

    def files(self) -> dict[str, tuple[int, str | None]]:
        """Each file seen: its pages, and why it was skipped (None: indexed)."""
        return {row[0]: (row[1], row[2]) for row in self._query("SELECT path, pages, skipped FROM files")}

    def chunk_count(self) -> int:
        return int(self._query("SELECT count(*) FROM chunks")[0][0])

    # -- indexing -------------------------------------------------------------------------

    def index(self, paths: Sequence[Path] = (), progress: Callable[[IndexProgress], None] | None = None,
              should_stop: Callable[[], bool] | None = None, count_tokens: CountTokens | None = None) -> IndexReport:
        """Add `paths`, then bring the index up to date with every source: new and changed files read,
        unchanged ones skipped, deleted ones removed. Cancelling keeps every file already committed."""
        for path in paths:
            self.add(path)
        report = IndexReport()
        found = self._find_files(report)
        known = {row[0]: row for row in self._query("SELECT path, size, mtime_ns, sha256, skipped, id FROM files")}
        gone = [path for path in known if path not in found]
        if gone:
            self._delete_files([known[path][5] for path in gone])
            report.removed = gone
        try:
            self._index_found(found, known, report, progress, should_stop, count_tokens)
        finally:
            # Once a run, not once a file: merging the FTS segments costs the whole index's size.
            if self._query("SELECT 1 FROM info WHERE key = 'purge'"):
                self._purge()
        return report

    def _index_found(self, found: dict[str, Path], known: dict[str, tuple], report: IndexReport,
                     progress: Callable[[IndexProgress], None] | None, should_stop: Callable[[], bool] | None,
                     count_tokens: CountTokens | None) -> None:
        stop = should_stop or (lambda: False)
        pages_done = 0
        for number, (name, path) in enumerate(sorted(found.items())):
            if stop():
                report.cancelled = True
                break
            if progress is not None:
                progress(IndexProgress(number, len(found), pages_done, name))

            def on_page() -> None:
                nonlocal pages_done
                pages_done += 1
                if stop():
                    raise IndexingCancelled("cancelled")

            try:
                self._index_file(name, path, known.get(name), report, on_page, count_tokens)
            except IndexingCancelled:
                report.cancelled = True
                break
        else:
            if progress is not None:
                progress(IndexProgress(len(found), len(found), pages_done, ""))
        report.pages = pages_done

    def _find_files(self, report: IndexReport) -> dict[str, Path]:
        """Every document under the sources, by absolute path; folders are walked without following links."""
        found: dict[str, Path] = {}
        for source in self.sources():
            if source.is_symlink() and source.is_dir():
                report.skipped.append(Skipped(str(source), "a link to a folder: add the folder itself"))
            elif source.is_dir():
                for folder, folders, names in os.walk(source, onerror=lambda exc: report.skipped.append(
                        Skipped(str(exc.filename), f"cannot be listed: {exc.strerror or exc}"))):
                    for sub in list(folders):
                        if os.path.islink(os.path.join(folder, sub)):
                            folders.remove(sub)  # links could loop, or lead out of what the user chose
                            report.skipped.append(Skipped(os.path.join(folder, sub), "a link to a folder is not followed"))
                    folders.sort()
                    for file_name in names:
                        if Path(file_name).suffix.lower() in SUFFIXES:
                            found[os.path.join(folder, file_name)] = Path(folder, file_name)
            elif source.exists() or source.is_symlink():
                found[str(source)] = source
            else:
                report.skipped.append(Skipped(str(source), "not found (moved or deleted?)"))
        return found

    def _index_file(self, name: str, path: Path, known: tuple | None, report: IndexReport,
                    on_page: Callable[[], None], count_tokens: CountTokens | None) -> None:
        try:
            stat = path.stat()
            check_size(stat.st_size)
            if known is not None and (known[1], known[2]) == (stat.st_size, stat.st_mtime_ns):
                self._unchanged(name, known, report)
                return
            digest = sha256_file(path)
            if known is not None and known[3] == digest:
                with self._write() as db:  # touched, not changed: remember the new mtime, skip the hash next time
                    db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?",
                               (stat.st_size, stat.st_mtime_ns, known[5]))
                self._unchanged(name, known, report)
                return
            pages = read_pages(path, on_page)
        except Unreadable as exc:
            report.skipped.append(Skipped(name, str(exc)))
            self._record_skip(name, path, known, str(exc))
            return
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                reason = "the file vanished while it was being indexed"
            elif isinstance(exc, PermissionError):
                reason = PERMISSION_DENIED
            else:
                reason = f"cannot be read: {exc.strerror or exc}"
            report.skipped.append(Skipped(name, reason))
            return
        chunks = list(chunk_pages(pages, count_tokens))
        with self._write() as db:
            if known is not None:
                self._delete_chunks(db, [known[5]])
            file_id = self._record_file(db, name, stat, digest, len(pages), None)
            for chunk in chunks:
                cursor = db.execute('INSERT INTO chunks (file_id, page, start, "end", tokens) VALUES (?, ?, ?, ?, ?)',
                                    (file_id, chunk.page, chunk.start, chunk.end, chunk.tokens))
                db.execute("INSERT INTO chunk_text (rowid, text) VALUES (?, ?)", (cursor.lastrowid, chunk.text))
        report.indexed.append(name)
        report.chunks += len(chunks)

    def _unchanged(self, name: str, known: tuple, report: IndexReport) -> None:
        if known[4]:
            report.skipped.append(Skipped(name, known[4]))
        else:
            report.unchanged += 1

    def _record_skip(self, name: str, path: Path, known: tuple | None, reason: str) -> None:
        """Remember a skipped file by its size and mtime, so an unchanged bad file is not read again."""
        try:
            stat = path.stat()
        except OSError:
            return
        with self._write() as db:
            if known is not None:
                self._delete_chunks(db, [known[5]])
            self._record_file(db, name, stat, "", 0, reason)

    @staticmethod
    def _record_file(db: sqlite3.Connection, name: str, stat: os.stat_result, sha256: str, pages: int,
                     skipped: str | None) -> int:
        """Insert or update a file's row (skipped: why it was not indexed, None when it was); its id."""
        db.execute(
            "INSERT INTO files (path, size, mtime_ns, sha256, pages, skipped, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
            " sha256 = excluded.sha256, pages = excluded.pages, skipped = excluded.skipped,"
            " indexed_at = excluded.indexed_at",
            (name, stat.st_size, stat.st_mtime_ns, sha256, pages, skipped, time.time()))
        return int(db.execute("SELECT id FROM files WHERE path = ?", (name,)).fetchone()[0])

    # -- deleting -------------------------------------------------------------------------

    @staticmethod
    def _delete_chunks(db: sqlite3.Connection, file_ids: Sequence[int]) -> None:
        """Delete the files' passages; the deleted words stay in older FTS segments until `_purge`,
        which the flag set here asks for, even from the next run if this one is killed first."""
        db.execute("INSERT OR IGNORE INTO info (key, value) VALUES ('purge', '1')")
        for file_id in file_ids:
            db.execute("DELETE FROM chunk_text WHERE rowid IN (SELECT id FROM chunks WHERE file_id = ?)", (file_id,))
            db.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))

    def _delete_files(self, file_ids: Sequence[int]) -> None:
        with self._write() as db:
            self._delete_chunks(db, file_ids)
            for file_id in file_ids:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def _purge(self) -> None:
        """Make deleted text unrecoverable from the file: merge the FTS segments, empty the log."""
        with self._write() as db:
            db.execute("INSERT INTO chunk_text (chunk_text) VALUES ('optimize')")
            db.execute("DELETE FROM info WHERE key = 'purge'")
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def clear(self) -> None:
        """Delete every source and passage, overwriting their text in the file."""
        with self._write() as db:
            db.execute("DELETE FROM chunk_text")
            db.execute("DELETE FROM chunks")
            db.execute("DELETE FROM files")
            db.execute("DELETE FROM sources")
        self._purge()
        with self._lock:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- searching ------------------------------------------------------------------------

    def search(self, question: str, limit: int = 8) -> list[Hit]:
        """The passages that best match `question`, best first (none when it has no telling word)."""
        query = match_query(question)
        if query is None:
            return []
        rows = self._query(
            f"""SELECT chunks.id, files.path, chunks.page, chunks.start, chunks."end", chunk_text.text,
                       snippet(chunk_text, 0, '{MARK_OPEN}', '{MARK_CLOSE}', '…', {SNIPPET_TOKENS}), bm25(chunk_text)
                FROM chunk_text JOIN chunks ON chunks.id = chunk_text.rowid JOIN files ON files.id = chunks.file_id
                WHERE chunk_text MATCH ? ORDER BY bm25(chunk_text) LIMIT ?""",
            (query, limit))
        return [Hit(self.name, path, page, start, end, text, snippet, round(-score, 4), chunk_id)
                for chunk_id, path, page, start, end, text, snippet, score in rows]
