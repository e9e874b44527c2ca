"""The one progress callback type shared by the command line and the desktop app."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

# Progress(stage, done, total): called as work advances; `total` may be 0 when unknown.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """A Progress that ignores everything."""


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
        self.emit({"stage": stage, "done": done, "total": total})

    def emit(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()
