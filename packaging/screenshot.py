"""`make screenshot`: render the main window mid-conversation to docs/screenshot.png.

Run from the project folder under a virtual display (`make screenshot`, or
`PYTHONPATH=. xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python packaging/screenshot.py`:
the scripted engine is imported from the `tests.support` package).
The model facts, offload status and settings are the real embedded Gemma-3-270M's; the words of the
conversation come from a scripted engine (tests/support/scripted_engine.py), because a 270M
model's own answers would not show what the window does with reasoning and Markdown.
"""

from __future__ import annotations

import os
import sys
import tempfile
from functools import partial
from pathlib import Path

from medgemma_models.offline import go_offline

go_offline()
os.environ.setdefault("MEDGEMMA_HOME", tempfile.mkdtemp(prefix="medgemma-screenshot-"))

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from medgemma_desktop.history import History  # noqa: E402
from medgemma_desktop.library import model_key  # noqa: E402
from medgemma_desktop.ui.convert_dialog import ConvertDialog  # noqa: E402
from medgemma_desktop.ui.dialogs import ErrorDialog, NoticeDialog, problem_box  # noqa: E402
from medgemma_desktop.ui.main_window import NOTICE_SETTING, MainWindow  # noqa: E402
from tests.support.scripted_engine import ScriptedEngine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "docs" / "screenshot.png"
DIALOGS = ROOT / "docs" / "dialogs"  # looked at by hand: every dialog must follow the app's theme

EARLIER_CHATS = ["Iron deficiency and fatigue", "Reading a lipid panel", "Migraine vs tension headache"]
FIRST_QUESTION = "A 34-year-old has had a dry cough, fever of 38.9 °C and aching muscles for two days. What is most likely?"
FIRST_REASONING = ("Acute onset, high fever, myalgia and dry cough in an otherwise healthy adult. "
                   "It is winter, so influenza fits best; COVID-19 and other viral infections are close alternatives.")
FIRST_ANSWER = ("**Most likely: influenza** (a viral respiratory infection).\n\n"
                "Other possibilities:\n\n"
                "- COVID-19\n- another viral upper respiratory infection\n- early pneumonia, if breathing becomes hard\n")
SECOND_QUESTION = "Which warning signs mean they should see a doctor today?"
SECOND_SCRIPT = (
    "<think>", "The question", " asks for red flags.", " In influenza", " these are breathing", " difficulty,",
    " chest pain,", " confusion,", " dehydration", " and fever", " beyond three", " days, or", " worsening after",
    " improvement.", " Risk groups", " need a lower", " threshold.", "</think>",
    "See a doctor **today** if any of these appear:\n\n",
    "| Sign | Why it matters |\n|---|---|\n",
    "| Shortness of breath or chest pain | possible pneumonia |\n",
    "| Confusion or drowsiness | low oxygen or sepsis |\n",
    "| No urine for 12 hours | dehydration |\n",
    "| Fever above 39.5 °C for more than 3 days | bacterial infection |\n\n",
    "People over 65, pregnant people and anyone with heart or lung disease should call sooner. ",
    "*In an emergency, call your local emergency number.*",
)


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
    for title in EARLIER_CHATS:
        chat = history.create_chat(title)
        history.add_message(chat, "user", title)
    chat = history.create_chat("Dry cough, fever and aching muscles")
    history.add_message(chat, "user", FIRST_QUESTION)
    history.add_message(chat, "model", FIRST_ANSWER, reasoning=FIRST_REASONING,
                        meta={"reasoning_tokens": 38, "stats": {"generated_tokens": 96, "decode_tok_per_s": 61.8,
                                                                 "finish_reason": "stop"}})

    window = MainWindow(history, partial(ScriptedEngine, script=SECOND_SCRIPT, delay=0.015))
    window.resize(1600, 940)
    window.show()
    window.history.set_model_settings(model_key(None), {"preset": "medical-cot-270m", "temperature": 0.6})
    loop = QEventLoop()
    window.model_loaded.connect(loop.quit)
    window.models.choose_model(None)
    loop.exec()
    window.chats.open_chat(chat)
    window.composer.set_text(SECOND_QUESTION)
    loop = QEventLoop()
    window.answer_finished.connect(loop.quit)
    window.send()
    loop.exec()
    cards = window.chat_view.cards()
    cards[-1].reasoning.set_expanded(True)
    window.composer.set_text("Could it still be COVID-19 if the rapid test was negative?")
    pump(300)
    window.chat_view.verticalScrollBar().setValue(window.chat_view.verticalScrollBar().maximum())
    pump(200)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(OUT)):
        print(f"could not write {OUT}", file=sys.stderr)
        return 1
    print(f"wrote {OUT}")
    if not shoot_dialogs(window):
        return 1
    window.shutdown()
    history.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
