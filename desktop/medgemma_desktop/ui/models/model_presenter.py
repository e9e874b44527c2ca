"""The models as the window shows them: the picker, loading with its progress and Cancel, the
settings panel of the model in use, Open GGUF… (a model, or an adapter put on its base) and Convert….

The state is `ModelLibrary`'s (Qt-free); the loads run on the runtime's engine thread, and which
file goes on which base is `resolve`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QFileDialog, QWidget

from medgemma_models.errors import MedGemmaError
from medgemma_models.gguf_info import ModelInfo
from medgemma_models.store import models_dir

from ...adapter_files import AdapterFile, is_adapter
from ...generation import CANNOT_OPEN, COULD_NOT_LOAD, AdapterUse, Loaded, ModelRequest
from ...history import HistoryWriteError
from ...library import ModelEntry, ModelLibrary, adapter_records, describe
from ...resolve import AdapterMatch, resolve_adapter
from ...session import ChatSession
from ...settings import ChatSettings, LoadSettings
from ...vision_files import find_model, is_mmproj_name
from ..convert.convert_dialog import ConvertDialog
from .model_bar import ModelBar
from ..runtime_bridge import RuntimeBridge
from .settings_panel import SettingsPanel
from ..status_bar import StatusBar

log = logging.getLogger(__name__)


def _one_line(exc: BaseException) -> str:
    """An error as one short line for a dialog (a message from a broken file can be anything)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "\u2026"


