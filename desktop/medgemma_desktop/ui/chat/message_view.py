"""One chat message as a card: Markdown text, a collapsible reasoning block and its actions."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QTextOption, QTextTable
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ...documents.passages import Citation
from ...images.decode import ImagePart
from ...images.store import ImageStore
from .image_strip import ImageStrip
from .inert_markdown import InertDocument, set_inert_markdown

REASONING_LABEL = "Model reasoning — generated text, not a clinical justification"

# Re-rendering Markdown on every token would cost O(n²) over a long answer; pieces are
# gathered and the card re-rendered at most this often.
RENDER_INTERVAL_MS = 40
TABLE_BORDER = "#3a414d"


class MarkdownView(QTextBrowser):
    """Read-only Markdown that grows to fit its text instead of scrolling.

    The text is rendered inert (`inert_markdown`): no file, device or share is ever read to show it.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDocument(InertDocument(self))  # first: the settings below apply to this document
        self.setOpenLinks(False)  # links never open anything: the app makes no connections
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self._markdown = ""

    def set_markdown(self, text: str) -> None:
        if text != self._markdown:
            self._markdown = text
            set_inert_markdown(self.document(), text)
            self._style_tables()
            self._fit()

    def _style_tables(self) -> None:
        # Qt's Markdown tables come with light, doubled borders that glare on a dark card.
        for frame in self.document().rootFrame().childFrames():
            if isinstance(frame, QTextTable):
                table_format = frame.format()
                table_format.setBorderBrush(QBrush(QColor(TABLE_BORDER)))
                table_format.setBorderCollapse(True)
                table_format.setCellPadding(5)
                table_format.setCellSpacing(0)
                frame.setFormat(table_format)

    def markdown(self) -> str:
        return self._markdown

    @Slot()
    def _fit(self) -> None:
        self.document().setTextWidth(self.viewport().width())
        height = int(self.document().size().height()) + 4
        if height != self.height():
            self.setFixedHeight(max(height, 20))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(200, self.height())


