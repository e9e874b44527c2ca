"""Gemma prompt formatting: chat turns with no system role, one BOS, and completion templates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

BOS = "<bos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_OFF_PREFIX = THINK_OPEN + THINK_CLOSE


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "model"]
    text: str


def fold_system(turns: Sequence[Turn], system: str | None) -> list[Turn]:
    """Gemma has no system role: the system text opens the first user turn."""
    turns = list(turns)
    if not system:
        return turns
    if not turns or turns[0].role != "user":
        raise ValueError("a chat must start with a user turn")
    return [Turn("user", f"{system}\n\n{turns[0].text}"), *turns[1:]]


def format_chat(
    turns: Sequence[Turn],
    system: str | None = None,
    add_generation_prompt: bool = True,
    generation_prefix: str = "",
) -> str:
    """The exact text Gemma was trained on, starting with its single BOS.

    Turn text is kept as it is (not trimmed) so that the prompt of turn N extends
    the prompt and answer of turn N-1 token for token and the KV cache is reused.
    """
    parts = [BOS]
    for turn in fold_system(turns, system):
        if turn.role not in ("user", "model"):
            raise ValueError(f"unknown role {turn.role!r}: Gemma knows 'user' and 'model'")
        parts.append(f"{START_OF_TURN}{turn.role}\n{turn.text}{END_OF_TURN}\n")
    if add_generation_prompt:
        parts.append(f"{START_OF_TURN}model\n{generation_prefix}")
    return "".join(parts)


def format_completion(template: str, **fields: str) -> str:
    """A plain template for adapters trained without chat turns, with the BOS in front."""
    return BOS + template.format(**fields)
