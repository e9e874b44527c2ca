"""The About facts (Qt-free), Help → About in the window, and `medgemma-desktop --about`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

from medgemma_desktop.about import about_info, licenses_text, parse_system_info, terms_text
from medgemma_models.store import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parents[2]
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def test_about_info_names_the_version_and_the_llama_cpp_build() -> None:
    info = about_info()
    assert info["version"] == VERSION
    assert info["llama_cpp_python"] == llama_cpp.__version__
    assert "CPU" in info["backends"] and info["gpu_offload"] == llama_cpp.llama_supports_gpu_offload()
    assert info["cpu_features"], info["system_info"]
    for feature in info["cpu_features"]:
        assert f"{feature} = 1" in info["system_info"]
    assert not info["bundled"] and info["licenses_dir"] is None
    assert Path(info["terms_file"]).is_file() and Path(info["model"]).name == DEFAULT_MODEL_NAME
    json.dumps(info)  # what --about --json prints


def test_system_info_is_read_per_backend_and_only_features_that_are_on_count() -> None:
    # A CUDA build's shape, with a backend that lists no features before the next one's name.
    text = "CUDA : ARCHS = 500,610 | USE_GRAPHS = 1 | Metal : CPU : SSE3 = 1 | AVX512 = 0 | AVX2 = 1 | "
    assert parse_system_info(text) == {"CUDA": {"ARCHS": "500,610", "USE_GRAPHS": "1"}, "Metal": {},
                                       "CPU": {"SSE3": "1", "AVX512": "0", "AVX2": "1"}}


def test_the_terms_are_plain_text_cut_from_the_model_packages_page() -> None:
    info = about_info()
    assert info["terms_file"].endswith(".html")  # outside a bundle: the page the model package ships
    text = terms_text(info)
    assert text.startswith("Gemma Terms of Use") and "Prohibited Use" in text
    assert "<" not in text and "function(" not in text  # no markup, no script left over
    assert licenses_text(info).startswith("MedGemma Edge: Apache-2.0")


def test_a_bundle_shows_its_own_terms_and_license_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       gemma_270m: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / DEFAULT_MODEL_NAME).symlink_to(gemma_270m)
    (tmp_path / "models" / "GEMMA_TERMS.txt").write_text("Gemma Terms of Use\n\nBy using Gemma...\n")
    (tmp_path / "licenses").mkdir()
    (tmp_path / "licenses" / "THIRD-PARTY.txt").write_text("llama_cpp_python 0.3.36: MIT\n")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    info = about_info()
    assert info["bundled"] and info["model"] == str(tmp_path / "models" / DEFAULT_MODEL_NAME)
    assert terms_text(info) == "Gemma Terms of Use\n\nBy using Gemma...\n"
    assert "llama_cpp_python 0.3.36: MIT" in licenses_text(info)
    (tmp_path / "models" / "GEMMA_TERMS.txt").unlink()
    assert "https://ai.google.dev/gemma/terms" in terms_text(info)  # a damaged bundle still says where


def test_help_about_shows_the_version_notice_and_terms(qtbot, make_window) -> None:
    window = make_window(load=False)
    menus = [action.text() for action in window.menuBar().actions()]
    assert menus == ["&Server", "&Documents", "&Help"]  # Help last, as on every platform
    window.help.about_action.trigger()
    dialog = window.help.dialog
    qtbot.waitUntil(dialog.isVisible)
    assert dialog.windowTitle() == "About MedGemma Edge"
    assert f"MedGemma Edge {VERSION}" in dialog.summary.text() and "Not for clinical use." in dialog.summary.text()
    assert f"llama-cpp-python {llama_cpp.__version__}" in dialog.summary.text()
    assert dialog.terms.isReadOnly()
    shown = dialog.terms.toPlainText()
    assert shown.startswith("Gemma Terms of Use") and "MedGemma Edge: Apache-2.0" in shown
    dialog.close()


def test_the_cli_prints_the_about_facts_as_json(tmp_path: Path) -> None:
    env = {**os.environ, "MEDGEMMA_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "medgemma_desktop", "--about", "--json"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["version"] == VERSION and info["bundled"] is False and "CPU" in info["backends"]
    plain = subprocess.run([sys.executable, "-m", "medgemma_desktop", "--about"], env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert plain.returncode == 0 and plain.stdout.splitlines()[0] == f"MedGemma Edge {VERSION}"
    assert "Not for clinical use." in plain.stdout
