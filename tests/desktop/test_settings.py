"""Settings as History stores them: defaults from the preset, stored values checked, bad ones replaced."""

from __future__ import annotations

import math

import pytest

from medgemma_desktop.settings import (
    GPU_LAYERS,
    LIMITS,
    ChatSettings,
    SamplingParams,
    LoadParams,
    LoadSettings,
    stored_settings,
)
from medgemma_models.catalog import DEFAULT_PRESET, get_preset


def test_nothing_stored_gives_the_default_presets_defaults() -> None:
    chat = ChatSettings.from_dict({})
    preset = get_preset(DEFAULT_PRESET)
    assert chat.preset == DEFAULT_PRESET
    assert chat.system == (preset.system or "")
    assert chat.temperature == preset.defaults["temperature"] and chat.max_tokens == preset.defaults["max_tokens"]
    assert (chat.think, chat.show_reasoning, chat.send_reasoning_back) == (True, True, False)
    assert LoadSettings.from_dict({}) == LoadSettings(n_ctx=4096, threads=0, gpu="auto", gpu_layers=0)


def test_a_preset_brings_its_own_sampling_and_keeps_the_reasoning_switches() -> None:
    chat = ChatSettings.from_dict({"preset": "gemma-chat", "top_k": 7, "think": False})
    cot = chat.with_preset("medical-cot-270m")
    assert cot.preset == "medical-cot-270m"
    assert cot.temperature == get_preset("medical-cot-270m").defaults["temperature"]
    assert cot.top_k == get_preset("medical-cot-270m").defaults["top_k"] != 7
    assert cot.think is False
    assert ChatSettings.defaults_for("medical-cot-270m").think is True


def test_stored_settings_round_trip_through_one_flat_object() -> None:
    chat = ChatSettings.from_dict({"preset": "medical-cot-270m", "system": "Be brief.", "top_k": 7, "temperature": 0.25,
                                   "show_reasoning": False})
    load = LoadSettings(n_ctx=2048, threads=3, gpu=GPU_LAYERS, gpu_layers=12)
    stored = stored_settings(chat, load)
    assert set(stored) == set(chat.to_dict()) | set(load.to_dict())
    assert ChatSettings.from_dict(stored) == chat and LoadSettings.from_dict(stored) == load


@pytest.mark.parametrize("key, bad", [
    ("temperature", "hot"), ("temperature", 7.5), ("temperature", math.nan), ("top_p", True), ("top_k", 2.5),
    ("top_k", -1), ("max_tokens", 0), ("max_tokens", None), ("repeat_penalty", [1.1]),
])
def test_a_bad_stored_sampling_value_takes_its_default(key: str, bad: object) -> None:
    defaults = ChatSettings.from_dict({"preset": "medical-cot-270m"})
    chat = ChatSettings.from_dict({"preset": "medical-cot-270m", "top_k": 9, key: bad})
    assert getattr(chat, key) == getattr(defaults, key)
    if key != "top_k":
        assert chat.top_k == 9  # the good values next to it are kept


def test_bad_stored_values_of_every_other_kind_take_their_defaults() -> None:
    chat = ChatSettings.from_dict({"preset": "no-such-preset", "system": 42, "think": "yes", "show_reasoning": 0})
    assert chat == ChatSettings.from_dict({})
    load = LoadSettings.from_dict({"n_ctx": 10**9, "threads": "four", "gpu": "quantum", "gpu_layers": -3})
    assert load == LoadSettings()
    assert ChatSettings.from_dict({"preset": ["gemma-chat"]}).preset == DEFAULT_PRESET


def test_limits_are_the_ones_the_defaults_live_in() -> None:
    for key, (low, high) in LIMITS.items():
        value = getattr(ChatSettings(), key, None)
        value = getattr(LoadSettings(), key) if value is None else value
        assert low <= value <= high, key


def test_what_the_engine_gets() -> None:
    chat = ChatSettings.from_dict({"preset": "medical-cot-270m", "system": "  ", "temperature": 0.0, "max_tokens": 16})
    assert chat.sampling_params(seed=5) == SamplingParams(temperature=0.0, top_p=chat.top_p, top_k=chat.top_k,
                                                         repeat_penalty=chat.repeat_penalty, max_tokens=16, seed=5)
    assert chat.system_prompt() is None
    assert chat.think_enabled and not chat.send_reasoning_back_enabled
    plain = ChatSettings.from_dict({"preset": "gemma-chat", "think": True, "show_reasoning": False,
                                    "send_reasoning_back": True})
    # A preset that does not reason never thinks or sends reasoning back, but shows a stray <think>.
    assert not plain.think_enabled and not plain.send_reasoning_back_enabled and plain.show_reasoning_enabled
    assert LoadSettings(n_ctx=1024, threads=0, gpu=GPU_LAYERS, gpu_layers=8).load_params() == LoadParams(1024, None, 8)
    assert LoadSettings(threads=2, gpu="cpu").load_params() == LoadParams(4096, 2, "cpu")
