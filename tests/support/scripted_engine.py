"""An engine with `Engine`'s interface that streams a fixed script instead of sampling a model.

Only for streams a real model cannot be steered to produce (a `<think>` tag cut at awkward
places) and for the screenshot. It reads the real GGUF header, so the window sees real facts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from medgemma_desktop.engine import GenerationSettings, GenerationStats, LoadCancelled, LoadOptions, OffloadReport
from medgemma_models.gguf_info import ModelInfo, read_model_info
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
    """How many pieces of `script` add reasoning text (the window counts these as tokens)."""
    splitter = ReasoningSplitter()
    return sum(1 for piece in script if any(s.kind == "reasoning" for s in splitter.feed(piece)))


class ScriptedEngine:
    """Streams `script` piece by piece; `delay` seconds per piece lets a test stop it midway."""

    # Every prompt the scripted engines were asked to answer, in order (tests read them).
    prompts: list[str] = []
    _lock = threading.Lock()

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

    def load(self, path: Path, options: LoadOptions = LoadOptions(), progress: Callable[[float], bool] | None = None) -> OffloadReport:
        self.info = read_model_info(path)
        self._n_ctx = options.n_ctx
        for step in range(1, 5):
            if progress is not None and not progress(step / 4):
                raise LoadCancelled("model load cancelled")
        backend = "CUDA" if self.gpu_failure else "CPU"
        return OffloadReport(options.gpu, 0, self.info.block_count or 0, backend, self.gpu_failure)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def stream(self, prompt_text: str, settings: GenerationSettings,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
        with self._lock:
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
            prompt_tokens=self.count_tokens(prompt_text), reused_tokens=0, generated_tokens=generated,
            ttft_ms=((first or start) - start) * 1000, decode_tok_per_s=(generated - 1) / elapsed if elapsed > 0 else 0.0,
            finish_reason=finish,
        )

    def close(self) -> None:
        self.info = None
