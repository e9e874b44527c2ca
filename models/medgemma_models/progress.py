"""The progress protocol shared by the converter and the app.

In process, progress is a callback `Progress(stage, done, total)`. Across processes (the app runs
`medgemma-convert … --progress json` as a child) each event is one JSON object a line on stdout,
written and read by `ProgressEvent` on both sides:

    {"stage": "export f16", "done": 3, "total": 10}     work advancing (total 0: unknown)
    {"stage": "error", "message": "…"}                  the conversion failed, one line why
    {"stage": "done", "report": {…}}                    finished; the ConversionReport
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from .report import ConversionReport

# Progress(stage, done, total): called as work advances; `total` may be 0 when unknown.
Progress = Callable[[str, int, int], None]

STAGE_DONE = "done"
STAGE_ERROR = "error"


def no_progress(stage: str, done: int, total: int) -> None:
    """A Progress that ignores everything."""


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    done: int = 0
    total: int = 0
    message: str | None = None  # with STAGE_ERROR
    report: ConversionReport | None = None  # with STAGE_DONE

    @classmethod
    def failed(cls, message: str) -> ProgressEvent:
        return cls(STAGE_ERROR, message=message)

    @classmethod
    def finished(cls, report: ConversionReport) -> ProgressEvent:
        return cls(STAGE_DONE, report=report)

    def to_json_line(self) -> str:
        """The event as one line of JSON, newline included."""
        if self.report is not None:
            data: dict = {"stage": self.stage, "report": self.report.to_dict()}
        elif self.message is not None:
            data = {"stage": self.stage, "message": self.message}
        else:
            data = {"stage": self.stage, "done": self.done, "total": self.total}
        return json.dumps(data) + "\n"

    @classmethod
    def from_json_line(cls, line: str) -> ProgressEvent | None:
        """The event on `line`, or None when the line is not one (a plain log line)."""
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
            return None
        stage = data["stage"]
        if stage == STAGE_DONE and isinstance(data.get("report"), dict):
            try:
                return cls.finished(ConversionReport.from_dict(data["report"]))
            except ValueError:
                return None
        if stage == STAGE_ERROR and isinstance(data.get("message"), str):
            return cls.failed(data["message"])
        return cls(stage, _count(data.get("done")), _count(data.get("total")))


def _count(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
