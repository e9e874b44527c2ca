"""The values History reads and writes: a chat as listed, a message, the model a chat used."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medgemma_models.gguf_info import ModelInfo

ROLES = ("user", "model")


@dataclass(frozen=True)
class ChatSummary:
    """A chat as the sidebar lists it; `model_name` is the model it last used."""

    id: int
    title: str
    created_at: float
    updated_at: float
    model_name: str | None


@dataclass(frozen=True)
class Message:
    """One turn. `text` is the answer only; the model's reasoning is kept apart in `reasoning`.

    `complete` is False while an answer streams and when it was stopped or cut off by a crash.
    `meta` holds what produced it: model (name, file, sha256, quantization), settings, stats.
    """

    id: int
    chat_id: int
    role: str
    text: str
    reasoning: str
    created_at: float
    updated_at: float
    complete: bool
    meta: dict

    @property
    def image_ids(self) -> tuple[str, ...]:
        """The sha256 of each image of the message (`meta["images"]`, written by `images.parts`)."""
        images = self.meta.get("images")
        if not isinstance(images, list):
            return ()
        return tuple(i["sha256"] for i in images if isinstance(i, dict) and isinstance(i.get("sha256"), str))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class ModelRecord:
    """The model a chat used, stored with the chat and with each answer, and shown in exports.

    `from_dict` reads what a database holds: a value of the wrong type (an older version's, or
    a damaged one) reads as not recorded, it does not stop the chat from opening or exporting.
    """

    name: str | None = None
    file: str | None = None
    sha256: str | None = None
    architecture: str | None = None
    size_label: str | None = None
    quantization: str | None = None
    bits_per_weight: float | None = None
    context_length: int | None = None
    adapters: tuple[dict[str, Any], ...] = ()  # name, file, scale, sha256 of each adapter applied

    @classmethod
    def of(cls, info: ModelInfo, sha256: str | None = None, title: str | None = None,
           adapters: Sequence[dict[str, Any]] = ()) -> ModelRecord:
        """The record of a loaded model; `title` names a base with adapters (the file's own name otherwise)."""
        return cls(
            name=(title if adapters else None) or info.name or info.path.stem,
            file=str(info.path),
            sha256=sha256,
            architecture=info.architecture,
            size_label=info.size_label,
            quantization=info.file_type,
            bits_per_weight=info.bits_per_weight,
            context_length=info.context_length,
            adapters=tuple(adapters),
        )

    @classmethod
    def from_dict(cls, data: Any) -> ModelRecord:
        if not isinstance(data, dict):
            return cls()
        adapters = data.get("adapters")
        return cls(
            name=_text(data.get("name")),
            file=_text(data.get("file")),
            sha256=_text(data.get("sha256")),
            architecture=_text(data.get("architecture")),
            size_label=_text(data.get("size_label")),
            quantization=_text(data.get("quantization")) or _text(data.get("file_type")),  # file_type: first version's key
            bits_per_weight=_number(data.get("bits_per_weight")),
            context_length=_count(data.get("context_length")),
            adapters=tuple(a for a in adapters if isinstance(a, dict)) if isinstance(adapters, list) else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form: {} for no model; `adapters` only when there are some."""
        if self == ModelRecord():
            return {}
        data = dataclasses.asdict(self)
        data["adapters"] = list(self.adapters)
        if not self.adapters:
            del data["adapters"]
        return data
