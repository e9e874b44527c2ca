"""What the chat needs of an engine, and the two things it asks of one: load a model, stream an answer.

Qt-free: the window's worker thread runs these and forwards their events as signals; a
headless caller runs them directly (`DirectBackend`). Either way the same code decides the
prompt, the stop and what a failure says.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medgemma_models.catalog import Preset
from medgemma_models.errors import MedGemmaError
from medgemma_models.files import sha256_file
from medgemma_models.gguf_info import ModelInfo, read_model_info
from medgemma_models.store import default_model

from .adapters import AdapterFile, check_fits, read_adapter
from .conversation import ChatMessage, PromptPlan, build_prompt
from .engine import GenerationStats, LoadCancelled, OffloadReport
from .settings import GenerationSettings, LoadOptions

log = logging.getLogger(__name__)

CANNOT_OPEN = "Cannot open this model"
COULD_NOT_LOAD = "Could not load the model"


class EngineLike(Protocol):
    """What the chat needs of an engine: `medgemma_desktop.engine.Engine` or a scripted stand-in."""

    info: ModelInfo | None
    last_stats: GenerationStats | None

    @property
    def n_ctx(self) -> int: ...

    def load(self, path: Path, options: LoadOptions,
             progress: Callable[[float], bool] | None = None) -> OffloadReport: ...

    def set_adapters(self, adapters: Sequence[AdapterUse]) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def stream(self, prompt: str, settings: GenerationSettings,
               should_stop: Callable[[], bool] = ...) -> Iterator[str]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AdapterUse:
    """A GGUF LoRA adapter applied at runtime on top of a base file, with its scale."""

    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class LoadRequest:
    path: Path | None  # None: the embedded default model, assembled into the store on first use
    options: LoadOptions
    adapters: tuple[AdapterUse, ...] = ()


@dataclass(frozen=True)
class Loaded:
    """A model that finished loading."""

    path: Path
    info: ModelInfo
    n_ctx: int
    report: OffloadReport
    sha256: str  # of the model file, for chats and exports
    adapters: tuple[AdapterFile, ...] = ()  # attached on top of `path`, in the request's order
    adapter_sha256: tuple[str, ...] = ()  # of each adapter file


class LoadFailed(MedGemmaError):
    """A load that did not happen; `title` says whether the file or llama.cpp was the problem."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(message)
        self.title = title


@dataclass(frozen=True)
class GenerationRequest:
    """Everything needed to build the prompt and stream one answer."""

    preset: Preset
    messages: Sequence[ChatMessage]
    settings: GenerationSettings
    system: str | None
    think: bool
    send_reasoning_back: bool


class GenerationEvents(Protocol):
    """Where an answer's progress goes: the chat session, directly or through the worker's signals."""

    def on_prompt_planned(self, plan: PromptPlan) -> None: ...

    def on_piece(self, text: str) -> None: ...

    def on_finished(self, stats: GenerationStats) -> None: ...

    def on_failed(self, message: str) -> None: ...


def open_model(factory: Callable[[], EngineLike], request: LoadRequest,
               progress: Callable[[float], bool] | None = None) -> tuple[EngineLike, Loaded]:
    """Check the file, then load it into a new engine from `factory`.

    Raises `LoadFailed` (with a dialog title) or `LoadCancelled`; a new engine that failed is closed.
    """
    name = request.path.name if request.path is not None else "the embedded model"
    try:
        path = request.path if request.path is not None else default_model()
        info = read_model_info(path)
    except MedGemmaError as exc:
        raise LoadFailed(CANNOT_OPEN, str(exc)) from exc
    except Exception as exc:  # a file broken in a way the reader did not foresee
        log.exception("reading the model header failed")
        raise LoadFailed(CANNOT_OPEN, f"{name} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    if not info.is_gemma:
        raise LoadFailed(CANNOT_OPEN,
                         f"{path.name} is a {info.architecture} model; MedGemma Edge runs Gemma 2 and Gemma 3 models.")
    adapters = check_adapters(request.adapters, path)
    engine = factory()
    try:
        report = engine.load(path, request.options, progress=progress)
        if request.adapters:
            engine.set_adapters(request.adapters)
    except LoadCancelled:
        engine.close()
        raise
    except MedGemmaError as exc:
        engine.close()
        raise LoadFailed(COULD_NOT_LOAD, str(exc)) from exc
    except Exception as exc:  # any load failure must leave the old model usable
        log.exception("model load failed")
        engine.close()
        raise LoadFailed(COULD_NOT_LOAD, f"{type(exc).__name__}: {exc}") from exc
    assert engine.info is not None
    # Hashed here, off the UI thread: exports name the exact file that wrote the answers.
    return engine, Loaded(path=Path(path), info=engine.info, n_ctx=engine.n_ctx, report=report,
                          sha256=sha256_file(path), adapters=adapters,
                          adapter_sha256=tuple(sha256_file(a.path) for a in adapters))


def check_adapters(adapters: Sequence[AdapterUse], base: Path) -> tuple[AdapterFile, ...]:
    """Read each adapter's header and check it fits `base`, before any engine exists (LoadFailed if not)."""
    files = []
    for use in adapters:
        try:
            adapter = read_adapter(use.path)
            check_fits(adapter, base)
        except MedGemmaError as exc:
            raise LoadFailed(CANNOT_OPEN, str(exc)) from exc
        files.append(adapter)
    return tuple(files)


def run_generation(engine: EngineLike, request: GenerationRequest, events: GenerationEvents,
                   should_stop: Callable[[], bool]) -> None:
    """Build the prompt with the engine's tokenizer, then stream the answer piece by piece to `events`."""
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
        events.on_prompt_planned(plan)
        for text in engine.stream(plan.text, request.settings, should_stop=should_stop):
            if text:
                events.on_piece(text)
    except MedGemmaError as exc:
        events.on_failed(str(exc))
        return
    except Exception as exc:  # the chat must survive a failed generation
        log.exception("generation failed")
        events.on_failed(f"{type(exc).__name__}: {exc}")
        return
    assert engine.last_stats is not None
    events.on_finished(engine.last_stats)


class DirectBackend:
    """Runs answers on the calling thread: for headless use and for tests of the chat session.

    Connect it to a session with `attach(session)` (the session is its events).
    """

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine
        self.events: GenerationEvents | None = None
        self._stop = threading.Event()

    def attach(self, events: GenerationEvents) -> None:
        self.events = events

    def generate(self, request: GenerationRequest) -> None:
        assert self.events is not None, "attach() the session first"
        self._stop.clear()
        run_generation(self.engine, request, self.events, self._stop.is_set)

    def stop(self) -> None:
        self._stop.set()
