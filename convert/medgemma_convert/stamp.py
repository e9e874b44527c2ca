"""Editing a GGUF already written, without reading its tensors: added keys, a separate output matrix.

Figures known only after a file is written (verification, the imatrix used) become keys at the end
of its key-value section; a separate output matrix becomes one more tensor entry and a copy of the
embedding's bytes at the end. Everything else is copied as bytes: tensor offsets count from the
start of the (aligned) data section, so they stay valid however much the header grows. The header
is walked here directly: gguf-py's reader builds an object per vocabulary entry (seconds and
hundreds of MB for Gemma's 262,144 tokens).
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from medgemma_models.provenance import KEY_IMATRIX, KEY_VERIFICATION

__all__ = ["KEY_IMATRIX", "KEY_VERIFICATION", "add_string_keys", "add_output_matrix"]

_STRING, _ARRAY, _UINT32 = 8, 9, 4
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_COPY_BLOCK = 16 * 1024 * 1024


@dataclass(frozen=True)
class Layout:
    kv_end: int  # where the key-value section ends and the tensor entries begin
    infos_end: int
    data_offset: int
    alignment: int
    keys: frozenset[str]
    tensors: dict[str, tuple[int, int]]  # name -> (where its entry starts, where it ends)


def read_layout(path: Path) -> Layout:
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        n_tensors, n_kv = struct.unpack_from("<QQ", head, 8)
        reader = _Reader(f, 24)
        keys, alignment = set(), 32
        for _ in range(n_kv):
            key = reader.string()
            (vtype,) = reader.unpack("<I")
            keys.add(key)
            if key == "general.alignment" and vtype == _UINT32:
                (alignment,) = reader.unpack("<I")
            else:
                reader.skip_value(vtype)
        kv_end = reader.at
        tensors = {}
        for _ in range(n_tensors):
            start = reader.at
            name = reader.string()
            (n_dims,) = reader.unpack("<I")
            reader.skip(8 * n_dims + 4 + 8)
            tensors[name] = (start, reader.at)
    infos_end = reader.at
    return Layout(kv_end, infos_end, _aligned(infos_end, alignment), alignment, frozenset(keys), tensors)


class _Reader:
    def __init__(self, f, at: int) -> None:  # noqa: ANN001
        self.f, self.at = f, at

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        self.f.seek(self.at)
        self.at += size
        return struct.unpack(fmt, self.f.read(size))

    def skip(self, n: int) -> None:
        self.at += n

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        self.f.seek(self.at)
        self.at += length
        return self.f.read(length).decode("utf-8", "replace")

    def skip_value(self, vtype: int) -> None:
        if vtype == _STRING:
            (length,) = self.unpack("<Q")
            self.skip(length)
        elif vtype == _ARRAY:
            item, count = self.unpack("<IQ")
            if item in _SIZES:
                self.skip(_SIZES[item] * count)
            else:
                for _ in range(count):
                    self.skip_value(item)
        else:
            self.skip(_SIZES[vtype])


def _aligned(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def add_string_keys(path: Path, keys: dict[str, str]) -> None:
    """Add string `keys` to the GGUF at `path` (rewritten beside it, then renamed over it)."""
    if not keys:
        return
    layout = read_layout(path)
    added = {k: v for k, v in keys.items() if k not in layout.keys}
    entries = b"".join(_string(k) + struct.pack("<I", _STRING) + _string(v) for k, v in added.items())
    rewritten = path.with_name(path.name + ".stamp")
    try:
        with open(path, "rb") as src, open(rewritten, "wb") as out:
            header = src.read(layout.infos_end)
            (n_kv,) = struct.unpack_from("<Q", header, 16)
            out.write(header[:16] + struct.pack("<Q", n_kv + len(added)) + header[24 : layout.kv_end] + entries
                      + header[layout.kv_end :])
            out.write(b"\0" * (-out.tell() % layout.alignment))
            src.seek(layout.data_offset)
            shutil.copyfileobj(src, out, _COPY_BLOCK)
        os.replace(rewritten, path)
    finally:
        rewritten.unlink(missing_ok=True)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def add_output_matrix(source: Path, target: Path) -> None:
    """Copy the GGUF `source` to `target` with `output.weight`, a copy of `token_embd.weight`."""
    import gguf

    layout = read_layout(source)
    if "output.weight" in layout.tensors:
        shutil.copyfile(source, target)
        return
    with open(source, "rb") as src, open(target, "wb") as out:
        header = src.read(layout.infos_end)
        start, end = layout.tensors["token_embd.weight"]
        entry = header[start:end]
        name_length = struct.unpack_from("<Q", entry)[0]
        n_dims = struct.unpack_from("<I", entry, 8 + name_length)[0]
        dims = struct.unpack_from(f"<{n_dims}Q", entry, 12 + name_length)
        (type_id, offset) = struct.unpack_from("<IQ", entry, 12 + name_length + 8 * n_dims)
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        n_bytes = int(_product(dims)) // block * type_size
        data_size = os.path.getsize(source) - layout.data_offset
        new_offset = _aligned(data_size, layout.alignment)
        # The new entry: its name, the embedding's dimensions and type, and the data at the end.
        new_entry = _string("output.weight") + entry[8 + name_length : -8] + struct.pack("<Q", new_offset)
        (n_tensors,) = struct.unpack_from("<Q", header, 8)
        out.write(header[:8] + struct.pack("<Q", n_tensors + 1) + header[16:] + new_entry)
        out.write(b"\0" * (-out.tell() % layout.alignment))
        src.seek(layout.data_offset)
        shutil.copyfileobj(src, out, _COPY_BLOCK)
        out.write(b"\0" * (new_offset - data_size))
        src.seek(layout.data_offset + offset)
        remaining = n_bytes
        while remaining:
            block_bytes = src.read(min(remaining, _COPY_BLOCK))
            out.write(block_bytes)
            remaining -= len(block_bytes)


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for v in values:
        result *= v
    return result
