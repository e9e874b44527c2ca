"""GGUF LoRA adapter files: what their headers say, and whether one fits a model (gguf only: no llama.cpp).

Read before llama.cpp sees an adapter, so a misfit is refused with one clear line, and by the
model list and the resolution path, which must not need a loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from medgemma_models.errors import ModelFileError
from medgemma_models.gguf_info import open_header
from medgemma_models.provenance import Provenance

_A, _B = ".lora_a", ".lora_b"
# ggml shapes ([n_in, rank] for lora_a, [rank, n_out] for lora_b) of one base tensor's pair.
Pair = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class AdapterFile:
    """What a GGUF LoRA adapter's header says: enough to check it against a model and to list it."""

    path: Path
    architecture: str
    name: str
    alpha: float
    provenance: Provenance
    pairs: dict[str, Pair]  # base tensor name -> (lora_a shape, lora_b shape), ggml order

    @property
    def base(self) -> str | None:
        """The base it was made for (medgemma.base), as the converter recorded it."""
        return self.provenance.base

    @property
    def preset(self) -> str | None:
        return self.provenance.preset


def _value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    if field is None or field.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    return field.contents()


def is_adapter(path: Path | str) -> bool:
    """True when `path` is a GGUF whose general.type is "adapter" (for routing an opened file)."""
    try:
        return _value(open_header(Path(path), "file"), gguf.Keys.General.TYPE) == "adapter"
    except ModelFileError:
        return False


def read_adapter(path: Path | str) -> AdapterFile:
    """Read a GGUF LoRA adapter's header; anything else raises ModelFileError naming the problem."""
    path = Path(path)
    reader = open_header(path, "adapter file")
    kind = _value(reader, gguf.Keys.General.TYPE)
    if kind != "adapter" or _value(reader, gguf.Keys.Adapter.TYPE) != "lora":
        raise ModelFileError(f"{path.name} is not a LoRA adapter (general.type is {kind or 'missing'}): open it as a model")
    architecture = _value(reader, gguf.Keys.General.ARCHITECTURE)
    if not isinstance(architecture, str):
        raise ModelFileError(f"{path.name} has no general.architecture key")
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > path.stat().st_size:
        raise ModelFileError(f"{path.name} is truncated: its tensors need {end:,} bytes, the file has {path.stat().st_size:,}")
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor in reader.tensors:
        for suffix in (_A, _B):
            if tensor.name.endswith(suffix):
                halves.setdefault(tensor.name[: -len(suffix)], {})[suffix] = tuple(int(d) for d in tensor.shape)
    pairs = {}
    for name, half in sorted(halves.items()):
        if len(half) != 2:
            raise ModelFileError(f"{path.name} has only one of lora_a/lora_b for {name}")
        pairs[name] = (half[_A], half[_B])
    if not pairs:
        raise ModelFileError(f"{path.name} holds no LoRA tensors")
    provenance = {key: _value(reader, key) for key in reader.fields if key.startswith("medgemma.")}
    return AdapterFile(
        path=path,
        architecture=architecture,
        name=_value(reader, gguf.Keys.General.NAME) or path.stem,
        alpha=float(_value(reader, gguf.Keys.Adapter.LORA_ALPHA) or 0.0),
        provenance=Provenance.from_dict(provenance),
        pairs=pairs,
    )


def check_fits(adapter: AdapterFile, model: Path | str) -> None:
    """Refuse, with ModelFileError, an adapter made for another architecture or other tensor shapes."""
    model = Path(model)
    reader = open_header(model, "model file")
    architecture = _value(reader, gguf.Keys.General.ARCHITECTURE)
    if architecture != adapter.architecture:
        raise ModelFileError(
            f"{adapter.path.name} is an adapter for {adapter.architecture} models, but {model.name} is {architecture}"
        )
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    for name, (a, b) in adapter.pairs.items():
        base = shapes.get(name)
        if base is None:
            raise ModelFileError(f"{adapter.path.name} changes {name}, which {model.name} does not have: made for another model")
        # llama.cpp's own check: W [n_in, n_out], lora_a [n_in, r], lora_b [r, n_out].
        if len(a) != 2 or len(b) != 2 or len(base) != 2 or a[0] != base[0] or b[1] != base[1] or a[1] != b[0]:
            raise ModelFileError(
                f"{adapter.path.name} does not fit {model.name}: {name} is {list(base)} there, "
                f"the adapter's lora_a {list(a)} x lora_b {list(b)} (made for another model size)"
            )
