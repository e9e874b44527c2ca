"""Reading safetensors files without torch: headers (names, dtypes, shapes), then rows of a tensor.

Checking the header and the data extent up front turns a corrupt or truncated download into a
clear error before any heavy work starts. Rows are read with plain file reads, not a mapping:
pages of a mapped file stay resident, so a mapping held for a whole export would end up holding
the entire model in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from medgemma_models.errors import ConversionError

from .casts import bf16_to_f32
from .json_input import parse_json, read_json_object

_MAX_HEADER = 100 * 1024 * 1024


# Stored dtypes read as float32; bfloat16 (which numpy lacks) as its 16 bits, widened below.
_STORED = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
FLOAT_DTYPES = tuple(_STORED)
# Bytes per element of each safetensors dtype. Others (sub-byte floats) are not size-checked here:
# they are refused wherever their values would be read.
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
             "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


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
    """Tensor entries of one .safetensors file; a corrupt, truncated or hostile file raises ConversionError.

    Every entry's byte range must be exactly what its shape and dtype need, lie in the data area
    and overlap no other entry: otherwise one tensor could silently be read from another's bytes.
    """
    if not path.is_file():
        raise ConversionError(f"missing safetensors file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or n <= 0 or n > min(_MAX_HEADER, size - 8):
            raise ConversionError(f"corrupt safetensors file {path}: header length out of range")
        header = parse_json(f.read(n), f"safetensors file {path}")
    if not isinstance(header, dict):
        raise ConversionError(f"corrupt safetensors file {path}: header is not a JSON object")
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end, entry = _entry(path, 8 + n, name, info)
        entries[name] = entry
        spans.append((start, end, name))
    _check_no_overlap(path, spans)
    data_end = max((end for _, end, _ in spans), default=0)
    if 8 + n + data_end > size:
        raise ConversionError(
            f"truncated safetensors file {path}: its tensors need {8 + n + data_end:,} bytes, the file has {size:,}"
        )
    return entries


def _entry(path: Path, data_start: int, name: str, info: object) -> tuple[int, int, TensorEntry]:
    def corrupt(problem: str) -> ConversionError:
        return ConversionError(f"corrupt safetensors file {path}: tensor {name} {problem}")

    if not name.isprintable():
        raise ConversionError(f"corrupt safetensors file {path}: a tensor name holds control characters")
    if not isinstance(info, dict):
        raise corrupt("has no dtype, shape and data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not dtype.isprintable():
        raise corrupt("has no dtype")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise corrupt(f"has a malformed shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise corrupt(f"has malformed data_offsets {offsets!r}")
    start, end = offsets
    if start < 0:  # offsets count from the end of the header
        raise corrupt(f"starts inside the header (data_offsets {offsets})")
    if end < start:
        raise corrupt(f"ends (byte {end}) before it starts (byte {start})")
    itemsize = _ITEMSIZE.get(dtype)
    if itemsize is not None and end - start != math.prod(shape) * itemsize:
        raise corrupt(f"spans {end - start:,} bytes, but {dtype} of shape {tuple(shape)} needs {math.prod(shape) * itemsize:,}")
    return start, end, TensorEntry(dtype, tuple(shape), path, data_start + start)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_no_overlap(path: Path, spans: list[tuple[int, int, str]]) -> None:
    previous: tuple[int, int, str] | None = None
    for span in sorted(s for s in spans if s[1] > s[0]):  # empty tensors own no bytes
        if previous is not None and span[0] < previous[1]:
            raise ConversionError(
                f"corrupt safetensors file {path}: tensor {span[2]} (bytes {span[0]:,}-{span[1]:,}) overlaps "
                f"tensor {previous[2]} (bytes {previous[0]:,}-{previous[1]:,})"
            )
        previous = span


def read_model_headers(folder: Path) -> dict[str, TensorEntry]:
    """All tensors of a model folder: model.safetensors, or the shards listed in its index, or every shard."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConversionError(f"corrupt {index}: no weight_map object")
        files = sorted({folder / _shard_name(index, name, shard) for name, shard in weight_map.items()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"no safetensors weights in {folder} (expected model.safetensors)")
    entries: dict[str, TensorEntry] = {}
    for file in files:
        for name, entry in read_header(file).items():
            if name in entries:
                raise ConversionError(f"tensor {name} is stored twice, in {entries[name].file.name} and in {file.name}")
            entries[name] = entry
    return entries


def _shard_name(index: Path, tensor: str, shard: object) -> str:
    """A weight_map value, which must name a file inside the model folder."""
    if not isinstance(shard, str) or not shard.isprintable():
        raise ConversionError(f"corrupt {index}: the shard of {tensor} is not a file name")
    for pure in (PurePosixPath(shard), PureWindowsPath(shard)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            raise ConversionError(f"{index} maps {tensor} to {shard}, which is outside the model folder")
    return shard
