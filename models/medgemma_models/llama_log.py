"""The one capture of llama.cpp's log: off the terminal, its error lines kept to explain failures.

llama.cpp logs on the thread that called it, so error lines are kept per thread: side-by-side
quantizers each get their own reason. `on_line` sees every line (the quantizer reads its
progress from them).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator

# ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama-cpp-python's _logger.py comment is out of date).
GGML_LOG_LEVEL_ERROR = 4

log = logging.getLogger(__name__)


class LlamaLog:
    """Installs itself as llama.cpp's log callback; keeps recent error lines per thread."""

    def __init__(self, on_line: Callable[[int, str], None] | None = None, keep: int = 20) -> None:
        self.on_line = on_line
        self._errors: dict[int, deque[str]] = {}
        self._latest: deque[str] = deque(maxlen=keep)
        self._keep = keep
        self._callback: object = None  # the C callback must stay alive while installed (and after)
        self.errors_seen = 0  # error lines so far: read it before a call to find that call's own lines

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace")
        try:
            if self.on_line is not None:
                self.on_line(level, line)
            if level == GGML_LOG_LEVEL_ERROR and line.strip():
                thread = threading.get_ident()
                self._errors.setdefault(thread, deque(maxlen=self._keep)).append(line.strip())
                self._latest.append(line.strip())
                self.errors_seen += 1
                log.debug("llama.cpp: %s", line.strip())
        except Exception:  # an exception must not cross into C
            log.exception("llama.cpp log callback failed")

    def last_error(self, thread: int | None = None) -> str | None:
        """The latest error line (of `thread`, when given), or None."""
        lines = self._latest if thread is None else self._errors.get(thread)
        return lines[-1] if lines else None

    def first_error_since(self, seen: int) -> str | None:
        """The first error line logged since `errors_seen` was `seen`: the cause (later lines say "failed")."""
        new = min(self.errors_seen - seen, len(self._latest))
        return self._latest[-new] if new > 0 else None

    def c_callback(self) -> object:
        """The C log callback this capture is called through (kept alive by this object)."""
        import llama_cpp

        if self._callback is None:
            self._callback = llama_cpp.llama_log_callback(self._on_log)
        return self._callback

    def install(self) -> LlamaLog:
        """Take over llama.cpp's log for good (the app's engine)."""
        import llama_cpp

        llama_cpp.llama_log_set(self.c_callback(), ctypes.c_void_p(0))
        return self

    @contextlib.contextmanager
    def installed(self) -> Iterator[LlamaLog]:
        """Take over llama.cpp's log for a while, then give it back to llama-cpp-python."""
        import llama_cpp

        from .llama_cpp_compat import default_log_callback

        self.install()
        try:
            yield self
        finally:
            llama_cpp.llama_log_set(default_log_callback(), ctypes.c_void_p(0))


_app_log: LlamaLog | None = None


def app_log() -> LlamaLog:
    """The process-wide capture the engine installs once and keeps."""
    global _app_log
    if _app_log is None:
        _app_log = LlamaLog().install()
    return _app_log
