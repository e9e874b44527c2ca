"""What a GGUF file holds, read from its header without loading the weights."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import ModelFileError

# Provenance keys this project writes into its exports and reads back.
PROVENANCE_BASE = "medgemma.base"
PROVENANCE_ADAPTERS = "medgemma.adapters"
PROVENANCE_PRESET = "medgemma.preset"
PROVENANCE_CONVERTER = "medgemma.converter"
PROVENANCE_KEYS = (PROVENANCE_BASE, PROVENANCE_ADAPTERS, PROVENANCE_PRESET, PROVENANCE_CONVERTER)

SUPPORTED_ARCHITECTURES = ("gemma3", "gemma2", "gemma")


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    file_size: int
    architecture: str
    name: str
    size_label: str | None
    parameter_count: int
    file_type: str
    bits_per_weight: float
    tensor_types: dict[str, int]
    context_length: int | None
    vocab_size: int | None
    block_count: int | None
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    chat_template: str | None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def is_gemma(self) -> bool:
        return self.architecture in SUPPORTED_ARCHITECTURES

    def summary(self) -> str:
        """One line for lists: name, architecture, quantization and real bits per weight."""
        params = human_count(self.parameter_count)
        return f"{self.name} · {self.architecture} · {params} · {self.file_type} ({self.bits_per_weight:.2f} bpw)"

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["path"] = str(self.path)
        data["has_chat_template"] = self.has_chat_template
        return data


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


class _HeaderReader(gguf.GGUFReader):
    """GGUFReader that steps over the items of array fields instead of parsing each one.

    A Gemma vocabulary is three arrays of 262,144 items; GGUFReader makes several numpy
    objects per item, which takes seconds. ModelInfo needs only their lengths, so an
    array field here keeps its item type and length (parts[1]) and no items.
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


def _array_length(reader: gguf.GGUFReader, key: str) -> int | None:
    f = reader.get_field(key)
    return int(f.parts[-1][0]) if f is not None and f.types and f.types[0] == gguf.GGUFValueType.ARRAY else None


def read_model_info(path: Path | str) -> ModelInfo:
    """Read a GGUF header; any file that is not a complete GGUF raises ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no such model file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path.name} is empty (0 bytes), not a GGUF model")
    with open(path, "rb") as head:
        magic = head.read(4)
    if magic != b"GGUF":
        raise ModelFileError(f"{path.name} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = _HeaderReader(path)
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError, KeyError, TypeError, struct.error) as exc:
        raise ModelFileError(f"{path.name} is a corrupt or truncated GGUF file ({exc})") from exc
    if not reader.tensors:
        raise ModelFileError(f"{path.name} holds no tensors")
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    if end > size:
        raise ModelFileError(f"{path.name} is truncated: its tensors need {end:,} bytes, the file has {size:,}")
    return _info_from_reader(path, size, reader)


def _info_from_reader(path: Path, size: int, reader: gguf.GGUFReader) -> ModelInfo:
    def value(key: str) -> Any:
        f = reader.get_field(key)
        if f is None or f.types[0] == gguf.GGUFValueType.ARRAY:
            return None
        return f.contents()

    arch = value(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch, str):
        raise ModelFileError(f"{path.name} has no general.architecture key")
    types: dict[str, int] = {}
    n_params = 0
    n_bits = 0
    for tensor in reader.tensors:
        name = gguf.GGMLQuantizationType(tensor.tensor_type).name
        types[name] = types.get(name, 0) + 1
        n_params += int(tensor.n_elements)
        n_bits += int(tensor.n_bytes) * 8
    vocab = value(gguf.Keys.LLM.VOCAB_SIZE.format(arch=arch))
    if vocab is None:
        vocab = _array_length(reader, gguf.Keys.Tokenizer.LIST)
    provenance = {}
    for key in PROVENANCE_KEYS:
        v = value(key)
        if v is not None:
            provenance[key.removeprefix("medgemma.")] = _maybe_json(v) if key == PROVENANCE_ADAPTERS else v
    return ModelInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=value(gguf.Keys.General.NAME) or path.stem,
        size_label=value(gguf.Keys.General.SIZE_LABEL),
        parameter_count=n_params,
        file_type=_file_type_name(value(gguf.Keys.General.FILE_TYPE), types),
        bits_per_weight=n_bits / n_params if n_params else 0.0,
        tensor_types=types,
        context_length=_int(value(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch))),
        vocab_size=_int(vocab),
        block_count=_int(value(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch))),
        bos_id=_int(value(gguf.Keys.Tokenizer.BOS_ID)),
        eos_id=_int(value(gguf.Keys.Tokenizer.EOS_ID)),
        eot_id=_int(value(gguf.Keys.Tokenizer.EOT_ID)),
        chat_template=value(gguf.Keys.Tokenizer.CHAT_TEMPLATE),
        provenance=provenance,
    )


def _file_type_name(code: Any, types: dict[str, int]) -> str:
    if code is not None and int(code) in gguf.LlamaFileType._value2member_map_:
        return gguf.LlamaFileType(int(code)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No general.file_type key: name the most common tensor type instead.
    return max(types, key=types.__getitem__)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, np.integer)) else None


def _maybe_json(v: str) -> Any:
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v
