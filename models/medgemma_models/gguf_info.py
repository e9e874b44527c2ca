"""What a GGUF file holds, read from its header without loading the weights."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from . import provenance as prov
from .errors import ModelFileError
from .gguf_compat import HeaderReader

# The one list of the architectures the converter writes and the app runs (llama.cpp names).
GEMMA_ARCHITECTURES = ("gemma3", "gemma2")
CLIP_ARCHITECTURE = "clip"  # llama.cpp's vision towers (mmproj files)
MAX_NAME_CHARS = 200  # a longer general.name is not a name: the file's stem is shown instead


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
    embedding_length: int | None = None  # a text model's embedding width
    # An mmproj's (architecture clip) facts: projector type, image and patch size, projection width...
    vision: dict[str, Any] = field(default_factory=dict)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def is_gemma(self) -> bool:
        return self.architecture in GEMMA_ARCHITECTURES

    def typed_provenance(self) -> prov.Provenance:
        """The provenance keys with their types checked (malformed values are left out)."""
        return prov.Provenance.from_dict(self.provenance)

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


def _array_length(reader: gguf.GGUFReader, key: str) -> int | None:
    f = reader.get_field(key)
    return int(f.parts[-1][0]) if f is not None and f.types and f.types[0] == gguf.GGUFValueType.ARRAY else None


def open_header(path: Path | str, what: str = "model file") -> HeaderReader:
    """A GGUF's header, read fast (array items skipped); anything that is not a GGUF raises ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no such {what}: {path}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path.name} is empty (0 bytes), not a GGUF {what}")
    with open(path, "rb") as head:
        magic = head.read(4)
    if magic != b"GGUF":
        raise ModelFileError(f"{path.name} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        return HeaderReader(path)
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError, KeyError, TypeError, struct.error) as exc:
        raise ModelFileError(f"{path.name} is a corrupt or truncated GGUF file ({exc})") from exc


def read_model_info(path: Path | str) -> ModelInfo:
    """Read a GGUF header; any file that is not a complete GGUF raises ModelFileError."""
    path = Path(path)
    reader = open_header(path)
    size = path.stat().st_size
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
    for key in prov.KEYS:
        v = value(key)
        if v is not None:
            provenance[prov.short_name(key)] = prov.decode_json(v) if key == prov.KEY_ADAPTERS else v
    return ModelInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=_name(value(gguf.Keys.General.NAME), path),
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
        embedding_length=_int(value(gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch))),
        vision=_vision_facts(value) if arch == CLIP_ARCHITECTURE else {},
    )


def _vision_facts(value: Any) -> dict[str, Any]:
    """What an mmproj says about its images, and the text model width it projects them to."""
    facts = {
        "type": value(gguf.Keys.General.TYPE),
        "projector_type": value(gguf.Keys.Clip.PROJECTOR_TYPE),
        "image_size": _int(value(gguf.Keys.ClipVision.IMAGE_SIZE)),
        "patch_size": _int(value(gguf.Keys.ClipVision.PATCH_SIZE)),
        "projection_dim": _int(value(gguf.Keys.ClipVision.PROJECTION_DIM)),
        "scale_factor": _int(value(gguf.Keys.ClipVision.Projector.SCALE_FACTOR)),
    }
    size, patch, scale = facts["image_size"], facts["patch_size"], facts["scale_factor"] or 4
    if facts["projector_type"] == "gemma3" and size and patch:
        facts["tokens_per_image"] = (size // patch // scale) ** 2
    return facts


def _file_type_name(code: Any, types: dict[str, int]) -> str:
    if code is not None and int(code) in gguf.LlamaFileType._value2member_map_:
        return gguf.LlamaFileType(int(code)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No general.file_type key: name the most common tensor type instead.
    return max(types, key=types.__getitem__)


def _name(value: Any, path: Path) -> str:
    """`general.name` when it is a usable one-line name, else the file's stem (a file can carry anything there)."""
    text = " ".join(value.split()) if isinstance(value, str) else ""
    return text if 0 < len(text) <= MAX_NAME_CHARS else path.stem


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, np.integer)) else None
