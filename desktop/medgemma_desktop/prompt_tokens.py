"""Prompt to token ids, where only the prompt formatter's own markers become control tokens.

Tokenizing a whole prompt with special tokens parsed would turn `<end_of_turn>` typed by a
user, or spelled out by a model in an earlier answer, into a real end of turn: a forged turn,
and a prompt that no longer matches the KV cache. So each segment of a `Prompt` is tokenized on
its own terms: markers as control tokens, text as text. A plain string is refused: nothing
can tell its markers from its text any more.
"""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp

from medgemma_models.errors import MedGemmaError
from medgemma_models.prompt import Prompt, PromptImage

NO_VISION = "this model has no vision projector (mmproj) loaded, so it cannot take images"


def tokenize_prompt(llm: llama_cpp.Llama, prompt: Prompt,
                    image_tokens: Callable[[PromptImage], list[int]] | None = None) -> list[int]:
    """Token ids of `prompt` (which carries its own BOS): markers as control tokens, the rest as text,
    and each image as the ids `image_tokens` gives it (the engine's stand-ins for its embeddings)."""
    if not isinstance(prompt, Prompt):
        raise TypeError(f"the engine takes a Prompt or token ids, not {type(prompt).__name__}: "
                        "a string built from a prompt has lost which parts are markers")
    tokens: list[int] = []
    text = ""
    for segment in prompt.segments:
        if segment.image is not None:
            if image_tokens is None:
                raise MedGemmaError(NO_VISION)
            if text:
                tokens += llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                text = ""
            tokens += image_tokens(segment.image)
            continue
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
