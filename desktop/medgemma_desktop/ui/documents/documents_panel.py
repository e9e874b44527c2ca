"""Documents → Collections…: named sets of files and folders a chat answers from, with citations.

Indexing runs on a thread of its own with progress (files and pages) and Cancel; what was indexed
before a cancel or a crash is kept, and the next run goes on from there. The ticks say which
collections the open chat uses; the choice is remembered with the chat.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from medgemma_models.errors import MedGemmaError

from ...documents.collection import IndexProgress, IndexReport
from ...documents.collections import Collections
from ...session import ChatSession
from ..dialogs.messages import ask_text, confirm

DOCUMENT_FILTER = "Documents (*.pdf *.txt *.md);;All files (*)"


def progress_text(progress: IndexProgress) -> str:
    return (f"File {min(progress.files_done + 1, progress.files_total)} of {progress.files_total} · "
            f"{progress.pages_done} pages read · {Path(progress.current).name}")


def report_text(report: IndexReport) -> str:
    done = "Cancelled: what was read so far is kept. " if report.cancelled else ""
    lines = [f"{done}{len(report.indexed)} file(s) indexed ({report.pages} pages), {report.unchanged} unchanged, "
             f"{len(report.removed)} removed."]
    lines += [f"Skipped {Path(s.source).name}: {s.reason}" for s in report.skipped]
    return "\n".join(lines)


class DocumentsPanel(QObject):
    """The Documents menu, the collections dialog and the indexing thread."""

    progressed = Signal(object)  # IndexProgress, from the indexing thread
    indexed = Signal(object)  # IndexReport, or the failure's sentence

    def __init__(self, window: QMainWindow, session: ChatSession, collections: Collections) -> None:
        super().__init__(window)
        self.window, self.session, self.collections = window, session, collections
        self.dialog: DocumentsDialog | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        menu = window.menuBar().addMenu("&Documents")
        self.action = menu.addAction("&Collections…")
        self.action.triggered.connect(self.open_dialog)

    @property
    def indexing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @Slot()
    def open_dialog(self) -> DocumentsDialog:
        if self.dialog is None:
            self.dialog = DocumentsDialog(self)
        self.dialog.refresh()
        self.dialog.show()
        self.dialog.raise_()
        return self.dialog

    @Slot()
    def chat_changed(self) -> None:
        """Another chat is open: the ticks show its collections."""
        if self.dialog is not None and self.dialog.isVisible():
            self.dialog.refresh()

    def index(self, name: str, paths: list[Path]) -> bool:
        """Add `paths` to the collection `name` and bring its index up to date, off the window's thread."""
        if self.indexing:
            return False
        self._cancel.clear()
        collection = self.collections.get(name)

        def work() -> None:
            try:
                report = collection.index(paths, progress=self.progressed.emit, should_stop=self._cancel.is_set)
            except MedGemmaError as exc:
                self.indexed.emit(str(exc))
                return
            except OSError as exc:  # a disk that fails mid-run: what was committed stays
                self.indexed.emit(f"indexing stopped: {exc.strerror or exc}")
                return
            self.indexed.emit(report)

        self._thread = threading.Thread(target=work, name="medgemma-indexer", daemon=True)
        self._thread.start()
        return True

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float = 60.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def shutdown(self) -> None:
        self.cancel()
        self.wait(10.0)


