"""The GPU load that fails and is retried on the CPU, run for real on the 270M model.

MEDGEMMA_FORCE_GPU_OFFLOAD=1 makes the engine take a GPU build's path on this build, with a
placement llama.cpp refuses without a GPU: the failure comes from llama.cpp itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from medgemma_desktop.engine import Engine
from medgemma_desktop.settings import LoadParams, SamplingParams
from medgemma_desktop.forced_offload import FORCE_OFFLOAD_ENV
from medgemma_models.catalog import get_preset
from medgemma_models.prompt import Turn

pytestmark = pytest.mark.skipif(bool(llama_cpp.llama_supports_gpu_offload()),
                                reason="on a GPU build the forced placement may simply work")


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORCE_OFFLOAD_ENV, "1")


def test_failed_gpu_load_is_retried_on_the_cpu(forced: None, gemma_270m: Path) -> None:
    engine = Engine()
    try:
        report = engine.load(gemma_270m, LoadParams(n_ctx=512, gpu="auto"))
        # The cause llama.cpp logged for this load: not its closing "failed to load model", not a
        # warning of an earlier load, not Python's exception text.
        assert report.fallback_reason is not None and "LLAMA_SPLIT_MODE_TENSOR needs >= 1 devices" in report.fallback_reason
        assert report.n_gpu_layers == 0 and report.n_layers == 18
        assert report.describe() == f"CPU (GPU failed: {report.fallback_reason}; retried on CPU)"
        # The CPU load is a working model.
        prompt = get_preset("gemma-chat").build_prompt([Turn("user", "Name one symptom of anaemia.")])
        assert "".join(engine.stream(prompt, SamplingParams(temperature=0.0, max_tokens=8))).strip()
    finally:
        engine.close()


def test_the_cpu_setting_skips_the_gpu_attempt(forced: None, gemma_270m: Path) -> None:
    engine = Engine()
    try:
        report = engine.load(gemma_270m, LoadParams(n_ctx=512, gpu="cpu"))
        assert report.fallback_reason is None and report.n_gpu_layers == 0
    finally:
        engine.close()


def test_without_the_switch_this_build_loads_on_the_cpu_directly(gemma_270m: Path) -> None:
    engine = Engine()
    try:
        report = engine.load(gemma_270m, LoadParams(n_ctx=512, gpu="auto"))
        assert report.fallback_reason is None
        assert report.describe() == "CPU (this build has no GPU offload)"
    finally:
        engine.close()


@pytest.mark.slow
def test_the_window_says_why_it_runs_on_the_cpu(forced: None, qtbot: Any, make_window) -> None:
    window = make_window(settings={"gpu": "auto", "n_ctx": 512})
    shown = window.status.shown_model()
    assert "GPU failed: " in shown and "retried on CPU" in shown
    assert "needs >= 1 devices" in shown
