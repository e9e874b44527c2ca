"""Where this project leans on llama-cpp-python's internals, in one place.

- `load_ggml_library`: ggml's own shared libraries, through the loader llama-cpp-python uses
  (`llama_cpp._ctypes_extensions`), for ggml's vectorised float conversions.
- `default_log_callback`: the callback llama-cpp-python installs (`llama_cpp._logger`), to put
  back after a capture.
- `model_params_with_progress`: `Llama()` builds its model parameters itself and offers no hook
  for a load progress callback, so the parameter factory it calls is swapped for one load.

`tests/models/test_library_contracts.py` checks each of these against the installed version,
so an upgrade that moves them fails there rather than in a user's hands.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llama_cpp

log = logging.getLogger(__name__)

# llama-cpp-python releases these were checked against: 0.3.x up to, not including, this one
# (the contract test fails on a newer one until it has been checked; pyproject pins the same bound).
TESTED_BELOW = (0, 4)

# llama.cpp's log callback: (level, text, user data).
LogCallback = Callable[[int, bytes, ctypes.c_void_p], None]

_params_lock = threading.Lock()


def load_ggml_library(name: str) -> Any:
    """A ggml library shipped inside llama-cpp-python ("ggml-base", "ggml-cpu"), as a ctypes CDLL."""
    from llama_cpp._ctypes_extensions import load_shared_library

    return load_shared_library(name, Path(llama_cpp.__file__).parent / "lib")


def default_log_callback() -> Any:
    """The C callback llama-cpp-python itself installs (it forwards to Python logging, quietly)."""
    from llama_cpp import _logger

    return _logger.llama_log_callback


@contextlib.contextmanager
def model_params_with_progress(on_progress: Callable[[float], bool]) -> Iterator[None]:
    """Every `Llama()` created inside reports its load progress to `on_progress` (False cancels).

    One load at a time: the swapped factory is module-wide.
    """

    def progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
        try:
            return bool(on_progress(float(fraction)))
        except Exception:  # an exception must not cross into C: stop the load instead
            log.exception("load progress callback failed")
            return False

    c_callback = llama_cpp.llama_progress_callback(progress)
    bindings = llama_cpp.llama_cpp
    with _params_lock:
        original = bindings.llama_model_default_params

        def params_with_progress() -> llama_cpp.llama_model_params:
            params = original()
            params.progress_callback = c_callback
            return params

        bindings.llama_model_default_params = params_with_progress
        try:
            yield
        finally:
            bindings.llama_model_default_params = original
