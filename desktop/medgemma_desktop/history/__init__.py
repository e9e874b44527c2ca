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

from .database import (
    BUSY_TIMEOUT_S,
    HistoryCorruptError,
    HistoryWriteError,
    move_aside,
    side_files,
)
from .migrations import MIGRATIONS
from .records import ROLES, ChatSummary, Message, ModelRecord
from .store import History
from .writer import StreamingMessageWriter

__all__ = [
    "BUSY_TIMEOUT_S", "MIGRATIONS", "ROLES", "ChatSummary", "History", "HistoryCorruptError", "HistoryWriteError",
    "Message", "ModelRecord", "StreamingMessageWriter", "move_aside", "side_files",
]
