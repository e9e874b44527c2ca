"""Cyclic garbage holding Qt objects is collected on the GUI thread, never on the engine thread.

Collected on the engine thread, a widget is queued for deletion on the GUI thread, which then
crashed (SIGSEGV in shiboken's `runDeletionInMainThread`, seen during a model load).
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from PySide6.QtWidgets import QWidget

from medgemma_desktop.answer import OffloadReport
from medgemma_desktop.settings import LoadParams
from tests.support.scripted_engine import ScriptedEngine
from tests.support.window_steps import load_model


class AllocatingEngine(ScriptedEngine):
    """Loads like the scripted engine after allocating enough containers, on the engine thread,
    to cross the collector's first threshold many times over."""

    def load(self, path: Path, options: LoadParams = LoadParams(), progress=None) -> OffloadReport:
        for _ in range(50):
            _ = [[] for _ in range(gc.get_threshold()[0] * 4)]
        return super().load(path, options, progress)


class CycleWitness:
    """Holds a widget that holds it back: only the cyclic collector frees the pair. Records where."""

    def __init__(self, threads: list[str]) -> None:
        self.threads = threads
        self.widget = QWidget()
        self.widget.witness = self

    def __del__(self) -> None:
        self.threads.append(threading.current_thread().name)


def test_a_widget_cycle_is_collected_on_the_gui_thread_while_the_engine_thread_allocates(
        qtbot, make_window, gemma_270m: Path) -> None:
    window = make_window(engine_factory=AllocatingEngine, load=False)
    threads: list[str] = []
    gc.collect()
    CycleWitness(threads)  # unreachable at once: a cycle with a widget
    load_model(qtbot, window, gemma_270m)
    qtbot.waitUntil(lambda: threads != [], timeout=10_000)  # not leaked: the window's timer collects it
    assert threads == [threading.main_thread().name]


def test_the_automatic_collector_comes_back_when_the_last_window_shuts_down(qtbot, make_window) -> None:
    assert gc.isenabled()
    first, second = make_window(load=False), make_window(load=False)
    assert not gc.isenabled()
    first.shutdown()
    assert not gc.isenabled()  # the second window's engine thread still runs
    second.shutdown()
    assert gc.isenabled()
