"""Widgets that show text from a model file, a chat or an error as written, never as HTML.

Qt treats a label's, a message box's or a tooltip's text as rich text when it merely looks like
HTML (`Qt.mightBeRichText`): a GGUF whose `general.name` is `<img src=/etc/passwd>` would make a
label read that file. Labels and message boxes get `PlainText`; a tooltip has no such setting,
so its text is escaped into a rich-text paragraph that shows the characters as they are.
"""

from __future__ import annotations

from PySide6 import QtGui
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget


def plain_label(text: str = "", parent: QWidget | None = None) -> QLabel:
    """A QLabel that shows `text` (and whatever `setText` gets later) literally."""
    label = QLabel(parent)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    return label


def plain_tooltip(text: str) -> str:
    """`text` for `setToolTip`, shown as written (markup characters, line breaks and all)."""
    # QtGui's Qt namespace, not QtCore's: convertFromPlainText lives there in PySide6.
    return QtGui.Qt.convertFromPlainText(text) if text else ""


def plain_message_box(
    icon: QMessageBox.Icon,
    title: str,
    text: str,
    buttons: QMessageBox.StandardButton = QMessageBox.StandardButton.Ok,
    parent: QWidget | None = None,
) -> QMessageBox:
    """A QMessageBox whose text (often an error naming a file or a model) is shown literally."""
    box = QMessageBox(icon, title, "", buttons, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    return box
