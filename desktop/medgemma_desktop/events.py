"""What a runtime job reports, as typed values: every front end receives these, in this order.

A load: `LoadProgress`…, then one of `ModelReady`, `LoadError`, `LoadCancelled`.
An answer: `PromptPlanned`, then `ReasoningPiece` / `AnswerPiece`…, then one of `Finished`, `Failed`.
The reasoning is already split from the answer (at `<think>…</think>`), so no front end splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from .answer import AnswerStats
from .conversation import PromptPlan

if TYPE_CHECKING:
    from medgemma_models.gguf_info import ModelInfo

    from .generation import Loaded
    from .resolve import AdapterMatch


@dataclass(frozen=True)
class LoadProgress:
    fraction: float


@dataclass(frozen=True)
class ModelReady:
    loaded: Loaded


@dataclass(frozen=True)
class LoadError:
    title: str  # whether the file or llama.cpp was the problem
    message: str


@dataclass(frozen=True)
class LoadCancelled:
    """The user cancelled the load; the model in use before stays."""


@dataclass(frozen=True)
class Inspected:
    """A file's header, read for the model list: its facts, an adapter and its base, or the problem."""

    path: Path
    result: ModelInfo | AdapterMatch | str


@dataclass(frozen=True)
class PromptPlanned:
    plan: PromptPlan


@dataclass(frozen=True)
class ReasoningPiece:
    text: str
    tokens: int  # generated tokens this piece stands for (0 when it shares a token with answer text)


@dataclass(frozen=True)
class AnswerPiece:
    text: str


@dataclass(frozen=True)
class Finished:
    stats: AnswerStats
    text: str = ""  # everything generated, as the engine streamed it (tags included, end of turn excluded)


@dataclass(frozen=True)
class Failed:
    message: str


RuntimeEvent = Union[LoadProgress, ModelReady, LoadError, LoadCancelled, Inspected, PromptPlanned, ReasoningPiece,
                     AnswerPiece, Finished, Failed]
