"""The main window: chats on the left, the conversation in the middle, settings on the right.

It owns the chat flow on the GUI thread (save the message, ask the worker for an answer, split
the streamed pieces into reasoning and answer, save them as they grow) and talks to the engine
only through `EngineWorker`'s queued signals.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QEvent, Qt, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from medgemma_models.catalog import DEFAULT_PRESET, preset_for, presets
from medgemma_models.errors import MedGemmaError
from medgemma_models.gguf_info import ModelInfo
from medgemma_models.reasoning import ReasoningSplitter, Segment
from medgemma_models.store import DEFAULT_MODEL_NAME, list_models, models_dir

from ..history import History, StreamingMessageWriter, model_record
from .chat_view import ChatView
from .composer import Composer
from .dialogs import NoticeDialog
from .engine_worker import EngineLike, EngineWorker, Finished, GenerationRequest, Loaded, LoadRequest
from .message_view import MessageView
from .model_bar import ModelBar, describe
from .settings_panel import LOADING_KEYS, SettingsPanel
from .sidebar import Sidebar
from .theme import STYLESHEET

log = logging.getLogger(__name__)

NOTICE_SETTING = "medical_notice_acknowledged"
LAST_MODEL_SETTING = "last_model"
RECENT_MODELS_SETTING = "recent_models"
EMBEDDED_KEY = "embedded-default"
EMBEDDED_TITLE = "Gemma 3 270M · Q4_K_M (embedded)"
SAVE_INTERVAL_S = 1.0


def preset_name_for(info: ModelInfo) -> str:
    """The preset the GGUF says it was made for, else the catalog's guess, else plain chat."""
    named = info.provenance.get("preset")
    if isinstance(named, str) and named in presets():
        return named
    adapters = info.provenance.get("adapters")
    adapter_ids = [a.get("id", "") for a in adapters if isinstance(a, dict)] if isinstance(adapters, list) else []
    found = preset_for(adapter_ids, info.provenance.get("base"))
    return found.name if found is not None else DEFAULT_PRESET


def chat_title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 48 else line[:47].rstrip() + "…"


@dataclass
class _Stream:
    """The answer being streamed: where it is shown, saved and split."""

    chat_id: int
    message_id: int
    card: MessageView | None
    writer: StreamingMessageWriter
    splitter: ReasoningSplitter = field(default_factory=ReasoningSplitter)
    reasoning_tokens: int = 0
    pieces: int = 0
    first_piece_at: float | None = None
    last_piece_at: float | None = None
    prompt_tokens: int = 0
    dropped_turns: int = 0
    discarded: bool = False  # its chat was deleted while it streamed


