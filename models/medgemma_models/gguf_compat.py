"""Where this project leans on gguf-py's private methods, in one place.

Two hot spots override a private method of gguf-py: reading a header without parsing every
vocabulary item (`GGUFReader._get_field_parts`), and packing long arrays in bulk
(`GGUFWriter._pack_val`). `tests/models/test_library_contracts.py` checks their signatures
and results against the stock classes, so an upgrade that changes them fails loudly there.
"""

from __future__ import annotations

import struct
from typing import Any

import gguf
import numpy as np

# gguf-py releases these overrides were checked against: from 0.17 up to, not including, this one
# (the contract test fails on a newer one until it has been checked; pyproject pins the same bound).
TESTED_BELOW = (0, 20)


class HeaderReader(gguf.GGUFReader):
    """GGUFReader that steps over the items of array fields instead of parsing each one.

    A Gemma vocabulary is three arrays of 262,144 items; GGUFReader makes several numpy
    objects per item, which takes seconds. Only their lengths are needed for a model's facts,
    so an array field here keeps its item type and length (parts[1]) and no items.
    """

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list[int], list]:
        if raw_type != gguf.GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        itype = gguf.GGUFValueType(int(raw_itype[0]))
        offs = orig_offs + 12
        count = int(alen[0])
        if itype == gguf.GGUFValueType.STRING:
            view = memoryview(self.data)
            for _ in range(count):
                offs += 8 + struct.unpack_from("<Q", view, offs)[0]
        elif itype in self.gguf_scalar_to_np:
            offs += count * np.dtype(self.gguf_scalar_to_np[itype]).itemsize
        else:
            return super()._get_field_parts(orig_offs, raw_type)
        if offs > len(self.data):
            raise ValueError("an array runs past the end of the file")
        return offs - orig_offs, [raw_itype, alen], [], [gguf.GGUFValueType.ARRAY, itype]


_ARRAY_ITEMS = {gguf.GGUFValueType.FLOAT32: "<f4", gguf.GGUFValueType.INT32: "<i4", gguf.GGUFValueType.UINT32: "<u4"}
_DEDUCED = {float: gguf.GGUFValueType.FLOAT32, int: gguf.GGUFValueType.INT32, str: gguf.GGUFValueType.STRING,
            bytes: gguf.GGUFValueType.STRING}


class BulkArrayWriter(gguf.GGUFWriter):
    """GGUFWriter that packs long arrays (the 262,144-entry vocabulary) in bulk.

    gguf-py packs arrays item by item: 1.8 s for a Gemma vocabulary, of a 270M export's 5. The
    bytes are the same (tests compare); anything unusual goes to gguf-py's own packing.
    """

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        packed = None
        if vtype == gguf.GGUFValueType.ARRAY and self.endianess == gguf.GGUFEndian.LITTLE:
            packed = pack_array(val, sub_type)
        if packed is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (struct.pack("<I", vtype) if add_vtype else b"") + packed


def pack_array(val: Any, sub_type: gguf.GGUFValueType | None) -> bytes | None:
    """A long homogeneous array's bytes (item type, length, items), or None to let gguf-py pack it."""
    if not isinstance(val, list) or len(val) < 1024:
        return None
    kind = type(val[0])
    item = sub_type or _DEDUCED.get(kind)
    if item is None or not all(type(v) is kind for v in val):
        return None
    head = struct.pack("<IQ", item, len(val))
    if item == gguf.GGUFValueType.STRING and kind in (str, bytes):
        encoded = [v.encode("utf-8") for v in val] if kind is str else val
        return head + b"".join(struct.pack("<Q", len(v)) + v for v in encoded)
    if item in _ARRAY_ITEMS and kind in (int, float):
        return head + np.asarray(val, dtype=_ARRAY_ITEMS[item]).tobytes()
    return None
