"""Steps and settings shared by the window tests (their fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgemma_desktop.library import model_key
from medgemma_desktop.ui.main_window import MainWindow

LOAD_TIMEOUT_MS = 120_000
ANSWER_TIMEOUT_MS = 180_000

# Short greedy answers keep the real-model tests quick and repeatable.
FAST_SETTINGS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 16, "n_ctx": 2048}


def load_model(qtbot: Any, window: MainWindow, model: Path | None, settings: dict[str, Any] | None = None) -> None:
    """Load `model` with `settings` remembered for it beforehand, as a user's earlier session would."""
    if settings is not None:
        key = model_key(model)
        window.history.set_model_settings(key, {**(window.history.model_settings(key) or {}), **settings})
    with qtbot.waitSignal(window.model_loaded, timeout=LOAD_TIMEOUT_MS):
        assert window.models.choose_model(model)


def send(qtbot: Any, window: MainWindow, text: str) -> None:
    """Type a message, send it and wait for the whole answer."""
    window.composer.set_text(text)
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        assert window.send()
