"""The window's front end on the runtime: its jobs' events, which arrive on the engine thread,
leave as Qt signals and are received on the GUI thread.

The runtime owns the engine and its thread (`runtime.Runtime`); this only carries. A signal of
this object emitted on the engine thread reaches slots of GUI-thread objects queued, so no GUI
code runs on the engine thread. Stop and cancel are the jobs' own thread-safe flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from ..events import (
    Inspected,
    LoadCancelled,
    LoadError,
    LoadProgress,
    ModelReady,
    RuntimeEvent,
)
from ..generation import ModelRequest
from ..runtime import Job, Runtime
from ..session import ChatSession


class RuntimeBridge(QObject):
    """Submits the window's jobs and turns their events into signals."""

    load_progress = Signal(float)
    loaded = Signal(object)  # generation.Loaded
    load_failed = Signal(str, str)  # title, message
    load_cancelled = Signal()
    model_inspected = Signal(object, object)  # Path, ModelInfo, AdapterMatch or the error message
    generation_event = Signal(object)  # a RuntimeEvent of the answer streaming

    def __init__(self, runtime: Runtime, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runtime = runtime
        self._load: Job | None = None

    # -- jobs, submitted from the GUI thread ------------------------------------------------------

    def load(self, request: ModelRequest) -> None:
        """Load a model; the one in use stays until the window calls `keep_load` or `undo_load`."""
        self._load = self.runtime.load(request, self._load_event, keep_previous=True)

    def cancel_load(self) -> None:
        if self._load is not None:
            self._load.cancel()

    def keep_load(self) -> None:
        self.runtime.keep_load()

    def undo_load(self) -> None:
        self.runtime.undo_load()

    def inspect(self, paths: Sequence[Path], recent: Sequence[Path] = ()) -> None:
        self.runtime.inspect(list(paths), self._inspect_event, recent)

    # -- events, called on the engine thread: they only emit ----------------------------------------

    def _load_event(self, event: RuntimeEvent) -> None:
        if isinstance(event, LoadProgress):
            self.load_progress.emit(event.fraction)
        elif isinstance(event, ModelReady):
            self.loaded.emit(event.loaded)
        elif isinstance(event, LoadError):
            self.load_failed.emit(event.title, event.message)
        elif isinstance(event, LoadCancelled):
            self.load_cancelled.emit()

    def _inspect_event(self, event: RuntimeEvent) -> None:
        if isinstance(event, Inspected):
            self.model_inspected.emit(event.path, event.result)

    def deliver(self, event: RuntimeEvent) -> None:
        """The chat backend's sink: an answer's event, on its way to the GUI thread."""
        self.generation_event.emit(event)


class SessionRelay(QObject):
    """Lives on the GUI thread and hands the answer's events to the Qt-free session there.

    A signal connected to a plain Python object's method would run it on the engine thread;
    connected to this slot, the events arrive queued on the GUI thread.
    """

    def __init__(self, session: ChatSession, bridge: RuntimeBridge, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        bridge.generation_event.connect(self.deliver)

    @Slot(object)
    def deliver(self, event: RuntimeEvent) -> None:
        self.session.handle(event)
