"""Running the server: headless (`medgemma-desktop --serve`, no Qt, no display) or on a thread
beside the window (`ServerThread`). Both run uvicorn on the app from `app.build_app`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from ..generation import AdapterUse, LoadFailed, ModelRequest
from ..history import History
from ..library import ModelLibrary, model_key
from ..resolve import resolve
from ..runtime import Runtime
from ..settings import LoadSettings
from .app import build_app
from .config import ServerConfig, ServerConfigError
from .openai_api import ApiError
from .service import ChatService, entry_for

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, which also stops the answer being generated when asked to exit (SIGINT,
    SIGTERM or `stop()`), so that an open stream ends at the next token instead of at its last."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def _uvicorn_config(service: ChatService) -> uvicorn.Config:
    # No access log: our own line per answer says what is needed, with no text of it.
    return uvicorn.Config(build_app(service), log_level="warning", access_log=False,
                          timeout_graceful_shutdown=3, lifespan="off")


def bind(config: ServerConfig) -> socket.socket:
    """The one listening socket, bound where the user said (port 0: any free port, for tests)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise ServerConfigError(f"cannot listen on {config.url()}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class RunningServer:
    """A server on a bound socket; `run()` blocks until `stop()` or a signal (in the main thread)."""

    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.socket = bind(service.config)
        self.port = self.socket.getsockname()[1]
        self.url = service.config.url(self.port)
        self._server = _Server(_uvicorn_config(service), service.cancel_requests)

    def run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self.socket]))
        finally:
            self.socket.close()

    def stop(self) -> None:
        self.service.cancel_requests()
        self._server.should_exit = True


class ServerThread:
    """The server beside the window: uvicorn on its own thread and event loop, so the GUI never waits on it."""

    def __init__(self, service: ChatService) -> None:
        self.server = RunningServer(service)
        self.url = self.server.url
        self._thread = threading.Thread(target=self.server.run, name="medgemma-server", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.server.stop()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def serve_headless(config: ServerConfig, model: Path | None, adapters: Sequence[AdapterUse], load: LoadSettings,
                   say: Callable[[str], None]) -> None:
    """`medgemma-desktop --serve`: load the model, listen, answer until SIGINT or SIGTERM.

    The library and the settings remembered per model come from the user's history (read only);
    conversations are written there only with `--save-history`. Raises MedGemmaError naming what
    cannot be used (the address, the key, the model).
    """
    config.check()
    history = History()
    runtime = Runtime()
    try:
        library = ModelLibrary(history)
        if model is None and not adapters:
            base, chosen = library.default_choice()
            request = ModelRequest(base, chosen, load.load_params())
        else:
            request = resolve(model, tuple(adapters), library.recent_files(), options=load.load_params())
        entry = next((e for e in library.entries() if e.key == model_key(request.base, request.adapters)), None)
        service = ChatService(runtime, library, config, switch_models=True,
                              save_to=history if config.save_history else None, load_options=load.load_params())
        try:
            served = service.load_now(entry or entry_for(request))
        except ApiError as exc:
            raise LoadFailed("Could not load the model", exc.message) from exc
        server = RunningServer(service)
        key = "an API key is required" if config.api_key else "no API key (loopback only)"
        say(f"MedGemma Edge server on {server.url}/v1 · model {served.id} · {key} · Ctrl+C stops it")
        server.run()
    finally:
        runtime.close(timeout=10)
        history.close()
