"""Copies of a real GGUF with some header keys replaced, as a hostile or broken file would carry them.

The tensors are copied byte for byte; only the key/value section changes, so llama.cpp still
loads the copy. Values are written with their GGUF type: str -> STRING, bool -> BOOL,
int -> UINT32, float -> FLOAT32, list of str -> ARRAY of STRING, list of int -> ARRAY of INT32.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import gguf

from medgemma_models.gguf_compat import HeaderReader

_HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> bytes:
    types = gguf.GGUFValueType
    if isinstance(value, bool):
        return struct.pack("<I?", types.BOOL, value)
    if isinstance(value, int):
        return struct.pack("<II", types.UINT32, value)
    if isinstance(value, float):
        return struct.pack("<If", types.FLOAT32, value)
    if isinstance(value, str):
        return struct.pack("<I", types.STRING) + _string(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return struct.pack("<IIQ", types.ARRAY, types.STRING, len(value)) + b"".join(_string(v) for v in value)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return struct.pack("<IIQ", types.ARRAY, types.INT32, len(value)) + struct.pack(f"<{len(value)}i", *value)
    raise TypeError(f"no GGUF encoding for {value!r}")


def rewrite_keys(source: Path, target: Path, changes: dict[str, Any]) -> Path:
    """Copy `source` to `target` with the keys in `changes` set (added or replaced); None removes a key."""
    reader = HeaderReader(source)  # fast: array items are stepped over, their bytes copied below
    raw = reader.data
    fields = [f for name, f in reader.fields.items() if name not in _HEADER_FIELDS]
    infos_start = reader.tensors[0].field.offset
    ends = [f.offset for f in fields[1:]] + [infos_start]
    kept = [bytes(raw[f.offset:end]) for f, end in zip(fields, ends) if f.name not in changes]
    kept += [_string(name) + _value(value) for name, value in changes.items() if value is not None]
    last = reader.tensors[-1].field
    infos = bytes(raw[infos_start:last.offset + sum(int(p.nbytes) for p in last.parts)])
    alignment_field = reader.get_field(gguf.Keys.General.ALIGNMENT)
    alignment = int(alignment_field.parts[-1][0]) if alignment_field is not None else gguf.GGUF_DEFAULT_ALIGNMENT
    head = struct.pack("<IIQQ", gguf.GGUF_MAGIC, 3, len(reader.tensors), len(kept)) + b"".join(kept) + infos
    head += b"\0" * (-len(head) % alignment)
    with open(source, "rb") as src, open(target, "wb") as out:
        out.write(head)
        src.seek(reader.data_offset)
        shutil.copyfileobj(src, out, 16 << 20)
    return target
