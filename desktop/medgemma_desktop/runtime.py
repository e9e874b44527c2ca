"""The one owner of the model in use: an engine on its own thread, and a queue of jobs for it. No Qt.

The window, `--ask` and the local server are front ends of a `Runtime`: each submits jobs (load a
model, answer a chat, read a file's header) and hears back typed events (`events.py`) through the
callback it gave, called on the engine thread, in order. Jobs run one at a time, first come first
served; any of them can be cancelled, a running answer within one token. Nothing else in the app
touches llama.cpp.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from medgemma_models.errors import MedGemmaError

from .answer import AnswerStats, LoadCancelledError
from .events import (
    AnswerPiece,
    Failed,
    Finished,
    Inspected,
    LoadCancelled,
    LoadError,
    LoadProgress,
    ModelReady,
    PromptPlanned,
    ReasoningPiece,
    RuntimeEvent,
)
from .generation import (
    AdapterUse,
    EngineLike,
    GenerationRequest,
    Loaded,
    LoadFailed,
    ModelRequest,
    open_model,
    run_generation,
)
from .resolve import inspect_file

__all__ = ["AdapterUse", "AnswerPiece", "Failed", "Finished", "GenerationRequest", "Inspected", "Job", "LoadCancelled",
           "LoadError", "LoadProgress", "Loaded", "ModelReady", "ModelRequest", "PromptPlanned", "ReasoningPiece",
           "Runtime", "RuntimeBackend", "RuntimeEvent"]

log = logging.getLogger(__name__)

EventSink = Callable[[RuntimeEvent], None]
NO_MODEL = "No model is loaded."
CANCELLED_BEFORE_START = AnswerStats(0, 0, 0, 0.0, 0.0, "cancelled")


class Job:
    """A piece of work queued on the runtime; `cancel()` and `wait()` are safe from any thread."""

    _ids = itertools.count(1)

    def __init__(self, work: Callable[[Job], None], on_cancelled_early: Callable[[], None]) -> None:
        self.id = next(self._ids)
        self._work = work
        self._cancelled_early = on_cancelled_early
        self._cancel = threading.Event()
        self._done = threading.Event()

    def cancel(self) -> None:
        """A queued job will not start; a running answer stops within one token, a load at its next step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job's last event has been delivered; False if `timeout` ran out first."""
        return self._done.wait(timeout)

    def run(self) -> None:
        try:
            if self.cancelled:
                self._cancelled_early()
            else:
                self._work(self)
        finally:
            self._done.set()


