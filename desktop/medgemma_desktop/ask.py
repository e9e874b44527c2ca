"""One question through the window's own path, with no window: `medgemma-desktop --ask` and the demo's evaluation.

The same pieces as the window, minus Qt: `ModelLibrary` picks the model (the app's default
without one) and its preset (from the adapter's or the file's provenance), `generation.open_model`
loads the base and attaches the adapters, and a `ChatSession` driven by `DirectBackend` builds
the prompt, streams the answer and splits off the reasoning. The session's history is a
throwaway database, so a question asked here never reads or changes the user's chats or the
settings remembered for a model: the answer depends only on the arguments.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma_models.errors import MedGemmaError
from .adapters import read_adapter
from .conversation import PromptPlan
from .engine import Engine, GenerationStats
from .generation import AdapterUse, DirectBackend, EngineLike, LoadRequest, open_model
from .history import History
from .library import ModelLibrary, adapter_records, base_candidates, find_base, is_embedded_file
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Collector(SessionListener):
    """What the session shows, kept as text: the answer, its reasoning, the stats or the failure."""

    def __init__(self) -> None:
        self.answer: list[str] = []
        self.reasoning: list[str] = []
        self.stats: GenerationStats | None = None
        self.failure: str | None = None

    def answer_grew(self, answer: str, reasoning: str, reasoning_tokens: int) -> None:
        self.answer.append(answer)
        self.reasoning.append(reasoning)

    def problem(self, title: str, message: str) -> None:
        self.failure = message

    def answer_done(self, stats: GenerationStats | None) -> None:
        self.stats = stats


class _PlanRecorder:
    """Passes the backend's events to the session, keeping the prompt plan for the result."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.plan: PromptPlan | None = None
        self.pieces: list[str] = []

    def on_prompt_planned(self, plan: PromptPlan) -> None:
        self.plan = plan
        self.session.on_prompt_planned(plan)

    def on_piece(self, text: str) -> None:
        self.pieces.append(text)
        self.session.on_piece(text)

    def on_finished(self, stats: GenerationStats) -> None:
        self.session.on_finished(stats)

    def on_failed(self, message: str) -> None:
        self.session.on_failed(message)


def choose_base(model: Path | None, adapters: Sequence[AdapterUse]) -> Path | None:
    """The base for `adapters` when no model is named: the first known file the first adapter fits
    (its provenance's base first), else the embedded model (None), where a misfit is then refused."""
    if model is not None or not adapters:
        return model
    adapter = read_adapter(adapters[0].path)
    base = find_base(adapter, base_candidates(adapter.base))
    return None if base is None or is_embedded_file(base) else base


class Asker:
    """A model loaded once, answering one question at a time, each in a new chat. Close it after use."""

    def __init__(self, model: Path | None = None, adapters: Sequence[AdapterUse] | None = None,
                 load: LoadSettings = LoadSettings(), engine_factory: Callable[[], EngineLike] = Engine) -> None:
        """`model` None and `adapters` None: the app's default (the demo reasoning combination when shipped).

        Raises MedGemmaError (generation.LoadFailed) naming the file that cannot be used.
        """
        self._folder = tempfile.TemporaryDirectory(prefix="medgemma-ask-")
        self.engine: EngineLike | None = None
        self.history: History | None = None
        try:
            self.history = History(Path(self._folder.name) / "history.sqlite3")
            self.library = ModelLibrary(self.history)
            if model is None and adapters is None:
                path, chosen = self.library.default_choice()
            else:
                chosen = tuple(adapters or ())
                path = choose_base(model, chosen)
            self.load_settings = load
            self.library.begin_load(path, chosen)
            self.engine, loaded = open_model(engine_factory, LoadRequest(path, load.options(), chosen))
            self.chat_settings = self.library.finish_load(loaded, ChatSettings.from_dict({}), load)
            current = self.library.current
            assert current is not None
            self.title = current.title or loaded.info.name
            backend = DirectBackend(self.engine)
            self.session = ChatSession(self.history, backend)
            self.recorder = _PlanRecorder(self.session)
            backend.attach(self.recorder)
            self.session.use_model(loaded.info, loaded.sha256, current.title or None,
                                   adapter_records(loaded, current.adapters))
        except BaseException:
            self.close()
            raise

    def ask(self, question: str, think: bool | None = None, seed: int | None = None, **overrides: Any) -> AskResult:
        """Answer `question` in a new chat; `think` None keeps the preset's default (on).

        `overrides` are chat settings (temperature, top_p, top_k, repeat_penalty, max_tokens), checked
        like stored ones; `seed` makes a sampled (temperature > 0) answer repeatable.
        """
        if not question.strip():
            raise MedGemmaError("the question is empty")
        values = {**self.chat_settings.to_dict(), **overrides}
        if think is not None:
            values["think"] = think
        settings = ChatSettings.from_dict(values)
        collector = _Collector()
        self.session.listener = collector
        self.session.use_settings(settings, self.load_settings)
        self.session.seed = seed
        self.session.new_chat()
        self.recorder.plan, self.recorder.pieces = None, []
        self.session.send(question)  # the direct backend answers before this returns
        if collector.stats is None or self.recorder.plan is None:
            raise AskFailed(f"the answer failed: {collector.failure or 'no answer'}")
        stats = collector.stats
        assert self.session.chat_id is not None
        saved = self.session.history.messages(self.session.chat_id)[-1]
        return AskResult(
            reasoning="".join(collector.reasoning).strip(),
            answer="".join(collector.answer).strip(),
            finish_reason=stats.finish_reason,
            prompt_tokens=stats.prompt_tokens,
            generated_tokens=stats.generated_tokens,
            ttft_ms=round(stats.ttft_ms, 1),
            decode_tok_per_s=round(stats.decode_tok_per_s, 1),
            unterminated_reasoning=bool(saved.meta.get("unterminated_reasoning")),
            text="".join(self.recorder.pieces),
            model=self.title,
            preset=settings.preset,
            think=settings.think_enabled,
            prompt=str(self.recorder.plan.text),  # a plain string, not the formatter's segmented one
        )

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
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
        **overrides: Any) -> AskResult:
    """One question, one model load: what `medgemma-desktop --ask` runs. For many questions use `Asker`."""
    with Asker(model, adapters, load) as asker:
        return asker.ask(question, think, seed, **overrides)
