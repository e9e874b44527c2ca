"""The bar above the chat: the model picker with each model's facts, Open GGUF…, Convert…, Export."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from medgemma_models.gguf_info import ModelInfo, human_count

EMBEDDED_LABEL = "Gemma 3 270M · embedded default (prepared on first use)"


def describe(info: ModelInfo) -> str:
    """The facts a user picks a model by: architecture, size, quantization, real bpw, context."""
    size = info.size_label or human_count(info.parameter_count)
    context = f"{info.context_length:,} ctx" if info.context_length else "context unknown"
    megabytes = info.file_size / 1e6
    return (f"{info.architecture} · {size} · {info.file_type} · {info.bits_per_weight:.2f} bpw real · "
            f"{context} · {megabytes:,.0f} MB")


class ModelBar(QWidget):
    model_chosen = Signal(object)  # Path | None (None: the embedded default)
    open_requested = Signal()
    convert_requested = Signal()
    export_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelBar")
        self._filling = False
        self.combo = QComboBox(self)
        self.combo.setObjectName("modelPicker")
        self.combo.setAccessibleName("Model")
        self.combo.setMinimumContentsLength(30)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.activated.connect(self._on_activated)
        self.details = QLabel("No model loaded", self)
        self.details.setObjectName("modelDetails")
        self.details.setAccessibleName("Model details")
        # The facts line gives way (it has a tooltip) rather than widening the window.
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
        layout = QHBoxLayout(self)
        layout.setContentsMargins(16, 8, 16, 8)
        layout.setSpacing(8)
        layout.addWidget(self.combo, 2)
        layout.addWidget(self.details, 3)
        layout.addWidget(self.open_button)
        layout.addWidget(self.convert_button)
        layout.addWidget(self.export_button)

    def set_models(self, models: list[tuple[Path | None, str, str]], current: Path | None) -> None:
        """`models`: (path or None for the embedded default, title, tooltip)."""
        self._filling = True
        self.combo.clear()
        for path, title, tooltip in models:
            self.combo.addItem(title, str(path) if path is not None else "")
            self.combo.setItemData(self.combo.count() - 1, tooltip, 3)  # 3: Qt.ToolTipRole
        self.select(current)
        self._filling = False

    def select(self, path: Path | None) -> None:
        index = self.combo.findData(str(path) if path is not None else "")
        if index >= 0:
            self.combo.setCurrentIndex(index)

    def paths(self) -> list[Path | None]:
        return [Path(d) if d else None for d in (self.combo.itemData(i) for i in range(self.combo.count()))]

    def set_details(self, text: str) -> None:
        self.details.setText(text)
        self.details.setToolTip(text)

    @Slot(int)
    def _on_activated(self, index: int) -> None:
        if self._filling:
            return
        data = self.combo.itemData(index)
        self.model_chosen.emit(Path(data) if data else None)
