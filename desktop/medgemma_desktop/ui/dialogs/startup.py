"""The questions and problems of the start, shown before the main window exists."""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox


def ask_yes_no(title: str, question: str) -> bool:
    """A modal question before the window exists (tests replace it, or answer the box)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, question,
                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    box.setTextFormat(Qt.TextFormat.PlainText)  # the message quotes a path
    box.setObjectName("startupQuestion")
    return box.exec() == QMessageBox.StandardButton.Yes


def tell(title: str, message: str) -> None:
    """A problem that stops the start, shown where a desktop launcher's user sees it, and on stderr."""
    print(f"medgemma-desktop: {message}", file=sys.stderr)
    box = QMessageBox(QMessageBox.Icon.Critical, title, message, QMessageBox.StandardButton.Ok)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setObjectName("startupProblem")
    box.exec()
