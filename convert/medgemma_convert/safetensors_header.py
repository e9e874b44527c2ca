"""Reading safetensors files without torch: headers (names, dtypes, shapes), then rows of a tensor.

Checking the header and the data extent up front turns a corrupt or truncated download into a
clear error before any heavy work starts. Rows are read with plain file reads, not a mapping:
pages of a mapped file stay resident, so a mapping held for a whole export would end up holding
the entire model in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgemma_models.errors import ConversionError

from .casts import bf16_to_f32

_MAX_HEADER = 100 * 1024 * 1024


# Stored dtypes read as float32; bfloat16 (which numpy lacks) as its 16 bits, widened below.
_STORED = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
FLOAT_DTYPES = tuple(_STORED)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors dtype code: "BF16", "F16", "F32", "U8", ...
    shape: tuple[int, ...]
    file: Path
    offset: int = 0  # where the tensor's bytes start in the file

    def read_rows(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Rows start..end (first axis) as float32; bfloat16 and float16 widen exactly."""
        stored = _STORED.get(self.dtype)
        if stored is None:
            raise ConversionError(
                f"{self.file.name} stores tensors as {self.dtype}, not float32/float16/bfloat16 "
                "(a quantized checkpoint?): pass the unquantized release"
            )
        rows = self.shape[0] if self.shape else 1
        end = rows if end is None else end
        per_row = int(np.prod(self.shape[1:], dtype=np.int64))
        data = np.fromfile(self.file, stored, (end - start) * per_row, offset=self.offset + start * per_row * stored.itemsize)
        if self.dtype == "BF16":
            data = bf16_to_f32(data)
        return data.astype(np.float32, copy=False).reshape((end - start, *self.shape[1:]) if self.shape else ())


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Tensor entries of one .safetensors file; a corrupt or truncated file raises ConversionError."""
    if not path.is_file():
        raise ConversionError(f"missing safetensors file: {path}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than a safetensors header")
            n = int.from_bytes(prefix, "little")
            if n <= 0 or n > min(_MAX_HEADER, size - 8):
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        entries: dict[str, TensorEntry] = {}
        data_end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            data_end = max(data_end, int(end))
            entries[name] = TensorEntry(str(info["dtype"]), tuple(int(d) for d in info["shape"]), path, 8 + n + int(start))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"corrupt safetensors file {path}: {exc}") from exc
    if 8 + n + data_end > size:
        raise ConversionError(
            f"truncated safetensors file {path}: its tensors need {8 + n + data_end:,} bytes, the file has {size:,}"
        )
    return entries


def read_model_headers(folder: Path) -> dict[str, TensorEntry]:
    """All tensors of a model folder: model.safetensors, or the shards listed in its index, or every shard."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ConversionError(f"corrupt {index}: {exc}") from exc
        files = sorted({folder / f for f in weight_map.values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"no safetensors weights in {folder} (expected model.safetensors)")
    entries: dict[str, TensorEntry] = {}
    for file in files:
        entries.update(read_header(file))
    return entries
