"""The scrolling list of message cards of one chat, with the context-overflow notice on top."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from .message_view import MessageView


class ChatView(QScrollArea):
    regenerate_requested = Signal(int)
    edit_requested = Signal(int)
    open_source_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self.setAccessibleName("Conversation")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._show_reasoning = True
        self._follow = True
        container = QWidget(self)
        container.setObjectName("chatContainer")
        self._layout = QVBoxLayout(container)
        self._layout.setContentsMargins(28, 16, 28, 16)
        self._layout.setSpacing(12)
        self.dropped_notice = QLabel("", container)
        self.dropped_notice.setObjectName("droppedNotice")
        self.dropped_notice.setAccessibleName("Context notice")
        self.dropped_notice.setWordWrap(True)
        self.dropped_notice.setVisible(False)
        self.empty_hint = QLabel(
            "Ask a question to start. Answers are generated on this computer by the model you picked.",
            container,
        )
        self.empty_hint.setObjectName("emptyHint")
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setWordWrap(True)
        self._layout.addWidget(self.dropped_notice)
        self._layout.addWidget(self.empty_hint)
        self._layout.addStretch(1)
        self.setWidget(container)
        self.verticalScrollBar().rangeChanged.connect(self._on_range_changed)
        self.verticalScrollBar().valueChanged.connect(self._on_scrolled)
        self._cards: list[MessageView] = []
        self._answer: MessageView | None = None  # the card of the answer streaming, when shown

    def cards(self) -> list[MessageView]:
        return list(self._cards)

    def clear(self) -> None:
        for card in self._cards:
            card.setParent(None)
            card.deleteLater()
        self._cards.clear()
        self._answer = None
        self.set_dropped(0)
        self.empty_hint.setVisible(True)
        self._follow = True

    def add_message(self, message_id: int, role: str, author: str) -> MessageView:
        card = MessageView(message_id, role, author, self.widget())
        card.regenerate_requested.connect(self.regenerate_requested)
        card.edit_requested.connect(self.edit_requested)
        card.open_source_requested.connect(self.open_source_requested)
        card.set_reasoning_visible(self._show_reasoning)
        self._layout.insertWidget(self._layout.count() - 1, card)
        self._cards.append(card)
        self.empty_hint.setVisible(False)
        self._follow = True
        return card

    def start_answer(self, message_id: int, author: str, show_reasoning: bool) -> None:
        """An empty answer card that streamed text goes into."""
        self._answer = self.add_message(message_id, "model", author)
        self._answer.set_streaming(True)
        self._answer.set_meta("Generating…")
        self.set_show_reasoning(show_reasoning)

    def show_sources(self, message_id: int, citations: list) -> None:
        if self._answer is not None and self._answer.message_id == message_id:
            self._answer.set_citations(citations)

    def show_emergency_notice(self, message_id: int, notice: dict) -> None:
        if self._answer is not None and self._answer.message_id == message_id:
            self._answer.set_emergency_notice(notice)

    def append_to_answer(self, answer: str, reasoning: str, reasoning_tokens: int, show_reasoning: bool) -> None:
        if self._answer is not None:
            self._answer.append(answer=answer, reasoning=reasoning, reasoning_tokens=reasoning_tokens)
            if reasoning:
                self._answer.set_reasoning_visible(show_reasoning)

    def end_answer(self, message_id: int, meta: str) -> None:
        if self._answer is not None and self._answer.message_id == message_id:
            self._answer.set_streaming(False)
            self._answer.set_meta(meta)
            self._answer = None

    def remove_from(self, message_id: int) -> None:
        """Drop the card of `message_id` and every card after it."""
        ids = [card.message_id for card in self._cards]
        if message_id not in ids:
            return
        for card in self._cards[ids.index(message_id):]:
            card.setParent(None)
            card.deleteLater()
        del self._cards[ids.index(message_id):]
        if self._answer is not None and self._answer not in self._cards:
            self._answer = None
        self.empty_hint.setVisible(not self._cards)

    def update_actions(self, busy: bool) -> None:
        """Only the last answer can be regenerated and only the last question edited, when idle."""
        last_model = next((c for c in reversed(self._cards) if c.role == "model"), None)
        last_user = next((c for c in reversed(self._cards) if c.role == "user"), None)
        for card in self._cards:
            card.set_actions(regenerate=not busy and card is last_model and card is self._cards[-1],
                             edit=not busy and card is last_user)

    def set_show_reasoning(self, show: bool) -> None:
        self._show_reasoning = show
        for card in self._cards:
            card.set_reasoning_visible(show)

    def set_dropped(self, dropped: int) -> None:
        if dropped > 0:
            noun = "message" if dropped == 1 else "messages"
            self.dropped_notice.setText(
                f"{dropped} earlier {noun} left out: the conversation no longer fits the model's context. "
                "The first question is kept."
            )
        self.dropped_notice.setVisible(dropped > 0)

    def shown_dropped_notice(self) -> str | None:
        """The "earlier messages left out" line, or None while everything fits."""
        return self.dropped_notice.text() if self.dropped_notice.isVisibleTo(self) else None

    @Slot(int)
    def _on_scrolled(self, value: int) -> None:
        # Stay pinned to the bottom while streaming unless the user scrolled up to read.
        self._follow = value >= self.verticalScrollBar().maximum() - 8

    @Slot(int, int)
    def _on_range_changed(self, _minimum: int, maximum: int) -> None:
        if self._follow:
            self.verticalScrollBar().setValue(maximum)