class Runtime:
    """One engine, one thread, one FIFO of jobs. `close()` it when done."""

    def __init__(self, engine_factory: Callable[[], EngineLike] | None = None) -> None:
        if engine_factory is None:
            from .engine import Engine  # here, so that the runtime's types import no llama.cpp

            engine_factory = Engine
        self._factory = engine_factory
        self._engine: EngineLike | None = None
        self._loaded: Loaded | None = None
        # The engine a load replaced, kept until the front end takes the new model (`keep_load`)
        # or goes back to the old one (`undo_load`).
        self._previous: tuple[EngineLike | None, Loaded | None] | None = None
        self._queue: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="medgemma-engine", daemon=True)
        self._thread.start()

    # -- what front ends see -----------------------------------------------------------------------

    @property
    def loaded(self) -> Loaded | None:
        """The model in use (None before the first load)."""
        return self._loaded

    @property
    def waiting(self) -> int:
        """Jobs queued that have not started."""
        with self._wake:
            return len(self._queue)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # -- jobs ---------------------------------------------------------------------------------------

    def load(self, request: ModelRequest, on_event: EventSink, keep_previous: bool = False) -> Job:
        """Load a model into a new engine; the one in use stays in use unless this succeeds.

        With `keep_previous` the replaced engine is kept until `keep_load()` or `undo_load()`, for a
        front end that may still refuse the new model.
        """
        def work(job: Job) -> None:
            def progress(fraction: float) -> bool:
                on_event(LoadProgress(float(fraction)))
                return not job.cancelled

            try:
                engine, loaded = open_model(self._factory, request, progress=progress)
            except LoadCancelledError:
                on_event(LoadCancelled())
                return
            except LoadFailed as exc:
                on_event(LoadError(exc.title, str(exc)))
                return
            self._drop_previous()
            if keep_previous:
                self._previous = (self._engine, self._loaded)
            elif self._engine is not None:
                self._engine.close()
            self._engine, self._loaded = engine, loaded
            on_event(ModelReady(loaded))

        return self._submit(work, lambda: on_event(LoadCancelled()))

    def keep_load(self) -> Job:
        """The front end took the model just loaded: the one it replaced can go."""
        return self._submit(lambda job: self._drop_previous(), lambda: None)

    def undo_load(self) -> Job:
        """The front end could not take the model just loaded: back to the one in use before."""
        def work(job: Job) -> None:
            if self._previous is None:
                return
            if self._engine is not None:
                self._engine.close()
            (self._engine, self._loaded), self._previous = self._previous, None

        return self._submit(work, lambda: None)

    def generate(self, request: GenerationRequest, on_event: EventSink) -> Job:
        """Answer a chat with the model in use: `PromptPlanned`, pieces, then `Finished` or `Failed`."""
        def work(job: Job) -> None:
            if self._engine is None:
                on_event(Failed(NO_MODEL))
                return
            run_generation(self._engine, request, on_event, lambda: job.cancelled)

        return self._submit(work, lambda: on_event(Finished(CANCELLED_BEFORE_START)))

    def inspect(self, paths: Sequence[Path], on_event: EventSink, recent: Sequence[Path] = ()) -> Job:
        """Read each file's header for the model list (a big vocabulary takes seconds): an `Inspected` each."""
        def work(job: Job) -> None:
            for path in paths:
                if job.cancelled:
                    return
                try:
                    on_event(Inspected(path, inspect_file(path, recent)))
                except Exception as exc:  # noqa: BLE001 - the list shows the problem instead of the facts
                    on_event(Inspected(path, str(exc) if isinstance(exc, MedGemmaError) else f"unreadable: {exc}"))

        return self._submit(work, lambda: None)

    def _submit(self, work: Callable[[Job], None], on_cancelled_early: Callable[[], None]) -> Job:
        job = Job(work, on_cancelled_early)
        with self._wake:
            if self._closed:
                raise MedGemmaError("the runtime is shut down")
            self._queue.append(job)
            self._wake.notify()
        return job

    # -- the engine thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    break
                job = self._running = self._queue.popleft()
            try:
                job.run()
            except Exception:  # a job's own failure is its events' business; the thread must live on
                log.exception("runtime job %d failed", job.id)
            finally:
                with self._wake:
                    self._running = None
        self._drop_previous()
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._loaded = None

    def _drop_previous(self) -> None:
        if self._previous is not None:
            engine, _ = self._previous
            self._previous = None
            if engine is not None:
                engine.close()

    def cancel_all(self) -> None:
        """Cancel every queued job and the running one."""
        with self._wake:
            for job in [*self._queue, *([self._running] if self._running else [])]:
                job.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Cancel everything, let each job deliver its last event, free the model and end the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self.cancel_all()
        self._thread.join(timeout)


class RuntimeBackend:
    """A chat session's backend on a runtime: each answer is a job.

    In the window `deliver` is a queued Qt signal, so the session hears the events on the GUI
    thread. Headless (`wait`), `generate` returns when the answer has ended and `deliver` runs on
    the engine thread meanwhile: the caller is blocked, so one thread at a time touches the session,
    and a stop asked from an event takes effect at the very next token.
    """

    def __init__(self, runtime: Runtime, deliver: EventSink, wait: bool = False) -> None:
        self.runtime, self.deliver, self.wait = runtime, deliver, wait
        self.job: Job | None = None

    def generate(self, request: GenerationRequest) -> None:
        self.job = self.runtime.generate(request, self.deliver)
        if self.wait:
            self.job.wait()

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel()
