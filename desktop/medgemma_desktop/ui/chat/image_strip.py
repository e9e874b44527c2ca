"""Images as thumbnails: in the composer before sending (each removable), and in a sent message.

Thumbnails are made once, from the PNG we decoded and stored ourselves (`images.store`), never
from a path a message names; an image whose file is gone shows "[image missing]".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from medgemma_models.errors import MedGemmaError

from ...conversation import IMAGE_MISSING, ImageMissingError
from ...images.decode import DecodedImage, ImagePart, decode_image, read_image_file
from ...images.store import ImageStore

THUMBNAIL_SIDE = 72
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.dcm);;All files (*)"


def thumbnail(png: bytes, side: int = THUMBNAIL_SIDE) -> QPixmap:
    image = QImage.fromData(png, "PNG")
    return QPixmap.fromImage(image.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio,
                                          Qt.TransformationMode.SmoothTransformation))


def describe_part(part: ImagePart) -> str:
    facts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(part.facts.items()))
    return f"{part.kind.upper()} image, {part.width}×{part.height}" + (f" ({facts})" if facts else "")


class ImageStrip(QWidget):
    """A row of thumbnails; with `removable`, each has a × that takes it out."""

    removed = Signal(str)  # sha256

    def __init__(self, removable: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.removable = removable
        self.parts: list[ImagePart] = []
        self._row = QHBoxLayout(self)
        self._row.setContentsMargins(0, 0, 0, 0)
        self._row.setSpacing(6)
        self._row.addStretch(1)
        self.setVisible(False)

    def add(self, part: ImagePart, png: bytes | None) -> None:
        if any(p.sha256 == part.sha256 for p in self.parts):
            return
        self.parts.append(part)
        cell = QWidget(self)
        cell.setObjectName(f"image-{part.sha256[:12]}")
        column = QVBoxLayout(cell)
        column.setContentsMargins(0, 0, 0, 0)
        picture = QLabel(cell)
        picture.setObjectName("thumbnail")
        if png is None:
            picture.setText(IMAGE_MISSING)
        else:
            picture.setPixmap(thumbnail(png))
        picture.setToolTip(describe_part(part))
        picture.setAccessibleName(describe_part(part))
        column.addWidget(picture)
        if self.removable:
            remove = QToolButton(cell)
            remove.setObjectName("cardAction")
            remove.setText("×")
            remove.setAccessibleName("Remove this image")
            remove.clicked.connect(lambda: self.remove(part.sha256))
            column.addWidget(remove, 0, Qt.AlignmentFlag.AlignHCenter)
        self._row.insertWidget(self._row.count() - 1, cell)
        self.setVisible(True)

    def show_parts(self, parts: Sequence[ImagePart], store: ImageStore) -> None:
        for part in parts:
            try:
                png = store.png(part.sha256)
            except ImageMissingError:
                png = None
            self.add(part, png)

    def remove(self, sha256: str) -> None:
        self.parts = [p for p in self.parts if p.sha256 != sha256]
        cell = self.findChild(QWidget, f"image-{sha256[:12]}")
        if cell is not None:
            cell.setParent(None)
            cell.deleteLater()
        self.setVisible(bool(self.parts))
        self.removed.emit(sha256)

    def clear(self) -> None:
        for part in list(self.parts):
            self.remove(part.sha256)


class ImageReader(QObject):
    """Decodes and stores attached images on a thread of its own: the window never waits on the disk."""

    read = Signal(object)  # DecodedImage, stored already
    failed = Signal(str)  # one sentence naming the file

    def __init__(self, store: ImageStore, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self._threads: list[threading.Thread] = []

    def read_files(self, paths: Sequence[Path]) -> None:
        self._start([lambda path=Path(p): read_image_file(path) for p in paths])

    def read_bytes(self, data: bytes, name: str) -> None:
        self._start([lambda: decode_image(data, name)])

    def _start(self, jobs: Sequence[Callable[[], DecodedImage]]) -> None:
        def work() -> None:
            for job in jobs:  # one bad file is refused, the others still come
                try:
                    image = job()
                    self.store.put(image)
                except MedGemmaError as exc:
                    self.failed.emit(str(exc))
                    continue
                self.read.emit(image)  # queued to the window's thread

        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=work, name="medgemma-image-reader", daemon=True)
        self._threads.append(thread)
        thread.start()

    def wait(self, timeout: float = 10.0) -> None:
        for thread in self._threads:
            thread.join(timeout)
