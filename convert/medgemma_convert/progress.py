"""Showing progress on the command line: a text bar, or the JSON-lines protocol for the app.

The callback type and the protocol itself are shared with the app (`medgemma_models.progress`).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from medgemma_models.progress import Progress, ProgressEvent, no_progress

__all__ = ["JsonLines", "Progress", "ProgressEvent", "TextBar", "no_progress"]


class TextBar:
    """A plain text bar on stderr, redrawn in place; no extra dependency."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.stage is not None and stage != self.stage:
            self.stream.write("\n")
        self.stage = stage
        filled = self.width * done // total if total else 0
        bar = "#" * filled + "." * (self.width - filled)
        count = f"{done}/{total}" if total else str(done)
        self.stream.write(f"\r{stage:<18} [{bar}] {count}")
        self.stream.flush()

    def close(self) -> None:
        if self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.stage = None


class JsonLines:
    """One JSON object a line on stdout, for a parent process (the desktop app) to follow."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.emit(ProgressEvent(stage, done, total))

    def emit(self, event: ProgressEvent | dict[str, Any]) -> None:
        """A protocol event; a plain dict is written as it is (results other than a conversion report)."""
        self.stream.write(event.to_json_line() if isinstance(event, ProgressEvent) else json.dumps(event) + "\n")
        self.stream.flush()
