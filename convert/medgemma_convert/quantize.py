"""Quantizing an unquantized GGUF with llama.cpp itself (`llama_model_quantize`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from medgemma_models.errors import ConversionError

from .quants import LLAMA_FTYPES


@contextlib.contextmanager
def _quiet_llama() -> Iterator[None]:
    # llama-cpp-python routes llama.cpp's log through this logger; quantize logs every tensor.
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize(source: Path, target: Path, quant: str, threads: int | None = None) -> None:
    """Write `source` (f32/f16/bf16 GGUF) quantized to `quant` (e.g. "q8_0") at `target`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPES[quant])
    params.nthread = threads or os.cpu_count() or 1
    with _quiet_llama():
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        # llama.cpp reports the cause in its log only; a failed write (full disk) is the usual one.
        raise ConversionError(f"llama.cpp failed to write the {quant} file (status {status}); check the free disk space")
