"""Small dialogs: the first-start medical notice, unexpected errors, problems, questions."""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

NOTICE_LINE = "Not for clinical use · answers can be wrong · nothing leaves this computer"
NOTICE_TEXT = """<h3>Before you start</h3>
<p><b>MedGemma Edge runs small medical language models on this computer.</b>
It is a tool for education and research.</p>
<ul>
<li><b>Not for clinical use.</b> It does not diagnose, treat or give medical advice.
Do not use it to make decisions about anyone's health.</li>
<li><b>Answers can be wrong</b>, incomplete or made up, even when they sound sure.
The model's "reasoning" is generated text, not a clinical justification.</li>
<li><b>No data leaves this computer.</b> The app opens no network connections;
chats are stored only in a local database that you can delete.</li>
</ul>
<p>In an emergency, contact your local emergency number or a health professional.</p>"""


class NoticeDialog(QDialog):
    """Shown until acknowledged once: what the app is and is not."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("noticeDialog")
        self.setWindowTitle("MedGemma Edge — medical notice")
        self.setAccessibleName("Medical notice")
        self.setModal(True)
        text = QLabel(NOTICE_TEXT, self)
        text.setWordWrap(True)
        text.setMinimumWidth(460)
        self.understood = QCheckBox("I understand that this is not for clinical use", self)
        self.understood.setAccessibleName("I understand that this is not for clinical use")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok, self)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Continue")
        self.ok_button.setAccessibleName("Continue")
        self.ok_button.setEnabled(False)
        self.understood.toggled.connect(self.ok_button.setEnabled)
        self.buttons.accepted.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(text)
        layout.addWidget(self.understood)
        layout.addWidget(self.buttons)

    def reject(self) -> None:
        # Escape or closing the window does not count as an acknowledgement; only Continue does.
        if self.understood.isChecked():
            self.accept()


class ErrorDialog(QDialog):
    """An unexpected error: a one-line summary and the full details to copy into a bug report."""

    def __init__(self, summary: str, details: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorDialog")
        self.setWindowTitle("MedGemma Edge — unexpected error")
        self.setAccessibleName("Unexpected error")
        heading = QLabel(
            f"<b>Something went wrong:</b> {html.escape(summary)}<br>Your chats are saved. "
            "You can keep working; please copy the details below into a bug report.",
            self,
        )
        heading.setWordWrap(True)
        self.details = QPlainTextEdit(details, self)
        self.details.setReadOnly(True)
        self.details.setAccessibleName("Error details")
        self.details.setMinimumSize(560, 220)
        copy = QPushButton("Copy details", self)
        copy.setAccessibleName("Copy error details")
        copy.clicked.connect(self._copy)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(heading)
        layout.addWidget(self.details)
        layout.addWidget(buttons)

    @Slot()
    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.details.toPlainText())


def problem_box(parent: QWidget, title: str, message: str) -> QMessageBox:
    """A warning that does not block the window (shown with open(), not exec())."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)  # messages quote file and model names
    box.setAccessibleName(title)
    box.setObjectName("problemDialog")
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


def confirm(parent: QWidget, title: str, question: str, on_yes: Callable[[], None]) -> QMessageBox:
    """Ask Yes/No without blocking; `on_yes` runs on Yes."""
    box = QMessageBox(QMessageBox.Icon.Question, title, question,
                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setAccessibleName(title)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.accepted.connect(on_yes)
    box.open()
    return box


def ask_text(parent: QWidget, title: str, label: str, value: str, on_chosen: Callable[[str], None]) -> QInputDialog:
    """Ask for a line of text without blocking; `on_chosen` gets it on OK."""
    dialog = QInputDialog(parent)
    dialog.setWindowTitle(title)
    dialog.setLabelText(label)
    dialog.setTextValue(value)
    dialog.setAccessibleName(title)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.textValueSelected.connect(on_chosen)
    dialog.open()
    return dialog
