"""The desktop app's Convert… dialog driving the real converter as a child process, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgemma_desktop.ui.convert_dialog import ConvertDialog
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
