"""The window with GGUF LoRA adapters on the real Gemma-3-270M: Open GGUF… with an adapter, refusals, and the
demo reasoning model answering with Think on and off (real engine, no script)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from medgemma_desktop.adapter_files import AdapterFile
from medgemma_desktop.engine import Engine
from medgemma_desktop.generation import AdapterUse
from medgemma_desktop.library import DEMO_TITLE, model_key
from medgemma_desktop.settings import SamplingParams
from medgemma_desktop.ui.dialogs.messages import NoticeDialog
from medgemma_desktop.ui.main_window import MainWindow
from medgemma_models.prompt import Prompt
from medgemma_models.store import demo_adapter
from tests.support.adapter_files import write_adapter_set
from tests.support.window_steps import FAST_SETTINGS, LOAD_TIMEOUT_MS, send


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_adapter_set(tmp_path_factory.mktemp("window-adapters"))


class RecordingEngine(Engine):
    """The real engine; it also keeps every prompt it was given, for the tests to read."""

    prompts: list[str] = []

    def stream(self, prompt: Prompt | Sequence[int], settings: SamplingParams = SamplingParams(),
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
        tokens = self.tokenize(prompt) if isinstance(prompt, Prompt) else list(prompt)
        assert self.llm is not None
        RecordingEngine.prompts.append(self.llm.detokenize(tokens, special=True).decode("utf-8", "replace"))
        return super().stream(prompt, settings, should_stop)


def load_combination(qtbot: Any, window: MainWindow, base: Path | None, adapters: tuple[AdapterUse, ...],
                     settings: dict[str, Any]) -> None:
    window.history.set_model_settings(model_key(base, adapters), settings)
    with qtbot.waitSignal(window.model_loaded, timeout=LOAD_TIMEOUT_MS):
        assert window.models.choose_model(base, adapters)


def test_open_gguf_puts_an_adapter_on_the_base_it_fits(qtbot, make_window, adapters: dict[str, Path]) -> None:
    window = make_window(settings=FAST_SETTINGS)
    with qtbot.waitSignal(window.model_loaded, timeout=LOAD_TIMEOUT_MS):
        assert window.models.open_model_file(adapters["cot"])  # its base: the embedded model, found in the store
    current = window.library.current
    assert current.embedded and current.adapters == (AdapterUse(adapters["cot"], 1.0),)
    assert current.title == "Gemma 3 270m + test cot" and window.model_bar.selected_key() == current.key
    assert window.model_bar.shown_title().endswith("+ test cot")
    assert window.settings_panel.chat_settings().preset == "medical-cot-270m"  # from the adapter's provenance
    assert window.settings_panel.think_available()
    assert "+ test cot" in window.status.shown_model()
    window.settings_panel.max_tokens.setValue(8)
    send(qtbot, window, "What causes anemia?")
    assert window.errors == [] and window.chat_view.cards()[-1].meta.text()
    # The chat names the exact files that answered: the base and each adapter, hashed.
    record = window.history.messages(window.session.chat_id)[-1].meta["model"]
    assert record["name"] == "Gemma 3 270m + test cot" and record["sha256"] == current.sha256
    assert [(a["file"], a["scale"], len(a["sha256"])) for a in record["adapters"]] == [(str(adapters["cot"]), 1.0, 64)]


@pytest.mark.parametrize(("adapter", "message"), [
    ("1b", r"wide.gguf does not fit gemma-3-270m.*blk.0.attn_q.weight is \[640, 1024\] there"),
    ("gemma2", "g2.gguf is an adapter for gemma2 models, but gemma-3-270m"),
    ("llama", "llama.gguf is an adapter for llama models; MedGemma Edge runs Gemma 2 and Gemma 3 models."),
])
def test_an_adapter_for_another_model_is_refused_and_the_model_stays(
        qtbot, make_window, adapters: dict[str, Path], gemma_270m: Path, monkeypatch: pytest.MonkeyPatch,
        adapter: str, message: str) -> None:
    window = make_window(settings=FAST_SETTINGS)
    before = window.library.current
    asked: list[str] = []

    def pick_the_270m(adapter: AdapterFile) -> Path:
        asked.append(adapter.path.name)  # no known file fits: the user is asked for the base and picks the 270M
        return gemma_270m

    monkeypatch.setattr(window.models, "ask_base", pick_the_270m)
    assert not window.models.open_model_file(adapters[adapter], base=gemma_270m if adapter == "1b" else None)
    assert len(window.errors) == 1 and window.errors[0][0] == "Cannot open this model"
    assert re.search(message, window.errors[0][1]) and "\n" not in window.errors[0][1]
    assert asked == (["g2.gguf"] if adapter == "gemma2" else [])
    assert not window.library.loading and window.library.current is before
    assert window.model_bar.selected_key() == before.key


needs_demo = pytest.mark.skipif(demo_adapter() is None, reason="the demo reasoning adapter has not been trained into "
                                "models/medgemma_models/data/demo-reasoning-adapter.gguf yet")


@needs_demo
def test_the_demo_model_reasons_with_think_on_only_and_reasoning_stays_out_of_the_next_prompt(
        qtbot, make_window) -> None:
    RecordingEngine.prompts.clear()
    window = make_window(RecordingEngine, load=False)
    demo = window.library.demo_entry()
    assert demo is not None and window.library.start_choice() == (None, demo.adapters)
    load_combination(qtbot, window, None, demo.adapters, {"preset": "medical-cot-270m", "temperature": 0.0,
                                                          "max_tokens": 512, "n_ctx": 4096})
    panel = window.settings_panel
    assert window.library.current.title == DEMO_TITLE and window.model_bar.shown_title() == DEMO_TITLE
    assert panel.think.isChecked() and not panel.send_reasoning.isChecked()

    send(qtbot, window, "What is the first-line treatment for uncomplicated hypertension?")
    first = window.chat_view.cards()[-1]
    reasoning = first.reasoning_text()
    assert reasoning.strip() and first.answer().strip(), "Think on: a reasoning block, then an answer"
    assert first.reasoning.isVisibleTo(first)

    panel.think.setChecked(False)
    send(qtbot, window, "Which vitamin deficiency causes scurvy?")
    second = window.chat_view.cards()[-1]
    assert second.reasoning_text() == "" and not second.reasoning.isVisibleTo(second) and second.answer().strip()
    # Send reasoning back off: the first answer is in the second prompt, its reasoning is not.
    assert first.answer().strip()[:40] in RecordingEngine.prompts[-1]
    assert reasoning.strip()[:60] not in RecordingEngine.prompts[-1]

    panel.send_reasoning.setChecked(True)  # the same question again, now sending the reasoning back
    with qtbot.waitSignal(window.answer_finished, timeout=180_000):
        window.regenerate(window.session.history.messages(window.session.chat_id)[-1].id)
    assert reasoning.strip()[:60] in RecordingEngine.prompts[-1]


@needs_demo
def test_a_first_start_opens_the_demo_reasoning_model(qtbot) -> None:
    """What `make run` opens on a new machine: the demo combination with its preset; the plain base is listed."""
    from medgemma_desktop.app import run_app

    seen: dict[str, object] = {}

    def look_and_quit() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        window = windows[0] if windows else None
        if window is not None and (window.library.current is not None or window.errors):
            current = window.library.current
            seen.update(title=current.title if current else window.errors, picked=window.model_bar.shown_title(),
                        preset=window.settings_panel.chat_settings().preset, think=window.settings_panel.think_available(),
                        listed=[e.title for e in window.library.entries()][:2])
            QApplication.exit(0)  # at once: a posted Quit would outlive this test
        else:
            QTimer.singleShot(100, look_and_quit)

    QTimer.singleShot(100, look_and_quit)
    assert run_app() == 0
    for window in QApplication.topLevelWidgets():
        if isinstance(window, (MainWindow, NoticeDialog)):
            window.close()
    assert seen == {"title": DEMO_TITLE, "picked": DEMO_TITLE, "preset": "medical-cot-270m", "think": True,
                    "listed": [DEMO_TITLE, "Gemma 3 270M · Q4_K_M (embedded)"]}
