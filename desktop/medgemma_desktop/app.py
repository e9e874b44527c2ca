"""Start the desktop window: offline environment, Qt application, error hook, first-start notice."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from medgemma_models.offline import go_offline

if TYPE_CHECKING:
    from PySide6.QtWidgets import QApplication

    from .history import History

# The name of the .desktop entry the packages install: on Wayland it is the window's app_id, so the
# dock shows the entry's icon (on X11 the WM_CLASS is the application name, the entry's StartupWMClass).
DESKTOP_FILE_NAME = "medgemma-edge"
# Package data, so a run from a checkout has the icon too; PNG because the bundle leaves QtSvg out.
WINDOW_ICON = ("ui", "icons", "medgemma-edge-256.png")


def run_app(model: Path | None = None, argv: list[str] | None = None) -> int:
    """Open the main window (with `model`, else the last model used, else the embedded one)."""
    # Before anything could import huggingface_hub: the app never goes online.
    go_offline()

    from PySide6.QtWidgets import QApplication

    from .engine import Engine
    from .ui.excepthook import ExceptionReporter
    from .ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    set_identity(app)
    app.setStyle("Fusion")
    history = open_history()
    if history is None:
        return 1
    window = MainWindow(history, Engine)
    reporter = ExceptionReporter(window)
    reporter.install()
    window.show()
    window.show_notice_if_needed()
    # The model asked for, else the one (with its adapters) used last, else the app's default:
    # "Gemma-3-270M + demo reasoning adapter" when this build ships the adapter.
    start, adapters = (model, ()) if model is not None else window.library.start_choice()
    if not window.models.choose_model(start, adapters) and start is not None:
        window.models.choose_model(None)  # a remembered file that is now broken: fall back to the embedded model
    try:
        return app.exec()
    finally:
        reporter.uninstall()
        window.shutdown()
        history.close()


def set_identity(app: QApplication) -> None:
    """The name, desktop entry and icon the desktop shows for the app's windows."""
    from PySide6.QtGui import QIcon

    app.setApplicationName("MedGemma Edge")
    app.setDesktopFileName(DESKTOP_FILE_NAME)
    app.setWindowIcon(QIcon(str(resources.files(__package__).joinpath(*WINDOW_ICON))))


def open_history(ask: Callable[[str, str], bool] | None = None,
                 tell: Callable[[str, str], None] | None = None) -> History | None:
    """The chat history; a damaged file is moved aside for a fresh one if the user agrees (None: no history).
    `ask` and `tell` default to the start-up boxes of `ui.dialogs.startup` (tests pass their own)."""
    from medgemma_models.errors import MedGemmaError

    from .history import History, HistoryCorruptError, move_aside
    from .ui.dialogs import startup

    ask = ask or startup.ask_yes_no
    tell = tell or startup.tell

    try:
        return History()
    except HistoryCorruptError as exc:
        question = (f"{exc}.\n\nMove it aside (it is kept as history.corrupt-<time>.sqlite3) "
                    "and start with an empty chat history?")
        if not ask("The chat history is damaged", question):
            return None
        try:
            move_aside(exc.path)
            return History()
        except MedGemmaError as again:
            tell("Cannot open the chat history", str(again))
            return None
    except MedGemmaError as exc:
        tell("Cannot open the chat history", str(exc))
        return None
