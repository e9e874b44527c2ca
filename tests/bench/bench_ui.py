"""`make bench`: the window's responsiveness and overhead, on the real Gemma-3-270M, in one run.

1. The largest gap between ticks of a 10 ms timer on the UI thread while a model loads and
   while an answer streams, the worst of three runs each (target < 50 ms; the timer's own gap
   with nothing running is shown beside it as the reference).
2. Decode tokens/s as the chat view receives them against `medgemma-desktop --self-test --json`
   on the same file (target >= 0.95).
3. Time to first token of the 6th turn of a chat against the 1st, for new messages of the same
   length (target <= 1.5x, by KV-cache reuse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from medgemma_models.offline import go_offline  # noqa: E402

go_offline()
os.environ.setdefault("MEDGEMMA_HOME", tempfile.mkdtemp(prefix="medgemma-bench-ui-"))

import llama_cpp  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QEventLoop, QObject, QTimer, Slot  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from medgemma_desktop.engine import Engine  # noqa: E402
from medgemma_desktop.events import AnswerPiece, ReasoningPiece  # noqa: E402
from medgemma_desktop.history import History  # noqa: E402
from medgemma_desktop.library import model_key  # noqa: E402
from medgemma_desktop.selftest import SELF_TEST_QUESTION, SELF_TEST_TOKENS  # noqa: E402
from medgemma_desktop.ui.main_window import NOTICE_SETTING, MainWindow  # noqa: E402
from medgemma_models.store import default_model  # noqa: E402

TIMEOUT_MS = 600_000
LONG_PROMPT = "List twenty common causes of chest pain, one per line, each with a short explanation."
RUN_WORDS = ("Alpha", "Bravo", "Delta", "Oscar")
TURN_MESSAGES = [
    "Question one: what are the usual symptoms of a common cold?",
    "Question two: what are the usual symptoms of seasonal influenza?",
    "Question three: what are the usual symptoms of a strep throat?",
    "Question four: what are the usual symptoms of acute bronchitis?",
    "Question five: what are the usual symptoms of a sinus infection?",
    "Question six: what are the usual symptoms of viral pneumonia?",
]


class GapMeter:
    """A 10 ms timer on the UI thread; records the largest interval between its ticks."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.clock = QElapsedTimer()
        self.largest = 0.0

    def start(self) -> None:
        self.largest = 0.0
        self.clock.start()
        self.timer.start()

    def _tick(self) -> None:
        self.largest = max(self.largest, self.clock.nsecsElapsed() / 1e6)
        self.clock.restart()

    def stop(self) -> float:
        self.timer.stop()
        return self.largest


def wait_for(signal, action=None, timeout_ms: int = TIMEOUT_MS) -> None:
    """Run the event loop until `signal` fires (the UI thread keeps ticking meanwhile)."""
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    if action is not None:
        action()
    loop.exec()
    signal.disconnect(loop.quit)


def idle_gap(meter: GapMeter, ms: int = 1000) -> float:
    loop = QEventLoop()
    meter.start()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    return meter.stop()


def ask(window: MainWindow, text: str) -> None:
    window.composer.set_text(text)
    wait_for(window.answer_finished, window.send)


