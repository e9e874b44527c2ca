"""From a checked request to a runtime job and back: which model answers, in what turn, with which
settings, and what is kept. The server's routes call this; it touches no HTTP.

The runtime runs one job at a time for every front end, so the window's questions and the
server's requests take turns on the one model. Requests past `queue` waiting are refused (429)
rather than piling up. Events arrive on the engine thread and are handed to the server's event
loop as they come.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from medgemma_models.mtmd_compat import RgbImage

from ..conversation import ImageMissingError
from ..documents.chunking import estimate_tokens
from ..documents.collections import Collections
from ..documents.passages import CITATIONS_META, document_budget, find_passages, question_meta
from ..events import AnswerPiece, Failed, Finished, LoadError, ModelReady, ReasoningPiece, RuntimeEvent
from ..generation import GenerationRequest, Loaded, ModelRequest
from ..history import History, ModelRecord
from ..images.store import ImageStore
from ..library import ModelEntry, ModelLibrary, adapter_records, preset_for_loaded
from ..runtime import Job, Runtime
from ..settings import ChatSettings, LoadParams, SamplingParams
from .config import ServerConfig
from .openai_api import ApiError, ChatRequest

log = logging.getLogger(__name__)

EMBEDDED_ID = "gemma-3-270m"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "model"


def entry_id(entry: ModelEntry) -> str:
    """A model's id in /v1/models, from its files' names, so that it is the same after a restart."""
    base = EMBEDDED_ID if entry.path is None else _slug(entry.path.stem)
    adapters = [_slug(a.path.stem) + (f"@{a.scale:g}" if a.scale != 1 else "") for a in entry.adapters]
    return "+".join([base, *adapters])


def catalog(entries: list[ModelEntry]) -> dict[str, ModelEntry]:
    """Ids → entries; two files with the same name in different folders get their key's hash."""
    found: dict[str, ModelEntry] = {}
    for entry in entries:
        name = entry_id(entry)
        if name in found and found[name].key != entry.key:
            name += "~" + hashlib.sha256(entry.key.encode()).hexdigest()[:6]
        found.setdefault(name, entry)
    return found


@dataclass(frozen=True)
class Served:
    """The model answering requests: its id, its library entry, the load and the settings it answers with."""

    id: str
    entry: ModelEntry
    loaded: Loaded
    settings: ChatSettings


