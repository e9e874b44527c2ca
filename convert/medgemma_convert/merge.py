"""Streaming merge: base tensors read one at a time, adapter deltas added, Gemma fixes applied.

Nothing is materialised beyond the tensor at hand, and a large tensor that nothing changes (the
262,144-row embedding) is even read a block of rows at a time: peak memory stays near one
transformer layer, not the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .adapter import ResolvedAdapter
from .base import BaseTensor, ResolvedBase
from .lora import AdapterWeights

# Tensors above this many elements are streamed in row blocks of about this size when untouched.
_BLOCK_ELEMENTS = 8 * 1024 * 1024


@dataclass(frozen=True)
class RowBlocks:
    """An untouched tensor delivered as consecutive blocks of rows."""

    read: Callable[[int, int], torch.Tensor]  # (first row, end row) -> rows in the stored dtype
    rows: int
    step: int

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.rows, self.step):
            yield self.read(start, min(start + self.step, self.rows))


def merged_tensors(
    base: ResolvedBase, adapters: tuple[ResolvedAdapter, ...]
) -> Iterator[tuple[BaseTensor, torch.Tensor | RowBlocks]]:
    """Yield (tensor, data) in `base.tensors` order, each merged and ready to write.

    Tensors that change (adapter deltas, norms) are computed in float32; the others keep their
    stored dtype, so the writer converts them once (bf16 -> f16 needs no float32 copy).
    """
    with contextlib.ExitStack() as stack:
        weights = stack.enter_context(AdapterWeights(adapters))
        files = _SafetensorsFiles()
        read_gguf = _gguf_reader(base) if base.kind == "gguf" else None
        for tensor in base.tensors:
            changed = tensor.norm_shift or weights.targets(tensor.name)
            rows = tensor.shape[0] if tensor.shape else 0
            if read_gguf is None and not changed and len(tensor.shape) == 2 and rows * tensor.shape[1] > _BLOCK_ELEMENTS:
                step = max(1, _BLOCK_ELEMENTS // tensor.shape[1])
                yield tensor, RowBlocks(files.row_reader(tensor), rows, step)
                continue
            w = read_gguf(tensor) if read_gguf is not None else files.read(tensor)
            if tensor.rows is not None:
                w = w[: tensor.rows]
            if changed:
                w = weights.apply(tensor.name, w.to(torch.float32, copy=True))
            if tensor.norm_shift:
                w += 1.0  # Gemma RMSNorm multiplies by (1 + w); llama.cpp by w
            yield tensor, w


class _SafetensorsFiles:
    """Reads through safe_open, opening the file for each read.

    safe_open maps the whole file; pages it touched stay resident until the handle closes, so a
    handle kept open for the whole export would end up holding the entire model in memory.
    """

    def read(self, tensor: BaseTensor) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(tensor.file), framework="pt") as f:
            return f.get_tensor(tensor.source)

    def row_reader(self, tensor: BaseTensor) -> Callable[[int, int], torch.Tensor]:
        from safetensors import safe_open

        def read(start: int, end: int) -> torch.Tensor:
            with safe_open(str(tensor.file), framework="pt") as f:
                return f.get_slice(tensor.source)[start:end]

        return read


def _gguf_reader(base: ResolvedBase) -> Callable[[BaseTensor], torch.Tensor]:
    import gguf

    reader = gguf.GGUFReader(base.path)
    by_name = {t.name: t for t in reader.tensors}

    def read(tensor: BaseTensor) -> torch.Tensor:
        t = by_name[tensor.source]
        data = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType(t.tensor_type))
        return torch.from_numpy(np.array(data, dtype=np.float32).reshape(tensor.shape))

    return read
