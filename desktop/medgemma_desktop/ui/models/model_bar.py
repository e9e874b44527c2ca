"""The bar above the chat: the model picker with each model's facts, Open GGUF…, Convert…, Export."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from ...library import ModelEntry
from ..chat.plain_text import plain_tooltip


class ModelBar(QWidget):
    model_chosen = Signal(object)  # the ModelEntry picked (its path None: the embedded default)
    open_requested = Signal()
    convert_requested = Signal()
    export_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelBar")
        self._filling = False
        self._entries: dict[str, ModelEntry] = {}
        self.combo = QComboBox(self)
        self.combo.setObjectName("modelPicker")
        self.combo.setAccessibleName("Model")
        self.combo.setMinimumContentsLength(30)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.activated.connect(self._on_activated)
        self.details = QLabel("No model loaded", self)
        self.details.setTextFormat(Qt.TextFormat.PlainText)  # facts read from the GGUF: text, not HTML
        self.details.setObjectName("modelDetails")
        self.details.setAccessibleName("Model details")
        # The facts line has a line of its own under the picker and wraps: at 1280 px beside the
        # picker it was cut to "gemma3 · 270M · Q…". It keeps its tooltip too.
        self.details.setWordWrap(True)
        self.details.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.open_button = QPushButton("Open GGUF…", self)
        self.open_button.setAccessibleName("Open a GGUF model file")
        self.open_button.setToolTip("Open a GGUF model file (Ctrl+O)")
        self.open_button.clicked.connect(self.open_requested)
        self.convert_button = QPushButton("Convert…", self)
        self.convert_button.setAccessibleName("Convert a LoRA adapter into a GGUF model")
        self.convert_button.clicked.connect(self.convert_requested)
        self.export_button = QPushButton("Export…", self)
        self.export_button.setAccessibleName("Export this chat as Markdown or JSON")
        self.export_button.clicked.connect(self.export_requested)
        column = QVBoxLayout(self)
        column.setContentsMargins(16, 8, 16, 6)
        column.setSpacing(4)
        row = QHBoxLayout()
        row.setSpacing(8)
        row.addWidget(self.combo, 1)
        row.addWidget(self.open_button)
        row.addWidget(self.convert_button)
        row.addWidget(self.export_button)
        column.addLayout(row)
        column.addWidget(self.details)

    def set_models(self, models: list[ModelEntry], current: str | None) -> None:
        """Fill the picker and select the entry whose key is `current` (a file's resolved path, or a combination's)."""
        self._filling = True
        self.combo.clear()
        self._entries = {entry.key: entry for entry in models}
        for entry in models:
            self.combo.addItem(entry.title, entry.key)
            self.combo.setItemData(self.combo.count() - 1, plain_tooltip(entry.tooltip), Qt.ItemDataRole.ToolTipRole)
        self.select(current)
        self._filling = False

    def select(self, key: str | None) -> None:
        index = self.combo.findData(key) if key is not None else -1
        if index >= 0:
            self.combo.setCurrentIndex(index)

    def set_details(self, text: str) -> None:
        self.details.setText(text)
        self.details.setToolTip(plain_tooltip(text))

    def shown_title(self) -> str:
        """The picker's current entry as the user reads it."""
        return self.combo.currentText()

    def selected_key(self) -> str | None:
        """The key of the picker's current entry (a file's resolved path, or a combination's)."""
        return self.combo.currentData()

    def shown_details(self) -> str:
        """The facts line as shown under the picker."""
        return self.details.text()

    def set_switching_enabled(self, enabled: bool) -> None:
        """Picking or opening another model (off while an answer streams or a model loads)."""
        self.combo.setEnabled(enabled)
        self.open_button.setEnabled(enabled)

    def set_export_enabled(self, enabled: bool) -> None:
        self.export_button.setEnabled(enabled)

    @Slot(int)
    def _on_activated(self, index: int) -> None:
        if self._filling:
            return
        entry = self._entries.get(self.combo.itemData(index))
        if entry is not None:
            self.model_chosen.emit(entry)