class PieceArrivals(QObject):
    """When each piece of an answer reached the GUI thread: the decode speed the chat view saw."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.times: list[float] = []
        window.bridge.generation_event.connect(self.arrived)

    @Slot(object)
    def arrived(self, event: object) -> None:
        if isinstance(event, (AnswerPiece, ReasoningPiece)):
            self.times.append(time.perf_counter())

    def tok_per_s(self) -> float:
        elapsed = self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0
        return (len(self.times) - 1) / elapsed if elapsed > 0 else 0.0


def self_test_speed(model: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "medgemma_desktop", "--self-test", "--json", "--model", str(model)],
        capture_output=True, text=True, check=True,
    )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["decode_tok_per_s"])


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    model = default_model()
    history = History()
    history.set_setting(NOTICE_SETTING, True)
    window = MainWindow(history, Engine)
    window.show()
    meter = GapMeter()
    key = model_key(model)

    reference = idle_gap(meter)
    history.set_model_settings(key, {"temperature": 0.0, "max_tokens": 128, "n_ctx": 2048})
    # Three loads and three answers: the figure is the worst run's largest gap, and every run must
    # stay within the target (a median hid a 56 ms stall in one of three runs).
    load_gaps = []
    for attempt in range(3):
        meter.start()
        wait_for(window.model_loaded, (lambda: window.models.choose_model(model)) if attempt == 0 else window.models.reload_model)
        load_gaps.append(meter.stop())

    # Decode speed: the view's own count of arriving pieces against the self-test, alternated
    # and best of five each, so a burst of load from elsewhere on the machine hits both alike.
    view_speeds, engine_speeds, stream_gaps, same_run = [], [], [], []
    for _ in range(3):
        window.chats.new_chat()
        meter.start()
        ask(window, LONG_PROMPT)
        stream_gaps.append(meter.stop())
    # The same question and greedy settings as the self-test; the gap timer (100 wake-ups a
    # second) is off while speed is measured.
    panel = window.settings_panel
    panel.top_k.setValue(1)
    panel.top_p.setValue(1.0)
    panel.max_tokens.setValue(SELF_TEST_TOKENS)
    arrivals = PieceArrivals(window)
    for _ in range(5):
        engine_speeds.append(self_test_speed(model))
        window.chats.new_chat()
        arrivals.times.clear()
        ask(window, SELF_TEST_QUESTION)
        view_speeds.append(arrivals.tok_per_s())
        same_run.append(view_speeds[-1] / window.session.last_stats.decode_tok_per_s)
    generated = window.session.last_stats.generated_tokens

    # TTFT by turn: same-length new messages, short answers; four chats, the fastest of each turn.
    window.settings_panel.max_tokens.setValue(24)
    # Each chat's messages start with their own word: otherwise the first turn of the next chat
    # would find itself in the KV cache and not be a first turn at all.
    runs, lengths, new_tokens = [], set(), []
    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)  # counts tokens, nothing else
    for word in RUN_WORDS:
        window.chats.new_chat()
        ttfts = []
        for text in TURN_MESSAGES:
            ask(window, f"{word}. {text}")
            stats = window.session.last_stats
            ttfts.append(stats.ttft_ms)
            lengths.add(len(vocab.tokenize(f"{word}. {text}".encode(), add_bos=False, special=True)))
            new_tokens.append(stats.prompt_tokens - stats.reused_tokens)
        runs.append(ttfts)
    ttfts = [min(column) for column in zip(*runs, strict=True)]
    reused = window.session.last_stats.reused_tokens

    window.shutdown()
    history.close()
    app.processEvents()

    view, engine = max(view_speeds), max(engine_speeds)
    print(f"model: {model.name}")
    print(f"UI timer (10 ms) largest gap, idle reference:   {reference:6.1f} ms")
    print(f"UI timer (10 ms) largest gap, model loading:    {max(load_gaps):6.1f} ms  (worst run; target < 50 ms; runs: "
          + ", ".join(f"{g:.1f}" for g in load_gaps) + ")")
    print(f"UI timer (10 ms) largest gap, answer streaming: {max(stream_gaps):6.1f} ms  (worst run; target < 50 ms; runs: "
          + ", ".join(f"{g:.1f}" for g in stream_gaps) + ")")
    print(f"decode tok/s seen by the chat view: {view:7.1f}  ({generated} tokens, the self-test's question)")
    print(f"decode tok/s of --self-test:        {engine:7.1f}")
    print(f"ratio view / self-test: {view / engine:.3f}  (target >= 0.95)")
    print("ratio view / engine's own count in the same answer: " + ", ".join(f"{r:.3f}" for r in same_run))
    print(f"TTFT turn 1: {ttfts[0]:.1f} ms, turn 6: {ttfts[5]:.1f} ms  (new messages of {sorted(lengths)} tokens;"
          f" turn 6 reused {reused} tokens; evaluated per turn: {new_tokens[:6]})")
    print(f"ratio TTFT turn 6 / turn 1: {ttfts[5] / ttfts[0]:.2f}  (target <= 1.5)")
    print("TTFT by turn (ms): " + ", ".join(f"{t:.1f}" for t in ttfts))
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"bench_ui: {time.perf_counter() - start:.0f} s")
    sys.exit(code)
