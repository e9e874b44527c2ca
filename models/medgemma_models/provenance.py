"""Provenance: the GGUF keys this project writes into its exports, and their typed reading.

The converter writes them (`medgemma_convert.gguf_export`) and the app reads them back (which
preset a file was made for, which base an adapter belongs to). A file can carry anything under
these keys, so reading checks every type and keeps only what is well-formed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "medgemma."
KEY_BASE = "medgemma.base"
KEY_ADAPTERS = "medgemma.adapters"  # a JSON list of objects, one per adapter
KEY_PRESET = "medgemma.preset"
KEY_CONVERTER = "medgemma.converter"
# Added once a file is written (JSON objects): the importance matrix its quantization used
# (source, datasets, sha256, tokens, chunks) and its verification figures (VerifyFigures).
KEY_IMATRIX = "medgemma.imatrix"
KEY_VERIFICATION = "medgemma.verification"
# An mmproj's text model: its embedding width (the pair check compares it with the text GGUF's).
KEY_TEXT_EMBEDDING = "medgemma.text_embedding_length"
MAX_TEXT_CHARS = 4096
KEYS = (KEY_BASE, KEY_ADAPTERS, KEY_PRESET, KEY_CONVERTER, KEY_IMATRIX, KEY_VERIFICATION, KEY_TEXT_EMBEDDING)


def short_name(key: str) -> str:
    """`medgemma.base` -> `base`: the name under which `ModelInfo.provenance` keeps a key."""
    return key.removeprefix(PREFIX)


@dataclass(frozen=True)
class AdapterRecord:
    """One adapter merged into (or stored beside) a model: its id, weights hash and scale."""

    id: str
    sha256: str | None = None
    scale: float = 1.0
    base: str | None = None  # the base it was trained on, when the adapter says so

    @classmethod
    def from_dict(cls, data: Any) -> AdapterRecord | None:
        """The record in `data`, or None when `data` is not an object with a string id."""
        if not isinstance(data, Mapping) or _text(data.get("id")) is None:
            return None
        return cls(
            id=data["id"],
            sha256=_text(data.get("sha256")),
            scale=_scale(data.get("scale", 1.0)),
            base=_text(data.get("base")),
        )


@dataclass(frozen=True)
class VerificationRecord:
    """An export's check against transformers, as `medgemma.verification` records it."""

    mode: str  # "quick" (the default) or "full" (--verify)
    tokens: int  # positions compared
    mean_kld: float  # nats
    top1: float  # fraction of positions with the same most likely token

    @classmethod
    def from_value(cls, value: Any) -> VerificationRecord | None:
        """The record in `value` (a JSON object, or its text), or None when it is not a well-formed one."""
        data = decode_json(value) if isinstance(value, str) else value
        if not isinstance(data, Mapping):
            return None
        tokens, kld, top1 = data.get("tokens"), _number(data.get("mean_kld")), _number(data.get("top1"))
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0 or kld is None or top1 is None \
                or not 0 <= top1 <= 1:
            return None
        mode = data.get("mode") if data.get("mode") in ("quick", "full") else "full"
        return cls(mode, tokens, max(kld, 0.0), top1)  # a KLD of identical outputs can round below zero

    def describe(self) -> str:
        return f"verified ({self.mode}, {self.tokens} tokens): KLD {self.mean_kld:.2g}, top-1 {self.top1:.1%}"


@dataclass(frozen=True)
class Provenance:
    """What a GGUF says about where it came from; every field is None/empty when absent or malformed."""

    base: str | None = None
    adapters: tuple[AdapterRecord, ...] = ()
    preset: str | None = None
    converter: str | None = None
    verification: VerificationRecord | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        """From `ModelInfo.provenance` (short names) or raw GGUF fields (full key names)."""

        def get(key: str) -> Any:
            return data.get(short_name(key), data.get(key))

        adapters = get(KEY_ADAPTERS)
        if isinstance(adapters, str):
            adapters = decode_json(adapters)
        records = [AdapterRecord.from_dict(a) for a in adapters] if isinstance(adapters, list) else []
        return cls(
            base=_text(get(KEY_BASE)),
            adapters=tuple(r for r in records if r is not None),
            preset=_text(get(KEY_PRESET)),
            converter=_text(get(KEY_CONVERTER)),
            verification=VerificationRecord.from_value(get(KEY_VERIFICATION)),
        )

    @property
    def adapter_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.adapters)


def decode_json(value: str) -> Any:
    """The JSON value of a string key, or the string itself when it is not JSON."""
    try:
        return json.loads(value)
    except (TypeError, ValueError, RecursionError):  # RecursionError: deeply nested brackets
        return value


def _number(value: Any) -> float | None:
    """A finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _scale(value: Any) -> float:
    """A finite number, else 1 (JSON allows 1e999 and integers too big for a float)."""
    number = _number(value)
    return 1.0 if number is None else number


def _text(value: Any) -> str | None:
    # Ids, paths and names only: a longer value is malformed (a path that long fails every file call).
    return value if isinstance(value, str) and 0 < len(value) <= MAX_TEXT_CHARS and "\0" not in value else None
