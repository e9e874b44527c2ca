"""The message box under the chat: Enter sends, Shift+Enter adds a line; Send turns into Stop."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from .dialogs import NOTICE_LINE


class MessageInput(QPlainTextEdit):
    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        if enter:
            self.insertPlainText("\n")  # Shift+Enter: a new line, whatever the platform maps it to
            return
        super().keyPressEvent(event)


class Composer(QWidget):
    send_requested = Signal()
    stop_requested = Signal()
    cancel_edit_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self._busy = False
        self.notice = QLabel(f"⚕  {NOTICE_LINE}", self)
        self.notice.setObjectName("noticeLine")
        self.notice.setAccessibleName("Medical notice")
        self.editing = QLabel("Editing your last message: send to replace it and get a new answer.", self)
        self.editing.setObjectName("editingBanner")
        self.editing.setVisible(False)
        self.cancel_edit = QPushButton("Cancel edit", self)
        self.cancel_edit.setAccessibleName("Cancel editing")
        self.cancel_edit.setVisible(False)
        self.cancel_edit.clicked.connect(self.cancel_edit_requested)
        self.input = MessageInput(self)
        self.input.setObjectName("messageInput")
        self.input.setAccessibleName("Message")
        self.input.setPlaceholderText(
            "Ask about a symptom, a condition or a study question…  (Enter sends, Shift+Enter adds a line)"
        )
        self.input.setFixedHeight(76)
        self.input.submitted.connect(self._on_submit)
        self.button = QPushButton("Send", self)
        self.button.setObjectName("sendButton")
        self.button.setAccessibleName("Send message")
        self.button.setMinimumWidth(86)
        self.button.clicked.connect(self._on_submit)
        edit_row = QHBoxLayout()
        edit_row.addWidget(self.editing, 1)
        edit_row.addWidget(self.cancel_edit)
        row = QHBoxLayout()
        row.setSpacing(8)
        row.addWidget(self.input, 1)
        row.addWidget(self.button, 0, Qt.AlignmentFlag.AlignBottom)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(28, 6, 28, 12)
        layout.setSpacing(6)
        layout.addWidget(self.notice)
        layout.addLayout(edit_row)
        layout.addLayout(row)

    def text(self) -> str:
        return self.input.toPlainText()

    def set_text(self, text: str) -> None:
        self.input.setPlainText(text)
        self.input.moveCursor(self.input.textCursor().MoveOperation.End)

    def focus_input(self) -> None:
        self.input.setFocus()

    def set_busy(self, busy: bool) -> None:
        """While an answer streams the button stops it; Esc does the same."""
        self._busy = busy
        self.button.setText("Stop" if busy else "Send")
        self.button.setAccessibleName("Stop the answer" if busy else "Send message")
        self.button.setProperty("stop", busy)
        self.button.style().unpolish(self.button)
        self.button.style().polish(self.button)

    def shown_notice(self) -> str:
        return self.notice.text()

    def button_label(self) -> str:
        """"Send", or "Stop" while an answer streams."""
        return self.button.text()

    def is_editing_shown(self) -> bool:
        return self.editing.isVisibleTo(self)

    def set_editing(self, editing: bool) -> None:
        self.editing.setVisible(editing)
        self.cancel_edit.setVisible(editing)

    @Slot()
    def _on_submit(self) -> None:
        if self._busy:
            if self.sender() is self.button:
                self.stop_requested.emit()
            return
        self.send_requested.emit()
