"""The chat as the window shows it: the session's events into the chat view, the composer's and
sidebar's requests into the session.

The state is `ChatSession`'s (Qt-free); this only shows and forwards.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from PySide6.QtCore import QObject, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFileDialog, QWidget

from medgemma_models.errors import MedGemmaError

from ...answer import AnswerStats
from ...documents.passages import CITATIONS_META
from ...history import HistoryWriteError, Message
from ...images.decode import DecodedImage, ImagePart
from ...images.dicom import NOTICE as DICOM_NOTICE
from ...session import UNSAVED_TITLE, ChatSession, SessionListener, chat_title, meta_text
from .chat_view import ChatView
from .composer import Composer
from ..dialogs.messages import ask_text, confirm, problem_box
from .image_strip import IMAGE_FILTER, ImageReader
from .sidebar import Sidebar


DICOM_NOTICE_SETTING = "dicom_notice_shown"
CANNOT_ATTACH = "Cannot attach the image"


class ChatPresenter(QObject, SessionListener):
    state_changed = Signal()  # busy, or the open chat changed: what can be clicked changes
    answer_finished = Signal(object)  # AnswerStats or None (failed)
    status_message = Signal(str)

    def __init__(self, session: ChatSession, chat_view: ChatView, composer: Composer, sidebar: Sidebar,
                 report_error: Callable[[str, str], None], parent: QWidget) -> None:
        super().__init__(parent)
        self.session, self.history = session, session.history
        self.chat_view, self.composer, self.sidebar = chat_view, composer, sidebar
        self.report_error = report_error
        self._window = parent
        session.listener = self
        for signal, slot in ((sidebar.new_chat_requested, self.new_chat), (sidebar.chat_selected, self.open_chat),
                             (sidebar.rename_requested, self.ask_rename), (sidebar.delete_requested, self.ask_delete),
                             (sidebar.search_changed, self.refresh_chats), (composer.stop_requested, self.stop),
                             (composer.cancel_edit_requested, self.cancel_edit),
                             (chat_view.edit_requested, self.edit_message),
                             (composer.attach_requested, self.ask_images), (composer.files_given, self.attach_files),
                             (composer.image_pasted, self.attach_pasted),
                             (chat_view.open_source_requested, self.open_source)):
            signal.connect(slot)
        self.images = ImageReader(session.images, self)
        self.images.read.connect(self._image_read)
        self.images.failed.connect(lambda message: self.report_error(CANNOT_ATTACH, message))

    # -- chats ----------------------------------------------------------------------------------

    @Slot()
    def refresh_chats(self) -> None:
        self.sidebar.set_chats(self.history.chats(self.sidebar.search_text()), self.session.chat_id)

    @Slot()
    def new_chat(self) -> None:
        self.session.new_chat()
        self.sidebar.clear_selection()
        self.composer.focus_input()
        self.state_changed.emit()

    @Slot(int)
    def open_chat(self, chat_id: int) -> None:
        self.session.open_chat(chat_id)
        self.chat_view.set_show_reasoning(self.session.settings.show_reasoning_enabled)
        self.state_changed.emit()

    def rename_chat(self, chat_id: int, title: str) -> None:
        self.session.rename_chat(chat_id, title)

    def delete_chat(self, chat_id: int) -> None:
        self.session.delete_chat(chat_id)
        self.state_changed.emit()

    @Slot(int)
    def ask_rename(self, chat_id: int) -> None:
        ask_text(self._window, "Rename chat", "New title:", self.history.chat(chat_id).title,
                 partial(self.rename_chat, chat_id))

    @Slot(int)
    def ask_delete(self, chat_id: int) -> None:
        question = f"Delete “{self.history.chat(chat_id).title}”? Its messages are erased from this computer."
        confirm(self._window, "Delete chat", question, partial(self.delete_chat, chat_id))

    @Slot()
    def ask_export(self) -> None:
        chat_id = self.session.chat_id
        if chat_id is None:
            self.report_error("Nothing to export", "Open or start a chat first.")
            return
        suggested = str(Path.home() / f"{chat_title(self.history.chat(chat_id).title)}.md")
        name, chosen = QFileDialog.getSaveFileName(self._window, "Export chat", suggested, "Markdown (*.md);;JSON (*.json)")
        if name:
            self.export_chat(Path(name), "json" if chosen.startswith("JSON") or name.endswith(".json") else "markdown")

    def export_chat(self, path: Path, fmt: str) -> bool:
        from ...export import export_chat

        if self.session.chat_id is None:
            return False
        try:
            export_chat(self.history, self.session.chat_id, path, fmt, self.session.images)  # type: ignore[arg-type]
        except (MedGemmaError, OSError) as exc:
            self.report_error("Could not export the chat", str(exc))
            return False
        self.status_message.emit(f"Exported to {path}")
        return True

    # -- sending --------------------------------------------------------------------------------

    def send(self) -> bool:
        """Send the message in the input, with its images (replacing the last question when editing)."""
        try:
            if not self.session.send(self.composer.text(), self.composer.image_parts()):
                return False
        except HistoryWriteError as exc:  # the question could not be saved: it stays in the input
            self.report_error(UNSAVED_TITLE, f"{exc}. Your message is still in the input; send it again later.")
            return False
        except MedGemmaError as exc:  # images on a model that cannot see: the message stays too
            self.report_error("Cannot send the message", str(exc))
            return False
        self.composer.set_text("")
        self.composer.clear_images()
        return True

    # -- images ---------------------------------------------------------------------------------

    def set_vision(self, vision: bool) -> None:
        """The model in use can (or cannot) see images: the attach control follows."""
        self.composer.set_vision(vision)

    @Slot()
    def ask_images(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self._window, "Attach images", "", IMAGE_FILTER)
        self.attach_files([Path(n) for n in names])

    @Slot(list)
    def attach_files(self, paths: list[Path]) -> None:
        if paths and self._can_attach():
            self.images.read_files(paths)  # decoded and stored off the window's thread

    @Slot(bytes)
    def attach_pasted(self, png: bytes) -> None:
        if self._can_attach():
            self.images.read_bytes(png, "the pasted image")

    def _can_attach(self) -> bool:
        if not self.session.vision:
            self.report_error(CANNOT_ATTACH, "This model cannot see images: it has no vision projector (mmproj) "
                              "beside it.")
            return False
        return True

    @Slot(object)
    def _image_read(self, image: DecodedImage) -> None:
        self.composer.add_image(image.part, image.png)
        if image.part.kind == "dicom" and not self.history.get_setting(DICOM_NOTICE_SETTING, False):
            self.history.set_setting(DICOM_NOTICE_SETTING, True)
            problem_box(self._window, "DICOM: what is kept", DICOM_NOTICE)

    @Slot()
    def stop(self) -> None:
        self.session.stop()

    @Slot(int)
    def edit_message(self, message_id: int) -> None:
        """Put the last question back into the input; sending replaces it and what followed."""
        text = self.session.start_edit(message_id)
        if text is not None:
            self.composer.set_text(text)
            self.composer.clear_images()
            for part in self.session.editing_images():  # sent again with the edited text unless removed
                try:
                    self.composer.add_image(part, self.session.images.png(part.sha256))
                except LookupError:
                    continue
            self.composer.set_editing(True)
            self.composer.focus_input()

    @Slot()
    def cancel_edit(self) -> None:
        if self.session.editing_id is not None:
            self.composer.set_text("")
            self.composer.clear_images()
        self.session.cancel_edit()
        self.composer.set_editing(False)

    # -- what the session says (SessionListener) ------------------------------------------------

    def chat_cleared(self) -> None:
        self.chat_view.clear()
        self.cancel_edit()

    def message_shown(self, message: Message, author: str) -> None:
        card = self.chat_view.add_message(message.id, message.role, author)
        card.set_content(message.text, message.reasoning, message.meta.get("reasoning_tokens"))
        card.set_meta(meta_text(message.meta, message.complete, message.role))
        card.set_emergency_notice(message.meta.get("emergency_notice"))
        if message.role == "model" and CITATIONS_META in message.meta:
            card.set_citations(message.meta[CITATIONS_META])
        parts = [p for p in (ImagePart.from_dict(d) for d in message.meta.get("images") or []) if p is not None]
        if parts:
            card.show_images(parts, self.session.images)

    def answer_started(self, message_id: int, author: str) -> None:
        self.chat_view.start_answer(message_id, author, self.session.settings.show_reasoning_enabled)

    def sources_found(self, message_id: int, citations: list) -> None:
        self.chat_view.show_sources(message_id, citations)

    @Slot(str)
    def open_source(self, path: str) -> None:
        """A click on a citation's Open: the system viewer gets the file; nothing else opens anything."""
        if not Path(path).is_file():
            self.report_error("Cannot open the source", f"{Path(path).name} is no longer at {path}.")
            return
        QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    def emergency_noticed(self, message_id: int, notice: dict) -> None:
        self.chat_view.show_emergency_notice(message_id, notice)

    def messages_removed(self, from_id: int) -> None:
        self.chat_view.remove_from(from_id)

    def answer_grew(self, answer: str, reasoning: str, reasoning_tokens: int) -> None:
        self.chat_view.append_to_answer(answer, reasoning, reasoning_tokens, self.session.settings.show_reasoning_enabled)

    def answer_ended(self, message_id: int, meta: str) -> None:
        self.chat_view.end_answer(message_id, meta)

    def context_trimmed(self, dropped_turns: int) -> None:
        self.chat_view.set_dropped(dropped_turns)

    def busy_changed(self, busy: bool) -> None:
        self.composer.set_busy(busy)
        self.state_changed.emit()

    def chats_changed(self) -> None:
        self.refresh_chats()

    def problem(self, title: str, message: str) -> None:
        self.report_error(title, message)

    def answer_done(self, stats: AnswerStats | None) -> None:
        self.answer_finished.emit(stats)
