"""One question through the window's own path, with no window: `medgemma-desktop --ask` and the demo's evaluation.

The same pieces as the window, minus Qt: `ModelLibrary` picks the model (the app's default
without one) and its preset (from the adapter's or the file's provenance), `resolve` finds an
adapter's base, a `Runtime` loads it and runs the answer (building the prompt, streaming, splitting
off the reasoning), and a `ChatSession` keeps the chat as the window's does. The session's history
is a throwaway database, so a question asked here never reads or changes the user's chats or the
settings remembered for a model: the answer depends only on the arguments.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma_models import emergency
from medgemma_models.errors import MedGemmaError

from .answer import AnswerStats
from .documents.chunking import estimate_tokens
from .documents.collection import Collection, Skipped
from .documents.passages import CITATIONS_META, document_budget, find_passages, question_meta
from .engine import Engine
from .events import Finished, LoadCancelled, LoadError, ModelReady, PromptPlanned, RuntimeEvent
from .generation import AdapterUse, EngineLike, Loaded, LoadFailed, ModelRequest
from .history import History
from .images.decode import read_image_file
from .images.store import ImageStore
from .library import ModelLibrary, adapter_records
from .resolve import resolve
from .runtime import Runtime, RuntimeBackend
from .session import ChatSession, SessionListener
from .settings import ChatSettings, LoadSettings


class AskFailed(MedGemmaError):
    """The question was asked but no answer came (the engine failed while generating)."""


@dataclass(frozen=True)
class AskResult:
    """One answer, as `--ask --json` prints it (plus what it was asked with)."""

    reasoning: str
    answer: str
    finish_reason: str  # "stop" (end of turn), "length" (max tokens) or "cancelled"
    prompt_tokens: int
    generated_tokens: int
    ttft_ms: float
    decode_tok_per_s: float
    unterminated_reasoning: bool  # a <think> opened and never closed
    text: str  # everything generated, as the engine streamed it (tags included, end-of-turn excluded)
    model: str
    preset: str
    think: bool  # whether the prompt asked for reasoning (only presets that reason can)
    prompt: str  # the text the engine was given
    emergency_notice: dict[str, Any] | None = None  # the red-flag notice (medgemma_models.emergency), None when none
    # With documents: the passages the prompt quoted, [1] first ({"source", "page" from 1, "snippet", "score",
    # and "number", "path", "collection": documents.passages.Citation}), and the files not indexed ({"source", "reason"}).
    citations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    images: dict[str, int] = dataclasses.field(default_factory=lambda: {"count": 0, "tokens": 0})
    image_encode_ms: float = 0.0  # encoding the images the KV cache did not hold

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Collector(SessionListener):
    """What the session shows, kept as text: the answer, its reasoning, the stats or the failure."""

    def __init__(self) -> None:
        self.answer: list[str] = []
        self.reasoning: list[str] = []
        self.stats: AnswerStats | None = None
        self.failure: str | None = None

    def answer_grew(self, answer: str, reasoning: str, reasoning_tokens: int) -> None:
        self.answer.append(answer)
        self.reasoning.append(reasoning)

    def problem(self, title: str, message: str) -> None:
        self.failure = message

    def answer_done(self, stats: AnswerStats | None) -> None:
        self.stats = stats


class _Recorder:
    """Passes the runtime's events to the session, keeping the prompt plan and the raw text for the result."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.plan: PromptPlanned | None = None
        self.text = ""

    def __call__(self, event: RuntimeEvent) -> None:
        if isinstance(event, PromptPlanned):
            self.plan = event
        elif isinstance(event, Finished):
            self.text = event.text
        self.session.handle(event)


def load_model(runtime: Runtime, request: ModelRequest) -> Loaded:
    """Load `request` on `runtime` and wait for it; LoadFailed names the file that cannot be used."""
    outcome: list[RuntimeEvent] = []
    runtime.load(request, outcome.append).wait()
    last = outcome[-1] if outcome else None
    if isinstance(last, ModelReady):
        return last.loaded
    if isinstance(last, LoadError):
        raise LoadFailed(last.title, last.message)
    raise LoadFailed("Could not load the model", "the load was cancelled" if isinstance(last, LoadCancelled) else "no answer")


