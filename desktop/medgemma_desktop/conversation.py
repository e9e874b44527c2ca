"""Turn a chat into the Gemma prompt for its next answer, leaving out old turns when it is too long.

The prompt is rebuilt from the whole chat on every send, and built so that it extends the
previous prompt plus the answer text exactly: llama.cpp then finds the earlier turns in its
KV cache and only evaluates the new message. Formatting itself is the shared core's
(`Preset.build_prompt`, `medgemma_models.prompt`); this module decides which turns go in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from medgemma_models.catalog import Preset
from medgemma_models.errors import PromptTooLongError
from medgemma_models.prompt import THINK_CLOSE, THINK_OPEN, Prompt, PromptImage, Turn
from medgemma_models.reasoning import strip_reasoning

from .documents.passages import PASSAGES_META

if TYPE_CHECKING:
    from medgemma_models.mtmd_compat import RgbImage

IMAGE_MISSING = "[image missing]"
IMAGE_LEFT_OUT = "[image left out: the context is full]"


class ImageMissingError(LookupError):
    """A message's image file is gone or unreadable: the prompt says "[image missing]" in its place."""


class ChatMessage(Protocol):
    """What a prompt needs of a message; `history.Message` is one."""

    role: str
    text: str
    reasoning: str

    @property
    def image_ids(self) -> tuple[str, ...]:
        """The sha256 of each image attached to the message, in order."""
        ...


ImageLoader = Callable[[str], "RgbImage"]  # sha256 -> pixels; raises ImageMissingError