class MainWindow(QMainWindow):
    request_load = Signal(object)  # LoadRequest, to the worker
    request_inspect = Signal(object)  # list[Path], to the worker
    request_generate = Signal(object)  # GenerationRequest, to the worker
    model_loaded = Signal()
    answer_finished = Signal()

    def __init__(
        self, history: History, engine_factory: Callable[[], EngineLike], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.history = history
        self.errors: list[tuple[str, str]] = []  # every problem reported to the user, for tests and logs
        self.chat_id: int | None = None
        self.model_path: Path | None = None
        self.model_info: ModelInfo | None = None
        self.model_sha256: str | None = None
        self.n_ctx = 0
        self.offload_text = ""
        self.loading = False
        self.last_stats: Any = None
        self.view_tok_per_s = 0.0  # decode speed as the chat view received it
        self._pending: tuple[Path | None, str] | None = None  # model being loaded, its settings key
        self._settings_key: str | None = None  # whose settings the panel shows
        self._loaded_key: str | None = None  # settings key of the model in use
        self._stream: _Stream | None = None
        self._editing_id: int | None = None
        self._boxes: list[QWidget] = []
        self._infos: dict[Path, ModelInfo | str | None] = {}  # headers read by the worker (None: asked)
        self._fresh_settings = False  # the model being loaded has no remembered settings yet

        self.setWindowTitle("MedGemma Edge")
        self.setObjectName("mainWindow")
        self.setStyleSheet(STYLESHEET)
        self.resize(1360, 860)
        self._build()
        self._start_worker(engine_factory)
        self._save_timer = QTimer(self)
        self._save_timer.setInterval(int(SAVE_INTERVAL_S * 1000))
        self._save_timer.timeout.connect(self._flush_stream)
        self.refresh_chats()
        self.refresh_models()
        self.composer.setEnabled(self.notice_acknowledged())

    # -- construction ---------------------------------------------------------------------------

    def _build(self) -> None:
        self.sidebar = Sidebar(self)
        self.model_bar = ModelBar(self)
        self.chat_view = ChatView(self)
        self.composer = Composer(self)
        self.settings_panel = SettingsPanel(self)
        center = QWidget(self)
        center.setObjectName("center")
        column = QVBoxLayout(center)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.model_bar)
        column.addWidget(self.chat_view, 1)
        column.addWidget(self.composer)
        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.setObjectName("mainSplitter")
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(center)
        splitter.addWidget(self.settings_panel)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([250, 860, 350])
        self.setCentralWidget(splitter)

        status = self.statusBar()
        status.setObjectName("statusBar")
        self.offload_label = QLabel("No model loaded", self)
        self.offload_label.setAccessibleName("GPU offload status")
        self.speed_label = QLabel("", self)
        self.speed_label.setAccessibleName("Generation speed")
        self.context_label = QLabel("", self)
        self.context_label.setAccessibleName("Context used")
        self.load_bar = QProgressBar(self)
        self.load_bar.setAccessibleName("Model loading progress")
        self.load_bar.setRange(0, 1000)
        self.load_bar.setMaximumWidth(180)
        self.load_bar.setTextVisible(False)
        self.cancel_load_button = QPushButton("Cancel", self)
        self.cancel_load_button.setAccessibleName("Cancel model loading")
        self.cancel_load_button.clicked.connect(self.cancel_load)
        self.load_bar.setVisible(False)
        self.cancel_load_button.setVisible(False)
        status.addWidget(self.offload_label, 1)
        status.addPermanentWidget(self.load_bar)
        status.addPermanentWidget(self.cancel_load_button)
        status.addPermanentWidget(self.speed_label)
        status.addPermanentWidget(self.context_label)

        self.sidebar.new_chat_requested.connect(self.new_chat)
        self.sidebar.chat_selected.connect(self.open_chat)
        self.sidebar.rename_requested.connect(self._ask_rename)
        self.sidebar.delete_requested.connect(self._ask_delete)
        self.sidebar.search_changed.connect(self._on_search)
        self.model_bar.model_chosen.connect(self.choose_model)
        self.model_bar.open_requested.connect(self._ask_open_model)
        self.model_bar.convert_requested.connect(self.show_convert_dialog)
        self.model_bar.export_requested.connect(self._ask_export)
        self.composer.send_requested.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
        self.composer.cancel_edit_requested.connect(self.cancel_edit)
        self.chat_view.regenerate_requested.connect(self.regenerate)
        self.chat_view.edit_requested.connect(self.edit_message)
        self.settings_panel.changed.connect(self._on_settings_changed)
        self.settings_panel.reasoning_display_changed.connect(self.chat_view.set_show_reasoning)
        self.settings_panel.reload_requested.connect(self.reload_model)

        shortcuts = (
            (QKeySequence.StandardKey.New, self.new_chat),
            (QKeySequence.StandardKey.Open, self._ask_open_model),
            (QKeySequence(Qt.Key.Key_Escape), self._on_escape),
        )
        for keys, slot in shortcuts:
            shortcut = QShortcut(keys, self)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(slot)

    def _start_worker(self, engine_factory: Callable[[], EngineLike]) -> None:
        self._thread = QThread(self)
        self._thread.setObjectName("engine")
        self.worker = EngineWorker(engine_factory)
        self.worker.moveToThread(self._thread)
        self.request_load.connect(self.worker.load)
        self.request_inspect.connect(self.worker.inspect)
        self.worker.model_inspected.connect(self._on_model_inspected)
        self.request_generate.connect(self.worker.generate)
        self.worker.load_progress.connect(self._on_load_progress)
        self.worker.loaded.connect(self._on_loaded)
        self.worker.load_failed.connect(self._on_load_failed)
        self.worker.load_cancelled.connect(self._on_load_cancelled)
        self.worker.prompt_planned.connect(self._on_prompt_planned)
        self.worker.piece.connect(self._on_piece)
        self.worker.finished.connect(self._on_finished)
        self.worker.generation_failed.connect(self._on_generation_failed)
        self._thread.start()

    # -- notices and errors ---------------------------------------------------------------------

    def notice_acknowledged(self) -> bool:
        return bool(self.history.get_setting(NOTICE_SETTING, False))

    def show_notice_if_needed(self) -> NoticeDialog | None:
        """First start: the medical notice, window-modal; the input stays off until it is acknowledged."""
        if self.notice_acknowledged():
            return None
        dialog = NoticeDialog(self)
        dialog.accepted.connect(self._on_notice_accepted)
        self._boxes.append(dialog)
        dialog.open()
        return dialog

    @Slot()
    def _on_notice_accepted(self) -> None:
        self.history.set_setting(NOTICE_SETTING, True)
        self.composer.setEnabled(True)
        self.composer.input.setFocus()

    def report_error(self, title: str, message: str) -> None:
        """Tell the user about a problem in a dialog that does not block the window."""
        log.warning("%s: %s", title, message)
        self.errors.append((title, message))
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAccessibleName(title)
        box.setObjectName("problemDialog")
        self._boxes.append(box)
        box.finished.connect(self._forget_box)
        box.open()

    @Slot()
    def _forget_box(self) -> None:
        if self.sender() in self._boxes:
            self._boxes.remove(self.sender())

    # -- models ---------------------------------------------------------------------------------

    def _model_key(self, path: Path | None) -> str:
        return str(path.resolve()) if path is not None else EMBEDDED_KEY

    def refresh_models(self) -> None:
        """The store's GGUF files, the embedded default and the files opened before.

        Headers are read by the worker (a Gemma vocabulary takes seconds to parse); entries
        show the file name until their facts arrive.
        """
        default = models_dir() / DEFAULT_MODEL_NAME
        paths: list[Path] = [p for p in list_models() if p.name != DEFAULT_MODEL_NAME]
        recent = [Path(p) for p in self.history.get_setting(RECENT_MODELS_SETTING, []) if Path(p).is_file()]
        paths += [p for p in recent if p.parent.resolve() != models_dir().resolve() and p not in paths]
        if self.model_path is not None and self.model_path not in paths and self.model_path != default:
            paths.append(self.model_path)
        entries: list[tuple[Path | None, str, str]] = [(None, EMBEDDED_TITLE, "The embedded default model")]
        unknown = []
        for path in paths:
            info = self._infos.get(path)
            if isinstance(info, ModelInfo):
                entries.append((path, f"{info.name} · {info.file_type}", f"{path}\n{describe(info)}"))
            elif isinstance(info, str):
                entries.append((path, f"{path.name} (unreadable)", info))
            else:
                entries.append((path, path.name, str(path)))
                unknown.append(path)
        current = None if self.model_path == default else self.model_path
        self.model_bar.set_models(entries, current)
        if unknown:
            self._infos.update({p: None for p in unknown})  # asked once
            self.request_inspect.emit(unknown)

    @Slot(object, object)
    def _on_model_inspected(self, path: Path, info: ModelInfo | str) -> None:
        self._infos[path] = info
        self.refresh_models()

    def _remember_recent(self, path: Path) -> None:
        recent = [p for p in self.history.get_setting(RECENT_MODELS_SETTING, []) if p != str(path)]
        self.history.set_setting(RECENT_MODELS_SETTING, [str(path), *recent][:12])

    @Slot(object)
    def choose_model(self, path: Path | None) -> bool:
        """Load a model with its remembered settings; the worker checks the file first.

        A file that cannot be opened or loaded is reported in a dialog and the model in use stays.
        """
        if self._stream is not None or self.loading:
            self.report_error("Model busy", "Wait for the answer or the model load to end before switching models.")
            self._reselect_current_model()
            return False
        path = Path(path) if path is not None else None
        key = self._model_key(path)
        saved = self.history.model_settings(key)
        self._settings_key = key
        self._fresh_settings = saved is None
        self.settings_panel.set_values(saved if saved is not None else {})
        self._start_load(path, key)
        return True

    def open_model_file(self, path: Path) -> bool:
        """Open a GGUF from anywhere (the Open GGUF… button and Ctrl+O end here)."""
        return self.choose_model(Path(path))

    @Slot()
    def reload_model(self) -> None:
        """Apply context, threads and GPU settings: load the current model again."""
        if self._stream is None and not self.loading and self._loaded_key is not None:
            path = None if self._loaded_key == EMBEDDED_KEY else self.model_path
            self._start_load(path, self._loaded_key)

    def _start_load(self, path: Path | None, key: str) -> None:
        self.loading = True
        self._pending = (path, key)
        self.load_bar.setValue(0)
        self.load_bar.setVisible(True)
        self.cancel_load_button.setVisible(True)
        name = path.name if path is not None else "the embedded model"
        self.offload_label.setText(f"Loading {name}…")
        self._update_enabled()
        self.worker.clear_flags()
        self.request_load.emit(LoadRequest(path=path, options=self.settings_panel.load_options()))

    @Slot()
    def cancel_load(self) -> None:
        if self.loading:
            self.worker.request_cancel_load()

    @Slot(float)
    def _on_load_progress(self, fraction: float) -> None:
        self.load_bar.setValue(int(fraction * 1000))

    def _end_load(self) -> None:
        self.loading = False
        self.load_bar.setVisible(False)
        self.cancel_load_button.setVisible(False)
        self._update_enabled()

    @Slot(object)
    def _on_loaded(self, loaded: Loaded) -> None:
        requested, key = self._pending or (loaded.path, self._model_key(loaded.path))
        self._pending = None
        self.model_path = loaded.path
        self.model_info = loaded.info
        self.model_sha256 = loaded.sha256
        self._infos[loaded.path] = loaded.info
        if self._fresh_settings:
            # First time with this file: the preset it was made for, from its provenance or the catalog.
            loading = {k: v for k, v in self.settings_panel.values().items() if k in LOADING_KEYS}
            self.settings_panel.set_values({**loading, "preset": preset_name_for(loaded.info)})
            self._fresh_settings = False
        self.n_ctx = loaded.n_ctx
        self.offload_text = loaded.report.describe()
        self.offload_label.setText(f"{loaded.info.name} · {self.offload_text}")
        self.model_bar.set_details(describe(loaded.info))
        self.context_label.setText(f"ctx 0 / {self.n_ctx:,}")
        self._settings_key = self._loaded_key = key
        self.history.set_model_settings(key, self.settings_panel.values())
        self.history.set_setting(LAST_MODEL_SETTING, str(requested) if requested is not None else None)
        if requested is not None:
            self._remember_recent(loaded.path)
        self._end_load()
        self.refresh_models()
        self.model_loaded.emit()

    @Slot(str, str)
    def _on_load_failed(self, title: str, message: str) -> None:
        self._pending = None
        self._end_load()
        self._restore_current_model()
        self.report_error(title, message)

    @Slot()
    def _on_load_cancelled(self) -> None:
        self._pending = None
        self._end_load()
        self._restore_current_model()
        self.offload_label.setText(f"Loading cancelled · {self._current_model_text()}")

    def _current_model_text(self) -> str:
        if self.model_info is None:
            return "No model loaded"
        return f"{self.model_info.name} · {self.offload_text}"

    def _restore_current_model(self) -> None:
        """After a failed or cancelled load: show the model still in use and its settings."""
        self.offload_label.setText(self._current_model_text())
        self._settings_key = self._loaded_key
        saved = self.history.model_settings(self._loaded_key) if self._loaded_key is not None else None
        if saved is not None:
            self.settings_panel.set_values(saved)
        self._reselect_current_model()

    def _reselect_current_model(self) -> None:
        default = models_dir() / DEFAULT_MODEL_NAME
        self.model_bar.select(None if self.model_path in (None, default) else self.model_path)

    @Slot()
    def _ask_open_model(self) -> None:
        if self.loading:
            return
        name, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", str(models_dir()), "GGUF models (*.gguf);;All files (*)"
        )
        if name:
            self.open_model_file(Path(name))

    @Slot()
    def show_convert_dialog(self) -> None:
        from .convert_dialog import ConvertDialog

        dialog = ConvertDialog(self)
        dialog.converted.connect(self._on_converted)
        self._boxes.append(dialog)
        dialog.finished.connect(self._forget_box)
        dialog.open()

    @Slot(str)
    def _on_converted(self, path: str) -> None:
        self._remember_recent(Path(path))
        self.refresh_models()

    # -- settings -------------------------------------------------------------------------------

    @Slot()
    def _on_settings_changed(self) -> None:
        if self._settings_key is not None and not self.loading:
            self.history.set_model_settings(self._settings_key, self.settings_panel.values())

    # -- chats ----------------------------------------------------------------------------------

    def refresh_chats(self) -> None:
        self.sidebar.set_chats(self.history.chats(self.sidebar.search.text()), self.chat_id)

    @Slot(str)
    def _on_search(self, _text: str) -> None:
        self.refresh_chats()

    @Slot()
    def new_chat(self) -> None:
        self._leave_stream()
        self.chat_id = None
        self.cancel_edit()
        self.chat_view.clear()
        self.sidebar.list.setCurrentRow(-1)
        self.composer.input.setFocus()
        self._update_enabled()

    @Slot(int)
    def open_chat(self, chat_id: int) -> None:
        if chat_id == self.chat_id:
            return
        self._leave_stream()
        self.cancel_edit()
        self.chat_id = chat_id
        self.chat_view.clear()
        for message in self.history.messages(chat_id):
            card = self.chat_view.add_message(message.id, message.role, self._author(message.role, message.meta))
            card.set_content(message.text, message.reasoning, message.meta.get("reasoning_tokens"))
            card.set_meta(self._meta_text(message.meta, message.complete, message.role))
        self.chat_view.set_show_reasoning(self.settings_panel.show_reasoning_enabled())
        self._update_enabled()

    def _leave_stream(self) -> None:
        """The view is about to change: an answer still streaming goes on saving, unseen."""
        if self._stream is not None:
            self._stream.card = None

    def rename_chat(self, chat_id: int, title: str) -> None:
        title = title.strip()
        if title:
            self.history.rename_chat(chat_id, title)
            self.refresh_chats()

    def delete_chat(self, chat_id: int) -> None:
        if self._stream is not None and self._stream.chat_id == chat_id:
            self._stream.discarded = True
            self.worker.request_stop()
        self.history.delete_chat(chat_id)
        if self.chat_id == chat_id:
            self._leave_stream()
            self.chat_id = None
            self.chat_view.clear()
            self.cancel_edit()
        self.refresh_chats()
        self._update_enabled()

    @Slot(int)
    def _ask_rename(self, chat_id: int) -> None:
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Rename chat")
        dialog.setLabelText("New title:")
        dialog.setTextValue(self.history.chat(chat_id).title)
        dialog.setAccessibleName("Rename chat")
        dialog.setProperty("chat_id", chat_id)
        dialog.textValueSelected.connect(self._on_rename_chosen)
        self._boxes.append(dialog)
        dialog.finished.connect(self._forget_box)
        dialog.open()

    @Slot(str)
    def _on_rename_chosen(self, title: str) -> None:
        self.rename_chat(int(self.sender().property("chat_id")), title)

    @Slot(int)
    def _ask_delete(self, chat_id: int) -> None:
        box = QMessageBox(
            QMessageBox.Icon.Question, "Delete chat",
            f"Delete “{self.history.chat(chat_id).title}”? Its messages are erased from this computer.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self,
        )
        box.setAccessibleName("Delete chat")
        box.setProperty("chat_id", chat_id)
        box.accepted.connect(self._on_delete_confirmed)
        self._boxes.append(box)
        box.finished.connect(self._forget_box)
        box.open()

    @Slot()
    def _on_delete_confirmed(self) -> None:
        self.delete_chat(int(self.sender().property("chat_id")))

    @Slot()
    def _ask_export(self) -> None:
        if self.chat_id is None:
            self.report_error("Nothing to export", "Open or start a chat first.")
            return
        name, chosen = QFileDialog.getSaveFileName(
            self, "Export chat", str(Path.home() / f"{chat_title(self.history.chat(self.chat_id).title)}.md"),
            "Markdown (*.md);;JSON (*.json)",
        )
        if name:
            self.export_chat(Path(name), "json" if chosen.startswith("JSON") or name.endswith(".json") else "markdown")

    def export_chat(self, path: Path, fmt: str) -> bool:
        from ..export import export_chat

        if self.chat_id is None:
            return False
        try:
            export_chat(self.history, self.chat_id, path, fmt)
        except (MedGemmaError, OSError) as exc:
            self.report_error("Could not export the chat", str(exc))
            return False
        self.statusBar().showMessage(f"Exported to {path}", 5000)
        return True

    # -- sending and streaming ------------------------------------------------------------------

    def can_send(self) -> bool:
        return (self._stream is None and not self.loading and self.model_info is not None
                and self.notice_acknowledged())

    @Slot()
    def send(self) -> bool:
        """Save the user's message and ask for an answer; with an edit under way, replace the last question."""
        text = self.composer.text().strip()
        if not text or not self.can_send():
            return False
        assert self.model_info is not None
        if self._editing_id is not None:
            self.history.delete_messages_from(self._editing_id)
            self.chat_view.remove_from(self._editing_id)
            self.cancel_edit()
        if self.chat_id is None:
            self.chat_id = self.history.create_chat(
                chat_title(text), model=model_record(self.model_info, self.model_sha256), settings=self.settings_panel.values()
            )
        message_id = self.history.add_message(self.chat_id, "user", text)
        card = self.chat_view.add_message(message_id, "user", "You")
        card.set_content(text)
        self.composer.set_text("")
        self._generate()
        self.refresh_chats()
        return True

    def _generate(self) -> None:
        """Stream an answer to the chat's last user message."""
        assert self.chat_id is not None and self.model_info is not None
        panel = self.settings_panel
        messages = self.history.messages(self.chat_id)
        self.history.set_chat_model(self.chat_id, model_record(self.model_info, self.model_sha256))
        message_id = self.history.add_message(self.chat_id, "model", "", complete=False)
        card = self.chat_view.add_message(message_id, "model", self.model_info.name)
        self._stream = _Stream(
            chat_id=self.chat_id, message_id=message_id, card=card,
            writer=StreamingMessageWriter(self.history, message_id, interval=SAVE_INTERVAL_S),
        )
        card.set_streaming(True)
        card.set_meta("Generating…")
        self.chat_view.set_show_reasoning(panel.show_reasoning_enabled())
        self._set_busy(True)
        self._save_timer.start()
        self.worker.clear_flags()
        self.request_generate.emit(GenerationRequest(
            preset=panel.current_preset(),
            messages=messages,
            settings=panel.generation_settings(),
            system=panel.system_prompt(),
            think=panel.think_enabled(),
            send_reasoning_back=panel.send_reasoning_back_enabled(),
        ))

    @Slot()
    def stop(self) -> None:
        if self._stream is not None:
            self.worker.request_stop()

    @Slot()
    def _on_escape(self) -> None:
        if self._stream is not None:
            self.stop()
        elif self.loading:
            self.cancel_load()
        elif self._editing_id is not None:
            self.cancel_edit()

    @Slot(int)
    def regenerate(self, message_id: int) -> None:
        """Throw the last answer away and stream a new one."""
        if not self.can_send() or self.chat_id is None:
            return
        self.history.delete_messages_from(message_id)
        self.chat_view.remove_from(message_id)
        self._generate()

    @Slot(int)
    def edit_message(self, message_id: int) -> None:
        """Put the last question back into the input; sending replaces it and what followed."""
        if self._stream is not None:
            return
        self._editing_id = message_id
        self.composer.set_text(self.history.message(message_id).text)
        self.composer.set_editing(True)
        self.composer.input.setFocus()

    @Slot()
    def cancel_edit(self) -> None:
        if self._editing_id is not None:
            self._editing_id = None
            self.composer.set_text("")
        self.composer.set_editing(False)

    @Slot(object)
    def _on_prompt_planned(self, plan: Any) -> None:
        if self._stream is None:
            return
        self._stream.prompt_tokens = plan.prompt_tokens
        self._stream.dropped_turns = plan.dropped_turns
        if self._stream.card is not None:
            self.chat_view.set_dropped(plan.dropped_turns)

    @Slot(str)
    def _on_piece(self, text: str) -> None:
        stream = self._stream
        if stream is None:
            return
        now = time.perf_counter()
        if stream.first_piece_at is None:
            stream.first_piece_at = now
        stream.last_piece_at = now
        stream.pieces += 1
        self._apply(stream, stream.splitter.feed(text), count_tokens=True)

    def _apply(self, stream: _Stream, segments: list[Segment], count_tokens: bool) -> None:
        reasoning = "".join(s.text for s in segments if s.kind == "reasoning")
        answer = "".join(s.text for s in segments if s.kind == "answer")
        # A piece is one token; one that carries reasoning counts as a reasoning token.
        tokens = 1 if reasoning and count_tokens else 0
        stream.reasoning_tokens += tokens
        if not stream.discarded:
            stream.writer.append(answer=answer, reasoning=reasoning)
        if stream.card is not None and (answer or reasoning):
            stream.card.append(answer=answer, reasoning=reasoning, reasoning_tokens=tokens)
            if reasoning:
                stream.card.set_reasoning_visible(self.settings_panel.show_reasoning_enabled())

    @Slot()
    def _flush_stream(self) -> None:
        # The writer saves on arriving pieces; this covers a model that goes quiet mid-answer.
        if self._stream is not None and not self._stream.discarded:
            self._stream.writer.flush()

    @Slot(object)
    def _on_finished(self, finished: Finished) -> None:
        stream = self._stream
        if stream is None:
            return
        self._apply(stream, stream.splitter.finish(), count_tokens=False)
        stats = finished.stats
        self.last_stats = stats
        if stream.first_piece_at is not None and stream.last_piece_at is not None and stream.pieces > 1:
            elapsed = stream.last_piece_at - stream.first_piece_at
            self.view_tok_per_s = (stream.pieces - 1) / elapsed if elapsed > 0 else 0.0
        complete = stats.finish_reason != "cancelled"
        meta = self._answer_meta(stream, stats)
        self._finish_stream(stream, meta, complete)
        self._show_stats(stats, stream.splitter.unterminated)

    @Slot(str)
    def _on_generation_failed(self, message: str) -> None:
        stream = self._stream
        if stream is None:
            return
        self._apply(stream, stream.splitter.finish(), count_tokens=False)
        self._finish_stream(stream, {**self._answer_meta(stream, None), "error": message}, complete=False)
        self.report_error("The answer failed", message)

    def _finish_stream(self, stream: _Stream, meta: dict[str, Any], complete: bool) -> None:
        self._save_timer.stop()
        self._stream = None
        if not stream.discarded:
            try:
                stream.writer.finish(meta, complete=complete)
            except MedGemmaError as exc:  # the chat was deleted in another window meanwhile
                log.warning("could not save the answer: %s", exc)
        if stream.card is not None:
            stream.card.set_streaming(False)
            stream.card.set_meta(self._meta_text(meta, complete, "model"))
        self._set_busy(False)
        self.refresh_chats()
        self.answer_finished.emit()

    def _answer_meta(self, stream: _Stream, stats: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "model": model_record(self.model_info, self.model_sha256) if self.model_info is not None else {},
            "settings": self.settings_panel.values(),
            "reasoning_tokens": stream.reasoning_tokens,
            "dropped_turns": stream.dropped_turns,
            "unterminated_reasoning": stream.splitter.unterminated,
        }
        if stats is not None:
            meta["stats"] = dataclasses.asdict(stats)
        return meta

    def _author(self, role: str, meta: dict[str, Any]) -> str:
        if role == "user":
            return "You"
        return str(meta.get("model", {}).get("name") or (self.model_info.name if self.model_info else "Model"))

    @staticmethod
    def _meta_text(meta: dict[str, Any], complete: bool, role: str) -> str:
        if role == "user":
            return ""
        parts = []
        if meta.get("error"):
            parts.append(f"Failed: {meta['error']}")
        elif not complete:
            parts.append("Stopped — partial answer")
        stats = meta.get("stats")
        if stats:
            parts.append(f"{stats['generated_tokens']} tokens · {stats['decode_tok_per_s']:.1f} tok/s")
            if stats.get("finish_reason") == "length":
                parts.append("cut at max tokens")
        if meta.get("unterminated_reasoning"):
            parts.append("reasoning did not finish")
        return " · ".join(parts)

    def _show_stats(self, stats: Any, unterminated: bool) -> None:
        self.speed_label.setText(
            f"{stats.decode_tok_per_s:.1f} tok/s · TTFT {stats.ttft_ms:.0f} ms · reused {stats.reused_tokens:,} tokens"
        )
        used = stats.prompt_tokens + stats.generated_tokens
        self.context_label.setText(f"ctx {used:,} / {self.n_ctx:,}")

    def _set_busy(self, busy: bool) -> None:
        self.composer.set_busy(busy)
        self._update_enabled()

    def _update_enabled(self) -> None:
        busy = self._stream is not None
        self.chat_view.update_actions(busy)
        self.model_bar.combo.setEnabled(not busy and not self.loading)
        self.model_bar.open_button.setEnabled(not busy and not self.loading)
        self.settings_panel.reload_button.setEnabled(not busy and not self.loading)
        self.model_bar.export_button.setEnabled(self.chat_id is not None)

    # -- shutdown -------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the answer, save it, and end the engine thread."""
        if not self._thread.isRunning():
            return
        self.worker.request_stop()
        self.worker.request_cancel_load()
        if self._stream is not None and not self._stream.discarded:
            self._stream.writer.flush()
        self._thread.quit()
        self._thread.wait()  # the stop flags above make this a wait of at most one token
        self.worker.shutdown()
        # Results the worker sent before it stopped must not reach a window whose history may be closed.
        QCoreApplication.removePostedEvents(self, QEvent.Type.MetaCall)
