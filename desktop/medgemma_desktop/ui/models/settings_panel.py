"""The right-hand panel: preset, system prompt, sampling, context, threads, GPU offload and reasoning."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from medgemma_models.catalog import Preset, presets

from ...settings import GPU_AUTO, GPU_CPU, GPU_LAYERS, LIMITS, ChatSettings, LoadSettings


class SettingsPanel(QScrollArea):
    """Edits one model's working settings: `show_settings()` and `chat_settings()` / `load_settings()`."""

    changed = Signal()
    reasoning_display_changed = Signal(bool)
    reload_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("settingsPanel")
        self.setAccessibleName("Settings")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumWidth(340)
        self._quiet = False
        body = QWidget(self)
        body.setObjectName("settingsBody")
        layout = QVBoxLayout(body)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.setSpacing(10)

        self.preset = QComboBox(body)
        self.preset.setAccessibleName("Prompt preset")
        self.preset.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preset.setMinimumContentsLength(16)
        for preset in presets().values():
            self.preset.addItem(preset.title, preset.name)
        self.preset_note = QLabel("", body)
        self.preset_note.setObjectName("hint")
        self.preset_note.setWordWrap(True)
        self.system = QPlainTextEdit(body)
        self.system.setAccessibleName("System prompt")
        self.system.setPlaceholderText("System prompt (folded into the first message: Gemma has no system role)")
        self.system.setFixedHeight(84)
        prompt_box = QGroupBox("Prompt", body)
        prompt_layout = QVBoxLayout(prompt_box)
        prompt_layout.addWidget(self.preset)
        prompt_layout.addWidget(self.preset_note)
        prompt_layout.addWidget(self.system)

        self.think = QCheckBox("Think before answering", body)
        self.think.setAccessibleName("Think")
        self.show_reasoning = QCheckBox("Show reasoning", body)
        self.show_reasoning.setAccessibleName("Show reasoning")
        self.send_reasoning = QCheckBox("Send reasoning back", body)
        self.send_reasoning.setAccessibleName("Send reasoning back")
        self.send_reasoning.setToolTip("Off: earlier answers' reasoning is left out of the context.")
        reasoning_box = QGroupBox("Reasoning", body)
        reasoning_layout = QVBoxLayout(reasoning_box)
        for box in (self.think, self.show_reasoning, self.send_reasoning):
            reasoning_layout.addWidget(box)

        self.temperature = self._double("temperature", 0.05, "Temperature")
        self.top_p = self._double("top_p", 0.01, "Top-p")
        self.top_k = self._int("top_k", "Top-k")
        self.repeat_penalty = self._double("repeat_penalty", 0.01, "Repeat penalty")
        self.max_tokens = self._int("max_tokens", "Maximum tokens of an answer")
        sampling_box = QGroupBox("Sampling", body)
        sampling = QFormLayout(sampling_box)
        sampling.addRow("Temperature", self.temperature)
        sampling.addRow("Top-p", self.top_p)
        sampling.addRow("Top-k", self.top_k)
        sampling.addRow("Repeat penalty", self.repeat_penalty)
        sampling.addRow("Max tokens", self.max_tokens)

        self.n_ctx = self._int("n_ctx", "Context size in tokens")
        self.n_ctx.setSingleStep(512)
        self.threads = self._int("threads", "CPU threads (0: automatic)")
        self.threads.setSpecialValueText("Auto")
        self.gpu = QComboBox(body)
        self.gpu.setAccessibleName("GPU offload")
        self.gpu.addItem("Auto", GPU_AUTO)
        self.gpu.addItem("CPU only", GPU_CPU)
        self.gpu.addItem("Layers…", GPU_LAYERS)
        self.gpu_layers = self._int("gpu_layers", "GPU layers")
        self.gpu.currentIndexChanged.connect(self._on_gpu_mode)
        gpu_row = QHBoxLayout()
        gpu_row.addWidget(self.gpu, 1)
        gpu_row.addWidget(self.gpu_layers)
        self.reload_button = QPushButton("Apply and reload model", body)
        self.reload_button.setAccessibleName("Apply context, threads and GPU settings and reload the model")
        self.reload_button.clicked.connect(self.reload_requested)
        hardware_box = QGroupBox("Model loading", body)
        hardware = QFormLayout(hardware_box)
        hardware.addRow("Context", self.n_ctx)
        hardware.addRow("Threads", self.threads)
        hardware.addRow("GPU offload", gpu_row)
        hardware.addRow(self.reload_button)

        self.reset_button = QPushButton("Reset to preset defaults", body)
        self.reset_button.setAccessibleName("Reset settings to the preset's defaults")
        self.reset_button.clicked.connect(self.reset_to_defaults)

        layout.addWidget(prompt_box)
        layout.addWidget(reasoning_box)
        layout.addWidget(sampling_box)
        layout.addWidget(hardware_box)
        layout.addWidget(self.reset_button)
        layout.addStretch(1)
        self.setWidget(body)

        self.preset.currentIndexChanged.connect(self._on_preset)
        for box in (self.think, self.show_reasoning, self.send_reasoning):
            box.toggled.connect(self._emit_changed)
        for spin in (self.temperature, self.top_p, self.top_k, self.repeat_penalty, self.max_tokens,
                     self.n_ctx, self.threads, self.gpu_layers):
            spin.valueChanged.connect(self._emit_changed)
        self.system.textChanged.connect(self._emit_changed)
        self.gpu.currentIndexChanged.connect(self._emit_changed)
        self.show_settings(ChatSettings.from_dict({}), LoadSettings())

    def _double(self, key: str, step: float, name: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(self)
        spin.setRange(*LIMITS[key])
        spin.setSingleStep(step)
        spin.setDecimals(2)
        spin.setAccessibleName(name)
        return spin

    def _int(self, key: str, name: str) -> QSpinBox:
        spin = QSpinBox(self)
        spin.setRange(*(int(limit) for limit in LIMITS[key]))
        spin.setAccessibleName(name)
        return spin

    # -- values ---------------------------------------------------------------------------------

    def chat_settings(self) -> ChatSettings:
        return ChatSettings(
            preset=str(self.preset.currentData()),
            system=self.system.toPlainText(),
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            repeat_penalty=self.repeat_penalty.value(),
            max_tokens=self.max_tokens.value(),
            think=self.think.isChecked(),
            show_reasoning=self.show_reasoning.isChecked(),
            send_reasoning_back=self.send_reasoning.isChecked(),
        )

    def load_settings(self) -> LoadSettings:
        return LoadSettings(n_ctx=self.n_ctx.value(), threads=self.threads.value(), gpu=str(self.gpu.currentData()),
                            gpu_layers=self.gpu_layers.value())

    def show_settings(self, chat: ChatSettings, load: LoadSettings | None = None) -> None:
        """Show a model's settings (`load` None: the loading settings on show stay)."""
        self._quiet = True
        try:
            self.preset.setCurrentIndex(max(self.preset.findData(chat.preset), 0))
            self.system.setPlainText(chat.system)
            self.temperature.setValue(chat.temperature)
            self.top_p.setValue(chat.top_p)
            self.top_k.setValue(chat.top_k)
            self.repeat_penalty.setValue(chat.repeat_penalty)
            self.max_tokens.setValue(chat.max_tokens)
            self.think.setChecked(chat.think)
            self.show_reasoning.setChecked(chat.show_reasoning)
            self.send_reasoning.setChecked(chat.send_reasoning_back)
            if load is not None:
                self.n_ctx.setValue(load.n_ctx)
                self.threads.setValue(load.threads)
                self.gpu.setCurrentIndex(max(self.gpu.findData(load.gpu), 0))
                self.gpu_layers.setValue(load.gpu_layers)
            self._on_gpu_mode()
            self._apply_preset_capabilities(chat.preset_spec)
        finally:
            self._quiet = False
        self.reasoning_display_changed.emit(chat.show_reasoning_enabled)
        self.changed.emit()

    @Slot()
    def think_available(self) -> bool:
        """Whether the model's preset lets the user turn thinking on."""
        return self.think.isEnabled()

    def reset_to_defaults(self) -> None:
        """The preset's sampling and prompt defaults; loading settings stay as they are."""
        self.show_settings(ChatSettings.defaults_for(self.chat_settings().preset))

    def set_reload_enabled(self, enabled: bool) -> None:
        self.reload_button.setEnabled(enabled)

    # -- reactions ------------------------------------------------------------------------------

    @Slot(int)
    def _on_preset(self, _index: int) -> None:
        if self._quiet:
            return
        # A new preset brings its own prompt and sampling defaults.
        self.show_settings(self.chat_settings().with_preset(str(self.preset.currentData())))

    def _apply_preset_capabilities(self, preset: Preset) -> None:
        # Zero-width spaces let long repository ids wrap instead of widening the panel.
        self.preset_note.setText(preset.description.replace("/", "/\u200b").replace("-", "-\u200b"))
        why = "" if preset.reasoning else f"The preset “{preset.title}” does not reason: these controls do not apply."
        for box in (self.think, self.show_reasoning, self.send_reasoning):
            box.setEnabled(preset.reasoning)
            box.setToolTip(why or box.accessibleName())

    @Slot()
    def _on_gpu_mode(self) -> None:
        self.gpu_layers.setEnabled(self.gpu.currentData() == GPU_LAYERS)

    @Slot()
    def _emit_changed(self) -> None:
        if not self._quiet:
            if self.sender() is self.show_reasoning:
                self.reasoning_display_changed.emit(self.chat_settings().show_reasoning_enabled)
            self.changed.emit()
