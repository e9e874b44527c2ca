"""Fixtures of the window tests: a history database and windows with a loaded model."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medgemma_desktop.engine import Engine
from medgemma_desktop.history import History
from medgemma_desktop.ui.main_window import NOTICE_SETTING, MainWindow
from tests.support.window_steps import load_model


@pytest.fixture(autouse=True)
def free_qt_garbage_here(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each Qt test (and pytest-qt's closing of its widgets): Qt objects the test left in
    reference cycles are freed on this, the GUI thread, not later by whichever thread next
    crosses the collector's threshold (a writer thread in a history test, a converter's worker).
    Only after tests with Qt: a full collection costs ~0.2 s with torch loaded."""
    yield
    if "qtbot" in request.fixturenames:
        gc.collect()


@pytest.fixture
def history(medgemma_home: Path) -> Iterator[History]:
    db = History()
    db.set_setting(NOTICE_SETTING, True)
    yield db
    db.close()


WindowFactory = Callable[..., MainWindow]


@pytest.fixture
def make_window(qtbot: Any, history: History, gemma_270m: Path) -> Iterator[WindowFactory]:
    """Open a window on `history` with a loaded model; closes them all at the end."""
    windows: list[MainWindow] = []

    def make(engine_factory: Callable[[], Any] = Engine, model: Path | None = gemma_270m,
             settings: dict[str, Any] | None = None, db: History | None = None, load: bool = True) -> MainWindow:
        window = MainWindow(db or history, engine_factory)
        qtbot.addWidget(window)
        windows.append(window)
        window.show()
        if load:
            load_model(qtbot, window, model, settings)
        return window

    yield make
    for window in windows:
        window.shutdown()




@dataclass(frozen=True)
class VisionPair:
    """The tiny random multimodal Gemma 3 converted as users get MedGemma: a text GGUF and its mmproj beside it."""

    model: Path
    mmproj: Path


@pytest.fixture(scope="session")
def vision_pair(tmp_path_factory: pytest.TempPathFactory) -> VisionPair:
    """Built once a session (seconds): the converter's own tiny fixture, converted by the converter."""
    from medgemma_convert.cli import main as convert
    from tests.support.tiny import train_tokenizer
    from tests.support.tiny_vision import IMAGE_TOKENS, make_multimodal_model

    root = tmp_path_factory.mktemp("vision-pair")
    train_tokenizer(root / "tokenizer", IMAGE_TOKENS)
    base = make_multimodal_model(root / "gemma3-mm", root / "tokenizer", seed=40)
    out = root / "models" / "tiny-vision.gguf"
    out.parent.mkdir()
    assert convert(["--base", str(base), "--out", str(out), "--no-verify", "--progress", "none"]) == 0
    return VisionPair(out, out.with_name("mmproj-tiny-vision.gguf"))