class ChatService:
    """Server requests as runtime jobs. `switch_models`: a request may name another library entry
    (headless); in the window the model is the window's choice and a request for another is refused."""

    def __init__(self, runtime: Runtime, library: ModelLibrary, config: ServerConfig, switch_models: bool,
                 save_to: History | None = None, load_options: LoadParams = LoadParams()) -> None:
        self.runtime, self.library, self.config = runtime, library, config
        self.switch_models, self.save_to, self.load_options = switch_models, save_to, load_options
        self.served: Served | None = None
        self.documents: Collections | None = None  # opened on the first request that names a collection
        self.requests_served = 0
        self._waiting = 0  # server requests accepted and not finished
        self._jobs: set[Job] = set()
        self._count_lock = threading.Lock()
        self._switch = asyncio.Lock()
        self.on_request_done: Callable[[int], None] | None = None  # the window's counter

    @property
    def in_flight(self) -> int:
        """Server requests admitted and not finished: the one answering and those waiting."""
        return self._waiting

    # -- models -------------------------------------------------------------------------------------

    def models(self) -> dict[str, ModelEntry]:
        entries = self.library.entries()
        if self.served is not None and all(e.key != self.served.entry.key for e in entries):
            entries.append(self.served.entry)
        return catalog(entries)

    def use(self, entry: ModelEntry, loaded: Loaded, settings: ChatSettings) -> None:
        """The model now in the runtime (the window calls this after each of its loads)."""
        self.served = Served(self._id_of(entry), entry, loaded, settings)

    def _id_of(self, entry: ModelEntry) -> str:
        for name, listed in self.models().items():
            if listed.key == entry.key:
                return name
        return entry_id(entry)

    def settings_for(self, entry: ModelEntry, loaded: Loaded) -> ChatSettings:
        """What the window would answer this model with: its remembered settings, else its preset's."""
        saved = self.library.saved_settings(entry.key)
        return saved[0] if saved is not None else ChatSettings.defaults_for(preset_for_loaded(loaded))

    async def load(self, entry: ModelEntry) -> Served:
        """Load `entry` on the runtime, after the jobs already queued; ApiError(503) if it cannot be."""
        return await asyncio.to_thread(self.load_now, entry)

    def load_now(self, entry: ModelEntry) -> Served:
        """`load`, waiting in this thread (headless start)."""
        events: list[RuntimeEvent] = []
        self.runtime.load(ModelRequest(entry.path, entry.adapters, self.load_options), events.append).wait()
        last = events[-1] if events else None
        if isinstance(last, LoadError):
            raise ApiError(503, f"the model {entry_id(entry)} could not be loaded: {last.message}", "model_load_failed")
        if not isinstance(last, ModelReady):
            raise ApiError(503, "the model load was cancelled", "model_load_failed")
        self.use(entry, last.loaded, self.settings_for(entry, last.loaded))
        assert self.served is not None
        return self.served

    async def _model_for(self, name: str | None) -> Served:
        served = self.served
        if name is None or (served is not None and name == served.id):
            if served is None:
                raise ApiError(503, "no model is loaded yet", "model_not_loaded")
            return served
        entry = self.models().get(name)
        if entry is None:
            raise ApiError(404, f"the model {name!r} does not exist; GET /v1/models lists the ones here",
                           "model_not_found", "model")
        if served is not None and entry.key == served.entry.key:
            return served
        if not self.switch_models:
            raise ApiError(400, f"the window is using {served.id if served else 'no model'}; choose {name} there "
                           "to serve it", "model_not_loaded", "model")
        return await self.load(entry)

    # -- answers ------------------------------------------------------------------------------------

    def _admit(self) -> None:
        with self._count_lock:
            if self._waiting > self.config.queue:  # one may run, `queue` may wait
                raise ApiError(429, f"{self._waiting - 1} requests are already waiting; try again shortly",
                               "queue_full", headers={"Retry-After": "2"})
            self._waiting += 1

    def _release(self) -> None:
        with self._count_lock:
            self._waiting -= 1
            self.requests_served += 1
            served = self.requests_served
        if self.on_request_done is not None:
            self.on_request_done(served)

    async def answer(self, request: ChatRequest) -> tuple[Served, AsyncIterator[RuntimeEvent]]:
        """Admit the request (or 429), pick its model (404, 503), and queue its generation.

        The events come from the returned iterator; closing it early (a client that went away)
        cancels the job, which stops within one token.
        """
        self._admit()
        try:
            async with self._switch:
                served = await self._model_for(request.model)
                loop = asyncio.get_running_loop()
                started = time.monotonic()
                events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()

                def deliver(event: RuntimeEvent) -> None:
                    if isinstance(event, Finished):  # here, on the engine thread: logged even if nobody listens
                        self._log_answer(served, event, started)
                    try:
                        loop.call_soon_threadsafe(events.put_nowait, event)
                    except RuntimeError:  # the server's loop has closed: nobody listens any more
                        job.cancel()

                job = self.runtime.generate(self._generation(served, request), deliver)
                self._jobs.add(job)
        except BaseException:
            self._release()
            raise
        return served, self._events(job, events, served, request)

    def _generation(self, served: Served, request: ChatRequest) -> GenerationRequest:
        settings = served.settings
        think = settings.think_enabled if request.think is None else (request.think and settings.reasoning_available)
        sampling = SamplingParams(
            temperature=settings.temperature if request.temperature is None else request.temperature,
            top_p=settings.top_p if request.top_p is None else request.top_p,
            top_k=settings.top_k, repeat_penalty=settings.repeat_penalty,
            max_tokens=request.max_tokens or settings.max_tokens, seed=request.seed, stop=request.stop)
        if request.images and not served.loaded.vision:
            raise ApiError(400, f"the model {served.id} cannot see images: it has no vision projector (mmproj) "
                           "beside it", "model_not_multimodal", "messages")

        def load_image(sha256: str) -> RgbImage:
            try:
                return request.images[sha256].rgb
            except KeyError:
                raise ImageMissingError(sha256) from None

        return GenerationRequest(preset=settings.preset_spec, messages=request.messages, settings=sampling,
                                 system=request.system or settings.system_prompt(), think=think,
                                 send_reasoning_back=settings.send_reasoning_back_enabled, load_image=load_image)

    async def _events(self, job: Job, events: asyncio.Queue[RuntimeEvent], served: Served,
                      request: ChatRequest) -> AsyncIterator[RuntimeEvent]:
        answer: list[str] = []
        reasoning: list[str] = []
        try:
            while True:
                event = await events.get()
                if isinstance(event, AnswerPiece):
                    answer.append(event.text)
                elif isinstance(event, ReasoningPiece):
                    reasoning.append(event.text)
                yield event
                if isinstance(event, (Finished, Failed)):
                    if isinstance(event, Finished) and self.save_to is not None:
                        self._save(served, request, "".join(answer), "".join(reasoning))
                    return
        finally:
            job.cancel()  # a no-op once finished; a client gone mid-answer frees the engine at the next token
            self._jobs.discard(job)
            self._release()

    @staticmethod
    def _log_answer(served: Served, event: Finished, started: float) -> None:
        # The model and the figures, never the prompt or the answer.
        stats = event.stats
        log.info("answered with %s: %d prompt tokens (%d cached), %d generated, %s, %.1f s", served.id,
                 stats.prompt_tokens, stats.reused_tokens, stats.generated_tokens, stats.finish_reason,
                 time.monotonic() - started)

    def with_documents(self, request: ChatRequest) -> tuple[ChatRequest, list[dict] | None]:
        """The request with the passages of its `collections` placed in its last question (as the
        window does), and their citations; (request, None) when it names no collection."""
        if not request.collections:
            return request, None
        if self.documents is None:
            self.documents = Collections()
        missing = [name for name in request.collections if not self.documents.exists(name)]
        if missing:
            raise ApiError(404, f"there is no document collection named {missing[0]!r}", "collection_not_found",
                           "collections")
        names = list(request.collections)
        n_ctx = self.served.loaded.n_ctx if self.served is not None else self.load_options.n_ctx
        budget = document_budget(n_ctx, request.max_tokens or ChatSettings.from_dict({}).max_tokens)
        questions = [m.text for m in request.messages if m.role == "user"]
        chosen = find_passages(lambda q, limit: self.documents.search(names, q, limit),  # type: ignore[union-attr]
                               questions, budget, estimate_tokens)
        meta = question_meta(chosen)
        last = dataclasses.replace(request.messages[-1], meta={**request.messages[-1].meta, **meta})
        return dataclasses.replace(request, messages=(*request.messages[:-1], last)), meta[CITATIONS_META]

    def cancel_requests(self) -> None:
        """Stop every server answer, queued or running (the window's own answers go on)."""
        for job in list(self._jobs):
            job.cancel()

    def _save(self, served: Served, request: ChatRequest, answer: str, reasoning: str) -> None:
        """With --save-history: the conversation becomes a chat in the window's list."""
        assert self.save_to is not None
        loaded = served.loaded
        record = ModelRecord.of(loaded.info, loaded.sha256, served.entry.title or None,
                                adapter_records(loaded, served.entry.adapters))
        first = request.messages[0].text.strip().splitlines()[0] if request.messages[0].text.strip() else "Server chat"
        chat = self.save_to.create_chat(f"Server: {first[:60]}", record, served.settings.to_dict())
        store = ImageStore()
        for message in request.messages:
            parts = [request.images[sha].part.to_dict() for sha in message.image_ids]
            for sha in message.image_ids:
                store.put(request.images[sha])
            self.save_to.add_message(chat, message.role, message.text, message.reasoning,
                                     meta={"images": parts} if parts else None)
        self.save_to.add_message(chat, "model", answer, reasoning)


def entry_for(request: ModelRequest, title: str = "") -> ModelEntry:
    """The library entry of a model named on the command line."""
    return ModelEntry(request.base, title or (request.base.name if request.base else "Gemma 3 270M (embedded)"),
                      str(request.base or "the embedded model"), request.adapters)

