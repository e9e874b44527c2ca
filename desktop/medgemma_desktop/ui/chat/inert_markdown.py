"""Markdown shown without touching the file system or the network.

Chat text comes from the user and from a model, and is stored and shown again on every open:
it must not be able to make the app read a file, a device or a FIFO, or reach a share (a
Windows UNC path opens an SMB connection). Qt loads resources in two places: the document's
`loadResource` (which falls back to reading local files) and the image handler of the layout
(which falls back to `QImage.load(name)` when the document gives nothing). So:

- every document here is an `InertDocument`, whose `loadResource` returns nothing for any URL;
- Markdown is parsed without raw HTML (`MarkdownNoHTML`): `<img src=…>` stays text;
- Markdown is parsed into a document that has no layout yet, so nothing is measured or drawn,
  and each image in it is replaced by its alt text before the text reaches a shown document;
- links are kept as text with their style, and nothing opens them (the views do not open links).
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QUrl
from PySide6.QtGui import QTextCharFormat, QTextCursor, QTextDocument, QTextDocumentFragment, QTextFormat

MARKDOWN_FEATURES = QTextDocument.MarkdownFeature.MarkdownDialectGitHub | QTextDocument.MarkdownFeature.MarkdownNoHTML


class InertDocument(QTextDocument):
    """A text document that never loads a resource: every URL resolves to nothing."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setUndoRedoEnabled(False)  # shown text is replaced often; an undo stack would only grow

    def loadResource(self, type: int, name: QUrl) -> None:  # noqa: A002, N802 - Qt override
        # Not calling the base class: it asks the parent widget, then reads local files itself.
        return None


def image_placeholder(alt: str) -> str:
    return f"[image: {alt}]" if alt.strip() else "[image]"


def markdown_fragment(text: str) -> QTextDocumentFragment:
    """`text` as formatted Markdown with no images and no raw HTML, ready to insert into a document."""
    scratch = InertDocument()
    scratch.setMarkdown(text, MARKDOWN_FEATURES)  # no layout exists yet: no image is looked at
    _replace_images(scratch)
    return QTextDocumentFragment(scratch)


def set_inert_markdown(document: QTextDocument, text: str) -> None:
    """Replace `document`'s content with `text` rendered by `markdown_fragment`."""
    fragment = markdown_fragment(text)
    document.clear()
    QTextCursor(document).insertFragment(fragment)


def _replace_images(document: QTextDocument) -> None:
    images: list[tuple[int, int, str]] = []  # position, length, alt text
    block = document.begin()
    while block.isValid():
        pieces = block.begin()
        while not pieces.atEnd():
            fragment = pieces.fragment()
            if fragment.isValid() and fragment.charFormat().isImageFormat():
                alt = str(fragment.charFormat().property(QTextFormat.Property.ImageAltText) or "")
                images.append((fragment.position(), fragment.length(), alt))
            pieces += 1
        block = block.next()
    placeholder_format = QTextCharFormat()
    placeholder_format.setFontItalic(True)
    cursor = QTextCursor(document)
    for position, length, alt in reversed(images):  # from the end, so earlier positions stay valid
        cursor.setPosition(position)
        cursor.setPosition(position + length, QTextCursor.MoveMode.KeepAnchor)
        # Identical images next to each other share one fragment: one placeholder per image.
        cursor.insertText(image_placeholder(alt) * length, placeholder_format)
