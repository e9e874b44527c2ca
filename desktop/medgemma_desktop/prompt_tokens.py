"""Prompt text to token ids, where only the prompt formatter's own markers become control tokens.

Tokenizing a whole prompt with special tokens parsed would turn `<end_of_turn>` typed by a
user, or spelled out by a model in an earlier answer, into a real end of turn: a forged turn,
and a prompt that no longer matches the KV cache. So each segment of a `Prompt` is tokenized on
its own terms: markers as control tokens, text as text.
"""

from __future__ import annotations

import re

import llama_cpp

from medgemma_models.prompt import MARKERS, Prompt, PromptSegment

_MARKER_PATTERN = re.compile("(" + "|".join(re.escape(marker) for marker in MARKERS) + ")")


def prompt_segments(prompt: str) -> tuple[PromptSegment, ...]:
    """A `Prompt`'s own segments; a plain string is a hand-written prompt, split at the markers."""
    if isinstance(prompt, Prompt):
        return prompt.segments
    return tuple(PromptSegment(part, marker=part in MARKERS) for part in _MARKER_PATTERN.split(prompt) if part)


def tokenize_prompt(llm: llama_cpp.Llama, prompt: str) -> list[int]:
    """Token ids of `prompt` (which carries its own BOS): markers as control tokens, the rest as text."""
    tokens: list[int] = []
    text = ""
    for segment in prompt_segments(prompt):
        if not segment.marker:
            text += segment.text  # neighbouring text is tokenized together, exactly as one string would be
            continue
        if text:
            tokens += llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            text = ""
        tokens += llm.tokenize(segment.text.encode("utf-8"), add_bos=False, special=True)
    if text:
        tokens += llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    return tokens