class ReasoningBlock(QFrame):
    """The model's reasoning, collapsed to a "Thinking… (N tokens)" line until expanded."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reasoningBlock")
        self.tokens = 0
        self.streaming = False
        self._text = ""
        self.toggle = QToolButton(self)
        self.toggle.setObjectName("reasoningToggle")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setAccessibleName("Show or hide the model's reasoning")
        self.toggle.toggled.connect(self.set_expanded)
        self.caption = QLabel(REASONING_LABEL, self)
        self.caption.setObjectName("reasoningCaption")
        self.caption.setWordWrap(True)
        self.body = MarkdownView(self)
        self.body.setObjectName("reasoningBody")
        self.body.setAccessibleName("Model reasoning")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(4)
        layout.addWidget(self.toggle, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.caption)
        layout.addWidget(self.body)
        self.set_expanded(False)
        self._update_title()

    def set_text(self, text: str, tokens: int) -> None:
        self._text = text
        self.tokens = tokens
        if self.is_expanded():
            self.body.set_markdown(text)
        self._update_title()

    def text(self) -> str:
        return self._text

    def set_streaming(self, streaming: bool) -> None:
        self.streaming = streaming
        self._update_title()

    def is_expanded(self) -> bool:
        return self.toggle.isChecked()

    @Slot(bool)
    def set_expanded(self, expanded: bool) -> None:
        if self.toggle.isChecked() != expanded:
            self.toggle.setChecked(expanded)  # re-enters through toggled
            return
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        if expanded:
            self.body.set_markdown(self._text)
        self.body.setVisible(expanded)
        self.caption.setVisible(expanded)

    def title(self) -> str:
        return self.toggle.text()

    def _update_title(self) -> None:
        verb = "Thinking…" if self.streaming else "Thought"
        unit = "token" if self.tokens == 1 else "tokens"
        self.toggle.setText(f"{verb} ({self.tokens} {unit})")


class MessageView(QFrame):
    """A user or model message card with copy, and regenerate/edit when it is the last of its kind."""

    regenerate_requested = Signal(int)
    edit_requested = Signal(int)
    open_source_requested = Signal(str)  # a cited file's path: only ever on the user's click

    def __init__(self, message_id: int, role: str, author: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message_id = message_id
        self.role = role
        self.setObjectName("userCard" if role == "user" else "modelCard")
        self._answer = ""
        self._reasoning = ""
        self._reasoning_tokens = 0
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self.render)

        # Author (a model's name from its file) and meta (stored data) are shown as text, never as HTML.
        self.author = QLabel(author, self)
        self.author.setTextFormat(Qt.TextFormat.PlainText)
        self.author.setObjectName("author")
        # The red-flag notice: one line from the list, never from the model, set apart above the answer.
        self.emergency = QLabel("", self)
        self.emergency.setTextFormat(Qt.TextFormat.PlainText)
        self.emergency.setObjectName("emergencyNotice")
        self.emergency.setWordWrap(True)
        self.emergency.setStyleSheet("QLabel#emergencyNotice { font-weight: bold; border-left: 4px solid #d32f2f;"
                                     " padding: 4px 8px; }")
        self.emergency.setVisible(False)
        self.body = MarkdownView(self)
        self.body.setObjectName("messageBody")
        self.body.setAccessibleName(f"{author} message")
        self.reasoning = ReasoningBlock(self)
        self.reasoning.setVisible(False)
        self.meta = QLabel("", self)
        self.meta.setTextFormat(Qt.TextFormat.PlainText)
        self.meta.setObjectName("meta")
        self.meta.setWordWrap(True)

        self.copy_button = self._action("Copy", "Copy this message")
        self.copy_button.clicked.connect(self._copy)
        self.regenerate_button = self._action("Regenerate", "Regenerate the last answer")
        self.regenerate_button.clicked.connect(self._regenerate)
        self.edit_button = self._action("Edit", "Edit and resend the last message")
        self.edit_button.clicked.connect(self._edit)
        self.regenerate_button.setVisible(False)
        self.edit_button.setVisible(False)

        actions = QHBoxLayout()
        actions.setSpacing(2)
        actions.addWidget(self.meta, 1)
        actions.addWidget(self.edit_button)
        actions.addWidget(self.regenerate_button)
        actions.addWidget(self.copy_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 8)
        layout.setSpacing(4)
        layout.addWidget(self.author)
        layout.addWidget(self.emergency)
        self.images = ImageStrip(removable=False, parent=self)
        layout.addWidget(self.images)
        layout.addWidget(self.body)
        layout.addWidget(self.reasoning)
        # The answer's sources: file, page and snippet as plain text, each with an explicit Open.
        self.sources = QFrame(self)
        self.sources.setObjectName("sources")
        self.sources.setVisible(False)
        self._sources_layout = QVBoxLayout(self.sources)
        self._sources_layout.setContentsMargins(0, 4, 0, 0)
        self._sources_layout.setSpacing(2)
        self.citations: list[Citation] = []
        layout.addWidget(self.sources)
        layout.addLayout(actions)

    def set_emergency_notice(self, notice: dict | None) -> None:
        """Show the red-flag notice (from `medgemma_models.emergency`) above the answer, or hide it."""
        if not notice:
            self.emergency.setVisible(False)
            return
        line = f"\u26a0 {notice['text']} (red flag: {notice['red_flag']}, \"{notice['matched_phrase']}\")"
        if notice.get("crisis_line"):
            line += f" Crisis line: {notice['crisis_line']}"
        self.emergency.setText(line)
        self.emergency.setAccessibleName(line)
        self.emergency.setVisible(True)

    def set_citations(self, stored: object) -> None:
        """Show the answer's sources (`documents.passages.Citation` dicts); none found says so."""
        if not isinstance(stored, list):
            return
        self.citations = [c for c in (Citation.from_dict(i) for i in stored if isinstance(i, dict)) if c is not None]
        title = QLabel("Sources:" if self.citations else "Sources: no passage of the chat's documents matched.",
                       self.sources)
        title.setTextFormat(Qt.TextFormat.PlainText)
        self._sources_layout.addWidget(title)
        for citation in self.citations:
            row = QHBoxLayout()
            line = QLabel(f"[{citation.number}] {citation.source}, page {citation.page} — “{citation.snippet}”",
                          self.sources)
            line.setTextFormat(Qt.TextFormat.PlainText)  # the snippet is document text: never markup
            line.setWordWrap(True)
            line.setObjectName("citation")
            opener = QToolButton(self.sources)
            opener.setObjectName("cardAction")
            opener.setText("Open")
            opener.setAccessibleName(f"Open {citation.source}")
            opener.clicked.connect(lambda _=False, path=citation.path: self.open_source_requested.emit(path))
            row.addWidget(line, 1)
            row.addWidget(opener, 0, Qt.AlignmentFlag.AlignTop)
            self._sources_layout.addLayout(row)
        self.sources.setVisible(True)

    def show_images(self, parts: list[ImagePart], store: ImageStore) -> None:
        """The message's images as thumbnails, made once here from the stored files."""
        self.images.show_parts(parts, store)

    def _action(self, text: str, accessible: str) -> QToolButton:
        button = QToolButton(self)
        button.setText(text)
        button.setObjectName("cardAction")
        button.setAccessibleName(accessible)
        button.setToolTip(accessible)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        return button

    def set_content(self, answer: str, reasoning: str = "", reasoning_tokens: int | None = None) -> None:
        self._answer = answer
        self._reasoning = reasoning
        self._reasoning_tokens = reasoning_tokens if reasoning_tokens is not None else len(reasoning.split())
        self.render()

    def append(self, answer: str = "", reasoning: str = "", reasoning_tokens: int = 0) -> None:
        """Add streamed text; the card re-renders on a short timer, not per piece."""
        self._answer += answer
        self._reasoning += reasoning
        self._reasoning_tokens += reasoning_tokens
        if not self._render_timer.isActive():
            self._render_timer.start()

    @Slot()
    def render(self) -> None:
        self._render_timer.stop()
        waiting = self.reasoning.streaming and not self._answer
        self.body.set_markdown(self._answer if self._answer or not waiting else "*…*")
        self.body.setVisible(bool(self._answer) or self.role == "user" or waiting or not self._reasoning)
        self.reasoning.set_text(self._reasoning, self._reasoning_tokens)

    def answer(self) -> str:
        return self._answer

    def reasoning_text(self) -> str:
        return self._reasoning

    def set_reasoning_visible(self, visible: bool) -> None:
        self.reasoning.setVisible(visible and bool(self._reasoning))

    def set_streaming(self, streaming: bool) -> None:
        self.reasoning.set_streaming(streaming)
        self.render()

    def set_meta(self, text: str) -> None:
        self.meta.setText(text)

    def set_actions(self, regenerate: bool, edit: bool) -> None:
        self.regenerate_button.setVisible(regenerate)
        self.edit_button.setVisible(edit)

    @Slot()
    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self._answer)

    @Slot()
    def _regenerate(self) -> None:
        self.regenerate_requested.emit(self.message_id)

    @Slot()
    def _edit(self) -> None:
        self.edit_requested.emit(self.message_id)
