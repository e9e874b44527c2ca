"""The open chat and its answer in progress: send, stream, stop, regenerate, edit and resend. No Qt.

`ChatSession` keeps the chat's state and saves it through History; whoever shows it (the
window, or nothing at all) subscribes a `SessionListener` and is told what changed. Answers
are produced by a backend that takes a `GenerationRequest` and later hands the runtime's events
to the session's `handle` on the session's own thread (`RuntimeBackend`: the window passes them
through queued signals, a headless caller directly).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medgemma_models import emergency
from medgemma_models.errors import MedGemmaError
from medgemma_models.gguf_info import ModelInfo

from .answer import AnswerStats
from .events import AnswerPiece, Failed, Finished, PromptPlanned, ReasoningPiece, RuntimeEvent
from .generation import GenerationRequest
from .history import History, HistoryWriteError, Message, ModelRecord, StreamingMessageWriter
from .documents.chunking import estimate_tokens
from .documents.collections import Collections
from .documents.passages import CITATIONS_META, document_budget, find_passages, question_meta
from .images.decode import ImagePart
from .images.store import ImageStore
from .settings import ChatSettings, LoadSettings, stored_settings

log = logging.getLogger(__name__)

SAVE_INTERVAL_S = 1.0
COLLECTIONS_SETTING = "collections"  # a chat setting: the document collections it answers from
UNSAVED_TITLE = "Could not save the chat"
TITLE_LENGTH = 48


def chat_title(text: str) -> str:
    """A chat's title from its first message: one line, at most TITLE_LENGTH characters."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def meta_text(meta: dict[str, Any], complete: bool, role: str) -> str:
    """The line under an answer: failed or stopped, tokens and speed, cut at max tokens."""
    if role == "user":
        return ""
    parts = []
    if meta.get("error"):
        parts.append(f"Failed: {meta['error']}")
    elif not complete:
        parts.append("Stopped — partial answer")
    stats = meta.get("stats")
    if isinstance(stats, dict) and "generated_tokens" in stats and "decode_tok_per_s" in stats:
        parts.append(f"{stats['generated_tokens']} tokens · {stats['decode_tok_per_s']:.1f} tok/s")
        if stats.get("finish_reason") == "length":
            parts.append("cut at max tokens")
        if stats.get("images_encoded"):  # a follow-up about the same image finds it in the cache: none
            count = stats["images_encoded"]
            ms = float(stats.get("image_encode_ms", 0))
            took = f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"
            parts.append(f"{count} image{'s' if count > 1 else ''} encoded in {took}")
    if meta.get("dropped_images"):
        parts.append(f"{meta['dropped_images']} earlier image(s) left out: the context is full")
    if meta.get("unterminated_reasoning"):
        parts.append("reasoning did not finish")
    return " · ".join(parts)


class Backend(Protocol):
    """Produces answers: takes a request now, hands its events to the session's `handle` later."""

    def generate(self, request: GenerationRequest) -> None: ...

    def stop(self) -> None: ...


class SessionListener:
    """What a view of the session is told; every method does nothing unless overridden."""

    def chat_cleared(self) -> None:
        """The view shows no chat now (a new chat, or the open one was deleted)."""

    def message_shown(self, message: Message, author: str) -> None:
        """A stored message to show."""

    def answer_started(self, message_id: int, author: str) -> None:
        """An empty answer begins streaming below the last message."""

    def sources_found(self, message_id: int, citations: list[dict[str, Any]]) -> None:
        """The answer starting will draw on these passages of the chat's documents (`documents.passages.Citation`)."""

    def emergency_noticed(self, message_id: int, notice: dict[str, Any]) -> None:
        """The question matched a red flag: show the notice above this answer, before any token."""

    def messages_removed(self, from_id: int) -> None:
        """This message and every later one are gone (regenerate, edit and resend)."""

    def answer_grew(self, answer: str, reasoning: str, reasoning_tokens: int) -> None:
        """Text streamed into the answer being shown."""

    def answer_ended(self, message_id: int, meta: str) -> None:
        """The answer being shown is complete, stopped or failed; `meta` is its status line."""

    def context_trimmed(self, dropped_turns: int) -> None:
        """Earlier messages were left out of the prompt (0: none)."""

    def busy_changed(self, busy: bool) -> None:
        """An answer started or ended."""

    def chats_changed(self) -> None:
        """Chat titles or their order changed."""

    def problem(self, title: str, message: str) -> None:
        """Something the user must be told about."""

    def answer_done(self, stats: AnswerStats | None) -> None:
        """Last of all when an answer ends (stats None: it failed)."""


