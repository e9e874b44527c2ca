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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import llama_cpp

from medgemma_models.errors import ModelFileError, ModelLoadError
from medgemma_models.gguf_info import open_header
from medgemma_models.provenance import Provenance

_A, _B = ".lora_a", ".lora_b"
# ggml shapes ([n_in, rank] for lora_a, [rank, n_out] for lora_b) of one base tensor's pair.
Pair = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class AdapterFile:
    """What a GGUF LoRA adapter's header says: enough to check it against a model and to list it."""

    path: Path
    architecture: str
    name: str
    alpha: float
    provenance: Provenance
    pairs: dict[str, Pair]  # base tensor name -> (lora_a shape, lora_b shape), ggml order

    @property
    def base(self) -> str | None:
        """The base it was made for (medgemma.base), as the converter recorded it."""
        return self.provenance.base

    @property
    def preset(self) -> str | None:
        return self.provenance.preset


def _value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    if field is None or field.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    return field.contents()


def is_adapter(path: Path | str) -> bool:
    """True when `path` is a GGUF whose general.type is "adapter" (for routing an opened file)."""
    try:
        return _value(open_header(Path(path), "file"), gguf.Keys.General.TYPE) == "adapter"
    except ModelFileError:
        return False


def read_adapter(path: Path | str) -> AdapterFile:
    """Read a GGUF LoRA adapter's header; anything else raises ModelFileError naming the problem."""
    path = Path(path)
    reader = open_header(path, "adapter file")
    kind = _value(reader, gguf.Keys.General.TYPE)
    if kind != "adapter" or _value(reader, gguf.Keys.Adapter.TYPE) != "lora":
        raise ModelFileError(f"{path.name} is not a LoRA adapter (general.type is {kind or 'missing'}): open it as a model")
    architecture = _value(reader, gguf.Keys.General.ARCHITECTURE)
    if not isinstance(architecture, str):
        raise ModelFileError(f"{path.name} has no general.architecture key")
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > path.stat().st_size:
        raise ModelFileError(f"{path.name} is truncated: its tensors need {end:,} bytes, the file has {path.stat().st_size:,}")
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor in reader.tensors:
        for suffix in (_A, _B):
            if tensor.name.endswith(suffix):
                halves.setdefault(tensor.name[: -len(suffix)], {})[suffix] = tuple(int(d) for d in tensor.shape)
    pairs = {}
    for name, half in sorted(halves.items()):
        if len(half) != 2:
            raise ModelFileError(f"{path.name} has only one of lora_a/lora_b for {name}")
        pairs[name] = (half[_A], half[_B])
    if not pairs:
        raise ModelFileError(f"{path.name} holds no LoRA tensors")
    provenance = {key: _value(reader, key) for key in reader.fields if key.startswith("medgemma.")}
    return AdapterFile(
        path=path,
        architecture=architecture,
        name=_value(reader, gguf.Keys.General.NAME) or path.stem,
        alpha=float(_value(reader, gguf.Keys.Adapter.LORA_ALPHA) or 0.0),
        provenance=Provenance.from_dict(provenance),
        pairs=pairs,
    )


def check_fits(adapter: AdapterFile, model: Path | str) -> None:
    """Refuse, with ModelFileError, an adapter made for another architecture or other tensor shapes."""
    model = Path(model)
    reader = open_header(model, "model file")
    architecture = _value(reader, gguf.Keys.General.ARCHITECTURE)
    if architecture != adapter.architecture:
        raise ModelFileError(
            f"{adapter.path.name} is an adapter for {adapter.architecture} models, but {model.name} is {architecture}"
        )
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    for name, (a, b) in adapter.pairs.items():
        base = shapes.get(name)
        if base is None:
            raise ModelFileError(f"{adapter.path.name} changes {name}, which {model.name} does not have: made for another model")
        # llama.cpp's own check: W [n_in, n_out], lora_a [n_in, r], lora_b [r, n_out].
        if len(a) != 2 or len(b) != 2 or len(base) != 2 or a[0] != base[0] or b[1] != base[1] or a[1] != b[0]:
            raise ModelFileError(
                f"{adapter.path.name} does not fit {model.name}: {name} is {list(base)} there, "
                f"the adapter's lora_a {list(a)} x lora_b {list(b)} (made for another model size)"
            )


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

    def set_scales(self, scales: Sequence[float]) -> None:
        """New scales for the same adapters (0 switches one off); clears the KV cache."""
        if self._llama is None:
            raise ModelLoadError("these adapters were detached; attach them again")
        if len(scales) != len(self.files):
            raise ValueError(f"{len(scales)} scales for {len(self.files)} adapters")
        _set_on_context(self._llama, self._handles, _checked_scales(scales))
        self._scales = [float(s) for s in scales]

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
