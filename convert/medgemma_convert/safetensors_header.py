"""Reading safetensors headers (names, dtypes, shapes) without loading weights or torch.

Checking the header and the data extent up front turns a corrupt or truncated download into a
clear error before any heavy work starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medgemma_models.errors import ConversionError

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors dtype code: "BF16", "F16", "F32", "U8", ...
    shape: tuple[int, ...]
    file: Path


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
            entries[name] = TensorEntry(str(info["dtype"]), tuple(int(d) for d in info["shape"]), path)
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
