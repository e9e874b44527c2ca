"""An engine with `Engine`'s interface that streams a fixed script instead of sampling a model.

Only for streams a real model cannot be steered to produce (a `<think>` tag cut at awkward
places) and for the screenshot. It reads the real GGUF header, so the window sees real facts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from medgemma_desktop.answer import GenerationStats, LoadCancelledError, OffloadReport
from medgemma_desktop.settings import LoadParams, SamplingParams
from medgemma_models.gguf_info import ModelInfo, read_model_info
from medgemma_models.prompt import Prompt
from medgemma_models.reasoning import ReasoningSplitter

# A reasoning answer whose tags are cut inside, between and around the pieces.
THINK_SCRIPT: tuple[str, ...] = (
    "<", "thi", "nk>", "The patient has fever", ", cough and", " myalgia <", "in winter.", " Consider", " influenza",
    " first.</", "th", "ink", ">", "**Most likely:** influenza.", "\n\n- Rest and fluids", "\n- See a doctor if",
    " breathing gets hard", " <", "/", "think", " is not a tag here.",
)


def script_reasoning(script: Sequence[str]) -> tuple[str, str]:
    """(reasoning, answer) that a correct splitter must recover from `script`."""
    text = "".join(script)
    reasoning, _, answer = text.removeprefix("<think>").partition("</think>")
    return reasoning, answer


def reasoning_pieces(script: Sequence[str]) -> int:
    """How many pieces (tokens) of `script` carry reasoning text or one of its tags."""
    splitter = ReasoningSplitter()
    count = 0
    for piece in script:
        before = splitter.in_reasoning
        segments = splitter.feed(piece)
        count += before or splitter.in_reasoning or any(s.kind == "reasoning" for s in segments)
    return count


class ScriptedEngine:
    """Streams `script` piece by piece; `delay` seconds per piece lets a test stop it midway."""

    # Every prompt the scripted engines were asked to answer, in order (tests read them).
    prompts: list[str] = []
    _lock = threading.Lock()
    # A stand-in vocabulary shared by every scripted engine: a token is four characters of prompt text.
    _token_ids: dict[str, int] = {}

    def __init__(self, script: Sequence[str] = THINK_SCRIPT, delay: float = 0.0, n_ctx: int = 4096,
                 gpu_failure: str | None = None) -> None:
        self.script = tuple(script)
        self.gpu_failure = gpu_failure  # a GPU load error to report, as Engine does after retrying on the CPU
        self.delay = delay
        self._n_ctx = n_ctx
        self.info: ModelInfo | None = None
        self.last_stats: GenerationStats | None = None

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def load(self, path: Path, options: LoadParams = LoadParams(), progress: Callable[[float], bool] | None = None) -> OffloadReport:
        self.info = read_model_info(path)
        self._n_ctx = options.n_ctx
        for step in range(1, 5):
            if progress is not None and not progress(step / 4):
                raise LoadCancelledError("model load cancelled")
        backend = "CUDA" if self.gpu_failure else "CPU"
        return OffloadReport(options.gpu, 0, self.info.block_count or 0, backend, self.gpu_failure)

    def tokenize(self, prompt: Prompt) -> list[int]:
        if not isinstance(prompt, Prompt):
            raise TypeError(f"the engine takes a Prompt or token ids, not {type(prompt).__name__}")
        text = prompt.text
        with self._lock:
            return [self._token_ids.setdefault(text[i:i + 4], len(self._token_ids)) for i in range(0, len(text), 4)]

    def stream(self, prompt: Prompt | Sequence[int], settings: SamplingParams,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
        tokens = self.tokenize(prompt) if isinstance(prompt, Prompt) else list(prompt)
        with self._lock:
            texts = {id_: text for text, id_ in self._token_ids.items()}
            prompt_text = "".join(texts[t] for t in tokens)
            ScriptedEngine.prompts.append(prompt_text)
        start = time.perf_counter()
        first = None
        generated = 0
        finish = "length"
        for piece in self.script[: settings.max_tokens]:
            if self.delay:
                time.sleep(self.delay)
            first = first or time.perf_counter()
            generated += 1
            yield piece
            if should_stop():
                finish = "cancelled"
                break
        else:
            finish = "stop" if len(self.script) <= settings.max_tokens else "length"
        elapsed = time.perf_counter() - (first or start)
        self.last_stats = GenerationStats(
            prompt_tokens=len(tokens), reused_tokens=0, generated_tokens=generated,
            ttft_ms=((first or start) - start) * 1000, decode_tok_per_s=(generated - 1) / elapsed if elapsed > 0 else 0.0,
            finish_reason=finish,
        )

    def close(self) -> None:
        self.info = None
