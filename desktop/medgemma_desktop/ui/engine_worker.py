"""The engine's home in its own thread: loading and generation never run on the UI thread.

The window sends requests through queued signals connected to this worker's slots and hears
back only through this worker's signals. Stop and cancel are plain thread-safe flags, because
the worker is busy inside the request they interrupt and would never see a queued signal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PySide6.QtCore import QObject, Signal, Slot

from medgemma_models.catalog import Preset
from medgemma_models.errors import MedGemmaError
from medgemma_models.files import sha256_file
from medgemma_models.gguf_info import read_model_info
from medgemma_models.store import default_model

from ..conversation import build_prompt
from ..engine import GenerationSettings, LoadCancelled, LoadOptions

log = logging.getLogger(__name__)

CANNOT_OPEN = "Cannot open this model"
COULD_NOT_LOAD = "Could not load the model"


class EngineLike(Protocol):
    """What the window needs of an engine: `medgemma_desktop.engine.Engine` or a scripted stand-in."""

    info: Any
    n_ctx: int
    last_stats: Any

    def load(self, path: Path, options: LoadOptions, progress: Callable[[float], bool] | None = None) -> Any: ...

    def count_tokens(self, text: str) -> int: ...

    def stream(self, prompt_text: str, settings: GenerationSettings, should_stop: Callable[[], bool] = ...) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LoadRequest:
    path: Path | None  # None: the embedded default model, assembled into the store on first use
    options: LoadOptions


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the worker needs to build the prompt and stream one answer."""

    preset: Preset
    messages: list[Any]
    settings: GenerationSettings
    system: str | None
    think: bool
    send_reasoning_back: bool
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Loaded:
    path: Path
    info: Any
    n_ctx: int
    report: Any
    sha256: str  # of the model file, for chats and exports


@dataclass(frozen=True)
class Finished:
    stats: Any  # GenerationStats
    pieces: int  # non-empty text pieces emitted


class EngineWorker(QObject):
    """Owns the engine; lives in a QThread."""

    load_progress = Signal(float)
    loaded = Signal(object)  # Loaded
    load_failed = Signal(str, str)  # title, message
    model_inspected = Signal(object, object)  # Path, ModelInfo or the error message
    load_cancelled = Signal()
    prompt_planned = Signal(object)  # PromptPlan
    piece = Signal(str)
    finished = Signal(object)  # Finished
    generation_failed = Signal(str)

    def __init__(self, engine_factory: Callable[[], EngineLike]) -> None:
        super().__init__()
        self._factory = engine_factory
        self._engine: EngineLike | None = None
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
        """Read the headers of the models the window lists (slow for big vocabularies, so here)."""
        for path in paths:
            try:
                self.model_inspected.emit(path, read_model_info(path))
            except Exception as exc:  # noqa: BLE001 - the list shows the problem instead of the facts
                self.model_inspected.emit(path, str(exc) if isinstance(exc, MedGemmaError) else f"unreadable: {exc}")

    @Slot(object)
    def load(self, request: LoadRequest) -> None:
        """Check the file, then load it into a new engine; the previous one stays in use unless this succeeds."""
        try:
            path = request.path if request.path is not None else default_model()
            info = read_model_info(path)
        except MedGemmaError as exc:
            self.load_failed.emit(CANNOT_OPEN, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a file broken in a way the reader did not foresee
            log.exception("reading the model header failed")
            name = request.path.name if request.path is not None else "the embedded model"
            self.load_failed.emit(CANNOT_OPEN, f"{name} is not a readable GGUF file ({type(exc).__name__}: {exc})")
            return
        if not info.is_gemma:
            self.load_failed.emit(
                CANNOT_OPEN,
                f"{path.name} is a {info.architecture} model; MedGemma Edge runs Gemma 2 and Gemma 3 models.",
            )
            return
        engine = self._factory()
        try:
            report = engine.load(path, request.options, progress=self._progress)
        except LoadCancelled:
            engine.close()
            self.load_cancelled.emit()
            return
        except MedGemmaError as exc:
            engine.close()
            self.load_failed.emit(COULD_NOT_LOAD, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any load failure must leave the old model usable
            log.exception("model load failed")
            engine.close()
            self.load_failed.emit(COULD_NOT_LOAD, f"{type(exc).__name__}: {exc}")
            return
        if self._engine is not None:
            self._engine.close()
        self._engine = engine
        # Hashed here, off the UI thread: exports name the exact file that wrote the answers.
        digest = sha256_file(path)
        self.loaded.emit(Loaded(path=Path(path), info=engine.info, n_ctx=engine.n_ctx, report=report, sha256=digest))

    @Slot(object)
    def generate(self, request: GenerationRequest) -> None:
        """Build the prompt with the engine's tokenizer, then stream the answer piece by piece."""
        engine = self._engine
        if engine is None:
            self.generation_failed.emit("No model is loaded.")
            return
        pieces = 0
        try:
            plan = build_prompt(
                request.preset,
                request.messages,
                system=request.system,
                think=request.think,
                send_reasoning_back=request.send_reasoning_back,
                n_ctx=engine.n_ctx,
                max_tokens=request.settings.max_tokens,
                count_tokens=engine.count_tokens,
            )
            self.prompt_planned.emit(plan)
            for text in engine.stream(plan.text, request.settings, should_stop=self._stop.is_set):
                if text:
                    pieces += 1
                    self.piece.emit(text)
        except MedGemmaError as exc:
            self.generation_failed.emit(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the chat must survive a failed generation
            log.exception("generation failed")
            self.generation_failed.emit(f"{type(exc).__name__}: {exc}")
            return
        self.finished.emit(Finished(stats=engine.last_stats, pieces=pieces))

    @Slot()
    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