@dataclass
class Answer:
    """The answer being streamed: where it is saved and how it is split and counted."""

    chat_id: int
    message_id: int
    writer: StreamingMessageWriter
    shown: bool = True  # False once the user opened another chat: it goes on saving, unseen
    discarded: bool = False  # its chat was deleted while it streamed
    pieces: int = 0  # reasoning and answer pieces received so far
    reasoning_tokens: int = 0
    prompt_tokens: int = 0
    dropped_turns: int = 0
    dropped_images: int = 0
    emergency_notice: dict[str, Any] | None = None  # from the red-flag list, never from the model
    citations: list[dict[str, Any]] | None = None  # the passages its question quoted from the chat's documents


class ChatSession:
    """One open chat (or none yet) and at most one answer streaming."""

    def __init__(self, history: History, backend: Backend, clock: Callable[[], float] = time.perf_counter,
                 save_interval: float = SAVE_INTERVAL_S, images: ImageStore | None = None,
                 documents: Collections | None = None) -> None:
        self.history = history
        self.images = images if images is not None else ImageStore()
        self.documents = documents  # the collections a chat may answer from (None: no documents here)
        self.collections: list[str] = []  # the open chat's (remembered in its settings as COLLECTIONS_SETTING)
        self.vision = False  # whether the model in use takes images (it has an mmproj)
        self.backend = backend
        self.clock = clock
        self.save_interval = save_interval
        self.listener = SessionListener()
        self.chat_id: int | None = None
        self.answer: Answer | None = None
        self.editing_id: int | None = None
        self.model: ModelInfo | None = None
        self.model_sha256: str | None = None
        self.model_title: str | None = None
        self.model_adapters: list[dict[str, Any]] = []
        self.settings = ChatSettings.from_dict({})
        self.load_settings = LoadSettings()
        self.last_stats: AnswerStats | None = None
        self.seed: int | None = None  # the sampler's seed for every answer (None: a new one each time)
        # Ended answers whose last save failed (full disk, locked file): kept in memory, retried by flush().
        self.unsaved: list[StreamingMessageWriter] = []

    # -- state ----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.answer is not None

    def use_model(self, info: ModelInfo, sha256: str, title: str | None = None,
                  adapters: Sequence[dict[str, Any]] = (), vision: bool = False) -> None:
        """The model answers come from; `title` and `adapters` (their records) for a base with adapters;
        `vision` when it was loaded with an mmproj and takes images."""
        self.model, self.model_sha256 = info, sha256
        self.model_title, self.model_adapters = title, list(adapters)
        self.vision = vision

    def use_settings(self, chat: ChatSettings, load: LoadSettings) -> None:
        self.settings, self.load_settings = chat, load

    def can_send(self) -> bool:
        return self.answer is None and self.model is not None

    def author(self, message: Message) -> str:
        if message.role == "user":
            return "You"
        name = ModelRecord.from_dict(message.meta.get("model")).name
        return str(name or (self._model_record().name if self.model else "Model"))

    # -- chats ----------------------------------------------------------------------------------

    def new_chat(self) -> None:
        self._leave_answer()
        self.chat_id = None
        self.cancel_edit()
        self.listener.chat_cleared()  # the collections chosen stay chosen for the chat to come

    def open_chat(self, chat_id: int) -> None:
        if chat_id == self.chat_id:
            return
        self._leave_answer()
        self.cancel_edit()
        self.chat_id = chat_id
        chosen = self.history.chat_settings(chat_id).get(COLLECTIONS_SETTING)
        self.collections = [str(c) for c in chosen] if isinstance(chosen, list) else []
        self.listener.chat_cleared()
        for message in self.history.messages(chat_id):
            self.listener.message_shown(message, self.author(message))

    def use_collections(self, names: Sequence[str]) -> None:
        """The collections this chat answers from (none: no documents); remembered with the chat."""
        self.collections = list(dict.fromkeys(names))
        if self.chat_id is not None:
            self.history.set_chat_settings(self.chat_id, {**self.history.chat_settings(self.chat_id),
                                                          COLLECTIONS_SETTING: self.collections})

    def _passages(self, text: str) -> dict[str, Any]:
        """The question's meta from the chat's collections: the passages block and its citations."""
        if not self.collections or self.documents is None:
            return {}
        earlier = [m.text for m in self.history.messages(self.chat_id) if m.role == "user"] if self.chat_id else []
        budget = document_budget(self.load_settings.load_params().n_ctx, self.settings.max_tokens)
        chosen = find_passages(lambda q, limit: self.documents.search(self.collections, q, limit),  # type: ignore[union-attr]
                               [*earlier, text], budget, estimate_tokens)
        return question_meta(chosen)

    def rename_chat(self, chat_id: int, title: str) -> None:
        title = title.strip()
        if title:
            self.history.rename_chat(chat_id, title)
            self.listener.chats_changed()

    def delete_chat(self, chat_id: int) -> None:
        if self.answer is not None and self.answer.chat_id == chat_id:
            self.answer.discarded = True
            self.backend.stop()
        images = {sha for message in self.history.messages(chat_id) for sha in message.image_ids}
        self.history.delete_chat(chat_id)
        for sha256 in images:  # the files go with the chat, unless another chat holds the same image
            if not self.history.image_in_use(sha256):
                self.images.delete(sha256)
        if self.chat_id == chat_id:
            self._leave_answer()
            self.chat_id = None
            self.listener.chat_cleared()
            self.cancel_edit()
        self.listener.chats_changed()

    def _leave_answer(self) -> None:
        """The view is about to change: an answer still streaming goes on saving, unseen."""
        if self.answer is not None:
            self.answer.shown = False

    # -- sending --------------------------------------------------------------------------------

    def send(self, text: str, images: Sequence[ImagePart] = (), meta: dict[str, Any] | None = None) -> bool:
        """Save the user's message (with its images, stored already) and ask for an answer; with an edit
        under way, replace the last question. Images on a model that cannot see raise MedGemmaError.

        `meta` is kept with the message (e.g. the passages found for it: conversation.user_turn_text)."""
        text = text.strip()
        if not text or not self.can_send():
            return False
        if images and not self.vision:
            raise MedGemmaError("this model cannot see images: load it with its vision projector (an mmproj file)")
        assert self.model is not None
        if self.editing_id is not None:
            self.history.delete_messages_from(self.editing_id)
            self.listener.messages_removed(self.editing_id)
            self.cancel_edit()
        meta = {**self._passages(text), **(meta or {})}
        if self.chat_id is None:
            settings = {**stored_settings(self.settings, self.load_settings), COLLECTIONS_SETTING: self.collections}
            self.chat_id = self.history.create_chat(chat_title(text), model=self._model_record(), settings=settings)
        meta = {**(meta or {}), **({"images": [image.to_dict() for image in images]} if images else {})} or None
        message_id = self.history.add_message(self.chat_id, "user", text, meta=meta)
        self.listener.message_shown(self.history.message(message_id), "You")
        self._generate()
        self.listener.chats_changed()
        return True

    def regenerate(self, message_id: int) -> bool:
        """Throw the last answer away and stream a new one."""
        if not self.can_send() or self.chat_id is None:
            return False
        self.history.delete_messages_from(message_id)
        self.listener.messages_removed(message_id)
        self._generate()
        return True

    def start_edit(self, message_id: int) -> str | None:
        """Edit the last question: returns its text; the next send replaces it and what followed
        (its images are `editing_images()`, to send again)."""
        if self.answer is not None:
            return None
        self.editing_id = message_id
        return self.history.message(message_id).text

    def editing_images(self) -> list[ImagePart]:
        if self.editing_id is None:
            return []
        parts = self.history.message(self.editing_id).meta.get("images") or []
        return [part for part in (ImagePart.from_dict(p) for p in parts) if part is not None]

    def cancel_edit(self) -> None:
        self.editing_id = None

    def stop(self) -> None:
        if self.answer is not None:
            self.backend.stop()

    def _generate(self) -> None:
        """Stream an answer to the chat's last user message."""
        assert self.chat_id is not None and self.model is not None
        messages = self.history.messages(self.chat_id)
        self.history.set_chat_model(self.chat_id, self._model_record())
        message_id = self.history.add_message(self.chat_id, "model", "", complete=False)
        writer = StreamingMessageWriter(self.history, message_id, interval=self.save_interval, clock=self.clock)
        asked = next((m for m in reversed(messages) if m.role == "user"), None)
        question = asked.text if asked is not None else ""
        notice = emergency.check(question)
        cited = asked.meta.get(CITATIONS_META) if asked is not None else None
        self.answer = Answer(chat_id=self.chat_id, message_id=message_id, writer=writer,
                             emergency_notice=notice.to_dict() if notice else None,
                             citations=cited if isinstance(cited, list) else None)
        self.listener.answer_started(message_id, str(self._model_record().name))
        if self.answer.citations is not None:
            self.listener.sources_found(message_id, self.answer.citations)
        if notice is not None:
            self.listener.emergency_noticed(message_id, notice.to_dict())
        self.listener.busy_changed(True)
        settings = self.settings
        # A direct backend answers before this returns: nothing may follow this call.
        self.backend.generate(GenerationRequest(
            preset=settings.preset_spec,
            messages=messages,
            settings=settings.sampling_params(seed=self.seed),
            system=settings.system_prompt(),
            think=settings.think_enabled,
            send_reasoning_back=settings.send_reasoning_back_enabled,
            load_image=self.images.pixels,
        ))

    # -- the answer as it arrives ---------------------------------------------------------------

    def handle(self, event: RuntimeEvent) -> None:
        """An event of the answer being streamed, on the session's thread."""
        answer = self.answer
        if answer is None:
            return
        if isinstance(event, PromptPlanned):
            answer.prompt_tokens = event.plan.prompt_tokens
            answer.dropped_turns = event.plan.dropped_turns
            answer.dropped_images = event.plan.dropped_images
            if answer.shown:
                self.listener.context_trimmed(event.plan.dropped_turns)
        elif isinstance(event, ReasoningPiece):
            answer.reasoning_tokens += event.tokens
            self._grow(answer, "", event.text, event.tokens)
        elif isinstance(event, AnswerPiece):
            self._grow(answer, event.text, "", 0)
        elif isinstance(event, Finished):
            self._finished(answer, event.stats)
        elif isinstance(event, Failed):
            self._end(answer, {**self._meta(answer, None), "error": event.message}, complete=False, stats=None)
            self.listener.problem("The answer failed", event.message)

    def _grow(self, answer: Answer, text: str, reasoning: str, tokens: int) -> None:
        answer.pieces += 1
        if not answer.discarded and (text or reasoning):
            self._saving(answer.writer.append, answer=text, reasoning=reasoning)
        if answer.shown and (text or reasoning or tokens):
            self.listener.answer_grew(text, reasoning, tokens)

    def flush(self) -> None:
        """Save what has arrived (the writer saves on arriving pieces; this covers a model gone quiet),
        and try again the answers whose last save failed."""
        if self.answer is not None and not self.answer.discarded:
            self._saving(self.answer.writer.flush)
        for writer in list(self.unsaved):
            self._saving(writer.flush)
            if not writer.pending:
                self.unsaved.remove(writer)

    @property
    def saving(self) -> bool:
        """Text is waiting to be saved because a save failed (the window says "saving…" and retries)."""
        current = self.answer.writer if self.answer is not None and not self.answer.discarded else None
        return bool(self.unsaved) or (current is not None and current.error is not None)

    def _saving(self, save: Callable[..., None], **text: str) -> None:
        """Run a writer's save; its first failure of a run is told once, the text stays in the writer."""
        try:
            save(**text)
        except HistoryWriteError as exc:
            self._tell_unsaved(exc)

    def _tell_unsaved(self, exc: HistoryWriteError) -> None:
        self.listener.problem(UNSAVED_TITLE, f"{exc}. The text is kept and saved again shortly.")

    def _finished(self, answer: Answer, stats: AnswerStats) -> None:
        self.last_stats = stats
        self._end(answer, self._meta(answer, stats), complete=stats.finish_reason != "cancelled", stats=stats)

    def _end(self, answer: Answer, meta: dict[str, Any], complete: bool, stats: AnswerStats | None) -> None:
        self.answer = None
        if not answer.discarded:
            try:
                answer.writer.finish(meta, complete=complete)
            except HistoryWriteError as exc:
                self._tell_unsaved(exc)
            except MedGemmaError as exc:  # the chat was deleted in another window meanwhile
                log.warning("could not save the answer: %s", exc)
            if answer.writer.pending:
                self.unsaved.append(answer.writer)
        if answer.shown:
            self.listener.answer_ended(answer.message_id, meta_text(meta, complete, "model"))
        self.listener.busy_changed(False)
        self.listener.chats_changed()
        self.listener.answer_done(stats)

    def _meta(self, answer: Answer, stats: AnswerStats | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "model": self._model_record().to_dict() if self.model is not None else {},
            "settings": stored_settings(self.settings, self.load_settings),
            "reasoning_tokens": stats.reasoning_tokens if stats is not None else answer.reasoning_tokens,
            "dropped_turns": answer.dropped_turns,
            "dropped_images": answer.dropped_images,
            "unterminated_reasoning": stats is not None and stats.unterminated_reasoning,
        }
        if stats is not None:
            meta["stats"] = dataclasses.asdict(stats)
        if answer.emergency_notice is not None:
            meta["emergency_notice"] = answer.emergency_notice
        if answer.citations is not None:
            meta[CITATIONS_META] = answer.citations  # saved with the answer, for its exports and its view
        return meta

    def _model_record(self) -> ModelRecord:
        assert self.model is not None
        return ModelRecord.of(self.model, self.model_sha256, self.model_title, self.model_adapters)
