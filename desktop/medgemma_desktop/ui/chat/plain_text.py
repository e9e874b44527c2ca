"""Tooltips that show text from a model file, a chat or an error as written, never as HTML.

Qt treats a label's, a message box's or a tooltip's text as rich text when it merely looks like
HTML (`Qt.mightBeRichText`): a GGUF whose `general.name` is `<img src=/etc/passwd>` would make a
label read that file. Labels and message boxes are given `PlainText` where they are made; a
tooltip has no such setting, so its text is escaped into a rich-text paragraph that shows the
characters as they are.
"""

from __future__ import annotations

from PySide6 import QtGui


def plain_tooltip(text: str) -> str:
    """`text` for `setToolTip`, shown as written (markup characters, line breaks and all)."""
    # QtGui's Qt namespace, not QtCore's: convertFromPlainText lives there in PySide6.
    return QtGui.Qt.convertFromPlainText(text) if text else ""

