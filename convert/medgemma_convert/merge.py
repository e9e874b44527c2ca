"""Streaming merge: base tensors read one at a time, adapter deltas added, Gemma fixes applied.

Nothing is materialised beyond the tensor at hand, and a large tensor that nothing changes (the
262,144-row embedding) is even read a block of rows at a time: peak memory stays near one
transformer layer, not the model. numpy only: importing torch would cost seconds and memory
that the merge does not need.

Every tensor is checked for NaN and infinities as it passes (about 2 ms per 8 M values): a
single NaN weight makes every answer of the exported model NaN, and nothing downstream says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medgemma_models.errors import AdapterError, ConversionError

from .adapter import ResolvedAdapter
from .base import BaseTensor, ResolvedBase
from .lora import AdapterWeights

if TYPE_CHECKING:
    import gguf

# Tensors above this many elements are streamed in row blocks of about this size when untouched.
BLOCK_ELEMENTS = 8 * 1024 * 1024


@dataclass(frozen=True)
class RowBlocks:
    """An untouched tensor delivered as consecutive blocks of rows (float32)."""

    read: Callable[[int, int], np.ndarray]  # (first row, end row) -> rows
    rows: int
    step: int

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, self.step):
            yield self.read(start, min(start + self.step, self.rows))


def merged_tensors(
    base: ResolvedBase, adapters: tuple[ResolvedAdapter, ...], gguf_base: gguf.GGUFReader | None = None
) -> Iterator[tuple[BaseTensor, np.ndarray | RowBlocks]]:
    """Yield (tensor, float32 data) in `base.tensors` order, each merged and ready to write.

    A GGUF base is read through `gguf_base`, the reader the export already opened for its metadata.
    """
    weights = AdapterWeights(adapters)
    read_gguf = None
    if base.kind == "gguf":
        if gguf_base is None:
            raise ValueError(f"merging onto the GGUF base {base.path.name} needs its reader")
        read_gguf = _gguf_tensors(gguf_base)
    for tensor in base.tensors:
        changed = tensor.norm_shift or weights.targets(tensor.name)
        rows = tensor.shape[0] if tensor.shape else 0
        if tensor.stored is not None and not changed and len(tensor.shape) == 2 and rows * tensor.shape[1] > BLOCK_ELEMENTS:
            step = max(1, BLOCK_ELEMENTS // tensor.shape[1])
            yield tensor, RowBlocks(_checked_rows(tensor, tensor.stored.read_rows), rows, step)
            continue
        if tensor.stored is not None:
            w = tensor.stored.read_rows(0, tensor.rows)
        else:
            assert read_gguf is not None
            w = read_gguf(tensor)
        _check_base_finite(tensor, w)
        if changed:
            w = weights.apply(tensor.name, w)
            if not np.isfinite(w).all():
                raise _merge_failure(tensor, weights)
        if tensor.norm_shift:
            w += 1.0  # Gemma RMSNorm multiplies by (1 + w); llama.cpp by w
        yield tensor, w


def _check_base_finite(tensor: BaseTensor, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ConversionError(f"the base weight {tensor.source} in {tensor.file.name} holds NaN or infinite values")


def _checked_rows(tensor: BaseTensor, read: Callable[[int, int], np.ndarray]) -> Callable[[int, int], np.ndarray]:
    def checked(start: int, end: int) -> np.ndarray:
        rows = read(start, end)
        _check_base_finite(tensor, rows)
        return rows

    return checked


def _merge_failure(tensor: BaseTensor, weights: AdapterWeights) -> ConversionError:
    """Which adapter tensor brought the NaN or infinity in; only looked for when one was found."""
    for i, target in weights.by_tensor[tensor.name]:
        adapter = weights.adapters[i]
        for part, entry in (("lora_A", target.a), ("lora_B", target.b)):
            if not np.isfinite(entry.read_rows()).all():
                return AdapterError(f"adapter {adapter.id}: {target.module}.{part}.weight holds NaN or infinite values")
    return AdapterError(f"adding the adapters' deltas to {tensor.source} overflows float32 (values beyond ±3.4e38)")


def _gguf_tensors(reader: gguf.GGUFReader) -> Callable[[BaseTensor], np.ndarray]:
    import gguf

    by_name = {t.name: t for t in reader.tensors}

    def read(tensor: BaseTensor) -> np.ndarray:
        t = by_name[tensor.source]
        data = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType(t.tensor_type))
        return np.array(data, dtype=np.float32).reshape(tensor.shape)  # a copy of its own, changed in place

    return read

