"""Measuring a conversion for its report: time and memory per stage, each output's real contents.

The report itself is a typed value shared with the app: `medgemma_models.report.ConversionReport`.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medgemma_models.files import atomic_output
from medgemma_models.gguf_info import read_model_info
from medgemma_models.report import ConversionReport

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _can_reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM, the process's peak resident memory (Linux >= 4.0)
        return True
    except OSError:
        return False


def _status(field: str) -> int | None:
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def _maxrss(who: int) -> int:
    peak = resource.getrusage(who).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _peak_rss() -> int:
    peak = _status("VmHWM")
    return peak if peak is not None else _maxrss(resource.RUSAGE_SELF)


class StageRecorder:
    """Wall time and peak resident memory of each stage.

    A child process that ran during a stage (verification's reference) held its memory beside this
    process's: the stage's peak is then at least this process's resident memory when the stage began
    plus the child's peak (the largest child's so far, all the kernel keeps).
    """

    def __init__(self) -> None:
        self.per_stage = _can_reset_peak()
        self.method = (
            "peak RSS per stage (VmHWM, reset through /proc/self/clear_refs)" if self.per_stage
            else "peak RSS of the process so far (getrusage ru_maxrss)"
        ) + "; a stage that ran a child process adds the child's peak to the RSS it began with"
        self.stages: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.per_stage:
            _can_reset_peak()
        resident, children = _status("VmRSS") or _peak_rss(), _maxrss(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        try:
            yield
        finally:
            peak, children_now = _peak_rss(), _maxrss(resource.RUSAGE_CHILDREN)
            if children_now > children:
                peak = max(peak, resident + children_now)
            self.stages.append({"stage": name, "wall_s": round(time.perf_counter() - start, 3), "peak_rss_bytes": peak})

    def total_wall(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def describe_output(path: Path, quant: str, sha256: str) -> dict[str, Any]:
    """What was really written: bytes, sha256, file type, tensor types and real bits per weight."""
    info = read_model_info(path)
    return {
        "path": str(path),
        "quant": quant,
        "bytes": info.file_size,
        "sha256": sha256,
        "file_type": info.file_type,
        "tensor_types": info.tensor_types,
        "bits_per_weight": round(info.bits_per_weight, 4),
        "parameter_count": info.parameter_count,
    }


def write_report(report: ConversionReport, path: Path, force: bool) -> None:
    with atomic_output(path, force) as partial:
        partial.write_text(report.to_json() + "\n", encoding="utf-8")
