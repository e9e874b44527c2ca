"""The window's bridge to the runtime: loads, refusals, cancel, inspection, streaming and stop,
each event received on the GUI thread through queued signals."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from PySide6.QtCore import QObject, Slot

from medgemma_desktop.events import AnswerPiece, Failed, Finished, ReasoningPiece
from medgemma_desktop.generation import CANNOT_OPEN, GenerationRequest, Loaded, ModelRequest
from medgemma_desktop.runtime import Runtime
from medgemma_desktop.settings import ChatSettings, LoadParams
from medgemma_desktop.ui.gui_gc import GuiThreadCollector
from medgemma_desktop.ui.runtime_bridge import RuntimeBridge
from medgemma_models.gguf_info import ModelInfo
from tests.support.scripted_engine import THINK_SCRIPT, ScriptedEngine, script_reasoning

TIMEOUT_MS = 30_000


@pytest.fixture
def bridge(qtbot) -> Iterator[RuntimeBridge]:
    collector = GuiThreadCollector()  # as the window does while the engine thread runs
    runtime = Runtime(partial(ScriptedEngine, delay=0.01))
    yield RuntimeBridge(runtime)
    runtime.close()
    collector.stop()


class Collector(QObject):
    """Receives on the test's (GUI) thread: a slot of an object living there, not a lambda."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Path, object]] = []
        self.events: list[object] = []

    @Slot(object, object)
    def add(self, path: Path, info: object) -> None:
        self.seen.append((path, info))

    @Slot(object)
    def received(self, event: object) -> None:
        self.events.append(event)

    def text(self, kind: type) -> str:
        return "".join(e.text for e in self.events if isinstance(e, kind))

    def last(self) -> object:
        return self.events[-1] if self.events else None


def request(text: str, max_tokens: int = 256) -> GenerationRequest:
    settings = ChatSettings.from_dict({"preset": "medical-cot-270m", "max_tokens": max_tokens})
    message = type("M", (), {"role": "user", "text": text, "reasoning": "", "image_ids": ()})()
    return GenerationRequest(settings.preset_spec, [message], settings.sampling_params(), None, True, False)


def answer(qtbot, bridge: RuntimeBridge, text: str) -> Collector:
    collector = Collector()
    bridge.generation_event.connect(collector.received)
    bridge.runtime.generate(request(text), bridge.deliver)
    return collector


def test_load_then_stream_an_answer(qtbot, bridge: RuntimeBridge, gemma_270m: Path) -> None:
    progress: list[float] = []
    bridge.load_progress.connect(progress.append)
    with qtbot.waitSignal(bridge.loaded, timeout=TIMEOUT_MS) as blocker:
        bridge.load(ModelRequest(gemma_270m, (), LoadParams(n_ctx=2048)))
    loaded = blocker.args[0]
    assert isinstance(loaded, Loaded) and loaded.path == gemma_270m and loaded.n_ctx == 2048
    assert len(loaded.sha256) == 64 and progress[-1] == 1.0
    seen = answer(qtbot, bridge, "Fever?")
    qtbot.waitUntil(lambda: isinstance(seen.last(), Finished), timeout=TIMEOUT_MS)
    # The split happened in the generation path: the window gets reasoning and answer apart.
    assert (seen.text(ReasoningPiece), seen.text(AnswerPiece)) == script_reasoning(THINK_SCRIPT)
    assert seen.last().stats.finish_reason == "stop" and seen.last().text == "".join(THINK_SCRIPT)


def test_stop_ends_the_answer_within_a_piece(qtbot, bridge: RuntimeBridge, gemma_270m: Path) -> None:
    with qtbot.waitSignal(bridge.loaded, timeout=TIMEOUT_MS):
        bridge.load(ModelRequest(gemma_270m))
    collector = Collector()
    bridge.generation_event.connect(collector.received)
    job = bridge.runtime.generate(request("Fever?"), bridge.deliver)
    qtbot.waitUntil(lambda: len(collector.events) >= 3, timeout=TIMEOUT_MS)
    job.cancel()
    qtbot.waitUntil(lambda: isinstance(collector.last(), Finished), timeout=TIMEOUT_MS)
    assert collector.last().stats.finish_reason == "cancelled"
    assert collector.last().stats.generated_tokens < len(THINK_SCRIPT)


def test_refusals_and_cancel_keep_no_engine(qtbot, bridge: RuntimeBridge, tmp_path: Path, gemma_270m: Path) -> None:
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("hello")
    with qtbot.waitSignal(bridge.load_failed, timeout=TIMEOUT_MS) as blocker:
        bridge.load(ModelRequest(not_a_model))
    assert blocker.args[0] == CANNOT_OPEN and "notes.gguf" in blocker.args[1]
    with qtbot.waitSignal(bridge.load_cancelled, timeout=TIMEOUT_MS):
        bridge.load(ModelRequest(gemma_270m))
        bridge.cancel_load()  # a cancel before the load starts applies to it
    seen = answer(qtbot, bridge, "Anyone there?")
    qtbot.waitUntil(lambda: seen.last() is not None, timeout=TIMEOUT_MS)
    assert seen.events == [Failed("No model is loaded.")]


def test_inspect_reports_facts_or_the_problem(qtbot, bridge: RuntimeBridge, tmp_path: Path, gemma_270m: Path) -> None:
    broken = tmp_path / "empty.gguf"
    broken.write_bytes(b"")
    collector = Collector()
    seen = collector.seen
    bridge.model_inspected.connect(collector.add)
    bridge.inspect([gemma_270m, broken])
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=TIMEOUT_MS)
    assert seen[0][0] == gemma_270m and isinstance(seen[0][1], ModelInfo)
    assert seen[1][0] == broken and "empty" in str(seen[1][1])
