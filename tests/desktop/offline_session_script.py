"""A whole window session, driven offscreen, for `test_offline_strace.py` to run under strace.

Load the model, two answers, both exports, then a conversion through the Convert dialog's child
process. Prints one JSON line with what happened; exits 0 when every step worked.

    python offline_session_script.py MODEL.gguf BASE_DIR ADAPTER_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

STEP_TIMEOUT_S = 300


def main(model: Path, base: Path, adapter: Path, out: Path) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from medgemma_models.offline import go_offline

    go_offline()
    from PySide6.QtWidgets import QApplication

    from medgemma_desktop.engine import Engine
    from medgemma_desktop.history import History
    from medgemma_desktop.library import model_key
    from medgemma_desktop.ui.main_window import NOTICE_SETTING, MainWindow

    app = QApplication(sys.argv[:1])
    history = History()
    history.set_setting(NOTICE_SETTING, True)
    history.set_model_settings(model_key(model), {"temperature": 0.0, "max_tokens": 16, "n_ctx": 2048})
    window = MainWindow(history, Engine)
    window.show()

    def wait(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.01)

    loaded: list[bool] = []
    window.model_loaded.connect(lambda: loaded.append(True))
    window.models.choose_model(model)
    wait(lambda: bool(loaded) or bool(window.errors), "the model")
    answers = 0
    for question in ("What is hypertension?", "How is it treated?"):
        window.composer.set_text(question)
        window.send()
        wait(lambda: not window.session.busy, "an answer")
        answers += 1
    exports = [window.chats.export_chat(out / "chat.md", "markdown"), window.chats.export_chat(out / "chat.json", "json")]
    window.models.show_convert_dialog()
    dialog = window.models.convert_dialog
    dialog.base.setText(str(base))
    dialog.add_adapter(str(adapter))
    dialog.out.setText(str(out / "tiny.gguf"))
    for quant, box in dialog.quant_boxes.items():
        box.setChecked(quant == "q8_0")
    dialog.start()
    wait(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), "the conversion")
    result = {"loaded": bool(loaded), "answers": answers, "cards": len(window.chat_view.cards()),
              "exports": exports, "converted": dialog.outputs, "conversion_error": dialog.error,
              "errors": window.errors}
    dialog.reject()
    window.close()
    history.close()
    print(json.dumps(result))
    ok = loaded and result["cards"] == 4 and all(exports) and dialog.error is None and not window.errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*(Path(a) for a in sys.argv[1:5])))
