"""Start the desktop window: offline environment, Qt application, error hook, first-start notice."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def run_app(model: Path | None = None, argv: list[str] | None = None) -> int:
    """Open the main window (with `model`, else the last model used, else the embedded one)."""
    # Set before anything could import huggingface_hub: the app never goes online.
    os.environ["HF_HUB_OFFLINE"] = "1"

    from PySide6.QtWidgets import QApplication

    from medgemma_models.errors import MedGemmaError

    from .engine import Engine
    from .history import History
    from .ui.excepthook import ExceptionReporter
    from .ui.main_window import LAST_MODEL_SETTING, MainWindow

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
    last = history.get_setting(LAST_MODEL_SETTING)
    start = model if model is not None else (Path(last) if last and Path(last).is_file() else None)
    if not window.choose_model(start) and start is not None:
        window.choose_model(None)  # a remembered file that is now broken: fall back to the embedded model
    try:
        return app.exec()
    finally:
        reporter.uninstall()
        window.shutdown()
        history.close()
