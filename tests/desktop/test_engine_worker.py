"""The engine worker in its own thread: loads, refusals, cancel, inspection, streaming and stop."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from PySide6.QtCore import QObject, QThread, Signal, Slot

from medgemma_desktop.generation import CANNOT_OPEN, GenerationRequest, Loaded, LoadRequest
from medgemma_desktop.settings import ChatSettings, LoadOptions
from medgemma_desktop.ui.engine_worker import EngineWorker
from medgemma_desktop.ui.gui_gc import GuiThreadCollector
from medgemma_models.gguf_info import ModelInfo
from tests.support.scripted_engine import THINK_SCRIPT, ScriptedEngine

TIMEOUT_MS = 30_000


class Requests(QObject):
    """Sends requests to the worker the way the window does: queued signals across threads."""

    load = Signal(object)
    inspect = Signal(object)
    generate = Signal(object)


@pytest.fixture
def worker(qtbot) -> Iterator[tuple[EngineWorker, Requests]]:
    collector = GuiThreadCollector()  # as the window does while its engine thread runs
    thread = QThread()
    worker = EngineWorker(partial(ScriptedEngine, delay=0.01))
    worker.moveToThread(thread)
    requests = Requests()
    requests.load.connect(worker.load)
    requests.inspect.connect(worker.inspect)
    requests.generate.connect(worker.generate)
    thread.start()
    yield worker, requests
    worker.request_stop()
    thread.quit()
    thread.wait()
    worker.shutdown()
    collector.stop()


class Collector(QObject):
    """Receives on the test's (GUI) thread: a slot of an object living there, not a lambda."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Path, object]] = []

    @Slot(object, object)
    def add(self, path: Path, info: object) -> None:
        self.seen.append((path, info))


def request(text: str, max_tokens: int = 256) -> GenerationRequest:
    settings = ChatSettings.from_dict({"preset": "medical-cot-270m", "max_tokens": max_tokens})
    message = type("M", (), {"role": "user", "text": text, "reasoning": ""})()
    return GenerationRequest(settings.preset_spec, [message], settings.generation(), None, True, False)


def test_load_then_stream_an_answer(qtbot, worker, gemma_270m: Path) -> None:
    engine_worker, requests = worker
    progress: list[float] = []
    engine_worker.load_progress.connect(progress.append)
    with qtbot.waitSignal(engine_worker.loaded, timeout=TIMEOUT_MS) as blocker:
        requests.load.emit(LoadRequest(gemma_270m, LoadOptions(n_ctx=2048)))
    loaded = blocker.args[0]
    assert isinstance(loaded, Loaded) and loaded.path == gemma_270m and loaded.n_ctx == 2048
    assert len(loaded.sha256) == 64 and progress[-1] == 1.0
    pieces: list[str] = []
    engine_worker.piece.connect(pieces.append)
    with qtbot.waitSignal(engine_worker.finished, timeout=TIMEOUT_MS) as blocker:
        requests.generate.emit(request("Fever?"))
    assert "".join(pieces) == "".join(THINK_SCRIPT)
    assert blocker.args[0].finish_reason == "stop"


def test_stop_ends_the_answer_within_a_piece(qtbot, worker, gemma_270m: Path) -> None:
    engine_worker, requests = worker
    with qtbot.waitSignal(engine_worker.loaded, timeout=TIMEOUT_MS):
        requests.load.emit(LoadRequest(gemma_270m, LoadOptions()))
    pieces: list[str] = []
    engine_worker.piece.connect(pieces.append)
    with qtbot.waitSignal(engine_worker.finished, timeout=TIMEOUT_MS) as blocker:
        engine_worker.clear_flags()
        requests.generate.emit(request("Fever?"))
        qtbot.waitUntil(lambda: len(pieces) >= 3, timeout=TIMEOUT_MS)
        engine_worker.request_stop()
    assert blocker.args[0].finish_reason == "cancelled" and len(pieces) < len(THINK_SCRIPT)


def test_refusals_and_cancel_keep_no_engine(qtbot, worker, tmp_path: Path, gemma_270m: Path) -> None:
    engine_worker, requests = worker
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("hello")
    with qtbot.waitSignal(engine_worker.load_failed, timeout=TIMEOUT_MS) as blocker:
        requests.load.emit(LoadRequest(not_a_model, LoadOptions()))
    assert blocker.args[0] == CANNOT_OPEN and "notes.gguf" in blocker.args[1]
    engine_worker.request_cancel_load()  # a cancel before the load starts applies to it
    with qtbot.waitSignal(engine_worker.load_cancelled, timeout=TIMEOUT_MS):
        requests.load.emit(LoadRequest(gemma_270m, LoadOptions()))
    with qtbot.waitSignal(engine_worker.generation_failed, timeout=TIMEOUT_MS) as blocker:
        requests.generate.emit(request("Anyone there?"))
    assert blocker.args == ["No model is loaded."]


def test_inspect_reports_facts_or_the_problem(qtbot, worker, tmp_path: Path, gemma_270m: Path) -> None:
    engine_worker, requests = worker
    broken = tmp_path / "empty.gguf"
    broken.write_bytes(b"")
    collector = Collector()
    seen = collector.seen
    engine_worker.model_inspected.connect(collector.add)
    requests.inspect.emit([gemma_270m, broken])
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=TIMEOUT_MS)
    assert seen[0][0] == gemma_270m and isinstance(seen[0][1], ModelInfo)
    assert seen[1][0] == broken and "empty" in str(seen[1][1])
