"""Help → About MedGemma Edge: version, llama.cpp build, "Not for clinical use", the Gemma terms and licenses.

Everything is plain text: the terms come from a web page in the model package, which is never rendered.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QMainWindow, QPlainTextEdit, QVBoxLayout, QWidget

from ...about import about_info, licenses_text, summary_lines, terms_text


class AboutDialog(QDialog):
    def __init__(self, info: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("aboutDialog")
        self.setWindowTitle("About MedGemma Edge")
        self.setAccessibleName("About MedGemma Edge")
        self.resize(640, 560)
        self.summary = QLabel("\n".join(summary_lines(info)), self)
        self.summary.setTextFormat(Qt.TextFormat.PlainText)  # paths and llama.cpp's own words
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setWordWrap(True)
        self.terms = QPlainTextEdit(self)
        self.terms.setObjectName("aboutTerms")
        self.terms.setAccessibleName("Gemma Terms of Use and licenses")
        self.terms.setReadOnly(True)
        self.terms.setPlainText(terms_text(info) + "\n" + licenses_text(info))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.terms, 1)
        layout.addWidget(buttons)


class HelpMenu(QObject):
    """The window's Help menu; keeps the About box it opened last (tests look at it)."""

    def __init__(self, window: QMainWindow) -> None:
        super().__init__(window)
        self._window = window
        self.dialog: AboutDialog | None = None
        menu = window.menuBar().addMenu("&Help")
        self.about_action = menu.addAction("&About MedGemma Edge")
        self.about_action.setObjectName("aboutAction")
        self.about_action.triggered.connect(self.show_about)

    @Slot()
    def show_about(self) -> None:
        self.dialog = AboutDialog(about_info(), self._window)
        self.dialog.open()
