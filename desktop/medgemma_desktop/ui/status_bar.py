"""The status bar: the model in use and its GPU offload, load progress with Cancel, speed and context."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar, QWidget

from ..answer import AnswerStats


class StatusBar(QStatusBar):
    cancel_load_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("statusBar")
        self.offload_label = QLabel("No model loaded", self)
        self.offload_label.setTextFormat(Qt.TextFormat.PlainText)  # shows the GGUF's general.name
        self.offload_label.setAccessibleName("Model in use, GPU offload and check")
        self.speed_label = QLabel("", self)
        self.speed_label.setAccessibleName("Generation speed")
        self.context_label = QLabel("", self)
        self.context_label.setAccessibleName("Context used")
        self.saving_label = QLabel("Saving\u2026", self)  # a save failed; the text is kept and retried
        self.saving_label.setAccessibleName("Chat not saved yet")
        self.saving_label.setVisible(False)
        self.load_bar = QProgressBar(self)
        self.load_bar.setAccessibleName("Model loading progress")
        self.load_bar.setRange(0, 1000)
        self.load_bar.setMaximumWidth(180)
        self.load_bar.setTextVisible(False)
        self.cancel_load_button = QPushButton("Cancel", self)
        self.cancel_load_button.setAccessibleName("Cancel model loading")
        self.cancel_load_button.clicked.connect(self.cancel_load_requested)
        self.load_bar.setVisible(False)
        self.cancel_load_button.setVisible(False)
        self.addWidget(self.offload_label, 1)
        self.addPermanentWidget(self.saving_label)
        self.addPermanentWidget(self.load_bar)
        self.addPermanentWidget(self.cancel_load_button)
        self.addPermanentWidget(self.speed_label)
        self.addPermanentWidget(self.context_label)

    def show_loading(self, name: str) -> None:
        self.load_bar.setValue(0)
        self.load_bar.setVisible(True)
        self.cancel_load_button.setVisible(True)
        self.offload_label.setText(f"Loading {name}…")

    @Slot(float)
    def set_load_progress(self, fraction: float) -> None:
        self.load_bar.setValue(int(fraction * 1000))

    def end_loading(self) -> None:
        self.load_bar.setVisible(False)
        self.cancel_load_button.setVisible(False)

    def show_model(self, text: str) -> None:
        """The model in use and its offload, or what happened to a load."""
        self.offload_label.setText(text)

    def show_saving(self, saving: bool) -> None:
        self.saving_label.setVisible(saving)

    def show_context(self, used: int, n_ctx: int) -> None:
        self.context_label.setText(f"ctx {used:,} / {n_ctx:,}")

    def show_stats(self, stats: AnswerStats, n_ctx: int) -> None:
        self.speed_label.setText(
            f"{stats.decode_tok_per_s:.1f} tok/s · TTFT {stats.ttft_ms:.0f} ms · reused {stats.reused_tokens:,} tokens"
        )
        self.show_context(stats.prompt_tokens + stats.generated_tokens, n_ctx)

    # -- what the bar says it shows (for tests and for screen readers' summaries) --------------------

    def shown_model(self) -> str:
        """The model in use and its offload, or the load in progress or its outcome."""
        return self.offload_label.text()

    def shown_speed(self) -> str:
        return self.speed_label.text()

    def shown_context(self) -> str:
        return self.context_label.text()

    def is_saving_shown(self) -> bool:
        return self.saving_label.isVisibleTo(self)

    def is_loading_shown(self) -> bool:
        """Whether the load bar and its Cancel are showing."""
        return self.load_bar.isVisibleTo(self) and self.cancel_load_button.isVisibleTo(self)
