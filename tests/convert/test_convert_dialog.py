"""The desktop app's Convert… dialog driving the real converter as a child process, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgemma_desktop.ui.convert.convert_dialog import ConvertDialog
from medgemma_models.files import sha256_file
from medgemma_models.gguf_info import read_model_info


def _dialog(qtbot, base: Path, adapter: Path, out: Path) -> tuple[ConvertDialog, list, list]:
    dialog = ConvertDialog()
    qtbot.addWidget(dialog)
    dialog.base.setText(str(base))
    dialog.add_adapter(str(adapter), 0.5)
    dialog.out.setText(str(out))
    stages: list[tuple[str, int, int]] = []
    converted: list[str] = []
    dialog.progress_changed.connect(lambda stage, done, total: stages.append((stage, done, total)))
    dialog.converted.connect(converted.append)
    return dialog, stages, converted


def test_dialog_converts_and_reports(qtbot, tiny, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "tiny.gguf"
    dialog, stages, converted = _dialog(qtbot, tiny.base("gemma3"), tiny.adapter("gemma3", "all"), out)
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), timeout=180_000)
    assert dialog.error is None, dialog.log.toPlainText()
    expected = [str(folder / "tiny-q8_0.gguf"), str(folder / "tiny-q4_k_m.gguf")]
    assert converted == expected and dialog.outputs == expected
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-q4_k_m.gguf", "tiny-q8_0.gguf"]
    for output in dialog.report.outputs:
        assert output.sha256 == sha256_file(Path(output.path))
        assert read_model_info(Path(output.path)).file_type == output.quant.upper()
    assert dialog.report.inputs["adapters"][0]["scale"] == 0.5
    seen = {stage for stage, _, _ in stages}
    assert "export f32" in seen and "quantize q8_0+q4_k_m" in seen
    assert dialog.progress.value() == dialog.progress.maximum()
    assert dialog.start_button.isEnabled() and not dialog.cancel_button.isEnabled()


@pytest.mark.slow
def test_cancel_stops_the_child_and_leaves_nothing(qtbot, hf_base_270m, lora_270m, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dialog, stages, converted = _dialog(qtbot, hf_base_270m, lora_270m, out / "m.gguf")
    # Cancel as soon as the child reports writing tensors: its f16 export is then half done.
    dialog.progress_changed.connect(lambda stage, done, total: dialog.cancel() if stage.startswith("export") else None)
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), timeout=180_000)
    assert dialog.error is not None and "interrupted" in dialog.error, dialog.log.toPlainText()
    assert any(stage.startswith("export") for stage, _, _ in stages)
    assert converted == [] and list(out.iterdir()) == []
    assert dialog.start_button.isEnabled()


def test_the_child_imports_nothing_from_the_launch_folder(qtbot, tiny, tmp_path, monkeypatch):
    launch = tmp_path / "launch"
    launch.mkdir()
    marker = tmp_path / "planted-numpy-ran"
    (launch / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('planted numpy.py')\n")
    monkeypatch.chdir(launch)  # the app was started from a folder holding a planted numpy.py
    dialog, _, converted = _dialog(qtbot, tiny.base("gemma3"), tiny.adapter("gemma3", "qv"), Path("relative.gguf"))
    dialog.quant_boxes["q4_k_m"].setChecked(False)
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), timeout=180_000)
    assert not marker.exists()
    assert dialog.error is None, dialog.log.toPlainText()
    assert converted == [str(launch / "relative.gguf")]  # a relative output is the launch folder's
    assert (launch / "relative.gguf").is_file()


def _window_converting(qtbot, tiny, out: Path):
    """A real window whose Convert… dialog is filled in for a tiny conversion into `out`."""
    from medgemma_desktop.engine import Engine
    from medgemma_desktop.history import History
    from medgemma_desktop.ui.main_window import MainWindow

    history = History()
    window = MainWindow(history, Engine)
    qtbot.addWidget(window)
    window.models.show_convert_dialog()
    dialog = window.models.convert_dialog
    out.mkdir()
    dialog.base.setText(str(tiny.base("gemma3")))
    dialog.add_adapter(str(tiny.adapter("gemma3", "all")))
    dialog.out.setText(str(out / "tiny.gguf"))
    return history, window, dialog


def test_closing_the_window_mid_conversion_asks_then_cancels_and_cleans_up(qtbot, tiny, tmp_path):
    from PySide6.QtCore import QTimer

    out = tmp_path / "out"
    history, window, dialog = _window_converting(qtbot, tiny, out)
    window.show()
    questions: list[str] = []
    answers = iter([False, True])  # first "keep converting", then "stop it"

    def ask(title: str, question: str) -> bool:
        questions.append(title)
        return next(answers)

    dialog.ask = ask
    closed: list[bool] = []

    def close_once(stage: str, done: int, total: int) -> None:
        if stage.startswith("export") and not closed:
            closed.append(window.close())  # declined: the window stays and the conversion goes on
            QTimer.singleShot(0, lambda: closed.append(window.close()))  # agreed: it stops, then closes

    dialog.progress_changed.connect(close_once)
    dialog.start()
    qtbot.waitUntil(lambda: len(closed) == 2, timeout=180_000)
    history.close()
    assert closed == [False, True] and questions == ["Stop the conversion?"] * 2
    assert not dialog.running and dialog.error is not None and "interrupted" in dialog.error, dialog.log.toPlainText()
    assert list(out.iterdir()) == []  # no .partial left: the child cleaned up before the window closed


def test_the_app_ending_mid_conversion_cancels_it_and_cleans_up_without_asking(qtbot, tiny, tmp_path):
    out = tmp_path / "out"
    history, window, dialog = _window_converting(qtbot, tiny, out)
    dialog.ask = lambda title, question: pytest.fail("the app ending (logout, run_app's exit) asks nothing")
    ended: list[bool] = []

    def end_the_app(stage: str, done: int, total: int) -> None:
        if stage.startswith("export") and not ended:
            window.shutdown()
            ended.append(True)

    dialog.progress_changed.connect(end_the_app)
    dialog.start()
    qtbot.waitUntil(lambda: bool(ended), timeout=180_000)
    history.close()
    assert not dialog.running and "interrupted" in (dialog.error or ""), dialog.log.toPlainText()
    assert list(out.iterdir()) == []


def test_the_dialog_writes_a_runtime_adapter_beside_the_base(qtbot, tiny, tmp_path):
    from gguf import GGUFReader

    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "tiny-adapter.gguf"
    dialog, stages, converted = _dialog(qtbot, tiny.base("gemma3"), tiny.adapter("gemma3", "all"), out)
    dialog.kind.setCurrentIndex(dialog.kind.findData("adapter"))
    # A runtime adapter leaves the base as it is: nothing to quantize, no importance matrix.
    assert not dialog.quant_boxes["q4_k_m"].isEnabled() and not dialog.imatrix.isEnabled()
    assert dialog.arguments()[2] == "lora" and "--quant" not in dialog.arguments()
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), timeout=180_000)
    assert dialog.error is None, dialog.log.toPlainText()
    assert converted == [str(out)] and sorted(p.name for p in folder.iterdir()) == ["tiny-adapter.gguf"]
    field = GGUFReader(out).fields["general.type"]
    assert bytes(field.parts[field.data[0]]).decode() == "adapter"
    assert dialog.report.outputs[0].sha256 == sha256_file(out)
    assert len(dialog.report.inputs["adapters"]) == 1 and dialog.report.extra["adapter"]["alpha"] > 0
    dialog.kind.setCurrentIndex(dialog.kind.findData("merged"))
    assert dialog.quant_boxes["q4_k_m"].isEnabled() and "q4_speed" in dialog.quant_boxes


def test_the_vision_projector_is_a_choice_of_merged_exports(qtbot, tiny_vision, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "medgemma-tiny.gguf"
    dialog, _, converted = _dialog(qtbot, tiny_vision.base, tiny_vision.all_linear, out)
    for box in dialog.quant_boxes.values():
        box.setChecked(box is dialog.quant_boxes["f16"])
    assert dialog.mmproj.isChecked() and "--no-mmproj" not in dialog.arguments()
    dialog.kind.setCurrentIndex(dialog.kind.findData("adapter"))
    assert not dialog.mmproj.isEnabled() and "--no-mmproj" not in dialog.arguments()
    dialog.kind.setCurrentIndex(dialog.kind.findData("merged"))
    dialog.mmproj.setChecked(False)
    assert dialog.arguments()[-1] == "--no-mmproj"
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), timeout=180_000)
    assert dialog.error is None, dialog.log.toPlainText()
    # The image model's text part only: no mmproj-medgemma-tiny.gguf beside it.
    assert converted == [str(out)] and [p.name for p in folder.iterdir()] == ["medgemma-tiny.gguf"]
