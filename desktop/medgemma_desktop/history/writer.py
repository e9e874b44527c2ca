"""Saving an answer while it streams."""

from __future__ import annotations

import time
from collections.abc import Callable

from .database import HistoryWriteError
from .store import History


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
