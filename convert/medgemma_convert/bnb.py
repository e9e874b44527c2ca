"""bitsandbytes 4-bit checkpoints (NF4 / FP4, with or without double quantization) as a base.

transformers saves each quantized weight as its packed 4-bit values (uint8, two a byte) beside
`.absmax`, `.quant_map`, `.nested_absmax`, `.nested_quant_map` and a JSON blob
`.quant_state.bitsandbytes__nf4` (or `__fp4`). Everything is checked from the headers and the blob
before any work; each weight is then dequantized by bitsandbytes' own functions
(`QuantState.from_dict`, `dequantize_4bit`) on the CPU, one tensor at a time, as the merge reaches it.

The result is exactly the weights a QLoRA adapter was trained against, but not the 16-bit release:
4-bit rounding has already happened, which the plan says in a warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medgemma_models.errors import ConversionError

from .casts import bf16_to_f32
from .safetensors_header import TensorEntry

_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_STATE = ".quant_state.bitsandbytes__"
_QUANT_TYPES = ("nf4", "fp4")
_DTYPES = ("float32", "float16", "bfloat16")
_RAW = {"U8": np.uint8, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_MAX_BLOB = 1 << 16


def quantization(config: dict[str, Any], where: Path) -> str | None:
    """'bnb-4bit' for a bitsandbytes 4-bit checkpoint, None for a float one; other quantizations are refused."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    method = quant.get("quant_method")
    if method == "bitsandbytes" and quant.get("load_in_4bit"):
        return "bnb-4bit"
    if method == "bitsandbytes" and quant.get("load_in_8bit"):
        raise ConversionError(
            f"the base in {where} is a bitsandbytes 8-bit (LLM.int8) checkpoint, which cannot be dequantized exactly: "
            "pass the 16-bit release or a 4-bit (NF4/FP4) checkpoint")
    raise ConversionError(f"the base in {where} is quantized with {method!r}; pass the 16-bit release it was made from")


def describe(config: dict[str, Any]) -> str:
    quant = config.get("quantization_config") or {}
    kind = str(quant.get("bnb_4bit_quant_type", "nf4")).upper()
    return f"{kind}{' with double quantization' if quant.get('bnb_4bit_use_double_quant') else ''}"


def is_part(name: str) -> bool:
    """A companion tensor of a 4-bit weight (its scales, code book or quant-state blob), not a weight."""
    return _STATE in name or name.rsplit(".", 1)[-1] in _PARTS


@dataclass(frozen=True)
class Bnb4bitEntry:
    """A 4-bit weight, read as float32 like any TensorEntry: dequantized whole, the last one kept for its row blocks."""

    name: str
    packed: TensorEntry
    parts: dict[str, TensorEntry]  # absmax, quant_map, [nested_absmax, nested_quant_map], and the blob's key
    state_key: str
    shape: tuple[int, ...]
    _last: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    dtype = "F32"  # what read_rows returns

    @property
    def file(self) -> Path:
        return self.packed.file

    def read_rows(self, start: int = 0, end: int | None = None) -> np.ndarray:
        if "weight" not in self._last:
            self._last.clear()
            self._last["weight"] = self._dequantize()
        weight = self._last["weight"]
        if end is None or end >= self.shape[0]:
            self._last.clear()  # the last block: let the tensor go
        return weight[start:end]

    def _dequantize(self) -> np.ndarray:
        import torch
        from bitsandbytes.functional import QuantState, dequantize_4bit

        state_dict = {key: torch.from_numpy(_raw(entry)) for key, entry in self.parts.items()}
        state = QuantState.from_dict(state_dict, device=torch.device("cpu"))
        packed = torch.from_numpy(_raw(self.packed)).reshape(self.packed.shape)
        weight = dequantize_4bit(packed, state).to(torch.float32).numpy()
        return np.ascontiguousarray(weight.reshape(self.shape))


