"""A global exception hook: an uncaught error becomes a dialog with copyable details, not a dead app."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QWidget

from .dialogs.messages import ErrorDialog

log = logging.getLogger(__name__)


class ExceptionReporter(QObject):
    """Lives on the GUI thread; the hook may fire on any thread and reaches it through a signal."""

    raised = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._window = parent
        self.dialogs: list[ErrorDialog] = []
        self.raised.connect(self.show_dialog)
        self._previous = sys.excepthook
        self._previous_thread = threading.excepthook

    def hook(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self._previous(exc_type, exc, tb)
            return
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        log.error("uncaught exception\n%s", details)
        summary = f"{exc_type.__name__}: {exc}".splitlines()[0]
        self.raised.emit(summary, details)

    def thread_hook(self, args: threading.ExceptHookArgs) -> None:
        self.hook(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)

    @Slot(str, str)
    def show_dialog(self, summary: str, details: str) -> None:
        dialog = ErrorDialog(summary, details, self._window)
        self.dialogs.append(dialog)
        dialog.finished.connect(self._forget)
        dialog.open()  # not exec(): the window and its streaming answer keep running

    @Slot()
    def _forget(self) -> None:
        dialog = self.sender()
        if dialog in self.dialogs:
            self.dialogs.remove(dialog)

    def install(self) -> None:
        sys.excepthook = self.hook
        threading.excepthook = self.thread_hook

    def uninstall(self) -> None:
        sys.excepthook = self._previous
        threading.excepthook = self._previous_thread
