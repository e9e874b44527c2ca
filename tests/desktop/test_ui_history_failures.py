"""The window when the chat history cannot be written or read: real SQLite, the real engine and model.

A full disk is SQLite's own SQLITE_FULL: the history's connection may grow no more
(`PRAGMA max_page_count`) and ballast rows fill every free byte, so the next bigger write fails.
A damaged file is garbage bytes where the database should be.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from medgemma_desktop.app import open_history
from medgemma_desktop.history import History, HistoryWriteError
from medgemma_desktop.session import UNSAVED_TITLE
from medgemma_desktop.ui.main_window import NOTICE_SETTING
from medgemma_models.store import history_path
from tests.support.window_steps import ANSWER_TIMEOUT_MS, FAST_SETTINGS

GARBAGE = b"this is not a database, it is a damaged file " * 200


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch, medgemma_home: Path) -> Iterator[tuple[History, sqlite3.Connection]]:
    """The window's history and the very SQLite connection it opened (`max_page_count` is per connection)."""
    connections: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def connect(*args, **kwargs) -> sqlite3.Connection:
        connections.append(real_connect(*args, **kwargs))
        return connections[-1]

    monkeypatch.setattr(sqlite3, "connect", connect)
    history = History()
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    history.set_setting(NOTICE_SETTING, True)
    (connection,) = connections
    yield history, connection
    history.close()


def fill_the_disk(history: History, connection: sqlite3.Connection) -> None:
    """No page more, and ballast messages in every free byte of the messages' pages (new rows go beside the
    newest): the next write that grows a message fails with SQLITE_FULL."""
    ballast = history.create_chat("ballast")
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    for size in (4000, 1000, 250, 60, 15, 1):
        while True:
            try:
                history.add_message(ballast, "user", "x" * size)
            except HistoryWriteError:
                break


def free_the_disk(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA max_page_count = 1073741823")


@pytest.mark.slow
def test_a_full_disk_while_streaming_is_one_dialog_and_the_text_is_saved_once_there_is_room(
        qtbot, make_window, opened: tuple[History, sqlite3.Connection]) -> None:
    history, connection = opened
    window = make_window(db=history, settings={**FAST_SETTINGS, "max_tokens": 48})
    window.session.save_interval = 0.0  # every piece tries to save: many failures, still one dialog
    window.composer.set_text("What are common symptoms of anemia?")
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        assert window.send()
        fill_the_disk(history, connection)  # after the question was saved; the pieces arrive after this
    answer = window.chat_view.cards()[-1].answer()
    assert answer.strip()
    assert [title for title, _ in window.errors] == [UNSAVED_TITLE] and "disk is full" in window.errors[0][1]
    boxes = [b for b in window.findChildren(QMessageBox) if b.objectName() == "problemDialog" and b.isVisible()]
    assert len(boxes) == 1
    assert window.composer.button_label() == "Send" and window.can_send()  # not stuck as Stop
    assert window.status.is_saving_shown()
    [*_, stored] = history.messages(window.session.chat_id)
    assert not stored.complete and stored.text != answer  # not saved yet: the text is only in memory
    free_the_disk(connection)
    qtbot.waitUntil(lambda: not window.status.is_saving_shown(), timeout=10_000)
    [*_, stored] = history.messages(window.session.chat_id)
    assert stored.complete and stored.text == answer


def test_a_damaged_history_at_start_up_is_moved_aside_when_the_user_agrees(qtbot, medgemma_home: Path) -> None:
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)
    asked: list[str] = []

    def click_yes() -> None:
        box = QApplication.activeModalWidget()
        assert isinstance(box, QMessageBox)
        asked.append(box.text())
        box.button(QMessageBox.StandardButton.Yes).click()

    QTimer.singleShot(0, click_yes)  # answers the real start-up dialog once it is open
    history = open_history()
    assert history is not None
    try:
        assert history.chats() == [] and history.create_chat("fresh") > 0
    finally:
        history.close()
    assert len(asked) == 1 and str(path) in asked[0] and "Move it aside" in asked[0]
    [moved] = path.parent.glob("history.corrupt-*.sqlite3")
    assert moved.read_bytes() == GARBAGE


def test_a_damaged_history_is_left_alone_when_the_user_declines(medgemma_home: Path) -> None:
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)
    assert open_history(ask=lambda title, question: False) is None
    assert path.read_bytes() == GARBAGE and not list(path.parent.glob("history.corrupt-*"))
