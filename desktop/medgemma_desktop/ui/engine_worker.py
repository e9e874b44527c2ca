"""The engine's home in its own thread: loading and generation never run on the UI thread.

The window sends requests through queued signals connected to this worker's slots and hears
back only through this worker's signals. Stop and cancel are plain thread-safe flags, because
the worker is busy inside the request they interrupt and would never see a queued signal.
What a load or an answer does is the Qt-free `generation` module's; this only carries it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from medgemma_models.errors import MedGemmaError
from medgemma_models.gguf_info import read_model_info

from ..adapters import is_adapter, read_adapter
from ..conversation import PromptPlan
from ..engine import GenerationStats, LoadCancelled
from ..generation import (
    EngineLike,
    GenerationEvents,
    GenerationRequest,
    LoadFailed,
    LoadRequest,
    open_model,
    run_generation,
)
from ..library import AdapterMatch, base_candidates, find_base


class EngineWorker(QObject):
    """Owns the engine; lives in a QThread."""

    load_progress = Signal(float)
    loaded = Signal(object)  # generation.Loaded
    load_failed = Signal(str, str)  # title, message
    model_inspected = Signal(object, object)  # Path, ModelInfo, AdapterMatch or the error message
    load_cancelled = Signal()
    prompt_planned = Signal(object)  # PromptPlan
    piece = Signal(str)
    finished = Signal(object)  # GenerationStats
    generation_failed = Signal(str)

    def __init__(self, engine_factory: Callable[[], EngineLike]) -> None:
        super().__init__()
        self._factory = engine_factory
        self._engine: EngineLike | None = None
        self._previous: EngineLike | None = None  # the engine before the last load, until the window keeps it
        self._stop = threading.Event()
        self._cancel_load = threading.Event()

    # Called from the UI thread, also while a request runs here: they only touch the flags.
    def request_stop(self) -> None:
        self._stop.set()

    def request_cancel_load(self) -> None:
        self._cancel_load.set()

    def clear_flags(self) -> None:
        """Before sending a request: a stop or cancel from now on applies to it, even if early."""
        self._stop.clear()
        self._cancel_load.clear()

    def _progress(self, fraction: float) -> bool:
        self.load_progress.emit(float(fraction))
        return not self._cancel_load.is_set()

    @Slot(object)
    def inspect(self, paths: list[Path]) -> None:
        """Read the headers of the models the window lists (slow for big vocabularies, so here);
        an adapter's comes with the base found for it."""
        for path in paths:
            try:
                if is_adapter(path):
                    adapter = read_adapter(path)
                    self.model_inspected.emit(path, AdapterMatch(adapter, find_base(adapter, base_candidates(adapter.base))))
                    continue
                self.model_inspected.emit(path, read_model_info(path))
            except Exception as exc:  # noqa: BLE001 - the list shows the problem instead of the facts
                self.model_inspected.emit(path, str(exc) if isinstance(exc, MedGemmaError) else f"unreadable: {exc}")

    @Slot(object)
    def load(self, request: LoadRequest) -> None:
        """Load into a new engine; the previous one stays in use unless this succeeds."""
        try:
            engine, loaded = open_model(self._factory, request, progress=self._progress)
        except LoadCancelled:
            self.load_cancelled.emit()
            return
        except LoadFailed as exc:
            self.load_failed.emit(exc.title, str(exc))
            return
        self._close_previous()
        # The window may still refuse the model (`undo_load`): the one in use stays open until it accepts.
        self._previous, self._engine = self._engine, engine
        self.loaded.emit(loaded)

    @Slot()
    def keep_load(self) -> None:
        """The window took the model just loaded: the one it replaces can go."""
        self._close_previous()

    @Slot()
    def undo_load(self) -> None:
        """The window could not take the model just loaded: back to the one in use before."""
        if self._engine is not None:
            self._engine.close()
        self._engine, self._previous = self._previous, None

    def _close_previous(self) -> None:
        if self._previous is not None:
            self._previous.close()
            self._previous = None

    @property
    def model_path(self) -> Path | None:
        """The file of the engine answering now (read it between requests)."""
        info = self._engine.info if self._engine is not None else None
        return info.path if info is not None else None

    @Slot(object)
    def generate(self, request: GenerationRequest) -> None:
        """Stream an answer; its events leave this thread as signals."""
        if self._engine is None:
            self.generation_failed.emit("No model is loaded.")
            return
        run_generation(self._engine, request, self, self._stop.is_set)

    # GenerationEvents, called by run_generation on this thread.
    def on_prompt_planned(self, plan: PromptPlan) -> None:
        self.prompt_planned.emit(plan)

    def on_piece(self, text: str) -> None:
        self.piece.emit(text)

    def on_finished(self, stats: GenerationStats) -> None:
        self.finished.emit(stats)

    def on_failed(self, message: str) -> None:
        self.generation_failed.emit(message)

    @Slot()
    def shutdown(self) -> None:
        self._close_previous()
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class GenerationRelay(QObject):
    """Lives on the GUI thread and hands the worker's answer events to a Qt-free receiver there.

    A signal connected to a plain Python object's method would run it on the worker's thread;
    connected to these slots, the events arrive queued on the GUI thread.
    """

    def __init__(self, events: GenerationEvents, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.events = events

    def connect_to(self, worker: EngineWorker) -> None:
        worker.prompt_planned.connect(self.prompt_planned)
        worker.piece.connect(self.piece)
        worker.finished.connect(self.finished)
        worker.generation_failed.connect(self.failed)

    @Slot(object)
    def prompt_planned(self, plan: PromptPlan) -> None:
        self.events.on_prompt_planned(plan)

    @Slot(str)
    def piece(self, text: str) -> None:
        self.events.on_piece(text)

    @Slot(object)
    def finished(self, stats: GenerationStats) -> None:
        self.events.on_finished(stats)

    @Slot(str)
    def failed(self, message: str) -> None:
        self.events.on_failed(message)