class DocumentsDialog(QDialog):
    def __init__(self, panel: DocumentsPanel) -> None:
        super().__init__(panel.window)
        self.panel = panel
        self._selected_name: str | None = None
        self.setWindowTitle("Documents")
        self.setObjectName("documentsDialog")
        self.resize(620, 460)
        intro = QLabel("Collections of your files (PDF, text, Markdown) that a chat can answer from, with the file "
                       "and page of each passage it used. Tick the ones this chat uses. Everything stays on this "
                       "computer.", self)
        intro.setWordWrap(True)
        self.list = QListWidget(self)
        self.list.setObjectName("collections")
        self.list.itemChanged.connect(self._ticked)
        self.new_button = QPushButton("New collection…", self)
        self.add_files = QPushButton("Add files…", self)
        self.add_folder = QPushButton("Add folder…", self)
        self.reindex = QPushButton("Re-index", self)
        self.delete = QPushButton("Delete", self)
        for button, slot in ((self.new_button, self.ask_new), (self.add_files, self.ask_files),
                             (self.add_folder, self.ask_folder), (self.reindex, self.reindex_selected),
                             (self.delete, self.ask_delete)):
            button.clicked.connect(slot)
        self.progress = QProgressBar(self)
        self.progress.setVisible(False)
        self.status = QLabel("", self)
        self.status.setTextFormat(Qt.TextFormat.PlainText)  # file names and reasons, shown as text
        self.status.setWordWrap(True)
        self.cancel = QPushButton("Cancel", self)
        self.cancel.setVisible(False)
        self.cancel.clicked.connect(panel.cancel)
        buttons = QHBoxLayout()
        for button in (self.new_button, self.add_files, self.add_folder, self.reindex, self.delete):
            buttons.addWidget(button)
        running = QHBoxLayout()
        running.addWidget(self.progress, 1)
        running.addWidget(self.cancel)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addLayout(running)
        layout.addWidget(self.status)
        panel.progressed.connect(self._progressed)
        panel.indexed.connect(self._indexed)

    def refresh(self) -> None:
        """List the collections, ticked where the open chat uses them."""
        chosen = set(self.panel.session.collections)
        self.list.blockSignals(True)
        self.list.clear()
        for name in self.panel.collections.names():
            collection = self.panel.collections.get(name)
            files = collection.files()
            item = QListWidgetItem(f"{name} — {len(files)} file(s), {collection.chunk_count()} passages")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip("\n".join(str(p) for p in collection.sources()))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in chosen else Qt.CheckState.Unchecked)
            self.list.addItem(item)
            if name == self._selected_name:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self._update_enabled()

    def selected(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _update_enabled(self) -> None:
        busy, chosen = self.panel.indexing, self.selected() is not None
        for button in (self.add_files, self.add_folder, self.reindex, self.delete):
            button.setEnabled(chosen and not busy)
        self.new_button.setEnabled(not busy)
        self.progress.setVisible(busy)
        self.cancel.setVisible(busy)

    @Slot(QListWidgetItem)
    def _ticked(self, item: QListWidgetItem) -> None:
        self.list.setCurrentItem(item)
        names = [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())
                 if self.list.item(i).checkState() == Qt.CheckState.Checked]
        self.panel.session.use_collections(names)
        self._update_enabled()

    @Slot()
    def ask_new(self) -> None:
        ask_text(self, "New collection", "Name of the collection:", "", self.create)

    def create(self, name: str) -> None:
        name = name.strip()
        if not name:
            return
        self.panel.collections.get(name)
        self._selected_name = name
        self.panel.session.use_collections([*self.panel.session.collections, name])  # a new one is for this chat
        self.refresh()

    @Slot()
    def ask_files(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Add files", "", DOCUMENT_FILTER)
        self.add([Path(n) for n in names])

    @Slot()
    def ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder")
        self.add([Path(folder)] if folder else [])

    def add(self, paths: list[Path]) -> None:
        name = self.selected()
        if paths and name is not None:
            self._start(name, paths)

    @Slot()
    def reindex_selected(self) -> None:
        name = self.selected()
        if name is not None:
            self._start(name, [])

    def _start(self, name: str, paths: list[Path]) -> None:
        self._selected_name = name
        if self.panel.index(name, paths):
            self.progress.setRange(0, 0)
            self.status.setText(f"Indexing {name}…")
            self._update_enabled()

    @Slot()
    def ask_delete(self) -> None:
        name = self.selected()
        if name is not None:
            confirm(self, "Delete the collection", f"Delete “{name}” and its index? Your files are not touched.",
                    lambda: self.remove(name))

    def remove(self, name: str) -> None:
        self.panel.collections.delete(name)  # its text is overwritten in the index, then the file goes
        self.panel.session.use_collections([c for c in self.panel.session.collections if c != name])
        self._selected_name = None
        self.refresh()

    @Slot(object)
    def _progressed(self, progress: IndexProgress) -> None:
        self.progress.setRange(0, max(progress.files_total, 1))
        self.progress.setValue(progress.files_done)
        self.status.setText(progress_text(progress))

    @Slot(object)
    def _indexed(self, report: object) -> None:
        self.panel.wait(5.0)  # the thread has sent its last word: let it end before the buttons come back
        self.status.setText(report_text(report) if isinstance(report, IndexReport) else f"Indexing failed: {report}")
        self.refresh()
