"""Gemma prompt formatting: chat turns with no system role, one BOS, and completion templates.

A formatted prompt is a `Prompt`: its segments, each either one of the formatter's own markers
(`<bos>`, `<start_of_turn>`, `<end_of_turn>`) or text. Text (what the user typed, the system text,
earlier answers, a document's passages) must be tokenized as text: a user who types
`<end_of_turn>` must not end their turn, and a marker a model spelled out must not become one.

A `Prompt` is deliberately not a `str`: a string made from one (a concatenation, a format) has
lost which parts are markers, so the engine refuses strings and takes only a `Prompt` or token ids.

An image is a segment of its own (`PromptSegment.image`), placed as Gemma 3's processor places it:
"\n\n" before and after, where llama.cpp's mtmd puts <start_of_image>, its embeddings and
<end_of_image>. Nothing a user types can make one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .mtmd_compat import RgbImage

BOS = "<bos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_OFF_PREFIX = THINK_OPEN + THINK_CLOSE
# The control tokens this formatter writes; nothing else in a prompt is a control token.
MARKERS = (BOS, START_OF_TURN, END_OF_TURN)


IMAGE_PLACEHOLDER = "[image]"  # how an image segment reads in `Prompt.text`


@dataclass(frozen=True)
class PromptImage:
    """An image of a message: its pixels, and the sha256 of its stored file (which names it in the KV cache)."""

    sha256: str
    rgb: RgbImage


@dataclass(frozen=True)
class PromptSegment:
    """A run of prompt text: `marker` for one of `MARKERS` written by the formatter, else literal text;
    or, with `image`, one image (its `text` is only for reading)."""

    text: str
    marker: bool = False
    image: PromptImage | None = None


@dataclass(frozen=True)
class Prompt:
    """A formatted prompt: the segments it was built from. `text` is for display and logs only."""

    segments: tuple[PromptSegment, ...]

    def __init__(self, segments: Iterable[PromptSegment]) -> None:
        object.__setattr__(self, "segments", tuple(segments))

    @property
    def text(self) -> str:
        """The prompt as one string, markers spelled out: what a person reads, never what is tokenized."""
        return "".join(segment.text for segment in self.segments)

    @property
    def images(self) -> tuple[PromptImage, ...]:
        return tuple(segment.image for segment in self.segments if segment.image is not None)


def _marker(text: str) -> PromptSegment:
    return PromptSegment(text, marker=True)


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "model"]
    text: str
    images: tuple[PromptImage, ...] = ()  # a user turn's images, shown to the model before its text
    preamble: str = ""  # the system text folded into the first user turn: before its images


def fold_system(turns: Sequence[Turn], system: str | None) -> list[Turn]:
    """Gemma has no system role: the system text opens the first user turn."""
    turns = list(turns)
    if not system:
        return turns
    if not turns or turns[0].role != "user":
        raise ValueError("a chat must start with a user turn")
    return [Turn("user", turns[0].text, turns[0].images, f"{system}\n\n"), *turns[1:]]


def format_chat(
    turns: Sequence[Turn],
    system: str | None = None,
    add_generation_prompt: bool = True,
    generation_prefix: str = "",
) -> Prompt:
    """The exact text Gemma was trained on, starting with its single BOS.

    Turn text is kept as it is (not trimmed) so that the prompt of turn N extends
    the prompt and answer of turn N-1 token for token and the KV cache is reused.
    """
    segments = [_marker(BOS)]
    for turn in fold_system(turns, system):
        if turn.role not in ("user", "model"):
            raise ValueError(f"unknown role {turn.role!r}: Gemma knows 'user' and 'model'")
        segments += [_marker(START_OF_TURN), PromptSegment(f"{turn.role}\n{turn.preamble}")]
        for image in turn.images:
            segments += [PromptSegment("\n\n"), PromptSegment(IMAGE_PLACEHOLDER, image=image), PromptSegment("\n\n")]
        segments += [PromptSegment(turn.text), _marker(END_OF_TURN), PromptSegment("\n")]
    if add_generation_prompt:
        segments += [_marker(START_OF_TURN), PromptSegment(f"model\n{generation_prefix}")]
    return Prompt(segments)


def format_completion(template: str, **fields: str) -> Prompt:
    """A plain template for adapters trained without chat turns, with the BOS in front."""
    return Prompt([_marker(BOS), PromptSegment(template.format(**fields))])
