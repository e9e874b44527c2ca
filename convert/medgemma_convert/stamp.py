"""Adding metadata to a GGUF already written: figures known only afterwards (verification, imatrix).

The new keys go at the end of the key-value section; the tensor entries and the tensor data are
copied as bytes. Tensor offsets count from the start of the (aligned) data section, so they stay
valid however much the header grows.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from medgemma_models.provenance import KEY_IMATRIX, KEY_VERIFICATION

__all__ = ["KEY_IMATRIX", "KEY_VERIFICATION", "add_string_keys"]

_GGUF_STRING = 8  # GGUFValueType.STRING
_COPY_BLOCK = 16 * 1024 * 1024


def add_string_keys(path: Path, keys: dict[str, str]) -> None:
    """Add string `keys` to the GGUF at `path` (rewritten beside it, then renamed over it)."""
    import gguf

    if not keys:
        return
    reader = gguf.GGUFReader(path)
    present = set(reader.fields)
    added = b"".join(_string_kv(k, v) for k, v in keys.items() if k not in present)
    n_added = sum(1 for k in keys if k not in present)
    fields = [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    kv_end = max(f.offset + sum(int(p.nbytes) for p in f.parts) for f in fields) if fields else 24
    data_offset, alignment = reader.data_offset, reader.alignment
    del reader  # its memory map must be closed before the file is replaced (Windows)
    rewritten = path.with_name(path.name + ".stamp")
    try:
        with open(path, "rb") as src, open(rewritten, "wb") as out:
            header = src.read(data_offset)
            (n_kv,) = struct.unpack_from("<Q", header, 16)
            infos_end = _infos_end(header, kv_end)
            out.write(header[:16] + struct.pack("<Q", n_kv + n_added) + header[24:kv_end] + added + header[kv_end:infos_end])
            out.write(b"\0" * (-out.tell() % alignment))
            shutil.copyfileobj(src, out, _COPY_BLOCK)
        os.replace(rewritten, path)
    finally:
        rewritten.unlink(missing_ok=True)


def _string_kv(key: str, value: str) -> bytes:
    k, v = key.encode("utf-8"), value.encode("utf-8")
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _GGUF_STRING) + struct.pack("<Q", len(v)) + v


def _infos_end(header: bytes, kv_end: int) -> int:
    """Where the tensor entries end: walk them (name, dimensions, type, offset) from `kv_end`."""
    (n_tensors,) = struct.unpack_from("<Q", header, 8)
    at = kv_end
    for _ in range(n_tensors):
        (name_length,) = struct.unpack_from("<Q", header, at)
        at += 8 + name_length
        (n_dims,) = struct.unpack_from("<I", header, at)
        at += 4 + 8 * n_dims + 4 + 8
    return at
