"""Float conversions for the export: ggml's own row converters when llama.cpp's library is there.

ggml rounds float32 to float16 and bfloat16 to nearest even, exactly as numpy and gguf-py do, but
two to twenty times faster (gguf-py's bfloat16 rounding is plain numpy arithmetic). Without the
library (a llama-cpp-python built some other way) the numpy versions give the same bytes.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np

_Row = Callable[[int, int, int], None]  # (source address, target address, element count)
# Arrays this large are split across the cores; ctypes lets go of the GIL during each call.
_SPLIT_ELEMENTS = 1 << 20
_CORES = os.cpu_count() or 1


# What each conversion calls: ggml-cpu's float16 converter is vectorised, ggml-base's is not
# (the other way round for bfloat16, where ggml-base's plain loop is the faster).
GGML_ROWS = {
    "bf16_to_f32": ("ggml-base", "ggml_bf16_to_fp32_row"),
    "f32_to_f16": ("ggml-cpu", "ggml_cpu_fp32_to_fp16"),
    "f32_to_bf16": ("ggml-base", "ggml_fp32_to_bf16_row"),
}


@functools.cache
def ggml_row(conversion: str) -> _Row | None:
    library, symbol = GGML_ROWS[conversion]
    try:
        from medgemma_models.llama_cpp_compat import load_ggml_library

        function = getattr(load_ggml_library(library), symbol)
    except (ImportError, OSError, AttributeError, RuntimeError):
        return None
    function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    return function


def _convert(conversion: str, source: np.ndarray, dtype: type) -> np.ndarray | None:
    row = ggml_row(conversion)
    if row is None:
        return None
    source = np.ascontiguousarray(source)
    target = np.empty(source.shape, dtype)
    n, parts = source.size, min(_CORES, 1 + source.size // _SPLIT_ELEMENTS)
    bounds = [n * i // parts for i in range(parts + 1)]

    def run(i: int) -> None:
        start, count = bounds[i], bounds[i + 1] - bounds[i]
        row(source.ctypes.data + start * source.itemsize, target.ctypes.data + start * target.itemsize, count)

    list(_pool().map(run, range(parts)))
    return target


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_CORES, thread_name_prefix="cast")


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 numbers given as their uint16 bits (exact)."""
    converted = _convert("bf16_to_f32", bits, np.float32)
    return converted if converted is not None else (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_f16(values: np.ndarray) -> np.ndarray:
    """float16 of float32 values; beyond float16's range they become infinite, as in ggml."""
    converted = _convert("f32_to_f16", np.asarray(values, dtype=np.float32), np.float16)
    if converted is not None:
        return converted
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32).astype(np.float16)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) of float32 values."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    converted = _convert("f32_to_bf16", values, np.uint16)
    if converted is not None:
        return converted
    return gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16).view(np.uint16).reshape(values.shape)
