"""What changes when the app runs from a PyInstaller bundle (`sys.frozen`, files under `sys._MEIPASS`):
the bundled model is the embedded entry, Convert… uses a `medgemma-convert` on the PATH or explains
how to get one, and the window carries the desktop entry's name and icon."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from medgemma_desktop.app import DESKTOP_FILE_NAME, set_identity
from medgemma_desktop.history import History
from medgemma_desktop.library import EMBEDDED_KEY, ModelLibrary
from medgemma_desktop.ui.convert.convert_dialog import NO_CONVERTER_IN_BUNDLE, ConvertDialog
from medgemma_models import store
from medgemma_models.progress import ProgressEvent

BUNDLE_LIBRARIES = "/opt/medgemma-edge/_internal"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemma_270m: Path) -> Path:
    """Run as a bundle unpacked in a temp folder that carries the default model."""
    folder = tmp_path / "_internal"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / store.DEFAULT_MODEL_NAME).symlink_to(gemma_270m)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(folder), raising=False)
    return folder


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_bundled_model_is_the_embedded_entry(bundle: Path) -> None:
    bundled = bundle / "models" / store.DEFAULT_MODEL_NAME
    assert store.embedded_model_path() == store.default_model() == bundled
    assert store.is_embedded_model(bundled) and not store.is_embedded_model(bundle / "models" / "other.gguf")
    history = History()
    try:
        library = ModelLibrary(history)
        library.remember_recent(bundled)  # opened once with Open GGUF…
        assert bundled not in [entry.path for entry in library.entries()]
        pending, _ = library.begin_load(bundled)
        assert pending.path is None and pending.key == EMBEDDED_KEY
    finally:
        history.close()


def test_outside_a_bundle_the_embedded_model_is_the_stores_copy(medgemma_home: Path) -> None:
    assert store.embedded_model_path() == medgemma_home / "models" / store.DEFAULT_MODEL_NAME


@pytest.fixture
def python_check(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for the Python the dialog would run its extra check with; it notes if it ever runs."""
    ran = tmp_path / "python-check-ran"
    return executable(tmp_path / "python", f"#!/bin/sh\ntouch '{ran}'\nexit 0\n"), ran


def dialog_for(qtbot, python: Path, tmp_path: Path) -> ConvertDialog:
    dialog = ConvertDialog(python=str(python))
    qtbot.addWidget(dialog)
    dialog.base.setText(str(tmp_path / "base"))
    dialog.add_adapter(str(tmp_path / "adapter"), 0.5)
    dialog.out.setText(str(tmp_path / "out" / "m.gguf"))
    return dialog


def test_convert_in_a_bundle_without_the_converter_explains_how_to_get_it(
        qtbot, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_check: tuple[Path, Path]) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    python, ran = python_check
    dialog = dialog_for(qtbot, python, tmp_path)
    dialog.start()
    assert dialog.error == NO_CONVERTER_IN_BUNDLE and 'pip install "medgemma-edge[convert]"' in dialog.error
    assert dialog.stage.text() == NO_CONVERTER_IN_BUNDLE and not dialog.running
    assert dialog.start_button.isEnabled() and not ran.exists()


@pytest.mark.parametrize("original", ["/usr/local/lib/users-own", None])
def test_convert_in_a_bundle_runs_the_converter_on_the_path_with_the_users_libraries(
        qtbot, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_check: tuple[Path, Path],
        original: str | None) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    argv, libraries = tmp_path / "argv", tmp_path / "library-path"
    progress = ProgressEvent("export f32", 3, 7).to_json_line()
    executable(folder / "medgemma-convert", f"""#!/bin/sh
for a in "$@"; do printf '%s\\n' "$a"; done > '{argv}'
printf '%s' "${{LD_LIBRARY_PATH-unset}}" > '{libraries}'
printf '%s\\n' '{progress}'
""")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    # What PyInstaller's bootloader leaves in the app's environment.
    monkeypatch.setenv("LD_LIBRARY_PATH", BUNDLE_LIBRARIES if original is None else f"{BUNDLE_LIBRARIES}:{original}")
    if original is None:
        monkeypatch.delenv("LD_LIBRARY_PATH_ORIG", raising=False)
    else:
        monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", original)
    python, ran = python_check
    dialog = dialog_for(qtbot, python, tmp_path)
    stages: list[tuple[str, int, int]] = []
    dialog.progress_changed.connect(lambda stage, done, total: stages.append((stage, done, total)))
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), timeout=60_000)
    assert dialog.error is None, dialog.log.toPlainText()
    assert argv.read_text().splitlines() == dialog.arguments()[2:]  # the form's arguments, no "-m medgemma_convert"
    assert argv.read_text().splitlines()[:2] == ["--base", str(tmp_path / "base")]
    assert libraries.read_text() == (original or "unset")
    assert stages == [("export f32", 3, 7)] and not ran.exists()  # no Python check before a found command


def test_outside_a_bundle_convert_runs_python_with_the_module(
        qtbot, tmp_path: Path, python_check: tuple[Path, Path]) -> None:
    python, ran = python_check  # exits 0 for the check, then "runs" the conversion without output
    dialog = dialog_for(qtbot, python, tmp_path)
    dialog.start()
    qtbot.waitUntil(lambda: dialog.error is not None or dialog.stage.text().startswith("Done"), timeout=60_000)
    assert dialog.error is None and ran.exists()
    assert dialog.log.toPlainText().startswith("$ medgemma-convert --base ")


def test_the_app_carries_the_desktop_entrys_name_and_icon(qapp) -> None:
    set_identity(qapp)
    assert qapp.desktopFileName() == DESKTOP_FILE_NAME
    assert (ROOT / "packaging" / "linux" / f"{DESKTOP_FILE_NAME}.desktop").is_file()  # the entry the .deb installs
    assert qapp.applicationName() == "MedGemma Edge"
    icon = qapp.windowIcon()
    assert not icon.isNull() and icon.pixmap(256, 256).width() == 256
