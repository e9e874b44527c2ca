"""Convert…: run `medgemma-convert … --progress json` as a child process and follow it.

The conversion runs in its own process so the window never imports torch and a failing
conversion cannot take the chat down. Before starting, a tiny child checks that the convert
extra is installed (with `importlib.util.find_spec`, so nothing heavy is imported here).
A bundle has no Python to run it with: there Convert… uses a `medgemma-convert` found on the PATH,
or explains how to install one.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QProcess, QProcessEnvironment, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medgemma_models.catalog import presets
from medgemma_models.offline import OFFLINE_ENV
from medgemma_models.progress import ProgressEvent
from medgemma_models.quants import CHECKED, OFFERED
from medgemma_models.report import ConversionReport
from medgemma_models.store import home, models_dir

INSTALL_HINT = "pip install 'medgemma-edge[convert]'"
CONVERTER = "medgemma-convert"
NO_CONVERTER_IN_BUNDLE = (
    "Converting needs the conversion tools, which this app does not include. Install them with: "
    'pip install "medgemma-edge[convert]" (Python 3.10 or newer); Convert… then uses the '
    "medgemma-convert command it finds on the PATH.")
# PyInstaller's bootloader puts the bundle's own libraries first on LD_LIBRARY_PATH and keeps the
# user's value in LD_LIBRARY_PATH_ORIG; a converter from the user's Python must not load ours.
LIBRARY_PATH = "LD_LIBRARY_PATH"
CHECK_CODE = (
    "import importlib.util, sys\n"
    "missing = [m for m in ('torch', 'transformers', 'peft', 'safetensors', 'medgemma_convert')"
    " if importlib.util.find_spec(m) is None]\n"
    "print(' '.join(missing)); sys.exit(3 if missing else 0)\n"
)
MISSING_EXIT = 3
# -I: the child imports nothing from its working folder, PYTHONPATH or the user's site-packages (a
# numpy.py where the app was launched would otherwise run inside it). -I also ignores PYTHONUNBUFFERED:
# -u keeps the progress lines coming as they are written.
ISOLATED = ("-I", "-u")
STOP_WAIT_MS = 120_000  # how long closing waits for a cancelled conversion to remove its partial files
HUB_PREFIX = "hub:"


def absolute(source: str) -> str:
    """A path typed in the form, made absolute against the launch folder (the child runs elsewhere);
    a hub id stays as it is."""
    return source if source.startswith(HUB_PREFIX) or not source else str(Path(source).expanduser().absolute())


def in_bundle() -> bool:
    """Running from a PyInstaller bundle, where sys.executable is the app itself, not a Python."""
    return bool(getattr(sys, "frozen", False))


def converter_command(python: str) -> list[str] | None:
    """How to start medgemma-convert: `python -m medgemma_convert`, or from a bundle the command on
    the PATH (None: a bundle and no such command)."""
    if not in_bundle():
        return [python, *ISOLATED, "-m", "medgemma_convert"]
    found = shutil.which(CONVERTER)
    return [found] if found else None


MERGED, RUNTIME_ADAPTER = "merged", "adapter"  # the output kinds: one model file, or a LoRA GGUF beside the base


def convert_arguments(base: str, adapters: list[tuple[str, float]], out: str, quants: list[str],
                      preset: str | None, name: str | None, verify: bool, imatrix: bool = False,
                      kind: str = MERGED, mmproj: bool = True) -> list[str]:
    """The `medgemma-convert` command line the dialog's fields describe.

    A runtime adapter (`medgemma-convert lora`) keeps the base as it is, so quantizations, the
    importance matrix and the vision projector (mmproj) do not apply to it.
    """
    args = ["-m", "medgemma_convert", *(["lora"] if kind == RUNTIME_ADAPTER else []), "--base", base]
    for path, scale in adapters:
        args += ["--adapter", path if scale == 1.0 else f"{path}:{scale:g}"]
    args += ["--out", out, "--progress", "json"]
    if kind != RUNTIME_ADAPTER:
        args += ["--quant", ",".join(quants)]
    if preset:
        args += ["--preset", preset]
    if name:
        args += ["--name", name]
    if verify:
        args.append("--verify")
    if imatrix and kind != RUNTIME_ADAPTER:
        args += ["--imatrix", "auto"]
    if not mmproj and kind != RUNTIME_ADAPTER:
        args.append("--no-mmproj")
    return args


class ConvertDialog(QDialog):
    converted = Signal(str)  # path of each GGUF the conversion produced
    progress_changed = Signal(str, int, int)

    def __init__(self, parent: QWidget | None = None, python: str = sys.executable) -> None:
        super().__init__(parent)
        # Asks (title, question) -> yes before a running conversion is stopped; tests answer it themselves.
        self.ask: Callable[[str, str], bool] = self._ask
        self.setObjectName("convertDialog")
        self.setWindowTitle("Convert a LoRA adapter into a GGUF model")
        self.setAccessibleName("Convert")
        self.resize(720, 640)
        self.python = python
        self.outputs: list[str] = []
        self.report: ConversionReport | None = None
        self.error: str | None = None
        self._stderr = ""
        self._stdout_buffer = ""
        self._process: QProcess | None = None
        self._command: list[str] = []  # how the conversion starts, from converter_command()

        self.base = QLineEdit(self)
        self.base.setAccessibleName("Base model: folder or GGUF file")
        self.base.setPlaceholderText("Hugging Face folder or GGUF file (the app is offline: no hub downloads)")
        base_folder = QPushButton("Folder…", self)
        base_folder.setAccessibleName("Choose the base model folder")
        base_folder.clicked.connect(self._pick_base_folder)
        base_row = QHBoxLayout()
        base_row.addWidget(self.base, 1)
        base_row.addWidget(base_folder)

        self.adapters = QTableWidget(0, 2, self)
        self.adapters.setAccessibleName("Adapters and their scales")
        self.adapters.setHorizontalHeaderLabels(["Adapter (PEFT folder)", "Scale"])
        self.adapters.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.adapters.setMinimumHeight(110)
        add_adapter = QPushButton("Add adapter…", self)
        add_adapter.setAccessibleName("Add an adapter folder")
        add_adapter.clicked.connect(self._pick_adapter)
        remove_adapter = QPushButton("Remove", self)
        remove_adapter.setAccessibleName("Remove the selected adapter")
        remove_adapter.clicked.connect(self._remove_adapter)
        adapter_buttons = QHBoxLayout()
        adapter_buttons.addWidget(add_adapter)
        adapter_buttons.addWidget(remove_adapter)
        adapter_buttons.addStretch(1)

        self.quant_boxes: dict[str, QCheckBox] = {}
        quant_row = QHBoxLayout()
        for quant in OFFERED:
            box = QCheckBox(quant, self)
            box.setAccessibleName(f"Quantization {quant}")
            box.setChecked(quant in CHECKED)
            if quant == "q4_speed":
                box.setToolTip("About Q4_K_M's quality (with the importance matrix), larger, and on the CPUs measured "
                               "1.1-1.5x as fast to decode: an IQ4_NL output matrix, Q8_0 embeddings, Q6_K elsewhere")
            self.quant_boxes[quant] = box
            quant_row.addWidget(box)
        quant_row.addStretch(1)
        self.kind = QComboBox(self)
        self.kind.setAccessibleName("Output kind")
        self.kind.addItem("Merged model: one GGUF file, quantized", MERGED)
        self.kind.addItem("Runtime adapter: a LoRA GGUF used with the base, swappable", RUNTIME_ADAPTER)
        self.kind.currentIndexChanged.connect(self._on_kind_changed)
        self.preset = QComboBox(self)
        self.preset.setAccessibleName("Prompt preset")
        self.preset.addItem("From the catalog (by adapter or base)", "")
        for preset in presets().values():
            self.preset.addItem(preset.title, preset.name)
        self.name = QLineEdit(self)
        self.name.setAccessibleName("Model name")
        self.out = QLineEdit(str(models_dir() / "converted.gguf"), self)
        self.out.setAccessibleName("Output GGUF file")
        # A quick check against transformers always runs; this box asks for the whole evaluation text.
        self.verify = QCheckBox("Full verification against transformers (slower)", self)
        self.verify.setAccessibleName("Full verification")
        self.imatrix = QCheckBox("Importance matrix from medical text (better 4-bit quality)", self)
        self.imatrix.setAccessibleName("Importance matrix")
        self.mmproj = QCheckBox("Vision projector (mmproj) beside the model, for an image model's base", self)
        self.mmproj.setAccessibleName("Vision projector")
        self.mmproj.setToolTip("A multimodal base such as MedGemma 4B also writes mmproj-<output name>, the file "
                               "that lets the model see images; a text-only base has none to write.")
        self.mmproj.setChecked(True)

        form = QFormLayout()
        form.addRow("Base", base_row)
        form.addRow("Adapters", self.adapters)
        form.addRow("", adapter_buttons)
        form.addRow("Output kind", self.kind)
        form.addRow("Quantizations", quant_row)
        form.addRow("Preset", self.preset)
        form.addRow("Name", self.name)
        form.addRow("Output", self.out)
        form.addRow("", self.verify)
        form.addRow("", self.imatrix)
        form.addRow("", self.mmproj)

        self.stage = QLabel("", self)
        self.stage.setTextFormat(Qt.TextFormat.PlainText)  # stages and errors quote file names
        self.stage.setAccessibleName("Conversion stage")
        self.progress = QProgressBar(self)
        self.progress.setAccessibleName("Conversion progress")
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        self.log.setAccessibleName("Conversion log and report")
        self.start_button = QPushButton("Convert", self)
        self.start_button.setAccessibleName("Start the conversion")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel conversion", self)
        self.cancel_button.setAccessibleName("Cancel the conversion")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        close = QPushButton("Close", self)
        close.setAccessibleName("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(close)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.stage)
        layout.addWidget(self.progress)
        layout.addWidget(self.log, 1)
        layout.addLayout(buttons)

    # -- the form -------------------------------------------------------------------------------

    @Slot()
    def _on_kind_changed(self) -> None:
        merged = self.kind.currentData() == MERGED
        for box in self.quant_boxes.values():
            box.setEnabled(merged)
        self.imatrix.setEnabled(merged)
        self.mmproj.setEnabled(merged)
        self.verify.setText("Full verification against transformers (slower)" if merged
                            else "Verify base + adapter in llama.cpp against transformers + PEFT")

    @Slot()
    def _pick_base_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Base model folder")
        if folder:
            self.base.setText(folder)

    @Slot()
    def _pick_adapter(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "PEFT adapter folder")
        if folder:
            self.add_adapter(folder)

    def add_adapter(self, path: str, scale: float = 1.0) -> None:
        row = self.adapters.rowCount()
        self.adapters.insertRow(row)
        self.adapters.setItem(row, 0, QTableWidgetItem(path))
        spin = QDoubleSpinBox(self.adapters)
        spin.setRange(-4.0, 4.0)
        spin.setSingleStep(0.1)
        spin.setValue(scale)
        spin.setAccessibleName(f"Scale of adapter {row + 1}")
        self.adapters.setCellWidget(row, 1, spin)

    @Slot()
    def _remove_adapter(self) -> None:
        row = self.adapters.currentRow()
        if row >= 0:
            self.adapters.removeRow(row)

    def arguments(self) -> list[str]:
        adapters = []
        for row in range(self.adapters.rowCount()):
            item = self.adapters.item(row, 0)
            spin = self.adapters.cellWidget(row, 1)
            if item is not None and item.text().strip():
                adapters.append((absolute(item.text().strip()), spin.value() if isinstance(spin, QDoubleSpinBox) else 1.0))
        quants = [q for q, box in self.quant_boxes.items() if box.isChecked()] or list(CHECKED[:1])
        return convert_arguments(absolute(self.base.text().strip()), adapters, absolute(self.out.text().strip()), quants,
                                 self.preset.currentData() or None, self.name.text().strip() or None,
                                 self.verify.isChecked(), self.imatrix.isChecked(), self.kind.currentData(),
                                 self.mmproj.isChecked())

    # -- the child processes --------------------------------------------------------------------

    def _child(self) -> QProcess:
        process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        for name, value in OFFLINE_ENV.items():
            env.insert(name, value)
        if in_bundle():
            saved = LIBRARY_PATH + "_ORIG"
            if env.contains(saved):
                env.insert(LIBRARY_PATH, env.value(saved))
            else:
                env.remove(LIBRARY_PATH)
        process.setProcessEnvironment(env)
        process.setWorkingDirectory(str(home()))  # a folder of the app's, not wherever it was launched
        return process

    @Slot()
    def start(self) -> None:
        """First check that the convert extra is there, then run the conversion."""
        if not self.base.text().strip() or not self.out.text().strip():
            self._fail("Choose a base model and an output file first.")
            return
        self.error = None
        self.outputs = []
        self.report = None
        self.log.clear()
        command = converter_command(self.python)
        if command is None:
            self._fail(NO_CONVERTER_IN_BUNDLE)
            return
        self._command = command
        self.start_button.setEnabled(False)
        if in_bundle():  # the command found on the PATH runs on its own Python: nothing to check here
            self._run_conversion()
            return
        self.stage.setText("Checking the conversion tools…")
        check = self._child()
        check.finished.connect(self._on_checked)
        self._process = check
        check.start(self.python, [*ISOLATED, "-c", CHECK_CODE])

    @Slot(int, QProcess.ExitStatus)
    def _on_checked(self, code: int, _status: QProcess.ExitStatus) -> None:
        check = self._process
        missing = bytes(check.readAllStandardOutput().data()).decode(errors="replace").strip() if check else ""
        if code == MISSING_EXIT:
            self._fail(f"The convert extra is not installed (missing: {missing}). Install it with: {INSTALL_HINT}")
            return
        if code != 0:
            self._fail(f"Could not run Python for the conversion (exit status {code}).")
            return
        self._run_conversion()

    def _run_conversion(self) -> None:
        process = self._child()
        process.readyReadStandardOutput.connect(self._on_stdout)
        process.readyReadStandardError.connect(self._on_stderr)
        process.finished.connect(self._on_finished)
        self._process = process
        self._stderr = ""
        self._stdout_buffer = ""
        self.cancel_button.setEnabled(True)
        self.stage.setText("Starting…")
        args = self.arguments()
        self.log.appendPlainText("$ medgemma-convert " + " ".join(args[2:]))
        program, *prefix = self._command
        process.start(program, [*prefix, *args[2:]])  # the form's arguments, after "-m medgemma_convert"

    @Slot()
    def cancel(self) -> None:
        if self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning:
            # The converter writes to NAME.partial and removes it when interrupted.
            self._process.terminate()

    @Slot()
    def _on_stdout(self) -> None:
        assert self._process is not None
        self._stdout_buffer += bytes(self._process.readAllStandardOutput().data()).decode(errors="replace")
        *lines, self._stdout_buffer = self._stdout_buffer.split("\n")
        for line in lines:
            self.handle_line(line)

    def handle_line(self, line: str) -> None:
        """One line of the child's stdout: a `ProgressEvent`, else a plain log line."""
        line = line.strip()
        if not line:
            return
        event = ProgressEvent.from_json_line(line)
        if event is None:
            self.log.appendPlainText(line)
            return
        if event.report is not None:
            self._on_report(event.report)
            return
        stage, done, total = event.stage, event.done, event.total
        self.stage.setText(f"{stage.replace('_', ' ').capitalize()}… {done}/{total}" if total else stage)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))
        self.progress_changed.emit(stage, done, total)

    def _on_report(self, report: ConversionReport) -> None:
        self.report = report
        self.outputs = report.output_paths()
        self.log.appendPlainText("\n" + report.to_json())

    @Slot()
    def _on_stderr(self) -> None:
        assert self._process is not None
        text = bytes(self._process.readAllStandardError().data()).decode(errors="replace")
        self._stderr += text
        self.log.appendPlainText(text.rstrip())

    @Slot(int, QProcess.ExitStatus)
    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._on_stdout()
        self.handle_line(self._stdout_buffer)
        self._stdout_buffer = ""
        self.cancel_button.setEnabled(False)
        self.start_button.setEnabled(True)
        if status != QProcess.ExitStatus.NormalExit or code != 0:
            lines = [line for line in self._stderr.splitlines() if line.strip()]
            self._fail(lines[-1] if lines else f"The conversion stopped (exit status {code}).")
            return
        if not self.outputs:
            self.outputs = [self.out.text().strip()]
        self.stage.setText("Done: " + ", ".join(Path(p).name for p in self.outputs))
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        for path in self.outputs:
            self.converted.emit(path)

    def _fail(self, message: str) -> None:
        self.error = message
        self.stage.setText(message)
        self.log.appendPlainText(message)
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning

    def stop_for_close(self) -> bool:
        """Closing with a conversion running: ask; on yes cancel it and wait until it has cleaned up.

        Returns whether closing may go on.
        """
        if not self.running:
            return True
        if not self.ask("Stop the conversion?", "A conversion is running. Closing stops it and deletes "
                        "its unfinished files. Stop it?"):
            return False
        self.stop_and_wait()
        return True

    def stop_and_wait(self) -> None:
        """Cancel a running conversion (SIGTERM) and wait until the child has removed its partial files."""
        if not self.running:
            return
        self.cancel()
        assert self._process is not None
        if not self._process.waitForFinished(STOP_WAIT_MS):  # SIGTERM ignored: it must not outlive the app
            self._process.kill()
            self._process.waitForFinished()

    def _ask(self, title: str, question: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Question, title, question,
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setTextFormat(Qt.TextFormat.PlainText)
        return box.exec() == QMessageBox.StandardButton.Yes

    def reject(self) -> None:
        if self.stop_for_close():
            super().reject()
