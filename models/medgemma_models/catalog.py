"""Known Gemma bases and the prompt presets of the medical adapters this project serves."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .errors import MedGemmaError
from .prompt import THINK_OFF_PREFIX, Prompt, Turn, format_chat, format_completion
from .provenance import Provenance

DEFAULT_PRESET = "gemma-chat"


@dataclass(frozen=True)
class BaseSpec:
    id: str
    arch: str
    instruction_tuned: bool
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    sliding_window: int
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    format: str  # "chat" or "completion"
    system: str | None
    user_template: str
    reasoning: bool
    think_instruction: str | None
    answer_first_line: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    adapter_ids: tuple[str, ...] = ()
    base_ids: tuple[str, ...] = ()
    completion_template: str | None = None

    def system_text(self, system: str | None = None, think: bool = True) -> str | None:
        """The user's system text (else the preset's), plus the reasoning instruction when thinking."""
        text = system if system is not None else self.system
        if self.reasoning and think and self.think_instruction:
            text = f"{text}\n{self.think_instruction}" if text else self.think_instruction
        return text or None

    def build_prompt(self, turns: Sequence[Turn], system: str | None = None, think: bool = True) -> Prompt:
        """The prompt for the next model turn after `turns` (which end with a user turn).

        A `Prompt`, whose `segments` tell the formatter's markers from the text.
        """
        if not turns or turns[-1].role != "user":
            raise ValueError("the last turn must be the user's")
        if self.format == "completion":
            # A completion adapter was trained on single cases: only the newest user text counts.
            assert self.completion_template is not None
            if any(t.images for t in turns):
                raise MedGemmaError(f"the preset {self.name!r} is a completion template for text: it has no place for images")
            return format_completion(self.completion_template, symptoms=turns[-1].text)
        wrapped = [Turn(t.role, self.user_template.format(text=t.text), t.images) if t.role == "user" else t
                   for t in turns]
        prefix = THINK_OFF_PREFIX if self.reasoning and not think else ""
        return format_chat(wrapped, system=self.system_text(system, think), generation_prefix=prefix)



@functools.cache
def _catalog() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("catalog.json").read_text(encoding="utf-8"))


@functools.cache
def presets() -> dict[str, Preset]:
    result = {}
    for p in _catalog()["presets"]:
        p = dict(p, adapter_ids=tuple(p["adapter_ids"]), base_ids=tuple(p["base_ids"]))
        result[p["name"]] = Preset(**p)
    return result


@functools.cache
def bases() -> dict[str, BaseSpec]:
    return {b["id"]: BaseSpec(**dict(b, aliases=tuple(b.get("aliases", ())))) for b in _catalog()["bases"]}


def get_preset(name: str) -> Preset:
    try:
        return presets()[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(presets())}") from None


def get_base(repo_id: str | None) -> BaseSpec | None:
    """The catalog entry for a hub id or one of its aliases (case-insensitive)."""
    if not repo_id:
        return None
    wanted = repo_id.strip().rstrip("/").lower()
    for spec in bases().values():
        if wanted == spec.id.lower() or wanted in (a.lower() for a in spec.aliases):
            return spec
    return None


def preset_for(adapter_ids: Sequence[str] = (), base_id: str | None = None) -> Preset | None:
    """The preset an adapter (first) or a base was trained for, if the catalog knows it."""
    lowered = [a.lower().rstrip("/") for a in adapter_ids]
    for preset in presets().values():
        if any(a.lower() in lowered for a in preset.adapter_ids):
            return preset
    spec = get_base(base_id)
    if spec is not None:
        for preset in presets().values():
            if spec.id in preset.base_ids:
                return preset
    return None


def choose_preset(
    adapter_ids: Sequence[str] = (),
    base_id: str | None = None,
    named: str | None = None,
    adapter_bases: Sequence[str] = (),
) -> Preset | None:
    """The preset for a model: the one `named` (when the catalog knows it), else the one its
    adapters or its base were trained for, else the one of the base its adapters name.

    The converter uses it to record a preset in an export, the app to pick one for a file.
    """
    if named is not None and named in presets():
        return presets()[named]
    found = preset_for(adapter_ids, base_id)
    for adapter_base in adapter_bases:
        found = found or preset_for((), adapter_base)
    return found


def preset_for_provenance(provenance: Provenance) -> str:
    """The preset name a GGUF's provenance points to, else plain chat."""
    found = choose_preset(provenance.adapter_ids, provenance.base, provenance.preset,
                          [a.base for a in provenance.adapters if a.base])
    return found.name if found is not None else DEFAULT_PRESET