class ModelPresenter(QObject):
    model_loaded = Signal()
    vision_changed = Signal(bool)  # the model now in use can (or cannot) see images
    state_changed = Signal()  # a load started or ended: what can be clicked changes

    def __init__(self, library: ModelLibrary, session: ChatSession, bridge: RuntimeBridge, model_bar: ModelBar,
                 settings_panel: SettingsPanel, status: StatusBar, report_error: Callable[[str, str], None],
                 parent: QWidget) -> None:
        super().__init__(parent)
        self.library, self.session, self.bridge = library, session, bridge
        self.model_bar, self.settings_panel, self.status = model_bar, settings_panel, status
        self.report_error = report_error
        self._window = parent
        self.convert_dialog: ConvertDialog | None = None  # the last one opened
        for signal, slot in ((bridge.model_inspected, self._on_model_inspected), (bridge.load_progress, status.set_load_progress),
                             (bridge.loaded, self._on_loaded), (bridge.load_failed, self._on_load_failed),
                             (bridge.load_cancelled, self._on_load_cancelled), (model_bar.model_chosen, self._on_entry_chosen),
                             (model_bar.open_requested, self.ask_open_model), (model_bar.convert_requested, self.show_convert_dialog),
                             (settings_panel.changed, self._on_settings_changed), (settings_panel.reload_requested, self.reload_model),
                             (status.cancel_load_requested, self.cancel_load)):
            signal.connect(slot)

    def refresh_models(self) -> None:
        """List the models; the worker reads the headers not read yet (a vocabulary takes seconds)."""
        self.model_bar.set_models(self.library.entries(), self.library.selected_key())
        unknown = self.library.to_inspect()
        if unknown:
            self.bridge.inspect(unknown)

    @Slot(object, object)
    def _on_model_inspected(self, path: Path, info: ModelInfo | AdapterMatch | str) -> None:
        self.library.set_info(path, info)
        self.refresh_models()

    @Slot(object)
    def _on_entry_chosen(self, entry: ModelEntry) -> None:
        match = self.library.adapter_info(entry.path) if entry.path is not None and not entry.adapters else None
        if match is not None:  # a store adapter whose base was not found: ask for it
            self.open_model_file(entry.path)
        else:
            self.choose_model(entry.path, entry.adapters)

    def choose_model(self, path: Path | None, adapters: Sequence[AdapterUse] = ()) -> bool:
        """Load a model (with `adapters` on top) and its remembered settings; one that fails is reported and
        the model in use stays."""
        if self.session.busy or self.library.loading:
            self.report_error("Model busy", "Wait for the answer or the model load to end before switching models.")
            self.model_bar.select(self.library.selected_key())
            return False
        path = Path(path) if path is not None else None
        pending, saved = self.library.begin_load(path, adapters)
        self.settings_panel.show_settings(*(saved or (ChatSettings.from_dict({}), LoadSettings())))
        self._start_load(path, pending.adapters)
        return True

    def open_model_file(self, path: Path, base: Path | None = None) -> bool:
        """Open a GGUF from anywhere (the Open GGUF… button and Ctrl+O end here).

        An adapter goes on `base`, else on the known file it fits (its provenance's base first),
        else on a base the user picks; one made for another architecture or size is refused and
        the model in use stays.
        """
        path = Path(path)
        if is_mmproj_name(path):
            model = find_model(path)  # the projector was chosen: open the model beside it that it fits
            if model is None:
                self.report_error(CANNOT_OPEN, f"{path.name} is a vision projector (mmproj), and no model beside it "
                                               "fits it: open the model file itself, with the mmproj in its folder.")
                return False
            path = model
        if not is_adapter(path):
            return self.choose_model(path)
        try:
            request = resolve_adapter(path, base, self.library.recent_files(), ask_base=self.ask_base)
        except MedGemmaError as exc:
            self.report_error(CANNOT_OPEN, str(exc))
            return False
        return request is not None and self.choose_model(request.base, request.adapters)

    def ask_base(self, adapter: AdapterFile) -> Path | None:
        """No known file fits the adapter: the user picks its base (None: they cancelled)."""
        made_for = f" (made for {adapter.base})" if adapter.base else ""
        name, _ = QFileDialog.getOpenFileName(
            self._window, f"Choose the {adapter.architecture} base model for {adapter.path.name}{made_for}",
            str(models_dir()), "GGUF models (*.gguf);;All files (*)")
        return Path(name) if name else None

    @Slot()
    def reload_model(self) -> None:
        """Apply context, threads and GPU settings: load the current model again."""
        pending = None if self.session.busy else self.library.begin_reload()
        if pending is not None:
            self._start_load(pending.path, pending.adapters)

    def _start_load(self, path: Path | None, adapters: tuple[AdapterUse, ...] = ()) -> None:
        name = path.name if path is not None else "the embedded model"
        self.status.show_loading(" + ".join([name, *(a.path.name for a in adapters)]))
        self.state_changed.emit()
        self.bridge.load(ModelRequest(path, adapters, self.settings_panel.load_settings().load_params()))

    @Slot()
    def cancel_load(self) -> None:
        if self.library.loading:
            self.bridge.cancel_load()

    @Slot(object)
    def _on_loaded(self, loaded: Loaded) -> None:
        """Take the model just loaded; if anything in that fails, the model in use before stays."""
        previous = self.library.current
        try:
            self._take_loaded(loaded)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the window must not stay half-loaded
            log.exception("taking the loaded model %s failed", loaded.path)
            self.bridge.undo_load()
            self.library.undo_load(previous)
            self._abort_load("")
            self.model_bar.set_details(describe(previous.info) if previous is not None else "")
            self.report_error(COULD_NOT_LOAD, f"{loaded.path.name} loaded, but the app could not use it: "
                                              f"{_one_line(exc)}. The model in use stays.")
            return
        self.bridge.keep_load()
        self.model_loaded.emit()

    def _take_loaded(self, loaded: Loaded) -> None:
        load = self.settings_panel.load_settings()
        chat = self.library.finish_load(loaded, self.settings_panel.chat_settings(), load)
        self.settings_panel.show_settings(chat)
        current = self.library.current
        assert current is not None
        self.status.show_model(current.status())
        self.status.show_context(0, current.n_ctx)
        self.model_bar.set_details(describe(loaded.info))
        self._end_load()
        self.refresh_models()
        # Last: until here a failure leaves the session on the model in use before.
        self.session.use_model(loaded.info, loaded.sha256, current.title or None, adapter_records(loaded, current.adapters),
                               vision=loaded.vision)
        self.vision_changed.emit(loaded.vision)

    @Slot(str, str)
    def _on_load_failed(self, title: str, message: str) -> None:
        self._abort_load("")
        self.report_error(title, message)

    @Slot()
    def _on_load_cancelled(self) -> None:
        self._abort_load("Loading cancelled · ")

    def _abort_load(self, prefix: str) -> None:
        """After a failed or cancelled load: show the model still in use and its settings."""
        saved = self.library.abort_load()
        self._end_load()
        current = self.library.current
        self.status.show_model(prefix + (current.status() if current else "No model loaded"))
        if saved is not None:
            self.settings_panel.show_settings(*saved)
        self.model_bar.select(self.library.selected_key())

    def _end_load(self) -> None:
        self.status.end_loading()
        self.state_changed.emit()

    @Slot()
    def ask_open_model(self) -> None:
        if not self.library.loading:
            name, _ = QFileDialog.getOpenFileName(self._window, "Open a GGUF model or LoRA adapter", str(models_dir()),
                                                  "GGUF models (*.gguf);;All files (*)")
            if name:
                self.open_model_file(Path(name))

    @Slot()
    def show_convert_dialog(self) -> None:
        dialog = ConvertDialog(self._window)
        dialog.converted.connect(self._on_converted)
        self.convert_dialog = dialog
        dialog.open()

    def may_close(self) -> bool:
        """Whether the window may close: a running conversion is stopped first if the user agrees."""
        return self.convert_dialog is None or self.convert_dialog.stop_for_close()

    def stop_conversion(self) -> None:
        """The app ends: a running conversion is cancelled and cleans up before the window goes."""
        if self.convert_dialog is not None:
            self.convert_dialog.stop_and_wait()

    @Slot(str)
    def _on_converted(self, path: str) -> None:
        self.library.remember_recent(Path(path))
        self.refresh_models()

    @Slot()
    def _on_settings_changed(self) -> None:
        chat, load = self.settings_panel.chat_settings(), self.settings_panel.load_settings()
        try:
            self.library.save_settings(chat, load)
        except HistoryWriteError as exc:  # they apply now all the same; remembered at the next change
            self.report_error("Could not save the settings", str(exc))
        if not self.library.loading:
            self.session.use_settings(chat, load)
