"""Start the desktop window: offline environment, Qt application, error hook, first-start notice."""

from __future__ import annotations

import sys
from pathlib import Path

from medgemma_models.offline import go_offline


def run_app(model: Path | None = None, argv: list[str] | None = None) -> int:
    """Open the main window (with `model`, else the last model used, else the embedded one)."""
    # Before anything could import huggingface_hub: the app never goes online.
    go_offline()

    from PySide6.QtWidgets import QApplication

    from medgemma_models.errors import MedGemmaError

    from .engine import Engine
    from .history import History
    from .ui.excepthook import ExceptionReporter
    from .ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("MedGemma Edge")
    app.setStyle("Fusion")
    try:
        history = History()
    except MedGemmaError as exc:
        print(f"medgemma-desktop: {exc}", file=sys.stderr)
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
