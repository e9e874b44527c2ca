"""A model's working settings: one home for their defaults, limits and stored form.

Two kinds, named so: *settings* are what the user chose and History keeps (`ChatSettings` shape the
prompt and the answer, `LoadSettings` the model load); *params* are what the engine takes for one
answer or one load (`SamplingParams`, `LoadParams`), made from the settings. History stores the
settings as one flat JSON object per model file (`to_dict`); reading it back (`from_dict`) checks
every value, and one that is missing, of the wrong type or out of range takes its default
instead of failing: a settings row written by another version never stops the app.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medgemma_models.catalog import DEFAULT_PRESET, Preset, get_preset, presets

GpuSetting = str | int  # "auto", "cpu" or a number of layers
GPU_AUTO, GPU_CPU, GPU_LAYERS = "auto", "cpu", "layers"
GPU_MODES = (GPU_AUTO, GPU_CPU, GPU_LAYERS)

# Allowed ranges of the numeric settings; the settings panel's controls use the same.
LIMITS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "top_k": (0, 1000),
    "repeat_penalty": (0.8, 2.0),
    "max_tokens": (1, 32768),
    "n_ctx": (256, 131072),
    "threads": (0, 256),
    "gpu_layers": (0, 999),
}


@dataclass(frozen=True)
class SamplingParams:
    """Sampling of one answer, as the engine takes it."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 64
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()  # strings that end the answer (not shown), as OpenAI's `stop`


@dataclass(frozen=True)
class LoadParams:
    """A model load, as the engine takes it."""

    n_ctx: int = 4096
    n_threads: int | None = None  # None: llama-cpp-python's default
    gpu: GpuSetting = GPU_AUTO


_SAMPLING = SamplingParams()
SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": _SAMPLING.temperature, "top_p": _SAMPLING.top_p, "top_k": _SAMPLING.top_k,
    "repeat_penalty": _SAMPLING.repeat_penalty, "max_tokens": _SAMPLING.max_tokens,
}


@dataclass(frozen=True)
class ChatSettings:
    """Preset, system text, sampling and the three reasoning switches."""

    preset: str = DEFAULT_PRESET
    system: str = ""
    temperature: float = _SAMPLING.temperature
    top_p: float = _SAMPLING.top_p
    top_k: int = _SAMPLING.top_k
    repeat_penalty: float = _SAMPLING.repeat_penalty
    max_tokens: int = _SAMPLING.max_tokens
    think: bool = True
    show_reasoning: bool = True
    send_reasoning_back: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ChatSettings:
        """Stored values over the preset's defaults; a bad value takes its default."""
        name = values.get("preset")
        preset = get_preset(name if isinstance(name, str) and name in presets() else DEFAULT_PRESET)
        defaults = {**SAMPLING_DEFAULTS, **preset.defaults}
        system = values.get("system")
        return cls(
            preset=preset.name,
            system=system if isinstance(system, str) and system else (preset.system or ""),
            temperature=_number(values, "temperature", float(defaults["temperature"]), float),
            top_p=_number(values, "top_p", float(defaults["top_p"]), float),
            top_k=_number(values, "top_k", int(defaults["top_k"]), int),
            repeat_penalty=_number(values, "repeat_penalty", float(defaults["repeat_penalty"]), float),
            max_tokens=_number(values, "max_tokens", int(defaults["max_tokens"]), int),
            think=_flag(values, "think", True),
            show_reasoning=_flag(values, "show_reasoning", True),
            send_reasoning_back=_flag(values, "send_reasoning_back", False),
        )

    @classmethod
    def defaults_for(cls, preset: str) -> ChatSettings:
        """A preset's own defaults: its system text and sampling."""
        return cls.from_dict({"preset": preset})

    def with_preset(self, preset: str) -> ChatSettings:
        """Another preset brings its own prompt and sampling; the reasoning switches stay."""
        return ChatSettings.from_dict({"preset": preset, "think": self.think, "show_reasoning": self.show_reasoning,
                                       "send_reasoning_back": self.send_reasoning_back})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def preset_spec(self) -> Preset:
        return get_preset(self.preset)

    @property
    def reasoning_available(self) -> bool:
        return self.preset_spec.reasoning

    @property
    def think_enabled(self) -> bool:
        return self.reasoning_available and self.think

    @property
    def show_reasoning_enabled(self) -> bool:
        # A preset that does not reason can still emit <think>; show it rather than lose text.
        return self.show_reasoning or not self.reasoning_available

    @property
    def send_reasoning_back_enabled(self) -> bool:
        return self.reasoning_available and self.send_reasoning_back

    def system_prompt(self) -> str | None:
        return self.system.strip() or None

    def sampling_params(self, seed: int | None = None) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                  repeat_penalty=self.repeat_penalty, max_tokens=self.max_tokens, seed=seed)


_LOADING = LoadParams()


@dataclass(frozen=True)
class LoadSettings:
    """Context size, CPU threads and GPU offload: applied by loading the model again."""

    n_ctx: int = _LOADING.n_ctx
    threads: int = 0  # 0: automatic
    gpu: str = GPU_AUTO  # one of GPU_MODES
    gpu_layers: int = 0  # with GPU_LAYERS

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoadSettings:
        gpu = values.get("gpu")
        return cls(
            n_ctx=_number(values, "n_ctx", cls.n_ctx, int),
            threads=_number(values, "threads", cls.threads, int),
            gpu=gpu if gpu in GPU_MODES else GPU_AUTO,
            gpu_layers=_number(values, "gpu_layers", cls.gpu_layers, int),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_params(self) -> LoadParams:
        gpu: GpuSetting = self.gpu_layers if self.gpu == GPU_LAYERS else self.gpu
        return LoadParams(n_ctx=self.n_ctx, n_threads=self.threads or None, gpu=gpu)


def stored_settings(chat: ChatSettings, load: LoadSettings) -> dict[str, Any]:
    """Both, as the one flat object History keeps for a model and a chat."""
    return {**chat.to_dict(), **load.to_dict()}


def _number(values: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    if kind is int and value != int(value):
        return default
    low, high = LIMITS[key]
    return kind(value) if low <= value <= high else default


def _flag(values: Mapping[str, Any], key: str, default: bool) -> bool:
    value = values.get(key)
    return value if isinstance(value, bool) else default
