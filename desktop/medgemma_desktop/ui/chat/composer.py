"""The message box under the chat: Enter sends, Shift+Enter adds a line; Send turns into Stop.
Images come by the Image… button, by dropping files, or by pasting; each shows as a thumbnail
until it is sent or removed."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData, Qt, Signal, Slot
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QKeyEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from ...images.decode import ImagePart
from ..dialogs.messages import NOTICE_LINE
from .image_strip import ImageStrip

ATTACH_TIP = "Attach images: PNG, JPEG, WebP or DICOM (or drop or paste them here)"
NO_VISION_TIP = ("This model cannot see images: it has no vision projector. Put its mmproj-*.gguf beside the "
                 "model file and open it again.")


def local_files(mime: QMimeData) -> list[Path]:
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []


def png_of(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data.data())


class MessageInput(QPlainTextEdit):
    submitted = Signal()
    files_given = Signal(list)  # paths pasted or dropped on the input
    image_pasted = Signal(bytes)  # a picture from the clipboard, as PNG

    def canInsertFromMimeData(self, source: QMimeData) -> bool:  # noqa: N802 - Qt override
        return source.hasImage() or bool(local_files(source)) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:  # noqa: N802 - Qt override
        if source.hasImage():
            self.image_pasted.emit(png_of(QImage(source.imageData())))
        elif local_files(source):
            self.files_given.emit(local_files(source))
        else:
            super().insertFromMimeData(source)

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
    attach_requested = Signal()  # the Image… button: the presenter asks which files
    files_given = Signal(list)  # dropped or pasted files
    image_pasted = Signal(bytes)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self.setAcceptDrops(True)
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
        self.input.files_given.connect(self.files_given)
        self.input.image_pasted.connect(self.image_pasted)
        self.attach = QPushButton(self)
        self.attach.setObjectName("attachButton")
        self.attach.setText("Image…")
        self.attach.setAccessibleName("Attach images")
        self.attach.clicked.connect(self.attach_requested)
        self.images = ImageStrip(removable=True, parent=self)
        self.images.setObjectName("composerImages")
        self.set_vision(False)
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
        row.addWidget(self.attach, 0, Qt.AlignmentFlag.AlignBottom)
        row.addWidget(self.input, 1)
        row.addWidget(self.button, 0, Qt.AlignmentFlag.AlignBottom)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(28, 6, 28, 12)
        layout.setSpacing(6)
        layout.addWidget(self.notice)
        layout.addLayout(edit_row)
        layout.addWidget(self.images)
        layout.addLayout(row)

    def set_vision(self, vision: bool) -> None:
        """Images can be attached only when the model in use can see them; the tooltip says why not."""
        self.attach.setEnabled(vision)
        self.attach.setToolTip(ATTACH_TIP if vision else NO_VISION_TIP)
        self.setAcceptDrops(vision)

    @property
    def vision(self) -> bool:
        return self.attach.isEnabled()

    def add_image(self, part: ImagePart, png: bytes) -> None:
        self.images.add(part, png)

    def image_parts(self) -> list[ImagePart]:
        return list(self.images.parts)

    def clear_images(self) -> None:
        self.images.clear()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        mime = event.mimeData()
        if self.vision and (mime.hasImage() or local_files(mime)):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        mime = event.mimeData()
        if mime.hasImage():
            self.image_pasted.emit(png_of(QImage(mime.imageData())))
        elif local_files(mime):
            self.files_given.emit(local_files(mime))
        event.acceptProposedAction()

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
