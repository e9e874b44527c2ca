"""The main window: chats on the left, the conversation in the middle, settings on the right.

It only shows and forwards. The chat's state lives in `ChatSession`, the models and their
settings in `ModelLibrary` (both Qt-free); the engine is the `Runtime`'s, on its thread, and its
events come back through `RuntimeBridge`'s queued signals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QCoreApplication, QEvent, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QMainWindow, QMessageBox, QSplitter, QVBoxLayout, QWidget

from ..answer import AnswerStats
from ..generation import EngineLike
from ..documents.collections import Collections
from ..history import History
from ..library import ModelLibrary
from ..runtime import Runtime, RuntimeBackend
from ..session import ChatSession
from .dialogs.about_dialog import HelpMenu
from .chat.chat_presenter import ChatPresenter
from .chat.chat_view import ChatView
from .chat.composer import Composer
from .dialogs.messages import NoticeDialog, problem_box
from .documents.documents_panel import DocumentsPanel
from .gui_gc import GuiThreadCollector
from .models.model_bar import ModelBar
from .models.model_presenter import ModelPresenter
from .runtime_bridge import RuntimeBridge, SessionRelay
from .server.server_panel import ServerPanel
from .models.settings_panel import SettingsPanel
from .chat.sidebar import Sidebar
from .status_bar import StatusBar
from .theme import STYLESHEET

log = logging.getLogger(__name__)

NOTICE_SETTING = "medical_notice_acknowledged"


class MainWindow(QMainWindow):
    model_loaded = Signal()
    answer_finished = Signal()

    def __init__(self, history: History, engine_factory: Callable[[], EngineLike],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.errors: list[tuple[str, str]] = []  # every problem reported to the user, for tests and logs
        self._problems: dict[str, QMessageBox] = {}  # the problem dialogs open now, by title
        self.library = ModelLibrary(history)
        self._start_runtime(engine_factory)
        self.collections = Collections()
        self.session = ChatSession(history, RuntimeBackend(self.runtime, self.bridge.deliver), documents=self.collections)
        self._relay = SessionRelay(self.session, self.bridge, self)
        self.setWindowTitle("MedGemma Edge")
        self.setObjectName("mainWindow")
        self.setStyleSheet(STYLESHEET)
        self.resize(1360, 860)
        self._build()
        self.models = ModelPresenter(self.library, self.session, self.bridge, self.model_bar, self.settings_panel,
                                     self.status, self.report_error, self)
        for signal, slot in ((self.models.state_changed, self._update_enabled), (self.models.model_loaded, self.model_loaded),
                             (QShortcut(QKeySequence.StandardKey.Open, self).activated, self.models.ask_open_model)):
            signal.connect(slot)
        self.server = ServerPanel(self, self.runtime, self.library, history, self.settings_panel)
        self.model_loaded.connect(self.server.model_changed)
        self.models.vision_changed.connect(self.chats.set_vision)
        self.documents = DocumentsPanel(self, self.session, self.collections)
        self.chats.state_changed.connect(self.documents.chat_changed)
        self.help = HelpMenu(self)
        self.chats.refresh_chats()
        self.models.refresh_models()
        self.composer.setEnabled(self.notice_acknowledged())
        self.server.restore()

    def _build(self) -> None:
        self.sidebar, self.model_bar, self.chat_view = Sidebar(self), ModelBar(self), ChatView(self)
        self.composer, self.settings_panel, self.status = Composer(self), SettingsPanel(self), StatusBar(self)
        center = QWidget(self)
        center.setObjectName("center")
        column = QVBoxLayout(center)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        for widget, stretch in ((self.model_bar, 0), (self.chat_view, 1), (self.composer, 0)):
            column.addWidget(widget, stretch)
        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.setObjectName("mainSplitter")
        splitter.setChildrenCollapsible(False)
        for widget in (self.sidebar, center, self.settings_panel):
            splitter.addWidget(widget)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([250, 860, 350])
        self.setCentralWidget(splitter)
        self.setStatusBar(self.status)
        self.chats = ChatPresenter(self.session, self.chat_view, self.composer, self.sidebar, self.report_error, self)
        # Saves a streaming answer when the model goes quiet (the writer saves on arriving pieces).
        self._save_timer = QTimer(self)
        self._save_timer.setInterval(int(self.session.save_interval * 1000))
        connections = (
            (self._save_timer.timeout, self._save_now), (self.chats.state_changed, self._update_enabled),
            (self.chats.answer_finished, self._on_answer_finished), (self.chats.status_message, self._show_message),
            (self.model_bar.export_requested, self.chats.ask_export), (self.composer.send_requested, self.send),
            (self.chat_view.regenerate_requested, self.regenerate),
            (self.settings_panel.reasoning_display_changed, self.chat_view.set_show_reasoning),
        )
        for signal, slot in connections:
            signal.connect(slot)
        for keys, slot in ((QKeySequence.StandardKey.New, self.chats.new_chat), (QKeySequence(Qt.Key.Key_Escape), self._on_escape)):
            QShortcut(keys, self).activated.connect(slot)

    def _start_runtime(self, engine_factory: Callable[[], EngineLike]) -> None:
        # Before the engine thread starts: garbage it would otherwise collect may hold Qt objects.
        self._collector = GuiThreadCollector(self)
        self.runtime = Runtime(engine_factory)
        self.bridge = RuntimeBridge(self.runtime, self)

    # -- notices and errors ---------------------------------------------------------------------

    def notice_acknowledged(self) -> bool:
        return bool(self.history.get_setting(NOTICE_SETTING, False))

    def show_notice_if_needed(self) -> NoticeDialog | None:
        """First start: the medical notice, window-modal; the input stays off until it is acknowledged."""
        if self.notice_acknowledged():
            return None
        dialog = NoticeDialog(self)
        dialog.accepted.connect(self._on_notice_accepted)
        dialog.open()
        return dialog

    @Slot()
    def _on_notice_accepted(self) -> None:
        self.history.set_setting(NOTICE_SETTING, True)
        self.composer.setEnabled(True)
        self.composer.focus_input()

    @Slot(str)
    def _show_message(self, text: str) -> None:
        self.status.showMessage(text, 5000)

    def report_error(self, title: str, message: str) -> None:
        """Tell the user about a problem in a dialog that does not block the window."""
        log.warning("%s: %s", title, message)
        self.errors.append((title, message))
        shown = self._problems.get(title)
        if shown is not None:  # the same problem again (a full disk at every save): one dialog, updated
            shown.setText(message)
            return
        box = problem_box(self, title, message)
        self._problems[title] = box
        box.finished.connect(lambda _result, closed=title: self._problems.pop(closed, None))

    # -- sending ------------------------------------------------------------------------------------

    def can_send(self) -> bool:
        return self.session.can_send() and not self.library.loading and self.notice_acknowledged()

    @Slot()
    def send(self) -> bool:
        return self.can_send() and self.chats.send()

    @Slot(int)
    def regenerate(self, message_id: int) -> None:
        if self.can_send():
            self.session.regenerate(message_id)

    @Slot()
    def _on_escape(self) -> None:
        if self.session.busy:
            self.session.stop()
        elif self.library.loading:
            self.models.cancel_load()
        else:
            self.chats.cancel_edit()

    @Slot(object)
    def _on_answer_finished(self, stats: AnswerStats | None) -> None:
        if stats is not None and self.library.current is not None:
            self.status.show_stats(stats, self.library.current.n_ctx)
        self.answer_finished.emit()

    @Slot()
    def _update_enabled(self) -> None:
        busy, loading = self.session.busy, self.library.loading
        (self._save_timer.start if busy or self.session.saving else self._save_timer.stop)()
        self.status.show_saving(self.session.saving)
        self.chat_view.update_actions(busy)
        self.model_bar.set_switching_enabled(not busy and not loading)
        self.settings_panel.set_reload_enabled(not busy and not loading)
        self.model_bar.set_export_enabled(self.session.chat_id is not None)

    @Slot()
    def _save_now(self) -> None:
        """Save a streaming answer gone quiet, and retry saves that failed until they succeed."""
        self.session.flush()
        self.status.show_saving(self.session.saving)
        if not self.session.busy and not self.session.saving:
            self._save_timer.stop()

    # -- shutdown -------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        if not self.models.may_close():  # a conversion runs and the user keeps it
            event.ignore()
            return
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the answer (and a conversion, which cleans up first), save it, and end the engine thread."""
        if not self.runtime.thread.is_alive():
            return
        self.models.stop_conversion()
        self.server.shutdown()
        self.documents.shutdown()
        self.runtime.cancel_all()
        self.session.flush()
        self.runtime.close()  # the cancels above make this a wait of at most one token
        self._collector.stop()
        self.collections.close()
        # Results the runtime sent before it stopped must not reach a window whose history may be closed.
        for receiver in (self, self._relay, self.models, self.status):
            QCoreApplication.removePostedEvents(receiver, QEvent.Type.MetaCall)
