"""What the chat needs of an engine, and the two things it asks of one: load a model, stream an answer.

Qt-free: the runtime's engine thread runs these (`runtime.Runtime`), for the window, `--ask` and
the server alike, so the same code decides the prompt, splits the reasoning from the answer,
handles the stop and says what a failure is.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medgemma_models.catalog import Preset
from medgemma_models.errors import MedGemmaError
from medgemma_models.files import sha256_file
from medgemma_models.gguf_info import ModelInfo, read_model_info
from medgemma_models.mmproj_pair import check_pair
from medgemma_models.prompt import Prompt
from medgemma_models.reasoning import ReasoningSplitter, Segment
from medgemma_models.store import default_model

from .adapter_files import AdapterFile, check_fits, read_adapter
from .answer import AnswerStats, GenerationStats, LoadCancelledError, OffloadReport
from .conversation import ChatMessage, ImageLoader, build_prompt
from .events import AnswerPiece, Failed, Finished, PromptPlanned, ReasoningPiece, RuntimeEvent
from .settings import LoadParams, SamplingParams
from .vision_files import find_mmproj, is_mmproj

log = logging.getLogger(__name__)

CANNOT_OPEN = "Cannot open this model"
COULD_NOT_LOAD = "Could not load the model"


class EngineLike(Protocol):
    """What the chat needs of an engine: `medgemma_desktop.engine.Engine` or a scripted stand-in."""

    info: ModelInfo | None
    last_stats: GenerationStats | None

    @property
    def n_ctx(self) -> int: ...

    def load(self, path: Path, options: LoadParams,
             progress: Callable[[float], bool] | None = None) -> OffloadReport: ...

    def set_adapters(self, adapters: Sequence[AdapterUse]) -> None: ...

    def set_vision(self, mmproj: Path | None) -> None: ...

    def tokenize(self, prompt: Prompt) -> list[int]: ...

    def stream(self, prompt: Prompt | Sequence[int], settings: SamplingParams,
               should_stop: Callable[[], bool] = ...) -> Iterator[str]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AdapterUse:
    """A GGUF LoRA adapter applied at runtime on top of a base file, with its scale."""

    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class ModelRequest:
    """A model to load: a base file with GGUF LoRA adapters on it at run time."""

    base: Path | None  # None: the embedded default model, assembled into the store on first use
    adapters: tuple[AdapterUse, ...] = ()
    options: LoadParams = LoadParams()
    mmproj: Path | None = None  # the vision projector that lets the model see images


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
    mmproj: Path | None = None  # the vision projector loaded with it: the model takes images

    @property
    def vision(self) -> bool:
        return self.mmproj is not None


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
    settings: SamplingParams
    system: str | None
    think: bool
    send_reasoning_back: bool
    load_image: ImageLoader | None = None  # the pixels of the messages' images, by sha256


def open_model(factory: Callable[[], EngineLike], request: ModelRequest,
               progress: Callable[[float], bool] | None = None) -> tuple[EngineLike, Loaded]:
    """Check the file, then load it into a new engine from `factory`.

    Raises `LoadFailed` (with a dialog title) or `LoadCancelledError`; a new engine that failed is closed.
    """
    name = request.base.name if request.base is not None else "the embedded model"
    try:
        path = request.base if request.base is not None else default_model()
        info = read_model_info(path)
    except MedGemmaError as exc:
        raise LoadFailed(CANNOT_OPEN, str(exc)) from exc
    except Exception as exc:  # a file broken in a way the reader did not foresee
        log.exception("reading the model header failed")
        raise LoadFailed(CANNOT_OPEN, f"{name} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    if is_mmproj(info):
        raise LoadFailed(CANNOT_OPEN, f"{path.name} is a vision projector (mmproj), not a model: open the model it "
                                      "belongs to, with this file beside it")
    if not info.is_gemma:
        raise LoadFailed(CANNOT_OPEN,
                         f"{path.name} is a {info.architecture} model; MedGemma Edge runs Gemma 2 and Gemma 3 models.")
    adapters = check_adapters(request.adapters, path)
    mmproj = request.mmproj
    if mmproj is not None:
        try:
            check_pair(info, read_model_info(mmproj))
        except MedGemmaError as exc:
            raise LoadFailed(CANNOT_OPEN, str(exc)) from exc
    elif request.base is not None:
        mmproj = find_mmproj(path, info)  # the projector shipped beside the model, as LM Studio keeps them
    engine = factory()
    try:
        report = engine.load(path, request.options, progress=progress)
        if request.adapters:
            engine.set_adapters(request.adapters)
        if mmproj is not None:
            engine.set_vision(mmproj)
    except LoadCancelledError:
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
                          adapter_sha256=tuple(sha256_file(a.path) for a in adapters), mmproj=mmproj)


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


def run_generation(engine: EngineLike, request: GenerationRequest, emit: Callable[[RuntimeEvent], None],
                   should_stop: Callable[[], bool]) -> None:
    """Build the prompt with the engine's tokenizer, stream the answer, split the reasoning off, and
    report it all to `emit`: `PromptPlanned`, the pieces, then `Finished` or `Failed`."""
    splitter = ReasoningSplitter()
    reasoning_tokens = 0
    pieces: list[str] = []
    try:
        plan = build_prompt(
            request.preset,
            request.messages,
            system=request.system,
            think=request.think,
            send_reasoning_back=request.send_reasoning_back,
            n_ctx=engine.n_ctx,
            max_tokens=request.settings.max_tokens,
            tokenize=engine.tokenize,
            load_image=request.load_image,
        )
        emit(PromptPlanned(plan))
        # The engine yields one piece per generated token: a token counts as reasoning when it
        # carries reasoning text or one of the tags around it.
        for piece in engine.stream(plan.tokens, request.settings, should_stop=should_stop):
            pieces.append(piece)
            was_reasoning = splitter.in_reasoning
            segments = splitter.feed(piece)
            counted = was_reasoning or splitter.in_reasoning or any(s.kind == "reasoning" for s in segments)
            reasoning_tokens += counted
            _emit_segments(emit, segments, 1 if counted else 0)
        _emit_segments(emit, splitter.finish(), 0)
    except Exception as exc:  # the chat must survive a failed generation
        if not isinstance(exc, MedGemmaError):
            log.exception("generation failed")
        _emit_segments(emit, splitter.finish(), 0)  # what arrived before the failure is kept
        emit(Failed(str(exc) if isinstance(exc, MedGemmaError) else f"{type(exc).__name__}: {exc}"))
        return
    stats = engine.last_stats
    assert stats is not None
    emit(Finished(AnswerStats(**dataclasses.asdict(stats), reasoning_tokens=min(reasoning_tokens, stats.generated_tokens),
                              unterminated_reasoning=splitter.unterminated), "".join(pieces)))


def _emit_segments(emit: Callable[[RuntimeEvent], None], segments: Sequence[Segment], tokens: int) -> None:
    """The split pieces of one token; its count goes with its reasoning part (a shown count, not a sum)."""
    if tokens and not any(s.kind == "reasoning" for s in segments):
        emit(ReasoningPiece("", tokens))  # a token that was only a tag
    for segment in segments:
        if segment.kind == "reasoning":
            emit(ReasoningPiece(segment.text, tokens))
            tokens = 0
        else:
            emit(AnswerPiece(segment.text))
