"""The right-hand panel: preset, system prompt, sampling, context, threads, GPU offload and reasoning."""

from __future__ import annotations

from typing import Any

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

from medgemma_models.catalog import DEFAULT_PRESET, Preset, get_preset, presets

from ..engine import GenerationSettings, LoadOptions

GPU_AUTO, GPU_CPU, GPU_LAYERS = "auto", "cpu", "layers"
# Settings that shape the model load rather than the prompt; a preset change keeps them.
LOADING_KEYS = ("n_ctx", "threads", "gpu", "gpu_layers")
FALLBACK_DEFAULTS: dict[str, Any] = {
    "temperature": 0.7, "top_p": 0.95, "top_k": 64, "repeat_penalty": 1.0, "max_tokens": 512,
}


class SettingsPanel(QScrollArea):
    """Edits one model's working settings; `values()` / `set_values()` round-trip them for History."""

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

        self.temperature = self._double(0.0, 2.0, 0.05, 2, "Temperature")
        self.top_p = self._double(0.0, 1.0, 0.01, 2, "Top-p")
        self.top_k = self._int(0, 1000, "Top-k")
        self.repeat_penalty = self._double(0.8, 2.0, 0.01, 2, "Repeat penalty")
        self.max_tokens = self._int(1, 32768, "Maximum tokens of an answer")
        sampling_box = QGroupBox("Sampling", body)
        sampling = QFormLayout(sampling_box)
        sampling.addRow("Temperature", self.temperature)
        sampling.addRow("Top-p", self.top_p)
        sampling.addRow("Top-k", self.top_k)
        sampling.addRow("Repeat penalty", self.repeat_penalty)
        sampling.addRow("Max tokens", self.max_tokens)

        self.n_ctx = self._int(256, 131072, "Context size in tokens")
        self.n_ctx.setSingleStep(512)
        self.threads = self._int(0, 256, "CPU threads (0: automatic)")
        self.threads.setSpecialValueText("Auto")
        self.gpu = QComboBox(body)
        self.gpu.setAccessibleName("GPU offload")
        self.gpu.addItem("Auto", GPU_AUTO)
        self.gpu.addItem("CPU only", GPU_CPU)
        self.gpu.addItem("Layers…", GPU_LAYERS)
        self.gpu_layers = self._int(0, 999, "GPU layers")
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
        self.set_values({})

    def _double(self, low: float, high: float, step: float, decimals: int, name: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(self)
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setDecimals(decimals)
        spin.setAccessibleName(name)
        return spin

    def _int(self, low: int, high: int, name: str) -> QSpinBox:
        spin = QSpinBox(self)
        spin.setRange(low, high)
        spin.setAccessibleName(name)
        return spin

    # -- values ---------------------------------------------------------------------------------

    def preset_name(self) -> str:
        return str(self.preset.currentData())

    def current_preset(self) -> Preset:
        return get_preset(self.preset_name())

    def values(self) -> dict[str, Any]:
        return {
            "preset": self.preset_name(),
            "system": self.system.toPlainText(),
            "temperature": self.temperature.value(),
            "top_p": self.top_p.value(),
            "top_k": self.top_k.value(),
            "repeat_penalty": self.repeat_penalty.value(),
            "max_tokens": self.max_tokens.value(),
            "n_ctx": self.n_ctx.value(),
            "threads": self.threads.value(),
            "gpu": self.gpu.currentData(),
            "gpu_layers": self.gpu_layers.value(),
            "think": self.think.isChecked(),
            "show_reasoning": self.show_reasoning.isChecked(),
            "send_reasoning_back": self.send_reasoning.isChecked(),
        }

    def set_values(self, values: dict[str, Any]) -> None:
        """Show saved settings; missing keys take the preset's defaults."""
        self._quiet = True
        try:
            name = values.get("preset", DEFAULT_PRESET)
            index = self.preset.findData(name)
            self.preset.setCurrentIndex(index if index >= 0 else self.preset.findData(DEFAULT_PRESET))
            preset = self.current_preset()
            defaults = {**FALLBACK_DEFAULTS, **preset.defaults}
            merged = {**defaults, **values}
            self.system.setPlainText(merged.get("system") or preset.system or "")
            self.temperature.setValue(float(merged["temperature"]))
            self.top_p.setValue(float(merged["top_p"]))
            self.top_k.setValue(int(merged["top_k"]))
            self.repeat_penalty.setValue(float(merged["repeat_penalty"]))
            self.max_tokens.setValue(int(merged["max_tokens"]))
            self.n_ctx.setValue(int(merged.get("n_ctx", 4096)))
            self.threads.setValue(int(merged.get("threads", 0)))
            self.gpu.setCurrentIndex(max(self.gpu.findData(merged.get("gpu", GPU_AUTO)), 0))
            self.gpu_layers.setValue(int(merged.get("gpu_layers", 0)))
            self.think.setChecked(bool(merged.get("think", True)))
            self.show_reasoning.setChecked(bool(merged.get("show_reasoning", True)))
            self.send_reasoning.setChecked(bool(merged.get("send_reasoning_back", False)))
            self._on_gpu_mode()
            self._apply_preset_capabilities(preset)
        finally:
            self._quiet = False
        self.reasoning_display_changed.emit(self.show_reasoning_enabled())
        self.changed.emit()

    @Slot()
    def reset_to_defaults(self) -> None:
        """The preset's sampling and prompt defaults; loading settings stay as they are."""
        keep = {k: v for k, v in self.values().items() if k in ("preset", *LOADING_KEYS)}
        self.set_values(keep)

    def generation_settings(self, seed: int | None = None) -> GenerationSettings:
        return GenerationSettings(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            repeat_penalty=self.repeat_penalty.value(),
            max_tokens=self.max_tokens.value(),
            seed=seed,
        )

    def load_options(self) -> LoadOptions:
        mode = self.gpu.currentData()
        gpu: str | int = self.gpu_layers.value() if mode == GPU_LAYERS else mode
        threads = self.threads.value() or None
        return LoadOptions(n_ctx=self.n_ctx.value(), n_threads=threads, gpu=gpu)

    def system_prompt(self) -> str | None:
        return self.system.toPlainText().strip() or None

    def reasoning_available(self) -> bool:
        return self.current_preset().reasoning

    def think_enabled(self) -> bool:
        return self.reasoning_available() and self.think.isChecked()

    def show_reasoning_enabled(self) -> bool:
        # A preset that does not reason can still emit <think>; show it rather than lose text.
        return self.show_reasoning.isChecked() or not self.reasoning_available()

    def send_reasoning_back_enabled(self) -> bool:
        return self.reasoning_available() and self.send_reasoning.isChecked()

    # -- reactions ------------------------------------------------------------------------------

    @Slot(int)
    def _on_preset(self, _index: int) -> None:
        if self._quiet:
            return
        # A new preset brings its own prompt and sampling defaults.
        keep = {k: v for k, v in self.values().items()
                if k in ("preset", *LOADING_KEYS, "think", "show_reasoning", "send_reasoning_back")}
        self.set_values(keep)

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
                self.reasoning_display_changed.emit(self.show_reasoning_enabled())
            self.changed.emit()
