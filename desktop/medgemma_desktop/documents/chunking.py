"""Pages cut into passages of about `CHUNK_TOKENS` model tokens, each knowing its page and character span.

A passage never crosses a page, so a citation's page is exact. Neighbouring passages overlap by a
few words, so a fact cut by a boundary is still whole in one of them. Token counts come from the
model's tokenizer when one is given (per word, cached: words repeat, and a word's tokens hardly
depend on its neighbours), else from an estimate of about four characters a token.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Small enough that several passages fit a 270M model's context beside the chat; big enough for
# a dose table's row with its heading.
CHUNK_TOKENS = 160
OVERLAP_WORDS = 12
_WORD = re.compile(r"\S+")

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    page: int  # counted from 1
    start: int  # character offsets in the page's text
    end: int
    text: str
    tokens: int


def estimate_tokens(text: str) -> int:
    """Tokens of `text` without a tokenizer: about four characters each, at least one a word."""
    return sum(max(1, (len(word) + 3) // 4) for word in text.split())


def chunk_pages(pages: list[str], count_tokens: CountTokens | None = None,
                chunk_tokens: int = CHUNK_TOKENS) -> Iterator[Chunk]:
    """The passages of `pages` (page 1 first), each at most `chunk_tokens` tokens unless one word is longer."""
    word_tokens = functools.lru_cache(maxsize=65536)(
        (lambda word: max(1, count_tokens(" " + word))) if count_tokens else (lambda word: max(1, (len(word) + 3) // 4))
    )
    for number, page in enumerate(pages, start=1):
        words = [(m.start(), m.end(), word_tokens(m.group())) for m in _WORD.finditer(page)]
        first = 0
        while first < len(words):
            last, total = first, 0
            while last < len(words) and (total + words[last][2] <= chunk_tokens or last == first):
                total += words[last][2]
                last += 1
            start, end = words[first][0], words[last - 1][1]
            yield Chunk(number, start, end, page[start:end], total)
            if last >= len(words):
                break
            first = max(first + 1, last - OVERLAP_WORDS)