@dataclass(frozen=True)
class PromptPlan:
    """The prompt to send and its token ids, computed once here and handed to the engine as they are;
    `dropped_turns` > 0 means that many earlier messages were left out."""

    prompt: Prompt
    tokens: tuple[int, ...]
    dropped_turns: int
    dropped_images: int = 0  # images of earlier messages left out for room (the oldest first)
    images: int = 0  # images in the prompt

    @property
    def prompt_tokens(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class _Turn:
    turn: Turn
    messages: int  # how many stored messages it stands for


def model_turn_text(preset: Preset, message: ChatMessage, send_reasoning_back: bool) -> str:
    """What an earlier answer contributes to the context.

    Reasoning goes back only when asked (`<think>R</think>A`, as the model wrote it). An answer
    of a reasoning preset given without reasoning (thinking was off) goes back as
    `<think></think>A`, exactly as the prompt pre-filled it: either way the text, and so the
    KV cache, matches what the model saw. An answer whose reasoning is left out goes back alone.
    """
    if message.reasoning and not send_reasoning_back:
        return strip_reasoning(message.text)
    if preset.reasoning or message.reasoning:
        return f"{THINK_OPEN}{message.reasoning}{THINK_CLOSE}{message.text}"
    return message.text


def user_turn_text(message: ChatMessage) -> str:
    """What a question contributes to the context: the passages found for it (a plain labelled
    block kept in its `meta`, see documents.passages), then the question itself.

    The block is turn text like the question, tokenized as text, so a document cannot forge a
    turn. It belongs to its own question, so asking again never changes an earlier turn.
    """
    meta = getattr(message, "meta", None)
    block = meta.get(PASSAGES_META) if isinstance(meta, dict) else None
    return f"{block}\n\n{message.text}" if isinstance(block, str) and block.strip() else message.text


def _images(message: ChatMessage, load: ImageLoader | None) -> tuple[tuple[PromptImage, ...], str]:
    """The message's images, and text saying which could not be read."""
    images, missing = [], 0
    for sha256 in message.image_ids:
        try:
            if load is None:
                raise ImageMissingError(sha256)
            images.append(PromptImage(sha256, load(sha256)))
        except ImageMissingError:
            missing += 1
    return tuple(images), " ".join([IMAGE_MISSING] * missing)


def _turns(preset: Preset, history: Sequence[ChatMessage], send_reasoning_back: bool,
           load_image: ImageLoader | None = None) -> list[_Turn]:
    """Alternating user/model turns starting and ending with a user turn.

    A stored chat can break the alternation (an answer that failed and left nothing, so two
    user messages follow each other); Gemma expects strict alternation, so neighbours of the
    same role are joined.
    """
    turns: list[_Turn] = []
    for message in history:
        images: tuple[PromptImage, ...] = ()
        if message.role == "user":
            images, missing = _images(message, load_image)
            text = user_turn_text(message)
            text = f"{missing}\n\n{text}" if missing else text
        elif message.role == "model":
            if not message.text and not message.reasoning:
                continue
            text = model_turn_text(preset, message, send_reasoning_back)
        else:
            raise ValueError(f"unknown role {message.role!r}")
        if not turns and message.role == "model":
            continue
        if turns and turns[-1].turn.role == message.role:
            last = turns[-1]
            turns[-1] = _Turn(Turn(last.turn.role, f"{last.turn.text}\n\n{text}", last.turn.images + images),
                              last.messages + 1)
        else:
            turns.append(_Turn(Turn(message.role, text, images), 1))  # type: ignore[arg-type]
    if not turns or turns[-1].turn.role != "user":
        raise ValueError("the chat must end with the user's new message")
    return turns


def build_prompt(
    preset: Preset,
    history: Sequence[ChatMessage],
    *,
    system: str | None,
    think: bool,
    send_reasoning_back: bool,
    n_ctx: int,
    max_tokens: int,
    tokenize: Callable[[Prompt], Sequence[int]],
    load_image: ImageLoader | None = None,
) -> PromptPlan:
    """The prompt for the answer to the chat's last (user) message, fitted into `n_ctx`.

    The answer needs room too: the prompt gets `n_ctx - max_tokens` tokens. When it does not
    fit, whole user+model pairs are left out, oldest first; the first pair stays (its user turn
    carries the folded system text and usually the case itself), and so does the new message.
    Before any pair, the images of earlier messages are left out, oldest first (an image takes
    hundreds of tokens: 256 for MedGemma); the new message's own images always stay.
    Raises `PromptTooLongError` when even that is too long.
    """
    turns = _turns(preset, history, send_reasoning_back, load_image)
    budget = n_ctx - max_tokens

    if preset.format == "completion":
        # Completion adapters were trained on single cases: only the newest message is used,
        # by design, so nothing counts as left out for lack of room.
        prompt = preset.build_prompt([turns[-1].turn], system=system, think=think)
        tokens = tuple(tokenize(prompt))
        if len(tokens) > budget:
            raise _too_long(len(tokens), max_tokens, n_ctx)
        return PromptPlan(prompt, tokens, 0, images=len(prompt.images))

    turns, dropped_images = _fit_images(preset, turns, system, think, tokenize, budget)

    # turns = u1 m1 u2 m2 … uN: the pairs (u2 m2) … (u(N-1) m(N-1)) may be left out.
    droppable = max(0, (len(turns) - 3) // 2)

    def attempt(pairs: int) -> PromptPlan:
        kept = turns[:2] + turns[2 + 2 * pairs:] if pairs else turns
        prompt = preset.build_prompt([t.turn for t in kept], system=system, think=think)
        dropped = sum(t.messages for t in turns[2:2 + 2 * pairs])
        dropped_here = dropped_images + sum(len(t.turn.images) for t in turns[2:2 + 2 * pairs])
        return PromptPlan(prompt, tuple(tokenize(prompt)), dropped, dropped_here, len(prompt.images))

    plan = attempt(0)
    if plan.prompt_tokens <= budget:
        return plan
    shortest = attempt(droppable)
    if shortest.prompt_tokens > budget:
        raise _too_long(shortest.prompt_tokens, max_tokens, n_ctx)
    # Leaving out more pairs never makes the prompt longer: search for the fewest that fit.
    low, high, best = 0, droppable, shortest  # attempt(low) does not fit, attempt(high) fits
    while high - low > 1:
        middle = (low + high) // 2
        candidate = attempt(middle)
        if candidate.prompt_tokens <= budget:
            high, best = middle, candidate
        else:
            low = middle
    return best


def _fit_images(preset: Preset, turns: list[_Turn], system: str | None, think: bool,
                tokenize: Callable[[Prompt], Sequence[int]], budget: int) -> tuple[list[_Turn], int]:
    """Leave out earlier messages' images, oldest first, until the prompt fits or none is left."""
    dropped = 0
    while True:
        prompt = preset.build_prompt([t.turn for t in turns], system=system, think=think)
        older = next((i for i, t in enumerate(turns[:-1]) if t.turn.images), None)
        if older is None or len(tokenize(prompt)) <= budget:
            return turns, dropped
        turn = turns[older].turn
        text = f"{IMAGE_LEFT_OUT}\n\n{turn.text}"
        turns = [*turns[:older], _Turn(Turn(turn.role, text, turn.images[1:]), turns[older].messages), *turns[older + 1:]]
        dropped += 1


def _too_long(tokens: int, max_tokens: int, n_ctx: int) -> PromptTooLongError:
    return PromptTooLongError(
        f"the message is too long for the context: the prompt needs {tokens} tokens and the answer up to "
        f"{max_tokens}, but the context holds {n_ctx}; shorten it, lower max tokens or raise the context size"
    )
