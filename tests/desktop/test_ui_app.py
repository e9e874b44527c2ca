"""Window parts around the chat: notice, error hook, sidebar, loading, shortcuts, Convert…, run_app."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QWidget

from medgemma_desktop.history import History
from medgemma_models.progress import ProgressEvent
from medgemma_models.report import ConversionReport, OutputRecord
from medgemma_desktop.ui.convert.convert_dialog import INSTALL_HINT, ConvertDialog
from medgemma_desktop.ui.dialogs.messages import ErrorDialog, NoticeDialog
from medgemma_desktop.ui.excepthook import ExceptionReporter
from medgemma_desktop.ui.main_window import NOTICE_SETTING, MainWindow
from tests.support.scripted_engine import ScriptedEngine
from tests.support.window_steps import ANSWER_TIMEOUT_MS, FAST_SETTINGS, LOAD_TIMEOUT_MS, send


def test_first_start_needs_the_medical_notice_acknowledged(qtbot, history: History) -> None:
    history.set_setting(NOTICE_SETTING, False)
    window = MainWindow(history, ScriptedEngine)
    qtbot.addWidget(window)
    window.show()
    assert not window.composer.isEnabled()
    assert "Not for clinical use" in window.composer.shown_notice()
    dialog = window.show_notice_if_needed()
    assert isinstance(dialog, NoticeDialog) and dialog.isVisible()
    assert not dialog.ok_button.isEnabled()
    dialog.reject()  # Escape is not an acknowledgement
    assert dialog.isVisible() and not window.composer.isEnabled()
    dialog.understood.setChecked(True)
    qtbot.mouseClick(dialog.ok_button, Qt.MouseButton.LeftButton)
    assert history.get_setting(NOTICE_SETTING) is True
    assert window.composer.isEnabled()
    assert window.show_notice_if_needed() is None  # once acknowledged, never again
    window.shutdown()


def test_uncaught_exception_shows_copyable_details_and_keeps_the_chat(qtbot, make_window, history: History) -> None:
    window = make_window(ScriptedEngine)
    send(qtbot, window, "Fever?")
    reporter = ExceptionReporter(window)
    reporter.install()
    try:
        try:
            raise RuntimeError("something odd happened")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        qtbot.waitUntil(lambda: bool(reporter.dialogs))
    finally:
        reporter.uninstall()
    dialog = reporter.dialogs[0]
    assert isinstance(dialog, ErrorDialog) and dialog.isVisible()
    assert "RuntimeError: something odd happened" in dialog.details.toPlainText()
    assert "Traceback" in dialog.details.toPlainText()
    copy = next(b for b in dialog.findChildren(QWidget) if b.accessibleName() == "Copy error details")
    qtbot.mouseClick(copy, Qt.MouseButton.LeftButton)
    assert "something odd happened" in QApplication.clipboard().text()
    assert len(window.chat_view.cards()) == 2 and len(history.messages(window.session.chat_id)) == 2


def test_sidebar_new_search_rename(qtbot, make_window, history: History) -> None:
    window = make_window(ScriptedEngine, settings={"max_tokens": 64})
    send(qtbot, window, "Asthma inhaler question")
    first = window.session.chat_id
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.session.chat_id is None and window.chat_view.cards() == []
    send(qtbot, window, "Migraine triggers")
    assert window.sidebar.titles() == ["Migraine triggers", "Asthma inhaler question"]

    window.sidebar.search.setText("asthma")
    assert window.sidebar.titles() == ["Asthma inhaler question"]
    window.sidebar.search.setText("influenza")  # in the scripted answers of both chats
    assert len(window.sidebar.titles()) == 2
    window.sidebar.search.setText("")
    window.chats.rename_chat(first, "Inhaler technique")
    assert "Inhaler technique" in window.sidebar.titles()
    window.sidebar.list.setCurrentRow(window.sidebar.titles().index("Inhaler technique"))
    assert window.session.chat_id == first and window.chat_view.cards()[0].answer() == "Asthma inhaler question"


def test_copy_puts_the_answer_on_the_clipboard(qtbot, make_window) -> None:
    window = make_window(partial(ScriptedEngine, script=("**Iron**", " deficiency", "\n\n| a | b |\n|---|---|\n| 1 | 2 |")))
    send(qtbot, window, "Cause of anemia?")
    card = window.chat_view.cards()[-1]
    qtbot.mouseClick(card.copy_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == card.answer()
    # Markdown is rendered: bold and a table, not the raw asterisks and pipes.
    assert "**" not in card.body.toPlainText() and "Iron" in card.body.toPlainText()
    assert card.body.document().toHtml().count("<td") >= 4


def test_enter_sends_and_shift_enter_adds_a_line(qtbot, make_window) -> None:
    window = make_window(ScriptedEngine)
    window.composer.input.setFocus()
    qtbot.keyClicks(window.composer.input, "Line one")
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.composer.input, "line two")
    assert window.composer.text() == "Line one\nline two"
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)
    assert window.chat_view.cards()[0].answer() == "Line one\nline two"


def test_status_bar_says_why_the_gpu_load_fell_back_to_cpu(qtbot, make_window) -> None:
    window = make_window(partial(ScriptedEngine, gpu_failure="out of memory"), settings={"gpu": "auto"})
    assert "CUDA failed: out of memory" in window.status.shown_model()
    assert "retried on CPU" in window.status.shown_model()


@pytest.mark.slow
def test_model_load_can_be_cancelled_and_keeps_the_model(qtbot, make_window, gemma_270m: Path) -> None:
    window = make_window(settings=FAST_SETTINGS)
    loaded = window.library.current.info
    assert window.models.choose_model(gemma_270m)
    assert window.status.is_loading_shown()
    qtbot.mouseClick(window.status.cancel_load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.library.loading, timeout=LOAD_TIMEOUT_MS)
    assert not window.library.loading and window.library.current.info is loaded
    assert not window.status.is_loading_shown()
    assert "cancelled" in window.status.shown_model()
    send(qtbot, window, "Still loaded?")
    assert window.chat_view.cards()[-1].answer()


def test_every_control_has_an_accessible_name(qtbot, make_window) -> None:
    from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit

    window = make_window(ScriptedEngine)
    send(qtbot, window, "Hello")
    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit)
    unnamed = [f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}"
               for w in window.findChildren(QWidget)
               if isinstance(w, kinds) and w.isVisibleTo(window) and not w.accessibleName()
               and not isinstance(w.parent(), (QAbstractSpinBox, QComboBox))]
    assert unnamed == []


def test_convert_without_the_convert_extra_says_how_to_install_it(qtbot, tmp_path: Path) -> None:
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    dialog = ConvertDialog(python=str(bare / "bin" / "python"))
    qtbot.addWidget(dialog)
    dialog.base.setText(str(tmp_path))
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None, timeout=60_000)
    assert INSTALL_HINT in dialog.error and "torch" in dialog.error
    assert INSTALL_HINT in dialog.stage.text()


@pytest.mark.slow
def test_convert_runs_the_real_converter_as_a_child_and_reports_its_error(qtbot, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    dialog = ConvertDialog()
    qtbot.addWidget(dialog)
    missing = tmp_path / "no-such-base"
    dialog.base.setText(str(missing))
    dialog.out.setText(str(tmp_path / "out.gguf"))
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None, timeout=180_000)
    assert dialog.error and "no-such-base" in dialog.error
    assert "--progress" in dialog.log.toPlainText()
    assert not (tmp_path / "out.gguf").exists()


def test_convert_progress_lines_and_report(qtbot, tmp_path: Path) -> None:
    dialog = ConvertDialog()
    qtbot.addWidget(dialog)
    seen = []
    dialog.progress_changed.connect(lambda stage, done, total: seen.append((stage, done, total)))
    out = tmp_path / "m-q8_0.gguf"
    output = OutputRecord(path=str(out), quant="q8_0", bytes=1, sha256="0" * 64, file_type="Q8_0", tensor_types={},
                          bits_per_weight=8.5, parameter_count=1)
    report = ConversionReport(converter="medgemma-convert test", inputs={}, outputs=(output,))
    for line in ('{"stage": "merge", "done": 3, "total": 10}', "a plain log line",
                 ProgressEvent.finished(report).to_json_line()):
        dialog.handle_line(line)
    assert seen == [("merge", 3, 10)]
    assert dialog.progress.value() == 3 and dialog.progress.maximum() == 10
    assert dialog.outputs == [str(out)]
    assert "a plain log line" in dialog.log.toPlainText() and "Q8_0" in dialog.log.toPlainText()


def test_convert_arguments(qtbot, tmp_path: Path) -> None:
    dialog = ConvertDialog()
    qtbot.addWidget(dialog)
    dialog.base.setText("/models/gemma-3-270m")
    dialog.add_adapter("/adapters/cot", 1.0)
    dialog.add_adapter("/adapters/style", 0.5)
    dialog.out.setText(str(tmp_path / "m.gguf"))
    dialog.verify.setChecked(True)
    args = dialog.arguments()
    assert args[:4] == ["-m", "medgemma_convert", "--base", "/models/gemma-3-270m"]
    assert args[args.index("--adapter") + 1] == "/adapters/cot"
    assert "/adapters/style:0.5" in args
    assert args[args.index("--quant") + 1] == "q8_0,q4_k_m"
    assert args[args.index("--progress") + 1] == "json" and "--verify" in args
    assert "--imatrix" not in args
    dialog.imatrix.setChecked(True)
    args = dialog.arguments()
    assert args[args.index("--imatrix") + 1] == "auto"


@pytest.mark.slow
def test_run_app_opens_the_window_offline(qtbot, monkeypatch: pytest.MonkeyPatch, gemma_270m: Path) -> None:
    from medgemma_desktop.app import run_app

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen: dict[str, object] = {}

    def look_and_quit() -> None:
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        if windows and windows[0].library.current is not None:
            window = windows[0]
            seen["model"] = window.library.current.path
            seen["notice"] = any(isinstance(w, NoticeDialog) and w.isVisible() for w in QApplication.topLevelWidgets()
                                 + window.findChildren(NoticeDialog))
            seen["hook"] = sys.excepthook.__qualname__
            # exit() ends app.exec() at once; close() or quit() would post a Quit event that
            # outlives this test and ends the next tests' event loops.
            QApplication.exit(0)
        else:
            QTimer.singleShot(100, look_and_quit)

    QTimer.singleShot(100, look_and_quit)
    assert run_app(gemma_270m) == 0
    for window in QApplication.topLevelWidgets():
        if isinstance(window, (MainWindow, NoticeDialog)):
            window.close()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert seen == {"model": gemma_270m, "notice": True, "hook": "ExceptionReporter.hook"}


def test_signal_emits_keep_reference_counts(qtbot) -> None:
    """PySide6 6.12.0 drops a reference to True on every Python emit(); a long chat then aborts the app."""
    from PySide6.QtCore import QObject, Signal

    class Emitter(QObject):
        fired = Signal(str)

    emitter = Emitter()
    received: list[str] = []
    emitter.fired.connect(received.append)
    before = sys.getrefcount(True)
    for _ in range(1000):
        emitter.fired.emit("piece")
    assert len(received) == 1000
    assert sys.getrefcount(True) >= before - 10


def test_every_dialog_follows_the_dark_theme(qtbot, history: History) -> None:
    """The first-start notice was light grey on light grey once: each dialog is drawn dark, its text light."""
    from medgemma_desktop.ui.dialogs.messages import problem_box

    window = MainWindow(history, ScriptedEngine)
    qtbot.addWidget(window)
    window.show()
    dialogs = [NoticeDialog(window), ConvertDialog(window), ErrorDialog("RuntimeError: x", "details", window),
               problem_box(window, "Cannot open this model", "notes.gguf is not a GGUF file")]
    for dialog in dialogs:
        dialog.show()
        image = dialog.grab().toImage()
        lightness = [image.pixelColor(x, y).lightnessF() for x in range(0, image.width(), 7)
                     for y in range(0, image.height(), 7)]
        background = sorted(lightness)[len(lightness) // 2]  # most of a dialog is its background
        assert background < 0.25, type(dialog).__name__
        assert max(lightness) > 0.75, type(dialog).__name__  # and its text stands out from it
        dialog.close()
    window.shutdown()