class Asker:
    """A model loaded once, answering one question at a time, each in a new chat. Close it after use."""

    def __init__(self, model: Path | None = None, adapters: Sequence[AdapterUse] | None = None,
                 load: LoadSettings = LoadSettings(), engine_factory: Callable[[], EngineLike] = Engine,
                 runtime: Runtime | None = None, mmproj: Path | None = None) -> None:
        """`model` None and `adapters` None: the app's default (the demo reasoning combination when shipped).
        `runtime`: one to share (it stays open); else one of its own. `mmproj`: the vision projector
        (by default the `mmproj-*.gguf` beside the model that fits it, if any).

        Raises MedGemmaError (generation.LoadFailed) naming the file that cannot be used.
        """
        self._folder = tempfile.TemporaryDirectory(prefix="medgemma-ask-")
        self._own_runtime = runtime is None
        self.runtime: Runtime | None = runtime if runtime is not None else Runtime(engine_factory)
        self.history: History | None = None
        try:
            self.history = History(Path(self._folder.name) / "history.sqlite3")
            self.library = ModelLibrary(self.history)
            if model is None and adapters is None:
                path, chosen = self.library.default_choice()
                request = ModelRequest(path, chosen, load.load_params())
            else:
                request = resolve(model, tuple(adapters or ()), options=load.load_params())
            request = dataclasses.replace(request, mmproj=mmproj)
            self.load_settings = load
            self.library.begin_load(request.base, request.adapters)
            loaded = load_model(self.runtime, request)
            self.chat_settings = self.library.finish_load(loaded, ChatSettings.from_dict({}), load)
            self.n_ctx = loaded.n_ctx
            self.documents: Collection | None = None
            current = self.library.current
            assert current is not None
            self.title = current.title or loaded.info.name
            self.session = ChatSession(self.history, RuntimeBackend(self.runtime, self._deliver, wait=True),
                                       images=ImageStore(Path(self._folder.name) / "images"))
            self.recorder = _Recorder(self.session)
            self.session.use_model(loaded.info, loaded.sha256, current.title or None,
                                   adapter_records(loaded, current.adapters), vision=loaded.vision)
        except BaseException:
            self.close()
            raise

    def _deliver(self, event: RuntimeEvent) -> None:
        self.recorder(event)

    def index_documents(self, paths: Sequence[Path]) -> list[Skipped]:
        """Bring the index of `paths` up to date (in this asker's temporary folder, never the user's data
        folder; an unchanged file is not read again); the files that cannot be indexed, with the reason."""
        if self.documents is None:
            self.documents = Collection(Path(self._folder.name) / "documents.sqlite3", "--docs")
        for source in set(self.documents.sources()) - {Path(path).absolute() for path in paths}:
            self.documents.remove_source(source)
        return self.documents.index([Path(path) for path in paths]).skipped

    def ask(self, question: str, think: bool | None = None, seed: int | None = None,
            images: Sequence[Path] = (), documents: Sequence[Path] = (), **overrides: Any) -> AskResult:
        """Answer `question` in a new chat, about `images` if any; `think` None keeps the preset's default (on).

        `documents`: files and folders to answer from; the passages found go into the question's
        turn (documents.passages) and come back as `citations`, unreadable files as `skipped`.
        `overrides` are chat settings (temperature, top_p, top_k, repeat_penalty, max_tokens), checked
        like stored ones; `seed` makes a sampled (temperature > 0) answer repeatable.
        """
        if not question.strip():
            raise MedGemmaError("the question is empty")
        notice = emergency.check(question)  # from the list, never from the model
        parts = []
        for path in images:
            decoded = read_image_file(path)
            self.session.images.put(decoded)
            parts.append(decoded.part)
        values = {**self.chat_settings.to_dict(), **overrides}
        if think is not None:
            values["think"] = think
        settings = ChatSettings.from_dict(values)
        collector = _Collector()
        self.session.listener = collector
        self.session.use_settings(settings, self.load_settings)
        self.session.seed = seed
        self.session.new_chat()
        self.recorder.plan, self.recorder.text = None, ""
        meta, cited, skipped = None, [], []
        if documents:
            skipped = [{"source": item.source, "reason": item.reason} for item in self.index_documents(documents)]
            assert self.documents is not None
            # Estimated tokens (about four characters each): the engine's tokenizer is on the runtime's
            # thread, and the budget's other half leaves room for an estimate that is a little short.
            chosen = find_passages(self.documents.search, [question],
                                   document_budget(self.n_ctx, settings.max_tokens), estimate_tokens)
            meta = question_meta(chosen)
            cited = meta[CITATIONS_META]
        self.session.send(question, parts, meta)  # the backend waits: the answer is complete when this returns
        if collector.stats is None or self.recorder.plan is None:
            raise AskFailed(f"the answer failed: {collector.failure or 'no answer'}")
        stats = collector.stats
        return AskResult(
            reasoning="".join(collector.reasoning).strip(),
            answer="".join(collector.answer).strip(),
            finish_reason=stats.finish_reason,
            prompt_tokens=stats.prompt_tokens,
            generated_tokens=stats.generated_tokens,
            ttft_ms=round(stats.ttft_ms, 1),
            decode_tok_per_s=round(stats.decode_tok_per_s, 1),
            unterminated_reasoning=stats.unterminated_reasoning,
            text=self.recorder.text,
            model=self.title,
            preset=settings.preset,
            think=settings.think_enabled,
            prompt=self.recorder.plan.plan.prompt.text,  # for reading: the markers spelled out
            emergency_notice=notice.to_dict() if notice else None,
            images={"count": self.recorder.plan.plan.images,
                    "tokens": sum(1 for token in self.recorder.plan.plan.tokens if token < 0)},
            image_encode_ms=stats.image_encode_ms,
            citations=cited,
            skipped=skipped,
        )

    def close(self) -> None:
        if getattr(self, "documents", None) is not None:
            self.documents.close()
            self.documents = None
        if self.runtime is not None and self._own_runtime:
            self.runtime.close()
        self.runtime = None
        if self.history is not None:
            self.history.close()
            self.history = None
        self._folder.cleanup()

    def __enter__(self) -> Asker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ask(question: str, model: Path | None = None, adapters: Sequence[AdapterUse] | None = None,
        think: bool | None = None, load: LoadSettings = LoadSettings(), seed: int | None = None,
        images: Sequence[Path] = (), mmproj: Path | None = None, documents: Sequence[Path] = (),
        **overrides: Any) -> AskResult:
    """One question, one model load: what `medgemma-desktop --ask` runs. For many questions use `Asker`."""
    with Asker(model, adapters, load, mmproj=mmproj) as asker:
        return asker.ask(question, think, seed, images, documents, **overrides)