def _raw(entry: TensorEntry) -> np.ndarray:
    """A tensor's stored values as they are (bfloat16 widened to float32)."""
    values = np.fromfile(entry.file, _RAW[entry.dtype], math.prod(entry.shape), offset=entry.offset)
    return bf16_to_f32(values) if entry.dtype == "BF16" else values


def resolve_4bit(name: str, packed: TensorEntry, headers: dict[str, TensorEntry], folder: Path) -> Bnb4bitEntry:
    """The 4-bit weight `name`, its quant state read and every size checked against its shape."""
    where = f"the bitsandbytes weight {name} in {packed.file.name}"
    keys = [k for k in headers if k.startswith(name + _STATE)]
    if len(keys) != 1:
        raise ConversionError(f"{where} has {'no' if not keys else 'more than one'} quant state ({name}{_STATE}nf4)")
    state_key = keys[0]
    state = _state(headers[state_key], where)
    quant_type = state_key.rsplit("__", 1)[-1]
    if quant_type not in _QUANT_TYPES or state.get("quant_type") != quant_type:
        raise ConversionError(f"{where}: quant state {quant_type!r} / {state.get('quant_type')!r} is neither nf4 nor fp4")
    shape, blocksize = state.get("shape"), state.get("blocksize")
    if not isinstance(shape, list) or len(shape) != 2 or not all(_whole(d) for d in shape) or not _whole(blocksize):
        raise ConversionError(f"{where}: the quant state gives shape {shape!r} and blocksize {blocksize!r}")
    if state.get("dtype") not in _DTYPES:
        raise ConversionError(f"{where}: the quant state's dtype {state.get('dtype')!r} is not one of {', '.join(_DTYPES)}")
    nested = "nested_blocksize" in state
    wanted = ["absmax", "quant_map", *(["nested_absmax", "nested_quant_map"] if nested else [])]
    parts = {}
    for part in wanted:
        entry = headers.get(f"{name}.{part}")
        if entry is None or entry.dtype not in _RAW:
            raise ConversionError(f"{where} has no usable {name}.{part}")
        parts[f"{name}.{part}"] = entry
    parts[state_key] = headers[state_key]
    n = shape[0] * shape[1]
    blocks = math.ceil(n / blocksize)
    sizes = [("packed values", packed, math.ceil(n / 2)), ("absmax", parts[f"{name}.absmax"], blocks),
             ("quant_map", parts[f"{name}.quant_map"], 16)]
    if nested:
        nested_blocksize = state.get("nested_blocksize")
        if not _whole(nested_blocksize) or not isinstance(state.get("nested_offset"), (int, float)):
            raise ConversionError(f"{where}: the quant state's nested_blocksize / nested_offset are not numbers")
        sizes += [("nested_absmax", parts[f"{name}.nested_absmax"], math.ceil(blocks / nested_blocksize)),
                  ("nested_quant_map", parts[f"{name}.nested_quant_map"], 256)]
    if packed.dtype != "U8":
        raise ConversionError(f"{where} packs its values as {packed.dtype}; only uint8 storage (the default) is read")
    for what, entry, count in sizes:
        if math.prod(entry.shape) != count:
            raise ConversionError(
                f"{where}: {what} has {math.prod(entry.shape):,} values, but shape {tuple(shape)} in blocks of "
                f"{blocksize} needs {count:,}")
    return Bnb4bitEntry(name, packed, parts, state_key, (shape[0], shape[1]))


def _state(entry: TensorEntry, where: str) -> dict[str, Any]:
    if entry.dtype != "U8" or not 0 < math.prod(entry.shape) <= _MAX_BLOB:
        raise ConversionError(f"{where}: the quant state is not a JSON blob of bytes")
    blob = _raw(entry).tobytes()
    try:
        state = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConversionError(f"{where}: the quant state blob is truncated or corrupt (not JSON)") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{where}: the quant state blob is not a JSON object")
    return state


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 32
