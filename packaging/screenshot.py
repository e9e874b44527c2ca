"""`make screenshot`: render the main window mid-conversation to docs/screenshot.png, and the dialogs.

Run from the project folder under a virtual display (`make screenshot`, or
`PYTHONPATH=. xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python packaging/screenshot.py`).
Nothing in the main picture is scripted: the real engine runs "Gemma-3-270M + demo reasoning adapter"
(the app's default), and the answer and its reasoning are what that model wrote for the question,
with Think on. The question is one the demo adapter was trained on (item a-040 of its dataset,
checked by tests/convert/test_demo_data.py), and the README's caption says so: on questions it was
not trained on its medicine is often wrong.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from medgemma_models.offline import go_offline

go_offline()
os.environ.setdefault("MEDGEMMA_HOME", tempfile.mkdtemp(prefix="medgemma-screenshot-"))

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from medgemma_desktop.engine import Engine  # noqa: E402
from medgemma_desktop.history import History  # noqa: E402
from medgemma_desktop.ui.convert.convert_dialog import ConvertDialog  # noqa: E402
from medgemma_desktop.ui.dialogs.messages import ErrorDialog, NoticeDialog, problem_box  # noqa: E402
from medgemma_desktop.ui.main_window import NOTICE_SETTING, MainWindow  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "docs" / "screenshot.png"
SMALL = ROOT / "docs" / "screenshot-1280x800.png"  # a laptop's screen: nothing important may be cut off
DIALOGS = ROOT / "docs" / "dialogs"  # looked at by hand: every dialog must follow the app's theme

QUESTION = "What is the usual first-line drug for type 2 diabetes?"  # training item a-040
NEXT_QUESTION = "Which warning signs mean a patient with diabetes should see a doctor today?"


def pump(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def shoot_dialogs(window: MainWindow) -> bool:
    """The first-start notice, Convert… and two error dialogs, each as it shows over the window."""
    DIALOGS.mkdir(parents=True, exist_ok=True)
    shots = {
        "notice": NoticeDialog(window),
        "convert": ConvertDialog(window),
        "unexpected-error": ErrorDialog("RuntimeError: something odd happened",
                                        "Traceback (most recent call last):\n  ...\nRuntimeError: something odd happened",
                                        window),
        "problem": problem_box(window, "Cannot open this model", "notes.gguf is not a GGUF file (it starts with "
                               "b'this', not b'GGUF')"),
    }
    for name, dialog in shots.items():
        dialog.show()
        pump(150)
        path = DIALOGS / f"{name}.png"
        if not dialog.grab().save(str(path)):
            print(f"could not write {path}", file=sys.stderr)
            return False
        dialog.close()
        print(f"wrote {path}")
    return True


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    app.setStyle("Fusion")
    history = History()
    history.set_setting(NOTICE_SETTING, True)

    window = MainWindow(history, Engine)
    window.resize(1600, 940)
    window.show()
    path, adapters = window.library.default_choice()
    if not adapters:
        print("the demo reasoning adapter is missing: the screenshot shows it", file=sys.stderr)
        return 1
    loop = QEventLoop()
    window.model_loaded.connect(loop.quit)
    window.models.choose_model(path, adapters)
    loop.exec()
    window.chats.new_chat()
    window.composer.set_text(QUESTION)
    loop = QEventLoop()
    window.answer_finished.connect(loop.quit)
    window.send()
    loop.exec()
    cards = window.chat_view.cards()
    cards[-1].reasoning.set_expanded(True)
    window.composer.set_text(NEXT_QUESTION)
    pump(300)
    window.chat_view.verticalScrollBar().setValue(window.chat_view.verticalScrollBar().maximum())
    pump(200)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(OUT)):
        print(f"could not write {OUT}", file=sys.stderr)
        return 1
    print(f"wrote {OUT}: a real answer from the demo combination, nothing scripted")
    window.resize(1280, 800)
    pump(300)
    if not window.grab().save(str(SMALL)):
        print(f"could not write {SMALL}", file=sys.stderr)
        return 1
    print(f"wrote {SMALL}: the same window at 1280x800")
    if not shoot_dialogs(window):
        return 1
    window.shutdown()
    history.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
