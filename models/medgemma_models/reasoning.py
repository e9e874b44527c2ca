"""Split a streamed answer into model reasoning (<think>…</think>) and the answer proper."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .prompt import THINK_CLOSE, THINK_OPEN

Kind = Literal["reasoning", "answer"]


@dataclass(frozen=True)
class Segment:
    kind: Kind
    text: str


class ReasoningSplitter:
    """Fed token texts one by one; a tag may arrive cut at any character.

    Text that could still be the start of a tag is held back until the next piece
    decides it, so nothing is shown twice or in the wrong block.
    """

    def __init__(self, start_in_reasoning: bool = False) -> None:
        self._in_reasoning = start_in_reasoning
        self._pending = ""
        self.unterminated = False

    @property
    def in_reasoning(self) -> bool:
        """Whether the text fed so far left a <think> block open."""
        return self._in_reasoning

    def feed(self, text: str) -> list[Segment]:
        self._pending += text
        segments: list[Segment] = []
        while self._pending:
            tag = THINK_CLOSE if self._in_reasoning else THINK_OPEN
            index = self._pending.find(tag)
            if index >= 0:
                self._emit(segments, self._pending[:index])
                self._pending = self._pending[index + len(tag):]
                self._in_reasoning = not self._in_reasoning
                continue
            keep = _partial_tag_length(self._pending, tag)
            self._emit(segments, self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep:]
            break
        return segments

    def finish(self) -> list[Segment]:
        """Flush what is held back; reasoning still open at the end is marked unterminated."""
        segments: list[Segment] = []
        self._emit(segments, self._pending)
        self._pending = ""
        self.unterminated = self._in_reasoning
        return segments

    def _emit(self, segments: list[Segment], text: str) -> None:
        if not text:
            return
        kind: Kind = "reasoning" if self._in_reasoning else "answer"
        if segments and segments[-1].kind == kind:
            segments[-1] = Segment(kind, segments[-1].text + text)
        else:
            segments.append(Segment(kind, text))


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


_THINK_BLOCK = re.compile(re.escape(THINK_OPEN) + r".*?(" + re.escape(THINK_CLOSE) + r"|$)", re.DOTALL)


def strip_reasoning(text: str) -> str:
    """The answer alone: every <think> block removed, an unterminated one to the end."""
    return _THINK_BLOCK.sub("", text)
