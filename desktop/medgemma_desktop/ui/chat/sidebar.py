"""The conversations sidebar: new chat, search by title or text, rename and delete."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .plain_text import plain_tooltip

CHAT_ID_ROLE = Qt.ItemDataRole.UserRole


class Sidebar(QWidget):
    new_chat_requested = Signal()
    chat_selected = Signal(int)
    rename_requested = Signal(int)
    delete_requested = Signal(int)
    search_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.setMinimumWidth(220)
        self._filling = False
        brand = QLabel("MedGemma <b>Edge</b>", self)
        brand.setObjectName("brand")
        self.new_button = QPushButton("+   New chat", self)
        self.new_button.setObjectName("newChat")
        self.new_button.setAccessibleName("New chat")
        self.new_button.setToolTip("New chat (Ctrl+N)")
        self.new_button.clicked.connect(self.new_chat_requested)
        self.search = QLineEdit(self)
        self.search.setObjectName("chatSearch")
        self.search.setPlaceholderText("Search chats…")
        self.search.setAccessibleName("Search chats by title or text")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.search_changed)
        self.list = QListWidget(self)
        self.list.setObjectName("chatList")
        self.list.setAccessibleName("Chats")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.currentItemChanged.connect(self._on_current)
        self.rename_button = QPushButton("Rename", self)
        self.rename_button.setAccessibleName("Rename chat")
        self.rename_button.clicked.connect(self._on_rename)
        self.delete_button = QPushButton("Delete", self)
        self.delete_button.setObjectName("danger")
        self.delete_button.setAccessibleName("Delete chat")
        self.delete_button.clicked.connect(self._on_delete)
        buttons = QHBoxLayout()
        buttons.addWidget(self.rename_button)
        buttons.addWidget(self.delete_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 14, 12, 12)
        layout.setSpacing(8)
        layout.addWidget(brand)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

    def set_chats(self, chats: list[Any], current: int | None) -> None:
        """Fill the list from History.chats(); keeps the selection quiet while filling."""
        self._filling = True
        self.list.clear()
        for chat in chats:
            item = QListWidgetItem(chat.title or "Untitled chat")
            item.setData(CHAT_ID_ROLE, chat.id)
            item.setToolTip(plain_tooltip(chat.title))  # a title is the user's words: never HTML
            self.list.addItem(item)
            if chat.id == current:
                self.list.setCurrentItem(item)
        self._filling = False
        self._update_buttons()

    def clear_selection(self) -> None:
        self.list.setCurrentRow(-1)

    def search_text(self) -> str:
        return self.search.text()

    def titles(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def current_chat(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else int(item.data(CHAT_ID_ROLE))

    def _update_buttons(self) -> None:
        has = self.list.currentItem() is not None
        self.rename_button.setEnabled(has)
        self.delete_button.setEnabled(has)

    @Slot(QListWidgetItem, QListWidgetItem)
    def _on_current(self, current: QListWidgetItem | None, _previous: QListWidgetItem | None) -> None:
        self._update_buttons()
        if current is not None and not self._filling:
            self.chat_selected.emit(int(current.data(CHAT_ID_ROLE)))

    @Slot()
    def _on_rename(self) -> None:
        chat = self.current_chat()
        if chat is not None:
            self.rename_requested.emit(chat)

    @Slot()
    def _on_delete(self) -> None:
        chat = self.current_chat()
        if chat is not None:
            self.delete_requested.emit(chat)
