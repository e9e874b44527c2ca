"""GGUF LoRA adapters on a loaded llama.cpp model, unmerged, each with its own scale (no Qt, no torch).

llama.cpp adds each adapter's `scale * alpha / rank * B @ A` at run time (`llama_adapter_lora_init`
loads a file onto the model, `llama_set_adapters_lora` sets the list a context uses). Adapters are
checked against the loaded model's header before llama.cpp sees them, so a misfit is refused with
one clear line and the model keeps running as it was. Changing adapters or scales clears the KV
cache: llama-cpp-python would otherwise reuse a prompt prefix computed with other adapters.
"""

from __future__ import annotations

import ctypes
import math
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from medgemma_models.errors import ModelLoadError

from .adapter_files import AdapterFile, check_fits, read_adapter

# The adapters currently set on each Llama, so that attaching a new set replaces the old one.
_attached: weakref.WeakKeyDictionary[llama_cpp.Llama, AttachedAdapters] = weakref.WeakKeyDictionary()


class AttachedAdapters:
    """Adapters loaded onto one Llama and set on its context; `detach()` (or closing the Llama) frees them."""

    def __init__(self, llama: llama_cpp.Llama, files: list[AdapterFile], handles: list[Any], scales: list[float]) -> None:
        self._llama: llama_cpp.Llama | None = llama
        self.files = tuple(files)
        self._handles = handles
        self._scales = list(scales)

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(self._scales)

    @property
    def attached(self) -> bool:
        return self._llama is not None

    def describe(self) -> str:
        """'name ×1, other ×0.5', for the model list and the status bar."""
        return ", ".join(f"{f.name} \u00d7{s:g}" for f, s in zip(self.files, self._scales))

    def detach(self) -> None:
        """Take the adapters off the context and free them; the base model runs alone again. Idempotent."""
        llama, self._llama = self._llama, None
        if llama is None:
            return
        if _attached.get(llama) is self:
            del _attached[llama]
            if _context(llama) is not None:
                _set_on_context(llama, [], [])
        _free(self._handles)
        self._handles = []


def attach(llama: llama_cpp.Llama, adapters: Sequence[tuple[Path | str, float]]) -> AttachedAdapters:
    """Load `(path, scale)` adapters onto a loaded Llama, replacing any set attached before.

    Every file is checked against the model first; on any error the model, its context and the
    adapters attached before stay exactly as they were.
    """
    if _context(llama) is None:
        raise ModelLoadError("no model is loaded to attach adapters to")
    scales = _checked_scales([scale for _, scale in adapters])
    files = [read_adapter(path) for path, _ in adapters]
    for adapter in files:
        check_fits(adapter, llama.model_path)
    handles: list[Any] = []
    try:
        for adapter in files:
            handle = llama_cpp.llama_adapter_lora_init(_model(llama), str(adapter.path).encode("utf-8"))
            if not handle:
                raise ModelLoadError(f"llama.cpp could not load the adapter {adapter.path.name}")
            handles.append(handle)
        _set_on_context(llama, handles, scales)
    except BaseException:
        _free(handles)
        raise
    previous = _attached.get(llama)
    attached = AttachedAdapters(llama, files, handles, scales)
    _attached[llama] = attached
    if previous is not None:
        previous._llama = None  # already replaced on the context: only its memory is left to free
        _free(previous._handles)
        previous._handles = []
    else:
        # Closing the Llama runs its exit stack last-in first-out: the adapters go before the model.
        llama._stack.callback(_detach_current, weakref.ref(llama))
    return attached


def attached_to(llama: llama_cpp.Llama) -> AttachedAdapters | None:
    """The adapters set on `llama` now, if any."""
    return _attached.get(llama)


def _detach_current(llama_ref: weakref.ref[llama_cpp.Llama]) -> None:
    llama = llama_ref()
    current = _attached.get(llama) if llama is not None else None
    if current is not None:
        current.detach()


def _checked_scales(scales: Sequence[float]) -> list[float]:
    for scale in scales:
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"an adapter scale must be a finite number, not {scale!r}")
    return [float(s) for s in scales]


def _set_on_context(llama: llama_cpp.Llama, handles: list[Any], scales: list[float]) -> None:
    count = len(handles)
    array = (llama_cpp.llama_adapter_lora_p_ctypes * count)(*handles) if count else None
    factors = (ctypes.c_float * count)(*scales) if count else None
    if llama_cpp.llama_set_adapters_lora(_context(llama), array, count, factors) != 0:
        raise ModelLoadError("llama.cpp could not set the adapters on the model")
    _clear_cache(llama)


def _clear_cache(llama: llama_cpp.Llama) -> None:
    # Forget the evaluated tokens (no prefix reuse) and empty llama.cpp's memory: its entries
    # were computed with the previous adapters.
    llama.reset()
    memory = llama_cpp.llama_get_memory(_context(llama))
    if memory is not None:
        llama_cpp.llama_memory_clear(memory, True)


def _free(handles: list[Any]) -> None:
    for handle in handles:
        llama_cpp.llama_adapter_lora_free(handle)


# llama-cpp-python keeps the C pointers on private wrappers (`Llama._model.model`, `Llama._ctx.ctx`);
# its own lora_path code uses the same two.
def _model(llama: llama_cpp.Llama) -> Any:
    return llama._model.model


def _context(llama: llama_cpp.Llama) -> Any:
    ctx = getattr(llama, "_ctx", None)
    return getattr(ctx, "ctx", None)
