"""Cyclic garbage is collected on the GUI thread only, while the window's engine thread runs.

Python's cyclic collector runs on whichever thread's allocation crosses its threshold, and the
engine thread allocates on every load-progress step and every token. A Qt object finalised
there (a closed window's or dialog's widget tree held in a reference cycle) is queued by
shiboken to be deleted on the GUI thread, and the GUI thread then crashed running that queue:
SIGSEGV in `Shiboken::BindingManager::runDeletionInMainThread` while a model loaded (seen in
CI and locally). So the automatic collector is switched off and a GUI-thread timer collects
instead. Objects freed by reference counting are not affected.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer, Slot

# Mostly the youngest objects (microseconds); about once a minute, everything (~30 ms in the app).
COLLECT_INTERVAL_MS = 500

# Collectors are made and stopped on the GUI thread only (their timer needs it): no lock.
_holders = 0
_was_enabled = False


def _hold() -> None:
    global _holders, _was_enabled
    if _holders == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _holders += 1


def _release() -> None:
    global _holders
    _holders -= 1
    if _holders == 0 and _was_enabled:
        gc.enable()


class GuiThreadCollector(QObject):
    """While alive and not stopped, cyclic garbage is collected by this object's timer only.

    Several may overlap (a test's windows): the automatic collector comes back when the last stops.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(COLLECT_INTERVAL_MS)
        self._timer.timeout.connect(self.collect)
        _hold()
        self._timer.start()

    @Slot()
    def collect(self) -> None:
        """The youngest objects every tick, older ones as their thresholds say.

        Every tick, not when the first threshold is crossed: that count drops as objects are
        freed, so the peaks between ticks, which would have set the automatic collector off, go unseen.
        """
        counts, thresholds = gc.get_count(), gc.get_threshold()
        gc.collect(2 if counts[2] > thresholds[2] else 1 if counts[1] > thresholds[1] else 0)

    def stop(self) -> None:
        """Hand collection back, once the thread it guarded against has ended."""
        if not self._timer.isActive():
            return
        self._timer.stop()
        _release()
